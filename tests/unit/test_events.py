"""Event payloads (tasks/events.py) and the nightly chain's step logic on a server (flows/nightly.py),
without a Prefect server: `run_deployment` is replaced at the boundary by real `FlowRun` objects."""

from __future__ import annotations

from datetime import datetime, timezone
from uuid import uuid4

import pytest

from data_contracts.evaluation import ArmResult, Estimate, EvalRun, GateResult
from data_contracts.manifest import IngestCounts, IngestManifest
from tasks import events


def _manifest(run_id: str, written: int, total: int, before: int = 0, table: str = "chunks") -> IngestManifest:
    return IngestManifest(run_id=run_id, table=table, source_root="/docs", started_at=datetime.now(timezone.utc),
                          counts=IngestCounts(chunks_before=before, chunks_written=written, chunks_total=total, added=1))  # fmt: skip


@pytest.mark.parametrize(
    "before, written, after, removed, share",
    [
        (0, 0, 0, 0, 0.0),  # empty stays empty
        (0, 100, 100, 0, 1.0),  # built from empty
        (100, 0, 100, 0, 0.0),  # nothing changed
        (100, 100, 100, 100, 1.0),  # every row replaced
        (100, 0, 0, 100, 1.0),  # emptied
        (100, 10, 100, 10, 0.1),  # one tenth rewritten
        (100, 0, 90, 10, 10 / 190),  # a tenth deleted
    ],
)
def test_changed_share(before, written, after, removed, share):
    assert events.changed_share(before, written, after) == (removed, pytest.approx(share))


def test_ingest_event_labels_retrain_above_the_threshold():
    now = _manifest("20260101T030000-dddddd", 30, 100, before=100)  # chunks_before: the table's rows before the write
    e = events.ingest_completed(now, retrain_share=0.1)
    assert e.name == "ragtune.ingest.completed"
    assert e.resource["prefect.resource.id"] == "ragtune.table.chunks" and e.resource["ragtune.retrain-suggested"] == "true"
    assert e.payload["changed_share"] == 0.3 and e.payload["chunks_removed"] == 30 and e.payload["counts"]["chunks_written"] == 30
    assert e.payload["chunks_before"] == 100 and e.payload["counts"]["chunks_before"] == 100
    assert all(isinstance(v, str) for v in e.resource.values())  # Prefect resource labels are strings
    assert e.resource["ragtune.config-file"] == ""  # none given: the retrain finds its settings as the ingest did
    named = events.ingest_completed(now, retrain_share=0.1, config_file="demo/ragtune.toml")
    assert named.resource["ragtune.config-file"].startswith("/") and named.resource["ragtune.config-file"].endswith("/demo/ragtune.toml")
    quiet = events.ingest_completed(now, retrain_share=0.3)  # "more than" the share
    assert quiet.resource["ragtune.retrain-suggested"] == "false" and quiet.payload["retrain_suggested"] is False
    first = events.ingest_completed(_manifest("20260101T000000-aaaaaa", 100, 100), retrain_share=0.1)  # a new table
    assert first.payload["chunks_before"] == 0 and first.payload["changed_share"] == 1.0


def test_ingest_event_not_suggested_when_the_caller_retrains_itself():
    big = _manifest("20260101T030000-dddddd", 100, 100, before=100)  # every row replaced
    e = events.ingest_completed(big, retrain_share=0.1, suggest_retrain=False)
    assert e.resource["ragtune.retrain-suggested"] == "false" and e.payload["retrain_suggested"] is False
    assert e.payload["changed_share"] == 1.0  # the numbers still say what changed
    assert "suggest_retrain=false" in e.payload["retrain_reason"] and "nightly" in e.payload["retrain_reason"]
    assert events.ingest_completed(big, retrain_share=0.1).payload["retrain_reason"].startswith("changed_share 1.0000 >")


def test_training_events_say_trained_or_why_not():
    built = {"hash": "abcdef0123456789", "counts": {"train": 4}}
    done = events.training_finished({"trained": True, "reason": "new dataset", "dataset": built,
                                     "adapter": {"name": "20260101-000000-deadbeef", "status": "candidate", "val_loss": 1.5}})
    assert done.name == "ragtune.training.completed" and done.resource["prefect.resource.id"] == "ragtune.adapter.20260101-000000-deadbeef"
    assert done.payload["val_loss"] == 1.5 and done.payload["reason"] == "new dataset"
    skipped = events.training_finished({"trained": False, "reason": "unchanged since adapter X", "dataset": built, "adapter": None})
    assert skipped.name == "ragtune.training.skipped" and skipped.resource["prefect.resource.id"] == "ragtune.dataset.abcdef012345"
    assert skipped.payload["reason"] == "unchanged since adapter X"


