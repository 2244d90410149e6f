"""Rerankers: reorder fused candidates before packing. One interface, three implementations.

- `none`: fusion order as is;
- `mmr`: maximal marginal relevance over the chunk vectors: trades a little relevance for
  diversity, which drops near-duplicates (old/new versions of a policy, repeated paragraphs);
- `newest`: of near-duplicate chunks from different documents keeps one version: the year the
  question names, else the newest;
- `cross-encoder:<path or hub id>`: a sentence-transformers `CrossEncoder` scoring (query, chunk).
No cross-encoder ships in a package here, so which one is the default is decided by `make bench`.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Protocol, Sequence

import numpy as np

from tasks.retrieve import Hit


class Reranker(Protocol):
    name: str

    def rerank(self, question: str, hits: Sequence[Hit], k: int) -> list[Hit]:
        """The best `k` of `hits` for `question`, best first."""


class FusionOrder:
    name = "none"

    def rerank(self, question: str, hits: Sequence[Hit], k: int) -> list[Hit]:
        return list(hits[:k])


class MMR:
    """Maximal marginal relevance: argmax λ·relevance − (1−λ)·max similarity to what is already picked.

    Relevance is the candidate's fused rank turned into a score in (0, 1], so the fusion's judgement is
    kept and only redundancy is penalised.
    """

    name = "mmr"

    def __init__(self, lambda_: float = 0.7):
        self.lambda_ = lambda_

    def rerank(self, question: str, hits: Sequence[Hit], k: int) -> list[Hit]:
        if len(hits) <= 1:
            return list(hits[:k])
        vectors = np.stack([h.vector for h in hits])
        relevance = 1.0 / (1.0 + np.arange(len(hits)) / 5.0)
        similarity = vectors @ vectors.T
        picked: list[int] = []
        left = list(range(len(hits)))
        while left and len(picked) < k:
            redundancy = similarity[np.ix_(left, picked)].max(axis=1) if picked else np.zeros(len(left))
            scores = self.lambda_ * relevance[left] - (1 - self.lambda_) * redundancy
            best = left[int(np.argmax(scores))]
            picked.append(best)
            left.remove(best)
        return [hits[i] for i in picked]


_YEAR = re.compile(r"(?<!\d)(?:19|20)\d{2}(?!\d)")


def _years(text: str) -> set[int]:
    return {int(y) for y in _YEAR.findall(text)}


class NewestVersion:
    """Keeps one version of near-duplicate documents (a 2025 and a 2026 policy): the one whose title or
    path names the year the question asks about, else the newest (year in title/path, then mtime).

    The preferred version takes the rank of the best-ranked version; the other versions are moved
    behind every distinct hit rather than dropped, so fusion order is otherwise kept.
    """

    name = "newest"

    def __init__(self, duplicate_cosine: float = 0.9):
        self.duplicate_cosine = duplicate_cosine

    def rerank(self, question: str, hits: Sequence[Hit], k: int) -> list[Hit]:
        asked = _years(question)

        def preference(h: Hit) -> tuple:
            years = _years(f"{h.doc_id} {h.title}")
            return (bool(years & asked), max(years, default=0), h.modified.timestamp() if h.modified else 0.0)

        kept: list[Hit] = []
        demoted: list[Hit] = []
        for hit in hits:
            twin = next(
                (i for i, h in enumerate(kept) if h.doc_id != hit.doc_id and float(h.vector @ hit.vector) >= self.duplicate_cosine),
                None,
            )
            if twin is None:
                kept.append(hit)
            elif preference(hit) > preference(kept[twin]):
                demoted.append(kept[twin])
                kept[twin] = hit
            else:
                demoted.append(hit)
        return (kept + demoted)[:k]


@functools.lru_cache(maxsize=2)
def _cross_encoder(location: str) -> Any:
    from sentence_transformers import CrossEncoder

    return CrossEncoder(location, device="cpu")


class CrossEncoderReranker:
    """Any sentence-transformers CrossEncoder (a local path or a hub id), loaded once per process."""

    def __init__(self, location: str, batch_size: int = 32):
        self.name = f"cross-encoder:{location}"
        self.model = _cross_encoder(location)
        self.batch_size = batch_size

    def rerank(self, question: str, hits: Sequence[Hit], k: int) -> list[Hit]:
        if not hits:
            return []
        scores = self.model.predict([(question, h.text) for h in hits], batch_size=self.batch_size, show_progress_bar=False)
        order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
        out = []
        for i in order[:k]:
            hit = hits[int(i)]
            hit.score = float(scores[int(i)])
            out.append(hit)
        return out


def make_reranker(spec: str, mmr_lambda: float = 0.7) -> Reranker:
    """`none`, `mmr`, `newest` or `cross-encoder:<path or hub id>`."""
    if spec == "none":
        return FusionOrder()
    if spec == "mmr":
        return MMR(mmr_lambda)
    if spec == "newest":
        return NewestVersion()
    if spec.startswith("cross-encoder:"):
        return CrossEncoderReranker(spec.split(":", 1)[1])
    raise ValueError(f"unknown reranker {spec!r}: use none, mmr, newest or cross-encoder:<path or hub id>")
