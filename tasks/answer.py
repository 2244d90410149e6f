"""Grounded answers: search → rerank → pack → generate → validate → answer or abstain.

An answer lists the sources it used (`[n]` markers mapped to document, page/section and chunk id).
ragtune abstains ("The documents don't answer this.") with the closest sources when retrieval
confidence is low, when the model itself says so, or when the answer is not supported by the
sources it was given. With `retrieval.fallback = "quote"` a withheld draft is replaced by the
sentence of the top source closest to the question, verbatim and cited, when it is similar enough
(`QuoteRule`): a small generator often names the wrong entity from the right passage, and the
sentence that holds the answer is then a better reply than none.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from tasks.generate import ABSTAIN, WITHHELD, Generator, Source, base_messages, pack_sources, rag_messages
from tasks.ground import DEFAULT_THRESHOLD, GroundingScorer, SentenceSupport, answer_support, split_sentences, strip_citations
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
    quoted: bool = False  # the answer is a source sentence quoted verbatim (the draft was withheld)
    # The sentence a quote would take and its similarity, {"text", "similarity"}: set on quoted answers and,
    # with `QuoteRule.probe`, on every draft that could be withheld (calibration fits the floor on them).
    quote: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "question": self.question,
            "answer": self.answer,
            "abstained": self.abstained,
            "quoted": self.quoted,
            "quote": self.quote,
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


def drop_repeated_sentences(text: str) -> str:
    """The text without sentences it already said (a small model loops: "X. X. X."); as is when none repeats."""
    sentences = split_sentences(text)
    seen: set[str] = set()
    kept = []
    for sentence in sentences:
        key = " ".join(_WORD.findall(strip_citations(sentence)[0].lower()))
        if key and key in seen:
            continue
        seen.add(key)
        kept.append(sentence.strip())
    return text if len(kept) == len(sentences) else " ".join(kept)


_WORD = re.compile(r"\w+")
# Reasons after which a quote may answer instead: a draft was written and withheld, so the sources were good enough to try.
QUOTABLE = frozenset({"unsupported", "model_abstained"})


@dataclass(frozen=True)
class QuoteRule:
    """When a draft is withheld, quote the source sentence most similar to the question, if it is at least
    `min_similarity` (embedder cosine) similar, from the first `sources` sources; sentences under
    `min_words` words or that only restate the question (a heading, a cross-reference) are not answers."""

    min_similarity: float = 0.4  # the `retrieval.quote_min_similarity` default (bench/fallback.py)
    sources: int = 1
    min_words: int = 4
    # Calibration (`tasks.calibrate`): find the quote of every judged draft and of the model's own abstentions,
    # record it on the answer (`Answer.quote`) and replace nothing, so the floor can be fitted on them.
    probe: bool = False


def restates(question: str, sentence: str) -> bool:
    """The sentence repeats the question or adds no word to it: it cannot be the answer."""
    asked = _WORD.findall(question.lower())
    said = _WORD.findall(sentence.lower())
    return " ".join(asked) in " ".join(said) or set(said) <= set(asked)


def quote_candidates(question: str, sources: Sequence[Source], rule: QuoteRule) -> list[tuple[int, str]]:
    """(source index, sentence) pairs a quote may take, in source order: from the text the generator was
    shown (`Source.text`: instruction-like sentences withheld, markup neutralised), never the raw chunk,
    so a quote cannot carry what the prompt guard kept from the model."""
    out = []
    for i, source in enumerate(sources[: rule.sources]):
        for sentence in split_sentences(source.text.replace(WITHHELD, "\n")):
            sentence = " ".join(sentence.split())
            if len(sentence.split()) >= rule.min_words and not restates(question, sentence):
                out.append((i, sentence))
    return out


def _in_section(hit: Hit, sentence: str) -> str:
    return f"{hit.heading_path[-1]}\n{sentence}" if hit.heading_path else sentence


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
        quote: QuoteRule | None = None,
    ):
        self.retriever, self.generator, self.scorer, self.reranker = retriever, generator, scorer, reranker
        self.rewrite_queries, self.quote = rewrite_queries, quote
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
        drafts = [drop_repeated_sentences(g.text) for g in generations]
        scored = {id(p): (d, s) for p, d, s in zip(to_generate, drafts, self._score(to_generate, drafts))}
        answers = []
        for p in pending:
            if p.reason is not None:
                answers.append(self._abstain(p, p.reason))
                continue
            p.timings["generate"] = per_question
            answers.append(self._validate(p, *scored[id(p)]))
        if self.quote is not None:
            answers = self._quote_withheld(pending, answers, self.quote)
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

    def _quote_withheld(self, pending: Sequence[_Pending], answers: list[Answer], rule: QuoteRule) -> list[Answer]:
        """Withheld drafts replaced by a quote where one is similar enough: one embedding call for the batch."""
        assert self.retriever is not None
        todo = [(i, quote_candidates(p.question, p.sources, rule)) for i, (p, a) in enumerate(zip(pending, answers))
                if (a.abstained and a.reason in QUOTABLE) or (rule.probe and not a.abstained and a.support is not None)]
        todo = [(i, c) for i, c in todo if c]
        if not todo:
            return answers
        start = time.perf_counter()
        # The sentence that answers is chosen on its own words; whether it is similar enough is judged under
        # its section's heading, as chunks are embedded at ingest ("7.2 How can I save my workspace?" gives
        # "save.image() saves ..." the context it answers in).
        texts = [t for i, cands in todo for t in [pending[i].question, *(s for _, s in cands),
                                                  *(_in_section(pending[i].sources[j].hit, s) for j, s in cands)]]
        vectors = self.retriever.embedder.embed(texts)
        each = (time.perf_counter() - start) / len(todo)
        out, row = list(answers), 0
        for i, cands in todo:
            n = len(cands)
            q, plain, sectioned = vectors[row], vectors[row + 1 : row + 1 + n], vectors[row + 1 + n : row + 1 + 2 * n]
            row += 1 + 2 * n
            best = int((plain @ q).argmax())
            similarity = float(max(plain[best] @ q, sectioned[best] @ q))
            p, withheld = pending[i], answers[i]
            p.timings["quote"] = each
            source, sentence = p.sources[cands[best][0]], cands[best][1]
            quote = {"text": f"{sentence} [{source.n}]", "similarity": round(similarity, 4)}
            if rule.probe:
                withheld.quote = quote
                continue
            if similarity < rule.min_similarity:
                continue
            grounding = [{"sentence": sentence, "score": 1.0, "supported": True, "source": source.n, "similarity": round(similarity, 4)}]
            out[i] = Answer(p.question, quote["text"], False, [Citation.of(source)], grounding, p.timings,
                            support=1.0, draft=withheld.draft, quoted=True, quote=quote)
        return out

    def _abstain(self, p: _Pending, reason: str, draft: str | None = None) -> Answer:
        closest = [Citation.of(s) for s in p.sources[:3]]
        return Answer(p.question, ABSTAIN, True, [], [], p.timings, reason=reason, draft=draft, closest_sources=closest)

    def _closed_book(self, questions: Sequence[str]) -> list[Answer]:
        """No retrieval (the `base` and `lora` arms): the model answers from its weights alone."""
        start = time.perf_counter()
        generations = self.generator.generate([base_messages(q) for q in questions])
        per = (time.perf_counter() - start) / max(1, len(questions))
        texts = [drop_repeated_sentences(g.text) for g in generations]
        return [Answer(q, t, says_abstain(t), [], [], {"generate": per}) for q, t in zip(questions, texts)]


def _support_dict(s: SentenceSupport, sources: Sequence[Source]) -> dict[str, Any]:
    return {
        "sentence": s.sentence,
        "score": round(s.score, 4),
        "supported": s.supported,
        **({"untrusted": list(s.untrusted)} if getattr(s, "untrusted", ()) else {}),
        "source": sources[s.source].n if s.source is not None and s.source < len(sources) else None,
    }
