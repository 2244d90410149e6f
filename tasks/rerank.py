"""Rerankers: reorder fused candidates before packing. One interface, three implementations.

- `none`: fusion order as is;
- `mmr`: maximal marginal relevance over the chunk vectors: trades a little relevance for
  diversity, which drops near-duplicates (old/new versions of a policy, repeated paragraphs);
- `cross-encoder:<path or hub id>`: a sentence-transformers `CrossEncoder` scoring (query, chunk).
No cross-encoder ships in a package here, so which one is the default is decided by `make bench`.
"""

from __future__ import annotations

import functools
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
    """`none`, `mmr` or `cross-encoder:<path or hub id>`."""
    if spec == "none":
        return FusionOrder()
    if spec == "mmr":
        return MMR(mmr_lambda)
    if spec.startswith("cross-encoder:"):
        return CrossEncoderReranker(spec.split(":", 1)[1])
    raise ValueError(f"unknown reranker {spec!r}: use none, mmr or cross-encoder:<path or hub id>")
