"""Embedders behind one small interface: the real sentence-transformers one and a deterministic fake.

Vectors are float32 and L2-normalised, so cosine similarity is a dot product.
"""

from __future__ import annotations

import hashlib
import re
from typing import Callable, Protocol, Sequence

import numpy as np

from tasks.chunk import HFTokenizer, Tokenizer


class Embedder(Protocol):
    fingerprint: str  # changes whenever the vectors would change
    dimension: int
    max_tokens: int  # word pieces the model reads, special tokens included
    tokenizer: Tokenizer

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Normalised float32 vectors, one row per text."""


class SentenceTransformerEmbedder:
    """Any sentence-transformers model; the packaged MiniLM by default (see `tasks/models.py`)."""

    def __init__(self, model: object, fingerprint: str, batch_size: int = 64, max_seq_length: int | None = None):
        self.model = model
        if max_seq_length is not None:
            # Never above what the model was trained for: past it positions are meaningless.
            model.max_seq_length = min(max_seq_length, model.max_seq_length)  # type: ignore[attr-defined]
        self.max_tokens = int(model.max_seq_length)  # type: ignore[attr-defined]
        self.dimension = int(model.get_embedding_dimension())  # type: ignore[attr-defined]
        self.batch_size = batch_size
        self.fingerprint = f"{fingerprint}|max={self.max_tokens}|norm"
        self.tokenizer = HFTokenizer(model.tokenizer)  # type: ignore[attr-defined]

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = self.model.encode(  # type: ignore[attr-defined]
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)


_WORD = re.compile(r"\w+")


class HashEmbedder:
    """Deterministic bag-of-words embedder for fast tests: texts sharing words get similar vectors.

    Uses hashlib (not `hash()`, which is salted per process) so vectors are stable across runs.
    """

    def __init__(self, tokenizer: Tokenizer, dimension: int = 64, max_tokens: int = 256):
        self.tokenizer = tokenizer
        self.dimension = dimension
        self.max_tokens = max_tokens
        self.fingerprint = f"hash-bow|dim={dimension}|max={max_tokens}"
        self.calls: list[int] = []  # batch sizes, so tests can count what was embedded

    def _vector(self, text: str) -> np.ndarray:
        v = np.zeros(self.dimension, dtype=np.float64)
        for word in _WORD.findall(text.lower()) or [""]:
            digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
            i = int.from_bytes(digest[:4], "little") % self.dimension
            v[i] += 1.0 if digest[4] & 1 else -1.0
        n = np.linalg.norm(v)
        if n == 0:
            v[0], n = 1.0, 1.0
        return (v / n).astype(np.float32)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(len(texts))
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return np.stack([self._vector(t) for t in texts])


def embed_in_batches(
    embedder: Embedder,
    texts: Sequence[str],
    batch_size: int = 256,
    on_progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Embed `texts` in batches, reporting progress after each; returns one row per text."""
    out = np.zeros((len(texts), embedder.dimension), dtype=np.float32)
    for start in range(0, len(texts), batch_size):
        batch = texts[start : start + batch_size]
        out[start : start + len(batch)] = embedder.embed(batch)
        if on_progress:
            on_progress(len(batch))
    return out
