"""Optional LLM query rewriting: the generator proposes alternative search queries, and the rankings
of the question and its rewrites are fused (reciprocal rank). Off by default: on the demo eval set
it did not beat plain hybrid search (bench/results/retrieval-latest.md, "llm multi-query" rows).
"""

from __future__ import annotations

import re
from typing import Any, Sequence

from tasks.retrieve import Hit, Retriever, SearchFilters, SearchResult, rrf

SYSTEM_REWRITE = (
    "You write search queries. Rewrite the user's question as {n} different short keyword search queries, "
    "one per line, without numbering or explanations."
)
_NUMBERING = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s*")


def parse_queries(text: str, question: str, n: int) -> list[str]:
    """Up to `n` distinct non-empty queries from the model's lines (not repeating the question)."""
    out: list[str] = []
    for line in text.splitlines():
        q = _NUMBERING.sub("", line).strip().strip('"').strip()
        if q and q.lower() != question.lower() and q.lower() not in {o.lower() for o in out} and len(q) < 200:
            out.append(q)
    return out[:n]


def rewrites(generator: Any, questions: Sequence[str], n: int = 2) -> list[list[str]]:
    """`n` alternative queries per question, generated in batches."""
    conversations = [
        [{"role": "system", "content": SYSTEM_REWRITE.format(n=n)}, {"role": "user", "content": q}] for q in questions
    ]
    return [parse_queries(g.text, q, n) for g, q in zip(generator.generate(conversations), questions)]


def multi_query_search(
    retriever: Retriever, question: str, extra: Sequence[str], k: int, filters: SearchFilters | None = None
) -> SearchResult:
    """Search the question and each rewrite, then fuse the rankings by reciprocal rank."""
    results = retriever.search_many([question, *extra], k, filters)
    by_id: dict[str, Hit] = {}
    for r in results:
        for h in r.hits:
            by_id.setdefault(h.chunk_id, h)
    scores = rrf([[h.chunk_id for h in r.hits] for r in results])
    hits = sorted(by_id.values(), key=lambda h: (-scores[h.chunk_id], h.chunk_id))[:k]
    for h in hits:
        h.score = scores[h.chunk_id]
    timings = {stage: sum(r.timings.get(stage, 0.0) for r in results) for stage in results[0].timings}
    return SearchResult(hits=hits, timings=timings, fts_query=results[0].fts_query)
