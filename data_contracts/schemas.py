"""Every table ragtune stores, declared once.

The Arrow schemas here are what LanceDB stores, what the Great Expectations suites
(`data_contracts/suites.py`) are derived from, and what the tests check against.
Each column has a description so `ragtune status` and the docs can explain it.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    required: bool
    description: str

    def field(self) -> pa.Field:
        return pa.field(self.name, self.type, nullable=not self.required)


_TS = pa.timestamp("us", tz="UTC")

# The group of chunks everyone may read. A sentinel rather than an empty list, so the access check
# is one `array_has_any` that a LabelList index answers (an `array_length` test scans the column).
PUBLIC_GROUP = "*"

# One row per chunk: the retrieval table. `vector` is appended by `chunk_schema(dim)`.
CHUNK_COLUMNS: tuple[Column, ...] = (
    Column("chunk_id", pa.string(), True, "Deterministic id: hash of source root, doc_id, chunk text and its occurrence."),
    Column("doc_id", pa.string(), True, "Path of the document relative to its source root (forward slashes)."),
    Column("source_root", pa.string(), True, "Absolute path of the ingested source directory."),
    Column("source_path", pa.string(), True, "Absolute path of the document when it was ingested."),
    Column("title", pa.string(), True, "Document title (metadata, <title>, first heading or file name)."),
    Column("format", pa.string(), True, "pdf, html, markdown, text or docx."),
    Column("page", pa.int32(), False, "1-based page number for PDFs; null for formats without pages."),
    Column("heading_path", pa.list_(pa.string()), True, "Headings above the chunk, outermost first."),
    Column("ordinal", pa.int32(), True, "Position of the chunk within its document, from 0."),
    Column("text", pa.string(), True, "The chunk text as shown to users and indexed for full-text search."),
    Column("token_count", pa.int32(), True, "Embedder word pieces of the embedded text (context + chunk, with special tokens)."),
    Column("text_hash", pa.string(), True, "sha256 of the chunk text."),
    Column("embed_hash", pa.string(), True, "sha256 of embedder fingerprint + embedded text: the key for embedding reuse."),
    Column("pipeline", pa.string(), True, "Fingerprint of parser + chunker + embedder settings that produced the chunk."),
    Column("groups", pa.list_(pa.string()), True, f"Access groups allowed to read the chunk; [{PUBLIC_GROUP!r}] = everyone."),
    Column("doc_modified_at", _TS, True, "Modification time of the document file."),
    Column("ingested_at", _TS, True, "When this chunk row was written."),
)

# One row per file seen under a source root: the ledger that makes reruns incremental.
DOCUMENT_COLUMNS: tuple[Column, ...] = (
    Column("doc_id", pa.string(), True, "Path of the document relative to its source root (forward slashes)."),
    Column("source_root", pa.string(), True, "Absolute path of the ingested source directory."),
    Column("source_path", pa.string(), True, "Absolute path of the file."),
    Column("title", pa.string(), False, "Document title; null when the file was quarantined before parsing."),
    Column("format", pa.string(), False, "Detected format; null when unsupported."),
    Column("status", pa.string(), True, "ingested or quarantined."),
    Column("reason", pa.string(), False, "Quarantine reason code (e.g. encrypted, no_text); null when ingested."),
    Column("detail", pa.string(), False, "What is wrong with the file and what to do about it."),
    Column("modified_at", _TS, True, "File modification time."),
    Column("mtime_ns", pa.int64(), True, "File modification time in ns, for the cheap unchanged check."),
    Column("byte_size", pa.int64(), True, "File size in bytes."),
    Column("content_hash", pa.string(), True, "sha256 of the file bytes."),
    Column("pages", pa.int32(), False, "Number of pages (PDF) or null."),
    Column("chunk_count", pa.int32(), True, "Chunks of this document currently in the chunk table."),
    Column("pipeline", pa.string(), True, "Fingerprint of the settings the file was last processed with."),
    Column("ingested_at", _TS, True, "When this ledger row was written."),
)

DOCUMENT_STATUSES = ("ingested", "quarantined")
FORMATS = ("pdf", "html", "markdown", "text", "docx")


def chunk_schema(dimension: int) -> pa.Schema:
    """Arrow schema of the chunk table for an embedder of `dimension`."""
    fields = [c.field() for c in CHUNK_COLUMNS]
    fields.append(pa.field("vector", pa.list_(pa.float32(), dimension), nullable=False))
    return pa.schema(fields)


def document_schema() -> pa.Schema:
    """Arrow schema of the document ledger."""
    return pa.schema([c.field() for c in DOCUMENT_COLUMNS])


def vector_dimension(schema: pa.Schema) -> int:
    """Dimension of the `vector` column of a stored chunk table."""
    return schema.field("vector").type.list_size
