"""Grounded answers: search → rerank → pack → generate → validate → answer or abstain.

An answer lists the sources it used (`[n]` markers mapped to document, page/section and chunk id).
ragtune abstains ("The documents don't answer this.") with the closest sources when retrieval
confidence is low, when the model itself says so, or when the answer is not supported by the
sources it was given.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from tasks.generate import ABSTAIN, Generator, Source, base_messages, pack_sources, rag_messages
from tasks.ground import DEFAULT_THRESHOLD, GroundingScorer, SentenceSupport, answer_support
from tasks.rerank import Reranker
from tasks.retrieve import Hit, Retriever, SearchFilters
from tasks.rewrite import multi_query_search, rewrites

_MARKER = re.compile(r"\[(\d{1,3})\]")
_SNIPPET = 240


@dataclass
class Citation:
    n: int
    doc_id: str
    source_path: str
    title: str
    page: int | None
    section: str
    chunk_id: str
    snippet: str

    @classmethod
    def of(cls, source: Source) -> "Citation":
        h = source.hit
        snippet = h.text if len(h.text) <= _SNIPPET else h.text[:_SNIPPET].rsplit(" ", 1)[0] + " …"
        return cls(source.n, h.doc_id, h.source_path, h.title, h.page, " > ".join(h.heading_path), h.chunk_id, snippet)


@dataclass
class Answer:
    question: str
    answer: str
    abstained: bool
    citations: list[Citation]
    grounding: list[dict[str, Any]]
    timings: dict[str, float]
    support: float | None = None
    reason: str | None = None  # why it abstained
    draft: str | None = None  # the generated text when it was withheld
    closest_sources: list[Citation] = field(default_factory=list)
    retrieved: list[str] = field(default_factory=list)  # doc ids of the ranked candidates (for retrieval metrics)

    def as_dict(self) -> dict[str, Any]:
        return {
            "question": self.question,
            "answer": self.answer,
            "abstained": self.abstained,
            "reason": self.reason,
            "support": self.support,
            "citations": [c.__dict__ for c in self.citations],
            "grounding": self.grounding,
            "timings": {k: round(v, 4) for k, v in self.timings.items()},
            "draft": self.draft,
            "closest_sources": [c.__dict__ for c in self.closest_sources],
            "retrieved": self.retrieved,
        }


def says_abstain(text: str) -> bool:
    t = text.lower()
    return "don't answer" in t or "do not answer" in t or "does not contain" in t or "do not contain" in t


def _withheld_by_model(draft: str) -> bool:
    """The model abstained itself (or said nothing): there is no claim to check."""
    return says_abstain(draft) or not draft.strip()


def cited_numbers(text: str, available: int) -> list[int]:
    """Valid `[n]` markers in order of first use."""
    seen: list[int] = []
    for m in _MARKER.finditer(text):
        n = int(m.group(1))
        if 1 <= n <= available and n not in seen:
            seen.append(n)
    return seen


@dataclass
class _Pending:
    question: str
    hits: list[Hit]
    sources: list[Source]
    timings: dict[str, float]
    reason: str | None = None
    ranking: list[str] = field(default_factory=list)


RANKING_DEPTH = 20  # candidates kept on an answer for retrieval metrics (nDCG@10 needs 10)


class Answerer:
    """Answers questions over one retriever with one generator; everything loaded once."""

    def __init__(
        self,
        retriever: Retriever | None,
        generator: Generator,
        scorer: GroundingScorer | None,
        reranker: Reranker,
        k: int = 5,
        context_tokens: int = 1024,
        min_dense: float = 0.2,
        min_support: float = DEFAULT_THRESHOLD,
        rewrite_queries: int = 0,
    ):
        self.retriever, self.generator, self.scorer, self.reranker = retriever, generator, scorer, reranker
        self.rewrite_queries = rewrite_queries
        self.k, self.context_tokens, self.min_dense, self.min_support = k, context_tokens, min_dense, min_support

    def ask(self, question: str, filters: SearchFilters | None = None) -> Answer:
        return self.ask_many([question], filters)[0]

    def ask_many(self, questions: Sequence[str], filters: SearchFilters | None = None) -> list[Answer]:
        """Answer a batch: one batched embedding, per-question search, one batched generation."""
        if self.retriever is None:
            return self._closed_book(questions)
        pending = [self._retrieve(q, r) for q, r in zip(questions, self._search(questions, filters))]
        to_generate = [p for p in pending if p.reason is None]
        start = time.perf_counter()
        generations = self.generator.generate([rag_messages(p.question, p.sources) for p in to_generate])
        per_question = (time.perf_counter() - start) / max(1, len(to_generate))
        drafts = [g.text for g in generations]
        scored = {id(p): (d, s) for p, d, s in zip(to_generate, drafts, self._score(to_generate, drafts))}
        answers = []
        for p in pending:
            if p.reason is not None:
                answers.append(self._abstain(p, p.reason))
                continue
            p.timings["generate"] = per_question
            answers.append(self._validate(p, *scored[id(p)]))
        for p, a in zip(pending, answers):
            a.retrieved = p.ranking
        return answers

    def _search(self, questions: Sequence[str], filters: SearchFilters | None) -> list[Any]:
        assert self.retriever is not None
        # Rerankers choose the k sources from a deeper candidate list.
        depth = max(self.k * 4, self.retriever.candidates)
        if not self.rewrite_queries:
            return self.retriever.search_many(questions, depth, filters)
        start = time.perf_counter()
        extra = rewrites(self.generator, questions, self.rewrite_queries)
        per_question = (time.perf_counter() - start) / max(1, len(questions))
        results = [multi_query_search(self.retriever, q, e, depth, filters) for q, e in zip(questions, extra)]
        for r in results:
            r.timings["rewrite"] = r.timings.get("rewrite", 0.0) + per_question
        return results

    def _retrieve(self, question: str, result: Any) -> _Pending:
        timings = {"rewrite": result.timings.get("rewrite", 0.0), "search": result.timings["search"] + result.timings["embed"]}
        start = time.perf_counter()
        hits = self.reranker.rerank(question, result.hits, self.k)
        timings["rerank"] = time.perf_counter() - start
        sources = pack_sources(hits, self.generator.count_tokens, self.context_tokens)
        best = max((h.dense for h in result.hits if h.dense is not None), default=None)
        reason = None
        if not sources:
            reason = "no_sources"
        elif best is not None and best < self.min_dense:
            reason = "low_retrieval_confidence"
        chosen = {h.chunk_id for h in hits}
        ranking = [h.doc_id for h in hits] + [h.doc_id for h in result.hits if h.chunk_id not in chosen]
        return _Pending(question, hits, sources, timings, reason, ranking[:RANKING_DEPTH])

    def _score(self, pending: Sequence[_Pending], drafts: Sequence[str]) -> list[list[SentenceSupport]]:
        """Grounding of every draft that claims something, in one batch; the time is shared equally."""
        checked = [i for i, d in enumerate(drafts) if not _withheld_by_model(d)]
        start = time.perf_counter()
        items = [(drafts[i], [s.text for s in pending[i].sources]) for i in checked]
        if self.scorer is None or not items:
            scored: list[list[SentenceSupport]] = [[] for _ in items]
        elif hasattr(self.scorer, "score_many"):
            # The question is trusted context too: a contact detail it names may be repeated.
            scored = self.scorer.score_many(items, [pending[i].question for i in checked])
        else:  # a stand-in scorer with `score` only
            scored = [self.scorer.score(answer, sources) for answer, sources in items]
        each = (time.perf_counter() - start) / max(1, len(checked))
        out: list[list[SentenceSupport]] = [[] for _ in drafts]
        for i, supports in zip(checked, scored):
            out[i] = supports
            pending[i].timings["validate"] = each
        return out

    def _validate(self, p: _Pending, draft: str, supports: list[SentenceSupport]) -> Answer:
        if _withheld_by_model(draft):
            p.timings["validate"] = 0.0
            return self._abstain(p, "model_abstained", draft=draft)
        support = answer_support(supports) if supports else None
        grounding = [_support_dict(s, p.sources) for s in supports]
        if support is not None and support < self.min_support:
            answer = self._abstain(p, "unsupported", draft=draft)
            answer.grounding, answer.support = grounding, support
            return answer
        numbers = cited_numbers(draft, len(p.sources))
        if not numbers:  # no markers: cite what actually supports the sentences
            numbers = sorted({s.source + 1 for s in supports if s.supported and s.source is not None})
        citations = [Citation.of(p.sources[n - 1]) for n in numbers]
        return Answer(p.question, draft, False, citations, grounding, p.timings, support=support)

    def _abstain(self, p: _Pending, reason: str, draft: str | None = None) -> Answer:
        closest = [Citation.of(s) for s in p.sources[:3]]
        return Answer(p.question, ABSTAIN, True, [], [], p.timings, reason=reason, draft=draft, closest_sources=closest)

    def _closed_book(self, questions: Sequence[str]) -> list[Answer]:
        """No retrieval (the `base` and `lora` arms): the model answers from its weights alone."""
        start = time.perf_counter()
        generations = self.generator.generate([base_messages(q) for q in questions])
        per = (time.perf_counter() - start) / max(1, len(questions))
        return [Answer(q, g.text, says_abstain(g.text), [], [], {"generate": per}) for q, g in zip(questions, generations)]


def _support_dict(s: SentenceSupport, sources: Sequence[Source]) -> dict[str, Any]:
    return {
        "sentence": s.sentence,
        "score": round(s.score, 4),
        "supported": s.supported,
        **({"untrusted": list(s.untrusted)} if getattr(s, "untrusted", ()) else {}),
        "source": sources[s.source].n if s.source is not None and s.source < len(sources) else None,
    }