def _est(value: float, half: float = 0.05) -> Estimate:
    return Estimate(value=value, low=value - half, high=value + half, n=20)


def _run(run_id: str, f1: float, halluc: float, eval_hash: str = "h" * 64, champion: bool = True, gate: GateResult | None = None) -> EvalRun:
    arms = [ArmResult(name="rag", kind="rag", retrieval=True, metrics={"f1": _est(0.3), "hallucination_rate": _est(0.1)},
                      questions=20, wall_s=1, questions_per_min=1)]  # fmt: skip
    if champion:
        arms.append(ArmResult(name="hybrid", kind="hybrid", adapter="a1", adapter_role="champion", retrieval=True,
                              metrics={"f1": _est(f1), "hallucination_rate": _est(halluc)}, questions=20, wall_s=1, questions_per_min=1))  # fmt: skip
    return EvalRun(run_id=run_id, created_at=datetime.now(timezone.utc), eval_path="/e.jsonl", eval_split="test", eval_hash=eval_hash,
                   questions=20, table="chunks", table_version=3, generator="g", arms=arms, gate=gate)  # fmt: skip


def test_evaluation_completed_carries_gate_and_primary_interval():
    gate = GateResult(candidate="c1", incumbent="a1", promote=False, applied=True, reasons=["reject: failed f1", "f1 ..."],
                      numbers={"checks": {"f1": {"difference": {"value": 0.01, "low": -0.02, "high": 0.04, "n": 20}}}})  # fmt: skip
    e = events.evaluation_completed(_run("20260102T000000Z", 0.5, 0.1, gate=gate), "f1", "/r/report.html")
    assert e.name == "ragtune.evaluation.completed" and e.resource["ragtune.gate"] == "reject"
    assert e.resource["ragtune.serving-arm"] == "hybrid" and e.resource["ragtune.adapter"] == "a1"
    assert e.payload["primary"] == {"value": 0.5, "low": pytest.approx(0.45), "high": pytest.approx(0.55), "n": 20}
    assert e.payload["gate"]["promote"] is False and e.payload["gate"]["primary"]["difference"]["low"] == -0.02
    no_champion = events.evaluation_completed(_run("20260102T000000Z", 0.5, 0.1, champion=False), "f1")
    assert no_champion.payload["serving_arm"] == "rag" and no_champion.resource["ragtune.gate"] == "none"


def test_regression_only_beyond_the_interval_and_on_the_same_rows():
    before = _run("20260101T000000Z", 0.50, 0.10)
    other_set = _run("20260101T120000Z", 0.90, 0.00, eval_hash="x" * 64)
    history = [before, other_set]
    assert events.previous_run(history, _run("20260102T000000Z", 0.5, 0.1)) is before
    within = _run("20260102T000000Z", 0.47, 0.13)  # worse, but the previous value is inside this run's interval
    assert events.evaluation_regressed(within, before, "f1") is None
    f1_drop = _run("20260102T000000Z", 0.40, 0.10)
    e = events.evaluation_regressed(f1_drop, before, "f1", "/r.html")
    assert e is not None and e.name == "ragtune.evaluation.regressed" and e.resource["ragtune.regressed"] == "f1"
    assert e.payload["previous_run_id"] == before.run_id and e.payload["regressions"][0]["change"] == pytest.approx(-0.1)
    both = events.evaluation_regressed(_run("20260102T000000Z", 0.40, 0.30), before, "f1")
    assert [r["metric"] for r in both.payload["regressions"]] == ["f1", "hallucination_rate"]
    better = _run("20260102T000000Z", 0.70, 0.00)
    assert events.evaluation_regressed(better, before, "f1") is None
    assert events.evaluation_regressed(f1_drop, None, "f1") is None  # the first run on a set


# --- the nightly chain on a server ------------------------------------------------------------------


def _nightly_steps():
    from flows.nightly import DEFAULT_DEPLOYMENTS, chain_steps

    return chain_steps("docs", True, 5, ["rag"], 3, None, "cfg.toml", DEFAULT_DEPLOYMENTS)


