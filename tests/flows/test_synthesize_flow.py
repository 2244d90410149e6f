"""The `synthesize` flow through the real Prefect engine: a time-budget stop and its resume, the
artifact, the document split, and the synthetic set run through the arena like a labelled one
(hashing embedder, a random tiny llama, a real LanceDB table, real GX)."""

from __future__ import annotations

import json
from pathlib import Path

from data_contracts.evaluation import EvalRun
from flows.dataset import build_dataset
from flows.evaluate import evaluate
from flows.ingest import ingest
from flows.synthesize import synthesize
from tasks import dataset as datasets
from tasks.evalset import load_eval_set

DOCS = {
    "travel.md": "# Travel policy\n\nHotels in London are capped at 185 pounds per night.\n\n"
    "The daily meal allowance is 50 pounds. Claims must be filed within 30 days.\n",
    "sla.md": "# Support SLA\n\nPriority one tickets get a first response within 30 minutes.\n\n"
    "Priority two tickets get a first response within 4 hours. Credits are paid in March 2027.\n",
    "api.md": "# API guide\n\nThe REST API allows 1000 requests per minute per account.\n\n"
    "Version 2 of the Tidewell API was released in 2024 by the Bristol team.\n",
    "leave.md": "# Leave policy\n\nEmployees get 25 days of annual leave.\n\nParents get 12 weeks of paid leave.\n",
}


def _setup(home, tmp_path, tiny_llama, monkeypatch) -> tuple[Path, str]:
    monkeypatch.setenv("RAGTUNE_GENERATOR__MODEL", str(tiny_llama))
    monkeypatch.setenv("RAGTUNE_GENERATOR__MAX_NEW_TOKENS", "8")
    monkeypatch.setenv("RAGTUNE_TORCH_THREADS", "1")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name, text in DOCS.items():
        (corpus / name).write_text(text)
    config = tmp_path / "ragtune.toml"
    # A random tiny model cannot read answers back: the reader round trip is measured with the real
    # model (tests/models); here the retrieval round trip and every other filter run.
    config.write_text("[synth]\nreader_check = false\nbatch_chunks = 2\neval_share = 0.5\n[evaluation]\nresamples = 200\n")
    return corpus, str(config)


