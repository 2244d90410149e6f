"""Hybrid retrieval over the chunk table: dense + native full-text (BM25), fused, filtered, access-checked.

Access control is enforced inside each search as a prefilter (`where(..., prefilter=True)`), never
after ranking: a chunk outside the caller's groups is never a candidate, so it cannot be returned,
cited, or used to answer. A chunk whose groups include `PUBLIC_GROUP` is readable by everyone.
"""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal, Sequence

import numpy as np

from data_contracts.schemas import PUBLIC_GROUP
from tasks.embed import Embedder
from tasks.store import dense_search, sql_str

Fusion = Literal["rrf", "weighted", "dense", "fts"]

_COLUMNS = [
    "chunk_id", "doc_id", "title", "text", "page", "heading_path", "source_path", "format", "groups", "doc_modified_at", "vector",
]

# Question words and fillers that carry no retrieval signal for BM25. The index already drops
# English stop words; these are the interrogative leftovers it keeps.
_QUERY_FILLERS = frozenset(
    "what which who whom whose when where why how does do did is are was were can could should would will "
    "please tell me about explain describe the a an of for to in on at by with i we our my velmora".split()
)
_TOKEN = re.compile(r"[£$€]?\w+(?:[.,:/'-]\w+)*%?", re.UNICODE)


@dataclass(frozen=True)
class SearchFilters:
    """Metadata filters; `groups` are the caller's access groups."""

    path_prefix: str | None = None  # doc_id prefix, e.g. "policies/"
    formats: tuple[str, ...] = ()
    modified_since: datetime | None = None
    groups: tuple[str, ...] = ()

    def where(self) -> str:
        """The SQL prefilter: access clause always, metadata clauses when set."""
        clauses = [access_clause(self.groups)]
        if self.path_prefix:
            clauses.append(f"starts_with(doc_id, {sql_str(self.path_prefix)})")
        if self.formats:
            clauses.append(f"format IN ({', '.join(sql_str(f) for f in self.formats)})")
        if self.modified_since:
            clauses.append(f"doc_modified_at >= TIMESTAMP {sql_str(self.modified_since.strftime('%Y-%m-%d %H:%M:%S'))}")
        return " AND ".join(clauses)


def access_clause(groups: Sequence[str]) -> str:
    """Chunks readable by a caller in `groups`: public ones, or ones sharing a group."""
    names = [PUBLIC_GROUP] + sorted({g.strip() for g in groups if g.strip()} - {PUBLIC_GROUP})
    return f"array_has_any(groups, make_array({', '.join(sql_str(g) for g in names)}))"


@dataclass
class Hit:
    chunk_id: str
    doc_id: str
    title: str
    text: str
    page: int | None
    heading_path: list[str]
    source_path: str
    format: str
    groups: list[str]
    vector: np.ndarray
    modified: datetime | None = None
    score: float = 0.0  # the final ranking score (fusion or reranker)
    dense: float | None = None  # cosine similarity
    lexical: float | None = None  # BM25 score
    dense_rank: int | None = None
    lexical_rank: int | None = None

    def public(self) -> dict[str, Any]:
        """JSON-friendly view without the vector."""
        return {k: v for k, v in self.__dict__.items() if k != "vector"}


def fts_query(question: str) -> str:
    """Normalise a question for the full-text side: keep words and numbers, drop question fillers."""
    tokens = [t for t in _TOKEN.findall(question) if t.lower() not in _QUERY_FILLERS]
    return " ".join(tokens) or question.strip()


def _hits(rows: Any) -> list[Hit]:
    """Hits from an Arrow result, column-wise (converting 384-float vectors row by row is slow)."""
    if rows.num_rows == 0:
        return []
    cols = {name: rows.column(name).to_pylist() for name in _COLUMNS if name != "vector"}
    dim = rows.schema.field("vector").type.list_size
    vectors = rows.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
    return [
        Hit(
            chunk_id=cols["chunk_id"][i], doc_id=cols["doc_id"][i], title=cols["title"][i], text=cols["text"][i],
            page=cols["page"][i], heading_path=list(cols["heading_path"][i] or []), source_path=cols["source_path"][i],
            format=cols["format"][i], groups=list(cols["groups"][i] or []), vector=vectors[i].astype(np.float32),
            modified=cols["doc_modified_at"][i],
        )
        for i in range(rows.num_rows)
    ]


def rrf(rankings: Sequence[Sequence[str]], k: int = 60) -> dict[str, float]:
    """Reciprocal rank fusion: sum of 1 / (k + rank) over the rankings each id appears in (rank from 1)."""
    scores: dict[str, float] = {}
    for ranking in rankings:
        for rank, key in enumerate(ranking, start=1):
            scores[key] = scores.get(key, 0.0) + 1.0 / (k + rank)
    return scores


def weighted(dense: dict[str, float], lexical: dict[str, float], dense_weight: float) -> dict[str, float]:
    """Convex combination of min-max normalised dense and BM25 scores (missing = 0)."""

    def norm(scores: dict[str, float]) -> dict[str, float]:
        if not scores:
            return {}
        lo, hi = min(scores.values()), max(scores.values())
        return {k: (v - lo) / (hi - lo) if hi > lo else 1.0 for k, v in scores.items()}

    d, b = norm(dense), norm(lexical)
    return {k: dense_weight * d.get(k, 0.0) + (1 - dense_weight) * b.get(k, 0.0) for k in set(d) | set(b)}


