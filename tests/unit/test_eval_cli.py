"""`ragtune eval --json` and `ragtune report --json`: every arm's metrics with their intervals, for scripts
(a saved run, no model; the evaluate flow itself is stubbed)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest
from typer.testing import CliRunner

from data_contracts.evaluation import ArmResult, Estimate, EvalRun, GateResult
from ragtune_cli import app

ARMS = {"base": ("base", 0.2), "rag": ("rag", 0.6), "lora": ("lora", 0.3), "hybrid": ("hybrid", 0.5)}


def _est(value: float, n: int = 8) -> Estimate:
    return Estimate(value=value, low=round(value - 0.1, 3), high=round(value + 0.1, 3), n=n)


def _run(run_id: str, limit: int | None = None) -> EvalRun:
    arms = [
        ArmResult(name=name, kind=kind, adapter="a1" if kind in ("lora", "hybrid") else None,
                  adapter_role="candidate" if kind in ("lora", "hybrid") else None, retrieval=kind in ("rag", "hybrid"),
                  metrics={"f1": _est(f1), "accuracy": _est(f1 / 2), "hallucination_rate": _est(0.4),
                           "draft_groundedness": _est(0.5, n=6), "latency_p50.total": _est(1.2)},
                  questions=8, wall_s=10.0, questions_per_min=48.0)
        for name, (kind, f1) in ARMS.items()
    ]  # fmt: skip
    gate = GateResult(candidate="a1", incumbent="base", promote=False, applied=False, reasons=["reject: within noise"], numbers={})
    return EvalRun(
        run_id=run_id, created_at=datetime(2026, 1, 2, tzinfo=timezone.utc), eval_path="eval.jsonl", eval_split="test",
        eval_hash="h", questions=8, table="chunks", table_version=1, generator="g", arms=arms, gate=gate,
        settings={"notes": ["limited run (limit 8): ..."] if limit else [], "limit": limit},
        canary={"base": {"contains": _est(0.7, n=8)}},
    )  # fmt: skip


def _save(reports: Path, run: EvalRun) -> Path:
    folder = reports / run.run_id
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(run.model_dump_json())
    (reports / "LATEST").write_text(run.run_id + "\n")
    return folder


def _payload(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


def _check_arms(payload: dict, run: EvalRun) -> None:
    assert set(payload["arms"]) == set(ARMS)
    for arm in run.arms:
        got = ArmResult.model_validate(payload["arms"][arm.name])  # the saved schema, not a new one
        assert got == arm
        f1 = payload["arms"][arm.name]["metrics"]["f1"]
        assert f1["low"] < f1["value"] < f1["high"] and f1["n"] == 8
    rows = {r["aspect"]: r for r in payload["decision_table"]}
    assert set(rows["Answer quality"]["cells"]) == set(ARMS) and rows["Answer quality"]["judged_by"] == ["f1"]
    assert "0.60 [0.50–0.70]" in rows["Answer quality"]["cells"]["rag"]
    assert payload["canary"]["base"]["contains"]["high"] == 0.8 and payload["gate"]["promote"] is False


def test_report_json_carries_every_arms_metrics_with_intervals_and_the_decision_table(home):
    run = _run("r1")
    folder = _save(home / "reports", run)
    payload = _payload(CliRunner().invoke(app, ["report", "--json"]))
    _check_arms(payload, run)
    assert payload["run_id"] == "r1" and payload["results"] == str(folder / "results.json") and payload["limit"] is None

    limited = _run("r2", limit=8)
    _save(home / "reports", limited)
    out = CliRunner().invoke(app, ["report", "r2"])
    assert out.exit_code == 0 and "limited run (limit 8)" in out.stdout  # the human summary says so too
    assert _payload(CliRunner().invoke(app, ["report", "r2", "--json"]))["limit"] == 8


@pytest.mark.parametrize("flags, apply_gate", [([], None), (["--no-gate"], False), (["--gate"], True)])
def test_eval_json_carries_the_runs_metrics_and_passes_limit_and_gate_through(home, monkeypatch, flags, apply_gate):
    import flows.evaluate

    run = _run("r3", limit=8)
    folder = _save(home / "reports", run)
    calls = []

    def evaluate(**kw):
        calls.append(kw)
        return {"run_id": run.run_id, "report": str(folder / "report.html"), "markdown": str(folder / "report.md"),
                "results": str(folder / "results.json"), "summary": "# summary", "gate": None, "notes": [], "events": []}

    monkeypatch.setattr(flows.evaluate, "evaluate", evaluate)
    payload = _payload(CliRunner().invoke(app, ["eval", "--limit", "8", "--json", *flags]))
    assert calls[0]["limit"] == 8 and calls[0]["apply_gate"] is apply_gate
    _check_arms(payload, run)
    assert payload["limit"] == 8 and payload["events"] == [] and "summary" not in payload