def test_synthesize_stops_at_its_budget_resumes_and_feeds_the_arena(home, tmp_path, tiny_llama, monkeypatch):
    corpus, config = _setup(home, tmp_path, tiny_llama, monkeypatch)
    ingest(str(corpus), config_file=config)

    stopped = synthesize(max_minutes=1e-9, config_file=config)  # the budget is spent before the first batch
    assert stopped["stopped_early"] and stopped["chunks_drafted"] == 0 and stopped["chunks_sampled"] >= 4

    done = synthesize(config_file=config)
    assert not done["stopped_early"] and done["chunks_drafted"] == done["chunks_sampled"] and done["key"] == stopped["key"]
    drafts = home / "synth" / ".work" / done["key"] / "drafts.jsonl"
    lines = drafts.read_text().splitlines()
    again = synthesize(config_file=config)  # everything drafted: nothing is drafted again
    assert drafts.read_text().splitlines() == lines and again["hash"] == done["hash"]

    funnel = done["funnel"]
    assert funnel["generated"]["rules"] > 0 and funnel["kept"]["rules"] > 0 and funnel["kept"].get("unanswerable", 0) > 0
    rows = [json.loads(line) for line in Path(done["path"]).read_text().splitlines()]
    by_split = {s: {r["gold_docs"][0] for r in rows if r["split"] == s and r["gold_docs"]} for s in ("train", "test")}
    assert by_split["train"] and by_split["test"] and not by_split["train"] & by_split["test"]
    assert all(not r["answerable"] and r["answers"] == [] for r in rows if r["strategy"] == "unanswerable")
    manifest = json.loads((Path(done["path"]).parent / "synth.json").read_text())
    assert manifest["contract"]["suite"] == "synthetic_questions"

    # The training pool feeds RAFT; the held-out documents' questions never do.
    monkeypatch.setenv("RAGTUNE_DATASET__SYNTHETIC", "true")
    monkeypatch.setenv("RAGTUNE_DATASET__REPLAY_SHARE", "0.2")  # and general prompts the base model answered, against forgetting
    built = build_dataset(config_file=config)
    replies = json.loads(next((home / "datasets").glob("replay-*.json")).read_text())  # cached for the next build
    manifest = json.loads((Path(built["path"]) / "dataset.json").read_text())
    assert manifest["sources"]["replay"]["rows"] == len(replies) > 0
    # the random tiny model often says nothing: an empty answer is no replay row
    assert built["counts"]["by_kind"].get("replay", 0) == sum(bool(r.strip()) for r in replies.values())
    train_questions = {r["question"] for r in rows if r["split"] == "train"}
    test_questions = {r["question"] for r in rows if r["split"] == "test"}
    saved = datasets.load(Path(built["path"]))
    seen = {m["content"] for conv in saved.train + saved.validation for m in conv if m["role"] == "user"}
    assert built["counts"]["by_kind"]["raft"] > 0 and any(q in text for q in train_questions for text in seen)
    assert not any(q in text for q in test_questions for text in seen)

    test_set = load_eval_set(Path(done["path"]), "test", strict=True)
    out = evaluate(arms=["base", "rag"], eval_set_path="synthetic", apply_gate=False, config_file=config)
    run = EvalRun.model_validate_json(Path(out["results"]).read_text())
    assert run.questions == len(test_set.rows) and [a.name for a in run.arms] == ["base", "rag"]
    assert run.eval_path == done["path"] and run.eval_split == "test"

    # Beside a labelled set, in the same run: reported, not gated.
    labelled = tmp_path / "labelled.jsonl"
    labelled.write_text("\n".join(json.dumps(r) for r in [
        {"id": "l1", "question": "How long do priority two tickets wait?", "answers": ["4 hours"], "split": "test"},
        {"id": "l2", "question": "What is the London hotel cap?", "answers": ["185 pounds"], "split": "test"},
    ]) + "\n")
    monkeypatch.setenv("RAGTUNE_EVALUATION__SYNTHETIC", "true")
    both = evaluate(arms=["base", "rag"], eval_set_path=str(labelled), apply_gate=False, config_file=config)
    run = EvalRun.model_validate_json(Path(both["results"]).read_text())
    assert run.questions == 2 and [s.name for s in run.alongside] == ["synthetic"]
    assert run.alongside[0].questions == len(test_set.rows) and [a.name for a in run.alongside[0].arms] == ["base", "rag"]
    assert "On the synthetic evaluation set (not gated)" in Path(both["markdown"]).read_text()


def test_a_synthetic_set_without_held_out_questions_is_noted_not_fatal(home, tmp_path, tiny_llama, monkeypatch):
    # A small model's reader round trip can keep nothing (the tiny llama on a server's nightly did):
    # the labelled evaluation still runs, and its notes say why the synthetic set was not scored.
    _, config = _setup(home, tmp_path, tiny_llama, monkeypatch)
    qa = tmp_path / "qa.jsonl"
    qa.write_text(json.dumps({"id": "e1", "question": "How many days of leave?", "answers": ["25 days"], "answerable": True, "split": "test"}) + "\n")
    with open(config, "a") as f:
        f.write(f'path = "{qa}"\nsynthetic = true\n')
    (home / "synth" / "abc").mkdir(parents=True)
    (home / "synth" / "abc" / "questions.jsonl").write_text(json.dumps({"id": "s1", "question": "q?", "answers": ["a"], "split": "train"}) + "\n")
    (home / "synth" / "LATEST").write_text("abc")
    out = evaluate(arms=["base"], config_file=config)
    run = EvalRun.model_validate_json((Path(out["markdown"]).parent / "results.json").read_text())
    assert run.alongside == [] and any("kept no held-out question" in n for n in run.settings["notes"])
