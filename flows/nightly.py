"""The `nightly` chain: ingest (incremental) → retrain when needed (dataset build inside) → evaluate
(arena, gate, report). Each step is its own flow run, so a failure names the step; the steps that did
not run leave what is in service alone (the previous index version, the current champion).

    prefect deploy --all     # deployments/prefect.yaml schedules this at 02:00
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from flows.evaluate import evaluate
from flows.ingest import ingest
from flows.retrain import retrain


class NightlyStepFailed(Exception):
    """One step of the chain failed; the message names it and what stayed in service."""


def _summary(steps: dict[str, dict[str, Any]]) -> str:
    lines = ["# Nightly run", "", "| step | state | detail |", "|---|---|---|"]
    for name, s in steps.items():
        lines.append(f"| {name} | {s['state']} | {str(s.get('detail', '')).replace('|', '/')[:200]} |")
    return "\n".join(lines)


@flow(name="nightly", log_prints=False)
def nightly(
    source: str = "demo/corpus",
    force_train: bool = False,
    max_steps: int | None = None,
    arms: list[str] | None = None,
    limit: int | None = None,
    table: str | None = None,
    config_file: str | None = None,
) -> dict[str, Any]:
    """Ingest, retrain when something changed, evaluate every arm and gate the candidate.

    Args:
        source: document directory to ingest incrementally.
        force_train: train even when dataset, base model and recipe are unchanged.
        max_steps: cap on training steps (default from `training.max_steps`).
        arms: arena arms (default `evaluation.arms`).
        limit: evaluate only the first N questions.
        table: chunk table (default from settings).
        config_file: optional TOML settings file.
    """
    steps: dict[str, dict[str, Any]] = {}
    chain = [
        ("ingest", lambda: ingest(source=source, table=table, config_file=config_file)),
        ("retrain", lambda: retrain(force=force_train, max_steps=max_steps, table=table, config_file=config_file)),
        ("evaluate", lambda: evaluate(arms=arms, limit=limit, table=table, config_file=config_file)),
    ]
    kept = {"ingest": "the previous table version", "retrain": "the adapter registry", "evaluate": "the current champion"}
    for name, run in chain:
        try:
            result = run()
        except Exception as e:  # noqa: BLE001 - the chain stops at the failing step and says which
            steps[name] = {"state": "failed", "detail": f"{type(e).__name__}: {e}"}
            for later, _ in chain[len(steps):]:
                steps[later] = {"state": "not run"}
            create_markdown_artifact(key="nightly", markdown=_summary(steps), description="nightly chain")
            raise NightlyStepFailed(f"nightly step {name!r} failed ({type(e).__name__}: {e}); {kept[name]} stays in service") from e
        steps[name] = {"state": "completed", "detail": _detail(name, result)}
    create_markdown_artifact(key="nightly", markdown=_summary(steps), description="nightly chain")
    return {"steps": steps, "report": steps["evaluate"]["detail"]}


def _detail(step: str, result: dict[str, Any]) -> str:
    if step == "ingest":
        c = result.get("counts", {})
        return f"{result.get('status')}: +{c.get('added', 0)} ~{c.get('updated', 0)} -{c.get('deleted', 0)}, {c.get('quarantined', 0)} quarantined"
    if step == "retrain":
        return ("trained " + result["adapter"]["name"]) if result["trained"] else f"skipped: {result['reason']}"
    return str(result.get("report"))
