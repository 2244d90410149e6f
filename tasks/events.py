"""What each flow tells the event bus: pure builders of (event name, resource, payload), no Prefect.

The flows emit these (`flows/events.py`); automations match on the event name and on resource
*labels* (a Prefect trigger cannot compare payload numbers), so every decision an automation
needs is computed here and put on the resource as a string label:

- `ragtune.ingest.completed`     resource `ragtune.table.<table>`; label `ragtune.retrain-suggested`
                                 is "true" when the share of chunks changed is above
                                 `events.retrain_changed_share`, "false" otherwise and when the
                                 caller retrains itself (`suggest_retrain=False`: the nightly chain).
- `ragtune.training.completed`   resource `ragtune.adapter.<name>`.
- `ragtune.training.skipped`     resource `ragtune.dataset.<hash12>`; payload `reason`.
- `ragtune.evaluation.completed` resource `ragtune.evaluation.<run_id>`; gate decision and the primary
                                 metric with its interval.
- `ragtune.evaluation.regressed` same resource; emitted when the arm in service got worse than on the
                                 previous run over the same evaluation rows (see `regressions`).

Share of chunks changed (ingest): rows the run wrote (chunks of new and re-ingested documents) plus
rows it removed, over the rows before plus the rows after. 0 = nothing changed, 1 = every row replaced
(or the table built from empty, or emptied). Rows removed = before + written − after, with "before"
the table's row count the run read under the writer lock before writing (`counts.chunks_before`;
0 for a new table).
A re-ingested document rewrites all of its chunks, even when one paragraph changed.
"""

from __future__ import annotations

from pathlib import Path

from dataclasses import dataclass, field
from typing import Any, Iterable

from data_contracts.evaluation import ArmResult, Estimate, EvalRun
from data_contracts.manifest import IngestManifest

INGEST_COMPLETED = "ragtune.ingest.completed"
TRAINING_COMPLETED = "ragtune.training.completed"
TRAINING_SKIPPED = "ragtune.training.skipped"
EVALUATION_COMPLETED = "ragtune.evaluation.completed"
EVALUATION_REGRESSED = "ragtune.evaluation.regressed"
RETRAIN_SUGGESTED = "ragtune.retrain-suggested"  # resource label, "true" / "false"
LOWER_IS_BETTER = frozenset({"hallucination_rate", "cost_cpu_s"})


@dataclass(frozen=True)
class RagtuneEvent:
    """One event to emit: `emit_event(event=name, resource=resource, payload=payload)`."""

    name: str
    resource: dict[str, str]
    payload: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        """One Markdown line for an artifact."""
        labels = ", ".join(f"`{k}={v}`" for k, v in self.resource.items() if k.startswith("ragtune."))
        return f"- `{self.name}` on `{self.resource['prefect.resource.id']}`" + (f" ({labels})" if labels else "")


# --- ingest ---------------------------------------------------------------------------------------


def changed_share(before: int, written: int, after: int) -> tuple[int, float]:
    """(rows removed, share of rows changed) as defined in the module docstring."""
    removed = max(0, before + written - after)
    denominator = before + after
    return removed, (0.0 if denominator == 0 else min(1.0, (written + removed) / denominator))


def ingest_completed(
    manifest: IngestManifest, retrain_share: float, suggest_retrain: bool = True, config_file: str | None = None
) -> RagtuneEvent:
    """The run's event; `suggest_retrain=False` (a caller that retrains itself) keeps the label "false".
    `config_file` (absolute, "" for none) is passed on, so the retrain it triggers reads the same settings."""
    c = manifest.counts
    removed, share = changed_share(c.chunks_before, c.chunks_written, c.chunks_total)
    above = share > retrain_share
    suggested = above and suggest_retrain
    why = (f"changed_share {share:.4f} {'>' if above else '<='} retrain_changed_share {retrain_share}"
           + ("" if suggest_retrain else "; not suggested: the caller retrains itself (suggest_retrain=false, e.g. the nightly chain)"))  # fmt: skip
    return RagtuneEvent(
        INGEST_COMPLETED,
        {
            "prefect.resource.id": f"ragtune.table.{manifest.table}",
            "prefect.resource.name": manifest.table,
            "ragtune.table": manifest.table,
            "ragtune.source-root": manifest.source_root,
            "ragtune.config-file": str(Path(config_file).resolve()) if config_file else "",
            RETRAIN_SUGGESTED: "true" if suggested else "false",
        },
        {
            "run_id": manifest.run_id,
            "counts": c.model_dump(),
            "chunks_before": c.chunks_before,
            "chunks_removed": removed,
            "changed_share": round(share, 4),
            "retrain_changed_share": retrain_share,
            "retrain_suggested": suggested,
            "retrain_reason": why,
            "chunk_table_version": manifest.chunk_table_version,
            "quarantined": [q.doc_id for q in manifest.quarantine][:50],
        },
    )


# --- training -------------------------------------------------------------------------------------


def training_finished(result: dict[str, Any]) -> RagtuneEvent:
    """From the `retrain` flow's result: completed (a candidate registered) or skipped (and why)."""
    built = result.get("dataset") or {}
    common = {"reason": result.get("reason"), "dataset_hash": built.get("hash"), "dataset_counts": built.get("counts", {})}
    adapter = result.get("adapter")
    if result.get("trained") and adapter:
        return RagtuneEvent(
            TRAINING_COMPLETED,
            {"prefect.resource.id": f"ragtune.adapter.{adapter['name']}", "prefect.resource.name": adapter["name"],
             "ragtune.adapter": adapter["name"], "ragtune.adapter-status": str(adapter.get("status"))},
            {**common, "adapter": adapter["name"], "path": adapter.get("path"), "train_loss": adapter.get("train_loss"),
             "val_loss": adapter.get("val_loss"), "wall_s": adapter.get("wall_s"), "dataset_size": adapter.get("dataset_size")},
        )  # fmt: skip
    key = str(built.get("hash") or "unknown")[:12]
    return RagtuneEvent(
        TRAINING_SKIPPED,
        {"prefect.resource.id": f"ragtune.dataset.{key}", "prefect.resource.name": key, "ragtune.dataset": key},
        common,
    )


