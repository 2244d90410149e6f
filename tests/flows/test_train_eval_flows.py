"""Retraining, the arena and the nightly chain through the real Prefect engine, with tiny models:
the hashing embedder, a random 2-layer llama with SmolLM2's tokenizer, a real LanceDB table, real GX."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_contracts.evaluation import EvalRun
from flows.evaluate import evaluate
from flows.ingest import ingest
from flows.nightly import NightlyStepFailed, nightly
from flows.retrain import retrain
from tasks.config import load_settings
from tasks.registry import Registry

DOCS = {
    "travel.md": "# Travel policy\n\n## Hotels\n\nHotels in London are capped at 185 pounds per night.\n\n"
    "## Meals\n\nThe daily meal allowance is 50 pounds.\n",
    "sla.md": "# Support SLA\n\nPriority one tickets get a first response within 30 minutes.\n\n"
    "Priority two tickets get a first response within 4 hours.\n",
    "api.md": "# API guide\n\nThe REST API allows 1000 requests per minute per account.\n\n"
    "Requests above the limit get HTTP 429.\n",
}
TRAIN = [
    ("What is the London hotel cap?", ["185 pounds"]),
    ("How much is the daily meal allowance?", ["50 pounds"]),
    ("How fast is a first response to a priority one ticket?", ["30 minutes"]),
    ("What is the API rate limit per account?", ["1000 requests per minute"]),
    ("Who founded the company?", []),
]
TEST = [
    ("What response time do priority two tickets get?", ["4 hours"], ["sla.md"]),
    ("What status code do requests over the limit get?", ["HTTP 429", "429"], ["api.md"]),
    ("What is the office dress code?", [], []),
]


def _write(tmp_path: Path) -> Path:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name, text in DOCS.items():
        (corpus / name).write_text(text)
    rows = [{"id": f"t{i}", "question": q, "answers": a, "answerable": bool(a), "split": "train"} for i, (q, a) in enumerate(TRAIN)]
    rows += [
        {"id": f"e{i}", "question": q, "answers": a, "gold_docs": g, "answerable": bool(a), "split": "test"}
        for i, (q, a, g) in enumerate(TEST)
    ]
    (tmp_path / "qa.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "ragtune.toml").write_text(
        f"""
