"""Retrieval metrics, defined once: every benchmark and evaluation uses these.

A ranking is a list of ids, best first (duplicates are ignored after their first occurrence);
`relevant` is the set of gold ids. Each function returns a value in [0, 1].
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence


def _dedupe(ranking: Sequence[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for r in ranking:
        if r not in seen:
            seen.add(r)
            out.append(r)
    return out


def recall_at(ranking: Sequence[str], relevant: Iterable[str], k: int) -> float:
    """Share of the relevant ids found in the top k (with one gold id: hit@k)."""
    gold = set(relevant)
    if not gold:
        return 0.0
    return len(set(_dedupe(ranking)[:k]) & gold) / len(gold)


def hit_at(ranking: Sequence[str], relevant: Iterable[str], k: int) -> float:
    """1 if any relevant id is in the top k."""
    return float(bool(set(_dedupe(ranking)[:k]) & set(relevant)))


def reciprocal_rank(ranking: Sequence[str], relevant: Iterable[str], k: int | None = None) -> float:
    """1 / rank of the first relevant id (0 when absent from the top k)."""
    gold = set(relevant)
    for rank, r in enumerate(_dedupe(ranking)[:k], start=1):
        if r in gold:
            return 1.0 / rank
    return 0.0


def ndcg_at(ranking: Sequence[str], relevant: Iterable[str], k: int = 10) -> float:
    """Binary-relevance nDCG@k: DCG of the ranking over DCG of an ideal one."""
    gold = set(relevant)
    if not gold:
        return 0.0
    dcg = sum(1.0 / math.log2(rank + 1) for rank, r in enumerate(_dedupe(ranking)[:k], start=1) if r in gold)
    ideal = sum(1.0 / math.log2(rank + 1) for rank in range(1, min(len(gold), k) + 1))
    return dcg / ideal
