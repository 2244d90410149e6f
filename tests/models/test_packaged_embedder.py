"""The real packaged MiniLM through the ingest flow (the slower tier: `-m models`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tasks.config import PACKAGED_EMBEDDER
from tasks.models import load_embedder

pytestmark = pytest.mark.models

DEMO = Path(__file__).resolve().parents[2] / "demo" / "corpus"


@pytest.fixture(scope="module")
def minilm():
    return load_embedder(PACKAGED_EMBEDDER, threads=1)


def test_packaged_minilm_window_and_vectors(minilm):
    assert minilm.dimension == 384 and minilm.max_tokens == 256
    v = minilm.embed(["Refunds are issued within 14 days.", "How long do refunds take?", "The probe firmware is 3.2."])
    assert v.shape == (3, 384) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2]  # paraphrase closer than an unrelated sentence


def test_model_truncates_past_its_window_so_chunks_must_fit(minilm):
    # Two texts identical in their first 256 word pieces but not after get the same vector: the
    # model drops the rest silently. This is why the chunker counts every chunk exactly.
    base = "word " * 254
    a, b = minilm.embed([base + "alpha beta gamma", base + "delta epsilon zeta"])
    assert np.allclose(a, b, atol=1e-6), "the model is expected to truncate past its window"
    tokens = minilm.tokenizer.count([base])[0] + minilm.tokenizer.special_tokens
    assert tokens == minilm.max_tokens


def test_ingest_flow_with_real_minilm_retrieves_the_right_document(tmp_path, monkeypatch, prefect_engine):
    from flows.ingest import ingest
    from tasks.store import ChunkStore

    src = tmp_path / "src"
    src.mkdir()
    (src / "travel.md").write_text("# Travel\n\nHotel stays are reimbursed up to 180 EUR per night in Berlin.\n")
    (src / "support.txt").write_text("The support hotline opens at 08:00 CET on weekdays.\n")
    (src / "probe.html").write_text("<main><h1>Probe</h1><p>Hold the reset button for ten seconds.</p></main>")
    monkeypatch.setenv("RAGTUNE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RAGTUNE_TORCH_THREADS", "1")
    result = ingest(str(src))
    assert result["counts"]["added"] == 3 and result["embedder"].startswith(PACKAGED_EMBEDDER)
    table = ChunkStore(tmp_path / "home" / "lancedb", "chunks").chunks
    query = load_embedder(PACKAGED_EMBEDDER).embed(["How do I reset the probe?"])[0]
    top = table.search(query).distance_type("cosine").limit(1).to_list()[0]
    assert top["doc_id"] == "probe.html"


def test_packaged_generator_converts_once_and_loads_once(tmp_path_factory):
    import torch

    from tasks.config import PACKAGED_GENERATOR
    from tasks.models import generator_cache_dir, load_generator

    models_dir = tmp_path_factory.mktemp("models")
    model, tokenizer = load_generator(PACKAGED_GENERATOR, models_dir, threads=1)
    assert (generator_cache_dir(models_dir) / "model.safetensors").is_file()
    assert load_generator(PACKAGED_GENERATOR, models_dir)[0] is model  # once per process
    assert sum(p.numel() for p in model.parameters()) > 100_000_000
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Say hello."}], add_generation_prompt=True, tokenize=False
    )
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]
    assert tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def test_cross_encoder_reranker_from_packaged_minilm_weights():
    # No cross-encoder ships in a package: build one from the MiniLM weights (untrained head) to
    # exercise the real CrossEncoder plumbing end to end.
    from tasks.models import resolve_embedder
    from tasks.rerank import make_reranker
    from tasks.retrieve import Hit

    location = resolve_embedder(PACKAGED_EMBEDDER).location
    reranker = make_reranker(f"cross-encoder:{location}")
    hits = [
        Hit(f"c{i}", f"d{i}", "t", text, None, [], "/p", "text", ["*"], np.zeros(3, np.float32))
        for i, text in enumerate(["Refunds take 14 days.", "The office is in Leeds.", "Probes report every minute."])
    ]
    ranked = reranker.rerank("How long do refunds take?", hits, 2)
    assert len(ranked) == 2 and {h.chunk_id for h in ranked} <= {"c0", "c1", "c2"}
    assert ranked[0].score >= ranked[1].score
    assert reranker.name.startswith("cross-encoder:")