def test_nightly_runs_each_step_as_its_deployment(monkeypatch):
    from prefect.client.schemas.objects import FlowRun
    from prefect.states import Completed

    import flows.nightly as nightly

    calls = []

    def fake_run_deployment(name, parameters=None, timeout=None, **_):
        calls.append((name, parameters, timeout))
        return FlowRun(flow_id=uuid4(), name=f"run-{len(calls)}", state=Completed())

    monkeypatch.setattr(nightly, "run_deployment", fake_run_deployment)
    done = nightly.run_chain(_nightly_steps(), nightly.run_as_deployment)
    assert [c[0] for c in calls] == ["ingest/ingest-demo", "retrain/retrain-demo", "evaluate/evaluate-demo"]
    # None left out: the deployment's default stands; suggest_retrain=False: the chain retrains itself, not the automation
    assert calls[0][1] == {"source": "docs", "config_file": "cfg.toml", "suggest_retrain": False}
    assert calls[1][1] == {"force": True, "max_steps": 5, "config_file": "cfg.toml"}
    # a limited run is report-only even though the deployment's form says apply_gate: true
    assert calls[2][1] == {"arms": ["rag"], "limit": 3, "apply_gate": False, "config_file": "cfg.toml"}
    assert all(c[2] is None for c in calls)  # wait for each child to finish
    assert [s["state"] for s in done.values()] == ["completed"] * 3 and "run-1" in done["ingest"]["detail"]


def test_nightly_synthesizes_after_the_ingest_when_the_settings_use_synthetic_questions(monkeypatch, tmp_path):
    from flows.nightly import DEFAULT_DEPLOYMENTS, chain_steps

    with_synth = chain_steps("docs", False, None, None, None, "t", "cfg.toml", DEFAULT_DEPLOYMENTS, synthesize=True)
    assert [s.name for s in with_synth] == ["ingest", "synthesize", "retrain", "evaluate"]
    assert (with_synth[1].deployment, with_synth[1].parameters) == ("synthesize/synthesize-demo", {"table": "t", "config_file": "cfg.toml"})
    assert [s.name for s in _nightly_steps()] == ["ingest", "retrain", "evaluate"]

    import flows.nightly as nightly

    seen = []
    monkeypatch.setattr(nightly, "run_chain", lambda steps, run: seen.append([s.name for s in steps]) or {"evaluate": {"state": "completed", "detail": ""}})
    config = tmp_path / "ragtune.toml"
    for body, expected in (("", False), ("[dataset]\nsynthetic = true\n", True), ("[evaluation]\nsynthetic = true\n", True)):
        config.write_text(body)
        nightly.nightly.fn(source="docs", config_file=str(config), step_mode="in-process")
        assert ("synthesize" in seen[-1]) is expected, body
    nightly.nightly.fn(source="docs", config_file=str(config), step_mode="in-process", synthesize=False)
    assert "synthesize" not in seen[-1]


def test_nightly_in_process_ingest_does_not_suggest_a_retrain(monkeypatch):
    import flows.nightly as nightly

    got = {}
    monkeypatch.setattr(nightly, "ingest", lambda **kw: got.update(kw) or {"status": "completed", "counts": {}})
    nightly.run_in_process(_nightly_steps()[0])
    assert got == {"source": "docs", "config_file": "cfg.toml", "suggest_retrain": False}


@pytest.mark.parametrize("state_name", ["Failed", "Crashed", "Cancelled"])
def test_nightly_names_the_failed_child_and_what_stays_in_service(monkeypatch, state_name):
    import prefect.states
    from prefect.client.schemas.objects import FlowRun

    import flows.nightly as nightly

    def fake_run_deployment(name, parameters=None, timeout=None, **_):
        bad = name.startswith("retrain/")
        state = getattr(prefect.states, state_name)(message="out of memory") if bad else prefect.states.Completed()
        return FlowRun(flow_id=uuid4(), name=name.split("/")[0] + "-run", state=state)

    monkeypatch.setattr(nightly, "run_deployment", fake_run_deployment)
    with pytest.raises(nightly.NightlyStepFailed, match=rf"'retrain' failed .*retrain-run.*ended {state_name}: out of memory.*the adapter registry stays in service") as e:
        nightly.run_chain(_nightly_steps(), nightly.run_as_deployment)
    assert {k: v["state"] for k, v in e.value.steps.items()} == {"ingest": "completed", "retrain": "failed", "evaluate": "not run"}