[dataset]
qa_pairs = "{tmp_path / 'qa.jsonl'}"
validation_share = 0.3
[training]
batch_size = 2
grad_accum = 1
eval_every = 1
checkpoint_every = 1
max_steps = 2
[evaluation]
path = "{tmp_path / 'qa.jsonl'}"
resamples = 200
"""
    )
    return corpus


@pytest.fixture
def setup(home, tmp_path, tiny_llama, monkeypatch):
    monkeypatch.setenv("RAGTUNE_GENERATOR__MODEL", str(tiny_llama))
    monkeypatch.setenv("RAGTUNE_GENERATOR__MAX_NEW_TOKENS", "8")
    monkeypatch.setenv("RAGTUNE_TORCH_THREADS", "1")
    corpus = _write(tmp_path)
    return corpus, str(tmp_path / "ragtune.toml")


def test_retrain_trains_once_then_skips_until_the_data_changes(setup, tmp_path):
    corpus, config = setup
    ingest(str(corpus), config_file=config)
    first = retrain(config_file=config)
    assert first["trained"] and first["reason"] == "no adapter yet"
    adapter = first["adapter"]
    assert adapter["status"] == "candidate" and adapter["training"]["steps"] == 2
    meta = json.loads((Path(adapter["path"]) / "metadata.json").read_text())
    for key in ("base_model", "dataset_hash", "dataset_size", "table_version", "recipe", "train_loss", "val_loss",
                "wall_s", "tokens_per_s", "created_at", "code_version"):
        assert meta[key] is not None, key
    assert meta["dataset_hash"] == first["dataset"]["hash"]

    again = retrain(config_file=config)
    assert not again["trained"] and "unchanged since adapter" in again["reason"] and again["adapter"] is None

    with open(tmp_path / "qa.jsonl", "a") as f:
        f.write(json.dumps({"id": "t9", "question": "What do requests over the limit get?", "answers": ["HTTP 429"], "split": "train"}) + "\n")
    changed = retrain(config_file=config)
    assert changed["trained"] and changed["reason"].startswith("dataset changed")
    assert len(Registry(tmp_path / "home" / "adapters", tmp_path / "home" / "locks").adapters()) == 2


def test_arena_runs_every_arm_gates_the_candidate_and_writes_the_report(setup, tmp_path):
    corpus, config = setup
    ingest(str(corpus), config_file=config)
    trained = retrain(config_file=config)["adapter"]["name"]

    # A limited run is a smoke run: the same N bounds the questions, the calibration rows drafted and the
    # canary; it reports the gate's verdict without acting on it and saves no calibration.
    smoke = evaluate(limit=2, config_file=config)
    small = EvalRun.model_validate_json(Path(smoke["results"]).read_text())
    assert small.questions == 2 and {a.questions for a in small.arms} == {2} and small.settings["limit"] == 2
    assert small.gate is not None and small.gate.numbers["canary_questions"] == 2 and not small.gate.applied
    assert max(e.n for m in small.canary.values() for e in m.values()) <= 2
    assert small.calibration is not None and small.calibration["limited"] and small.calibration["rows"] == 2
    assert not (tmp_path / "home" / "calibration" / "grounding.json").exists()
    assert any("limited run (limit 2)" in n for n in small.settings["notes"]) and "limited run" in smoke["summary"]
    assert Registry(tmp_path / "home" / "adapters", tmp_path / "home" / "locks").get(trained).status == "candidate"

    out = evaluate(config_file=config)

    run_dir = Path(out["markdown"]).parent
    run = EvalRun.model_validate_json((run_dir / "results.json").read_text())
    assert [a.name for a in run.arms] == ["base", "rag", "lora", "hybrid"] and run.questions == len(TEST)
    rag = {a.name: a for a in run.arms}["rag"]
    assert rag.metrics["hit@5"].n == 2 and rag.metrics["hit@5"].value is not None  # answerable questions only
    assert {a.name: a for a in run.arms}["lora"].metrics["groundedness"].n == 0  # no retrieval, no groundedness
    assert set(run.canary) == {"base", "lora@candidate"}
    lines = (run_dir / "questions.jsonl").read_text().splitlines()
    assert len(lines) == 4 * len(TEST)
    assert (run_dir / "report.html").read_text().count("data:image/png;base64,") >= 2
    assert "Knowledge freshness" in (run_dir / "report.md").read_text()

    # A random tiny model cannot beat the base model beyond the interval: the gate rejects it and says so.
    assert run.gate is not None and run.gate.candidate == trained and not run.gate.promote and run.gate.applied
    registry = Registry(tmp_path / "home" / "adapters", tmp_path / "home" / "locks")
    assert registry.get(trained).status == "rejected" and registry.champion() is None
    decision = registry.get(trained).decisions()[0]
    assert decision["action"] == "reject" and decision["report"] == run.run_id  # applied after its report was written

    # The grounding threshold was calibrated on the train split's drafts first: too few here, so the
    # default stays, the run says why, and the choice is stored for reuse.
    c = run.calibration
    assert c is not None and not c["calibrated"] and c["threshold"] == c["default"] == run.settings["retrieval"]["min_support"]
    assert "drafts" in c["reason"] and "Grounding threshold" in (run_dir / "report.md").read_text()
    assert json.loads((tmp_path / "home" / "calibration" / "grounding.json").read_text())["key"] == c["key"]

    # With no champion and no candidate left, the newest adapter is still compared (not gated).
    second = evaluate(arms=["lora"], limit=1, config_file=config)
    run2 = EvalRun.model_validate_json((Path(second["markdown"]).parent / "results.json").read_text())
    assert [(a.name, a.adapter_role) for a in run2.arms] == [("lora", "latest")] and run2.gate is None


def test_nightly_names_the_failing_step_and_keeps_the_index(setup, tmp_path):
    corpus, config = setup
    ok = nightly(source=str(corpus), config_file=config)
    assert [s["state"] for s in ok["steps"].values()] == ["completed"] * 3
    version = load_settings(config).lancedb_dir
    (tmp_path / "qa.jsonl").write_text("{broken json\n")  # the evaluation set (and QA pairs) now break
    with pytest.raises(NightlyStepFailed, match="'retrain' failed"):
        nightly(source=str(corpus), config_file=config)
    assert version.exists()


def test_full_fine_tuning_is_registered_compared_beside_lora_and_gated(setup, tmp_path, monkeypatch):
    corpus, config = setup
    ingest(str(corpus), config_file=config)
    lora = retrain(config_file=config)["adapter"]["name"]
    registry = Registry(tmp_path / "home" / "adapters", tmp_path / "home" / "locks")
    registry.reject(lora, "set aside for this test")

    monkeypatch.setenv("RAGTUNE_TRAINING__METHOD", "full")
    full = retrain(config_file=config)
    assert full["trained"] and full["reason"].startswith("recipe changed")
    model = registry.get(full["adapter"]["name"])
    assert model.method == "full" and model.status == "candidate"
    assert (model.path / "config.json").is_file() and not (model.path / "adapter_config.json").exists()
    assert not retrain(config_file=config)["trained"]  # the same recipe and data: nothing to do

    out = evaluate(config_file=config)
    run = EvalRun.model_validate_json((Path(out["markdown"]).parent / "results.json").read_text())
    arms = {a.name: a for a in run.arms}
    assert list(arms) == ["base", "rag", "lora", "hybrid", "full", "full+rag"]
    assert (arms["lora"].adapter, arms["lora"].adapter_role) == (lora, "latest")
    assert (arms["full+rag"].adapter, arms["full+rag"].adapter_role, arms["full+rag"].retrieval) == (model.name, "candidate", True)
    assert arms["full"].metrics["groundedness"].n == 0 and arms["full+rag"].metrics["hit@5"].n == 2
    assert set(run.canary) == {"base", "lora@latest", "full@candidate"}
    # The newest candidate is the full model: its full+rag arm is gated against base rag.
    assert run.gate is not None and run.gate.candidate == model.name and run.gate.incumbent == "base" and not run.gate.promote
    assert registry.get(model.name).status == "rejected" and registry.get(lora).status == "rejected"
