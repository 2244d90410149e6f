"""The record every ingest run leaves behind (JSON under `$RAGTUNE_HOME/runs/` and a Prefect artifact)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field


class QuarantinedFile(BaseModel):
    doc_id: str
    reason: str  # a short code, e.g. encrypted, no_text, timeout, symlink_outside_root
    detail: str  # what is wrong and what to do


class IngestCounts(BaseModel):
    files_seen: int = 0
    added: int = 0  # new documents ingested
    updated: int = 0  # changed documents re-ingested
    unchanged: int = 0  # not parsed (same size/mtime or same content hash)
    deleted: int = 0  # gone from the source; their chunks removed
    quarantined: int = 0  # newly quarantined this run
    still_quarantined: int = 0  # quarantined before and unchanged since
    skipped: int = 0  # not read at all (symlinks leaving the root, unreadable)
    chunks_written: int = 0  # rows upserted into the chunk table
    chunks_embedded: int = 0  # texts actually sent to the embedder
    chunks_reused: int = 0  # vectors reused by text hash + embedder fingerprint
    chunks_before: int = 0  # rows in the chunk table before the run wrote (read under the writer lock)
    chunks_total: int = 0  # rows in the chunk table after the run


class IngestManifest(BaseModel):
    run_id: str
    flow_run_id: str | None = None
    status: Literal["completed", "failed"] = "completed"
    error: str | None = None
    failed_stage: str | None = None  # the stage that raised (discover, parse_chunk, embed, validate, write, index)
    table: str
    source_root: str
    started_at: datetime
    finished_at: datetime | None = None
    pipeline: str = ""  # fingerprint of parser + chunker + embedder settings
    embedder: str = ""
    counts: IngestCounts = Field(default_factory=IngestCounts)
    quarantine: list[QuarantinedFile] = Field(default_factory=list)
    chunk_table_version: int | None = None
    ledger_version: int | None = None
    timings: dict[str, float] = Field(default_factory=dict)  # seconds per stage
    index: dict[str, Any] = Field(default_factory=dict)
    validation: list[dict[str, Any]] = Field(default_factory=list)
