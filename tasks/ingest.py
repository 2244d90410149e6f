"""The ingestion stages as plain functions: parse → chunk → vectors → rows.

`flows/ingest.py` only wires these together; every function here runs and tests without Prefect.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from data_contracts.manifest import IngestManifest, QuarantinedFile
from data_contracts.schemas import PUBLIC_GROUP, chunk_schema, document_schema
from tasks import parse as parse_module
from tasks.access import AccessConflict, AccessPolicy
from tasks.chunk import Chunk, chunk_document, chunk_ids, sha256
from tasks.config import Settings
from tasks.embed import Embedder, embed_in_batches
from tasks.progress import Advance
from tasks.sandbox import ParseLimits, parse_many
from tasks.sources import SourceFile, attempts_note, transient_attempts
from tasks.store import ChunkStore


@dataclass
class DocumentResult:
    """One file after parsing and chunking: chunks, or a quarantine reason."""

    file: SourceFile
    content_hash: str
    title: str | None = None
    format: str | None = None
    pages: int | None = None
    chunks: list[Chunk] = field(default_factory=list)
    reason: str | None = None
    detail: str | None = None
    parse_seconds: float = 0.0
    groups: list[str] = field(default_factory=lambda: [PUBLIC_GROUP])  # set by `apply_access`

    @property
    def ok(self) -> bool:
        return self.reason is None


def pipeline_fingerprint(settings: Settings, embedder_fingerprint: str, max_tokens: int) -> str:
    """Changes whenever re-processing could change a chunk: parser, chunker, embedder, limits, groups."""
    ingest = settings.ingest
    return sha256(
        f"parser={getattr(parse_module, 'PARSER_VERSION', '1')}",
        f"chunk={settings.chunking.model_dump_json()}",
        f"embedder={embedder_fingerprint}|max={max_tokens}",
        f"limits={ingest.parse_timeout_s}|{ingest.parse_memory_mb}|{ingest.max_file_mb}|{ingest.max_text_chars}",
        f"password={'set' if ingest.pdf_password else 'none'}",
        f"groups={access_policy(settings).fingerprint()}",
    )[:16]


def parse_limits(settings: Settings) -> ParseLimits:
    ingest = settings.ingest
    return ParseLimits(
        timeout_s=ingest.parse_timeout_s,
        memory_mb=ingest.parse_memory_mb,
        max_bytes=int(ingest.max_file_mb * 2**20),
        max_chars=ingest.max_text_chars,
        pdf_password=ingest.pdf_password.get_secret_value() if ingest.pdf_password else None,
    )


def parsed_documents(
    files: Sequence[tuple[SourceFile, str]],
    embedder: Embedder,
    settings: Settings,
    on_progress: Advance | None = None,
) -> list[DocumentResult]:
    """Parse (sandboxed) and chunk a group of files; bad files come back quarantined, never raised."""
    by_path = {f.path: (f, digest) for f, digest in files}
    results: list[DocumentResult] = []
    chunking = settings.chunking
    for outcome in parse_many([f.path for f, _ in files], parse_limits(settings), workers=settings.ingest.parse_workers):
        f, digest = by_path[outcome.path]
        result = DocumentResult(file=f, content_hash=digest, parse_seconds=outcome.seconds)
        doc = outcome.document
        if doc is None:
            result.reason, result.detail = outcome.reason or "unreadable", outcome.detail or "the parser failed"
        else:
            result.title, result.format = doc.title, doc.format
            pages = [s.page for s in doc.sections if s.page is not None]
            result.pages = max(pages) if pages else None
            result.chunks = chunk_document(
                doc,
                embedder.tokenizer,
                size=chunking.size,
                overlap=chunking.overlap,
                max_tokens=embedder.max_tokens,
                context_max_tokens=chunking.context_max_tokens,
            )
            if not result.chunks:
                result.reason, result.detail = "no_text", "the file has no extractable text"
        results.append(result)
        if on_progress:
            on_progress(1)
    return results


def embed_hashes(embedder: Embedder, chunks: Sequence[Chunk]) -> list[str]:
    return [sha256(embedder.fingerprint, c.embed_text) for c in chunks]


@dataclass
class Vectors:
    """Vectors by embed hash, and the texts still to embed (unique, by hash)."""

    by_hash: dict[str, np.ndarray]
    todo: dict[str, str]
    reused: int  # chunks whose vector was already stored
    tokens: dict[str, int] = field(default_factory=dict)  # word pieces per text still to embed


def stored_vectors(chunks: Sequence[Chunk], embedder: Embedder, store: ChunkStore) -> Vectors:
    """Reuse vectors by text hash + embedder fingerprint: committed chunks, or the spool of a crashed run."""
    hashes = embed_hashes(embedder, chunks)
    by_hash = store.vectors_for(hashes)
    todo = {h: c.embed_text for h, c in zip(hashes, chunks) if h not in by_hash}
    tokens = {h: c.token_count for h, c in zip(hashes, chunks) if h in todo}
    return Vectors(by_hash=by_hash, todo=todo, reused=sum(1 for h in hashes if h in by_hash), tokens=tokens)


def embed_missing(
    vectors: Vectors,
    embedder: Embedder,
    store: ChunkStore,
    batch_size: int = 256,
    on_progress: Advance | None = None,
) -> int:
    """Embed the texts in `vectors.todo`; returns how many were embedded.

    Each batch is spooled to the store before the next, so a crash loses at most one batch and
    the rerun resumes where this one stopped.
    """
    parts = embedding_batches(vectors, batch_size)
    for part in parts:
        keep_vectors(vectors, store, part, embed_in_batches(embedder, [vectors.todo[h] for h in part], batch_size=batch_size))
        if on_progress:
            on_progress(len(part))
    return sum(len(p) for p in parts)


def embedding_batches(vectors: Vectors, batch_size: int) -> list[list[str]]:
    """The hashes still to embed, in batches of `batch_size`: the unit that is embedded and spooled."""
    # Longest first, by word pieces: each model batch then holds texts of nearly equal length, so
    # little compute goes to padding (sentence-transformers only sorts by characters within a call).
    keys = sorted(vectors.todo, key=lambda h: -vectors.tokens.get(h, 0))
    return [keys[start : start + batch_size] for start in range(0, len(keys), batch_size)]


def keep_vectors(vectors: Vectors, store: ChunkStore, part: Sequence[str], embedded: np.ndarray) -> None:
    """Spool one embedded batch, then remember its vectors: a crash loses only batches not yet spooled."""
    store.spool(list(part), embedded)
    vectors.by_hash.update(zip(part, embedded))


def access_policy(settings: Settings) -> AccessPolicy:
    """The configured access policy; raises `AccessError` when relative globs have no anchor."""
    return AccessPolicy.from_settings(settings.ingest.access_groups, settings.ingest.access_root)


def apply_access(results: Sequence[DocumentResult], policy: AccessPolicy) -> None:
    """Give each parsed document its groups (`tasks/access.py`); a document whose names carry groups
    with no reader in common is quarantined (`access_conflict`) rather than guessed."""
    for r in results:
        if not r.ok:
            continue
        try:
            r.groups = policy.groups_for(r.file.path)
        except AccessConflict as e:
            r.reason, r.detail, r.chunks = "access_conflict", str(e), []


def stale_access(
    results: Sequence[DocumentResult], previous: dict[str, dict[str, Any]], store: ChunkStore, source_root: str, policy: AccessPolicy
) -> list[str]:
    """Quarantined documents whose last good chunks (kept searchable) carry other groups than the policy
    now gives them: those chunks must be withdrawn, or a tightened policy would not reach them."""
    kept = [r for r in results if not r.ok and int((previous.get(r.file.doc_id) or {}).get("chunk_count") or 0)]
    stored = store.groups_of(source_root, [r.file.doc_id for r in kept])
    stale = []
    for r in kept:
        try:
            wanted = {tuple(policy.groups_for(r.file.path))}
        except AccessConflict:
            wanted = set()
        if stored.get(r.file.doc_id, wanted) != wanted:
            stale.append(r.file.doc_id)
    return stale


def _ts(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, tz=timezone.utc)


def chunk_rows(
    results: Sequence[DocumentResult],
    vectors: Vectors,
    embedder: Embedder,
    source_root: str,
    pipeline: str,
) -> pa.Table:
    """Arrow rows for the chunk table, in its declared schema."""
    now = datetime.now(timezone.utc)
    columns: dict[str, list[Any]] = {name: [] for name in chunk_schema(embedder.dimension).names}
    for r in results:
        if not r.ok:
            continue
        hashes = embed_hashes(embedder, r.chunks)
        for chunk, cid, h in zip(r.chunks, chunk_ids(source_root, r.file.doc_id, r.chunks), hashes):
            columns["chunk_id"].append(cid)
            columns["doc_id"].append(r.file.doc_id)
            columns["source_root"].append(source_root)
            columns["source_path"].append(str(r.file.path))
            columns["title"].append(r.title or r.file.path.stem)
            columns["format"].append(r.format)
            columns["page"].append(chunk.page)
            columns["heading_path"].append(list(chunk.heading_path))
            columns["ordinal"].append(chunk.ordinal)
            columns["text"].append(chunk.text)
            columns["token_count"].append(chunk.token_count)
            columns["text_hash"].append(sha256(chunk.text))
            columns["embed_hash"].append(h)
            columns["pipeline"].append(pipeline)
            columns["groups"].append(r.groups)
            columns["doc_modified_at"].append(_ts(r.file.mtime_ns))
            columns["ingested_at"].append(now)
            columns["vector"].append(vectors.by_hash[h])
    schema = chunk_schema(embedder.dimension)
    dim = embedder.dimension
    flat = np.concatenate(columns.pop("vector")).astype(np.float32) if columns["chunk_id"] else np.zeros(0, np.float32)
    arrays = [pa.array(columns[f.name], type=f.type) for f in schema if f.name != "vector"]
    arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), dim))
    return pa.Table.from_arrays(arrays, schema=schema)


def quarantine_detail(r: DocumentResult, prev: dict[str, Any] | None, pipeline: str) -> tuple[int | None, str | None]:
    """A quarantined document's transient-failure count (None: not transient) and its detail with what
    that means for retries; the ledger and the run manifest say the same."""
    attempts = transient_attempts(r.reason, prev, r.content_hash, pipeline)
    return attempts, (r.detail or "") + attempts_note(attempts) if attempts else r.detail


def ledger_rows(
    results: Sequence[DocumentResult],
    touched: Sequence[tuple[SourceFile, str]],
    previous: dict[str, dict[str, Any]],
    source_root: str,
    pipeline: str,
) -> pa.Table:
    """Ledger rows for every file this run looked at: parsed, quarantined, or only touched.

    A changed file that is now quarantined keeps its previous chunks (the last good version stays
    searchable) and its chunk count says so. A transient quarantine records how many times in a
    row it happened, so `tasks.sources.plan` retries it a bounded number of times.
    """
    now = datetime.now(timezone.utc)
    rows: list[dict[str, Any]] = []
    for r in results:
        prev = previous.get(r.file.doc_id) or {}
        attempts, detail = quarantine_detail(r, prev, pipeline)
        rows.append(
            {
                "doc_id": r.file.doc_id,
                "source_root": source_root,
                "source_path": str(r.file.path),
                "title": r.title if r.ok else prev.get("title"),
                "format": r.format if r.ok else prev.get("format"),
                "status": "ingested" if r.ok else "quarantined",
                "reason": r.reason,
                "detail": detail,
                "attempts": attempts,
                "modified_at": _ts(r.file.mtime_ns),
                "mtime_ns": r.file.mtime_ns,
                "byte_size": r.file.size,
                "content_hash": r.content_hash,
                "pages": r.pages if r.ok else prev.get("pages"),
                "chunk_count": len(r.chunks) if r.ok else int(prev.get("chunk_count") or 0),
                "pipeline": pipeline,
                "ingested_at": now,
            }
        )
    for f, digest in touched:
        prev = dict(previous[f.doc_id])
        prev.update(modified_at=_ts(f.mtime_ns), mtime_ns=f.mtime_ns, byte_size=f.size, content_hash=digest, ingested_at=now)
        rows.append(prev)
    return pa.Table.from_pylist(rows, schema=document_schema())


# The ledger's pipeline while a run replaces a document's chunks: it matches no fingerprint, so a run
# that stops between the chunk commit and the ledger commit leaves these documents to be parsed again.
PENDING = "pending"


def pending_ledger_rows(results: Sequence[DocumentResult], previous: dict[str, dict[str, Any]], source_root: str) -> pa.Table:
    """Ledger rows marking the documents whose new chunks are about to be committed (written before them).

    The chunk table and the ledger are two commits. Without the mark, a crash between them leaves the
    new chunks under the old ledger row (a file reverted to its old content is then taken as unchanged
    and never re-parsed) or under no row at all (a new file removed afterwards is never deleted). With
    it, the next run re-parses each of them, or deletes its chunks when the file is gone.
    """
    return ledger_rows([r for r in results if r.ok], [], previous, source_root, PENDING)


def tally(results: Sequence[DocumentResult], previous: dict[str, dict[str, Any]], manifest: IngestManifest) -> None:
    """Count parsed documents as added, updated or quarantined in the run manifest.

    A document with no chunks before (it was only ever quarantined, e.g. a retried timeout) is added.
    """
    for r in results:
        prev = previous.get(r.file.doc_id)
        if r.ok:
            new = not (prev or {}).get("chunk_count")
            manifest.counts.added += new
            manifest.counts.updated += not new
        else:
            _, detail = quarantine_detail(r, prev, manifest.pipeline)
            manifest.counts.quarantined += 1
            manifest.quarantine.append(QuarantinedFile(doc_id=r.file.doc_id, reason=r.reason or "", detail=detail or ""))


class Timer:
    """Accumulates seconds per stage for the run manifest."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.failed: str | None = None  # the stage an exception left through

    def __call__(self, stage: str) -> "_Stage":
        return _Stage(self, stage)


class _Stage:
    def __init__(self, timer: Timer, stage: str):
        self.timer, self.stage = timer, stage

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.timer.seconds[self.stage] = self.timer.seconds.get(self.stage, 0.0) + time.perf_counter() - self.start
        if exc_type is not None and self.timer.failed is None:
            self.timer.failed = self.stage
