"""What a ragtune home holds after a drill step, read as any reader would, and compared with clean runs.

A state is the chunk table (chunk_id -> doc_id, text, vector), its document ledger (doc_id -> status,
content hash, chunk count, reason, pipeline) and whether an embedding spool was left behind. Two states are the
same when chunk ids, texts and vectors are equal (vectors exactly: the hashing embedder is
deterministic) and the ledgers agree; timestamps are not compared.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class State:
    opens: bool
    error: str | None = None
    rows: int = 0
    duplicates: int = 0  # rows beyond the first for a chunk_id
    chunks: dict[str, tuple[str, str]] = field(default_factory=dict)  # chunk_id -> (doc_id, text)
    vectors: dict[str, bytes] = field(default_factory=dict)  # chunk_id -> float32 bytes
    ledger: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    spool_rows: int | None = None  # None: no spool table
    version: int | None = None
    searches: bool = False  # a vector search and (when indexed) a full-text search ran

    def summary(self) -> dict[str, Any]:
        return {
            "opens": self.opens, "error": self.error, "rows": self.rows, "duplicates": self.duplicates,
            "documents": sum(1 for v in self.ledger.values() if v[0] == "ingested"),
            "quarantined": sum(1 for v in self.ledger.values() if v[0] == "quarantined"),
            "spool_rows": self.spool_rows, "version": self.version, "searches": self.searches,
        }


def read_state(home: Path, source_root: Path, table: str = "chunks", lancedb_dir: Path | None = None) -> State:
    """Open the table and ledger under `home` (or `lancedb_dir`) like `ragtune status`/`search` would."""
    from tasks.store import ChunkStore

    try:
        store = ChunkStore(lancedb_dir or home / "lancedb", table)
        chunks = store.chunks
        if chunks is None:
            return State(opens=True, error="no chunk table")
        data = chunks.search().select(["chunk_id", "doc_id", "text", "vector"]).limit(None).to_arrow()
        state = State(opens=True, rows=data.num_rows, version=chunks.version)
        if chunks.count_rows() != data.num_rows:
            state.error = f"count_rows {chunks.count_rows()} != scanned rows {data.num_rows}"
        ids = data.column("chunk_id").to_pylist()
        state.duplicates = len(ids) - len(set(ids))
        dim = data.schema.field("vector").type.list_size
        flat = data.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False).astype(np.float32)
        vectors = flat.reshape(len(ids), dim) if ids else np.zeros((0, dim), np.float32)
        for cid, doc, text, vec in zip(ids, data.column("doc_id").to_pylist(), data.column("text").to_pylist(), vectors):
            state.chunks[cid] = (doc, text)
            state.vectors[cid] = vec.tobytes()
        # The table must answer queries, not only scan: a flat vector search, and FTS when it is indexed.
        if ids:
            chunks.search(vectors[0], vector_column_name="vector").limit(3).to_arrow()
            if any(tuple(i.columns) == ("text",) for i in chunks.list_indices()):
                chunks.search("the", query_type="fts").limit(3).to_arrow()
        state.searches = True
        ledger = store.ledger(str(source_root.resolve()))
        state.ledger = {d: (r["status"], r["content_hash"], r["chunk_count"], r["reason"], r["pipeline"]) for d, r in ledger.items()}
        spool = store._open(store.spool_name)
        state.spool_rows = spool.count_rows() if spool is not None else None
        return state
    except Exception as e:  # noqa: BLE001 - a table that does not open is exactly what a drill reports
        return State(opens=False, error=f"{type(e).__name__}: {e}")


def same_chunks(a: State, b: State) -> bool:
    return a.chunks == b.chunks


def same_vectors(a: State, b: State) -> bool:
    return a.vectors.keys() == b.vectors.keys() and all(a.vectors[k] == b.vectors[k] for k in a.vectors)


def same(a: State, b: State) -> bool:
    """Same chunk ids, texts, vectors and ledger."""
    return a.opens and b.opens and not a.duplicates and same_chunks(a, b) and same_vectors(a, b) and a.ledger == b.ledger


def classify(state: State, old: State, new: State) -> dict[str, Any]:
    """Is `state` the old one, the new one, or something else (chunks and ledger judged separately)?"""
    def which(x: Any, o: Any, n: Any) -> str:
        return "new" if x == n else "old" if x == o else "other"

    def which_ledger() -> str:
        found = which(state.ledger, old.ledger, new.ledger)
        if found != "other":
            return found
        # The flow marks the rows of the documents it is about to replace (pipeline "pending") before
        # the chunk commit; apart from that mark such a ledger is still the old one.
        strip = lambda rows: {d: v[:4] for d, v in rows.items()}  # noqa: E731
        return "old, marked pending" if strip(state.ledger) == strip(old.ledger) else "other"

    chunks = which(state.chunks, old.chunks, new.chunks) if state.opens else "unreadable"
    vectors_ok = state.opens and all(
        state.vectors[k] == (new.vectors.get(k) or old.vectors.get(k)) for k in state.vectors
    )
    ledger = which_ledger() if state.opens else "unreadable"
    return {
        "chunks": chunks,
        "ledger": ledger,
        "vectors_match": vectors_ok,
        "duplicates": state.duplicates,
        "spool_left": state.spool_rows is not None,
        "opens": state.opens and state.searches and state.error is None,
        "error": state.error,
    }


def difference(state: State, reference: State) -> dict[str, Any]:
    """What differs from the reference, for a report: chunk ids only on either side, documents involved."""
    extra = sorted(set(state.chunks) - set(reference.chunks))
    missing = sorted(set(reference.chunks) - set(state.chunks))
    docs = sorted({state.chunks[c][0] for c in extra} | {reference.chunks[c][0] for c in missing})
    ledger = sorted(d for d in set(state.ledger) | set(reference.ledger) if state.ledger.get(d) != reference.ledger.get(d))
    return {"extra_chunks": len(extra), "missing_chunks": len(missing), "documents": docs[:10], "ledger_rows_differ": ledger[:10]}