def fuse(dense: list[Hit], lexical: list[Hit], fusion: Fusion = "rrf", rrf_k: int = 60, dense_weight: float = 0.5) -> list[Hit]:
    """One ranking from the dense and full-text candidate lists; each hit keeps both sides' scores."""
    by_id: dict[str, Hit] = {}
    for h in dense + lexical:
        seen = by_id.get(h.chunk_id)
        if seen is None:
            by_id[h.chunk_id] = replace(h)
        else:  # the same chunk from both sides
            seen.lexical = seen.lexical if seen.lexical is not None else h.lexical
            seen.lexical_rank = seen.lexical_rank or h.lexical_rank
    if fusion == "dense" or not lexical:
        scores = {h.chunk_id: h.dense or 0.0 for h in dense}
    elif fusion == "fts" or not dense:
        scores = {h.chunk_id: h.lexical or 0.0 for h in lexical}
    elif fusion == "weighted":
        scores = weighted({h.chunk_id: h.dense or 0.0 for h in dense}, {h.chunk_id: h.lexical or 0.0 for h in lexical}, dense_weight)
    else:
        scores = rrf([[h.chunk_id for h in dense], [h.chunk_id for h in lexical]], rrf_k)
    fused = sorted((h for h in by_id.values() if h.chunk_id in scores), key=lambda h: (-scores[h.chunk_id], h.chunk_id))
    for h in fused:
        h.score = scores[h.chunk_id]
    return fused


@dataclass
class SearchResult:
    hits: list[Hit]
    timings: dict[str, float] = field(default_factory=dict)
    fts_query: str = ""


class Retriever:
    """Searches one chunk table with one embedder; open once, query many times."""

    def __init__(
        self,
        table: Any,
        embedder: Embedder,
        fusion: Fusion = "weighted",
        candidates: int = 50,
        rrf_k: int = 60,
        dense_weight: float = 0.4,
    ):
        self.table, self.embedder = table, embedder
        self.fusion, self.candidates, self.rrf_k, self.dense_weight = fusion, candidates, rrf_k, dense_weight
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dense-search")

    def dense(self, vector: np.ndarray, where: str, limit: int) -> list[Hit]:
        rows = (
            dense_search(self.table, vector)
            .where(where, prefilter=True)
            .select(_COLUMNS + ["_distance"])
            .limit(limit)
            .to_arrow()
        )
        hits = _hits(rows)
        for rank, (h, d) in enumerate(zip(hits, rows.column("_distance").to_pylist() if hits else []), start=1):
            h.dense, h.dense_rank = 1.0 - float(d), rank
        return hits

    def lexical(self, query: str, where: str, limit: int) -> list[Hit]:
        if not query.strip():
            return []
        rows = (
            self.table.search(query, query_type="fts", fts_columns="text")
            .where(where, prefilter=True)
            .select(_COLUMNS + ["_score"])
            .limit(limit)
            .to_arrow()
        )
        hits = _hits(rows)
        for rank, (h, score) in enumerate(zip(hits, rows.column("_score").to_pylist() if hits else []), start=1):
            h.lexical, h.lexical_rank = float(score), rank
        return hits

    def search(self, question: str, k: int = 5, filters: SearchFilters | None = None, vector: np.ndarray | None = None) -> SearchResult:
        """The top `k` chunks for `question`, fused from both sides' top `candidates`."""
        filters = filters or SearchFilters()
        where = filters.where()
        timings: dict[str, float] = {}
        start = time.perf_counter()
        query = fts_query(question)
        timings["rewrite"] = time.perf_counter() - start
        start = time.perf_counter()
        if vector is None and self.fusion != "fts":
            vector = self.embedder.embed([question])[0]
        timings["embed"] = time.perf_counter() - start
        start = time.perf_counter()
        depth = max(self.candidates, k)
        # Both sides at once: LanceDB releases the GIL, so latency is the slower side, not the sum.
        dense_side = self._pool.submit(self.dense, vector, where, depth) if self.fusion != "fts" else None
        lexical = self.lexical(query, where, depth) if self.fusion != "dense" else []
        dense = dense_side.result() if dense_side else []
        hits = fuse(dense, lexical, self.fusion, self.rrf_k, self.dense_weight)[:k]
        timings["search"] = time.perf_counter() - start
        return SearchResult(hits=hits, timings=timings, fts_query=query)

    def search_many(self, questions: Sequence[str], k: int = 5, filters: SearchFilters | None = None) -> list[SearchResult]:
        """Search many questions with one batched embedding call (its time shared equally)."""
        start = time.perf_counter()
        vectors = self.embedder.embed(list(questions)) if self.fusion != "fts" and questions else [None] * len(questions)
        embed = (time.perf_counter() - start) / max(1, len(questions))
        results = [self.search(q, k, filters, vector=v) for q, v in zip(questions, vectors)]
        for r in results:
            r.timings["embed"] = embed
        return results