# --- evaluation -----------------------------------------------------------------------------------


def serving_arm(run: EvalRun) -> ArmResult | None:
    """The arm that answers users: the champion's retrieval arm (hybrid, or full+rag for a fully fine-tuned
    champion), else the base model with retrieval (`rag`)."""
    by_role = [a for a in run.arms if a.retrieval and a.adapter_role == "champion"]
    if by_role:
        return by_role[0]
    return next((a for a in run.arms if a.name == "rag"), None)


def _estimate(e: Estimate | None) -> dict[str, Any] | None:
    return None if e is None else e.model_dump()


def _evaluation_resource(run: EvalRun, arm: ArmResult | None) -> dict[str, str]:
    return {
        "prefect.resource.id": f"ragtune.evaluation.{run.run_id}",
        "prefect.resource.name": run.run_id,
        "ragtune.eval-hash": run.eval_hash[:12],
        "ragtune.table": run.table,
        "ragtune.serving-arm": arm.name if arm else "none",
        "ragtune.adapter": (arm.adapter or "base") if arm else "none",
    }


def evaluation_completed(run: EvalRun, primary: str, report: str | None = None) -> RagtuneEvent:
    arm = serving_arm(run)
    gate = run.gate
    gate_payload = None
    if gate is not None:
        p = gate.numbers.get("checks", {}).get(primary) if isinstance(gate.numbers.get("checks"), dict) else None
        gate_payload = {"candidate": gate.candidate, "incumbent": gate.incumbent, "promote": gate.promote, "applied": gate.applied,
                        "verdict": gate.reasons[0] if gate.reasons else None, "primary": p}  # fmt: skip
    resource = _evaluation_resource(run, arm)
    resource["ragtune.gate"] = "none" if gate is None else ("promote" if gate.promote else "reject")
    return RagtuneEvent(
        EVALUATION_COMPLETED,
        resource,
        {
            "run_id": run.run_id,
            "eval_path": run.eval_path,
            "questions": run.questions,
            "primary_metric": primary,
            "serving_arm": arm.name if arm else None,
            "primary": _estimate(arm.metrics.get(primary)) if arm else None,
            "hallucination_rate": _estimate(arm.metrics.get("hallucination_rate")) if arm else None,
            "arms": {a.name: _estimate(a.metrics.get(primary)) for a in run.arms},
            "gate": gate_payload,
            "report": report,
        },
    )


def previous_run(history: Iterable[EvalRun], run: EvalRun) -> EvalRun | None:
    """The newest earlier run over the same evaluation rows (same `eval_hash`)."""
    same = [h for h in history if h.eval_hash == run.eval_hash and h.run_id < run.run_id]
    return max(same, key=lambda h: h.run_id) if same else None


def worse_beyond_interval(now: Estimate | None, before: Estimate | None, lower_is_better: bool) -> bool:
    """True when the previous value lies outside this run's interval, on the good side.

    "Beyond the interval": the previous run's point estimate is not a plausible value of this run's
    metric at the configured confidence (the interval is a bootstrap over this run's questions).
    """
    if now is None or before is None or before.value is None or now.low is None or now.high is None:
        return False
    return now.low > before.value if lower_is_better else now.high < before.value


def regressions(run: EvalRun, previous: EvalRun | None, primary: str) -> list[dict[str, Any]]:
    """The serving arm's primary metric and hallucination rate that got worse than on `previous`."""
    arm, before_arm = serving_arm(run), serving_arm(previous) if previous else None
    if arm is None or before_arm is None:
        return []
    out = []
    for metric in dict.fromkeys([primary, "hallucination_rate"]):
        now, before = arm.metrics.get(metric), before_arm.metrics.get(metric)
        lower = metric in LOWER_IS_BETTER
        if worse_beyond_interval(now, before, lower):
            out.append({"metric": metric, "now": _estimate(now), "previous": _estimate(before), "lower_is_better": lower,
                        "change": round(now.value - before.value, 4) if now and now.value is not None and before and before.value is not None else None})  # fmt: skip
    return out


def evaluation_regressed(run: EvalRun, previous: EvalRun | None, primary: str, report: str | None = None) -> RagtuneEvent | None:
    """The regression event, or None when nothing got worse beyond the interval (or no comparable run)."""
    worse = regressions(run, previous, primary)
    if not worse or previous is None:
        return None
    arm, before_arm = serving_arm(run), serving_arm(previous)
    resource = _evaluation_resource(run, arm)
    resource["ragtune.regressed"] = ",".join(w["metric"] for w in worse)
    return RagtuneEvent(
        EVALUATION_REGRESSED,
        resource,
        {
            "run_id": run.run_id,
            "previous_run_id": previous.run_id,
            "eval_path": run.eval_path,
            "serving_arm": arm.name if arm else None,
            "adapter": arm.adapter if arm else None,
            "previous_adapter": before_arm.adapter if before_arm else None,
            "regressions": worse,
            "report": report,
        },
    )
