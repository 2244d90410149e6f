"""A small chunk table with public and restricted documents, shared by retrieval and answer tests."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pytest

from data_contracts.schemas import chunk_schema
from tasks.embed import HashEmbedder
from tasks.retrieve import Retriever
from tasks.store import ChunkStore

DIM = 64

DOCS = {
    "policies/travel.md": ("London hotels are capped at 185 pounds per night.", ["*"], "markdown", 1),
    "hr/salaries.md": ("The secret salary band for engineers is 91000 pounds per year.", ["hr"], "markdown", 400),
    "finance/board.pdf": ("Board pack: the acquisition of Ledgerly closes in March.", ["finance", "board"], "pdf", 10),
    "support/sla.html": ("Priority one tickets are answered within 30 minutes.", ["*"], "html", 2),
    "support/old-sla.html": ("Priority one tickets were answered within 60 minutes in 2024.", ["*"], "html", 900),
}


@pytest.fixture
def retriever(tmp_path, tokenizer):
    embedder = HashEmbedder(tokenizer, dimension=DIM)
    now = datetime.now(timezone.utc)
    rows = []
    for i, (doc_id, (text, groups, fmt, age_days)) in enumerate(DOCS.items()):
        rows.append(
            {
                "chunk_id": f"c{i}", "doc_id": doc_id, "source_root": "/r", "source_path": f"/r/{doc_id}", "title": doc_id,
                "format": fmt, "page": 1 if fmt == "pdf" else None, "heading_path": [], "ordinal": 0, "text": text,
                "token_count": 20, "text_hash": f"t{i}", "embed_hash": f"e{i}", "pipeline": "p", "groups": groups,
                "doc_modified_at": now - timedelta(days=age_days), "ingested_at": now,
                "vector": embedder.embed([text])[0].tolist(),
            }
        )
    store = ChunkStore(tmp_path / "db", "chunks")
    store.replace_documents(pa.Table.from_pylist(rows, schema=chunk_schema(DIM)), "/r", list(DOCS))
    store.maintain_indexes(ann_min_rows=10_000, ann_min_recall=0.9, keep_days=7)
    return Retriever(store.chunks, embedder, candidates=10)


