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
    Column("attempts", pa.int32(), False, "Parses in a row that ended in a transient quarantine (timeout, memory_limit, crashed); null otherwise."),
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


# One row per training example (`ragtune dataset build`): what the LoRA recipe trains on, plus the
# derived columns its contract (`suites.training_suite`) checks. Saved as Arrow under datasets/.
MESSAGE_TYPE = pa.struct([pa.field("role", pa.string()), pa.field("content", pa.string())])
EXAMPLE_KINDS = ("instruction", "raft", "closed_book", "replay")
ROLES = ("system", "user", "assistant")

TRAINING_COLUMNS: tuple[Column, ...] = (
    Column("example_id", pa.string(), True, "sha256 of the example's messages: identical examples share an id."),
    Column("kind", pa.string(), True, "instruction (user data), raft (question + retrieved sources) or closed_book."),
    Column("origin", pa.string(), True, "Where the row came from: file and line."),
    Column("messages", pa.list_(MESSAGE_TYPE), True, "The chat: system/user turns, ending with the assistant's target."),
    Column("question", pa.string(), True, "The last user question (the sources stripped for RAFT rows)."),
    Column("answer", pa.string(), True, "The assistant target (last message)."),
    Column("split", pa.string(), True, "train or validation; paraphrases of one question share a split."),
    Column("group_key", pa.string(), True, "Rows sharing it (one question's variants, a paraphrase group) share a split."),
    Column("gold_answer", pa.string(), False, "RAFT: the gold answer the target states."),
    Column("has_oracle", pa.bool_(), False, "RAFT: whether the oracle chunk is among the sources (else the target abstains)."),
    Column("oracle_chunk_id", pa.string(), False, "RAFT: the chunk the answer comes from."),
    Column("oracle_text", pa.string(), False, "RAFT: that chunk's text."),
    Column("distractor_chunk_ids", pa.list_(pa.string()), False, "RAFT: retrieved chunks given as distractors (hard negatives)."),
    Column("table_version", pa.int64(), False, "RAFT: version of the chunk table the sources came from."),
    Column("source_readers", pa.list_(pa.string()), False,
           "RAFT: who may read each chunk in the row (its groups, comma-joined; '*' = everyone): the adapter's access record."),
    # Derived by the builder for the contract.
    Column("n_tokens", pa.int32(), True, "Tokens of the rendered chat with the generator's tokenizer."),
    Column("roles_ok", pa.bool_(), True, "Every turn has a known role and non-empty content, and the last is the assistant's."),
    Column("pii_found", pa.int32(), True, "PII matches in the row as given (emails, phones, cards, IBANs, national ids)."),
    Column("pii_remaining", pa.int32(), True, "PII matches left after redaction (0 unless the policy is reject)."),
    Column("eval_similarity", pa.float32(), True, "Highest cosine between the question and any evaluation question."),
    Column("duplicate_of", pa.string(), False, "example_id of an earlier identical row; null for the first."),
    Column("oracle_supported", pa.bool_(), False, "RAFT with oracle: the gold answer appears in the oracle chunk."),
)

SPLITS = ("train", "validation")


def training_schema() -> pa.Schema:
    """Arrow schema of a training dataset split."""
    return pa.schema([c.field() for c in TRAINING_COLUMNS])
