"""The `nightly` chain: ingest (incremental) → synthetic questions (when the configuration uses them:
`dataset.synthetic` or `evaluation.synthetic`) → retrain when needed (dataset build inside) → evaluate
(arena, gate, report). Each step is its own flow run, so a failure names the step; the steps that did
not run leave what is in service alone (the previous index version, the current champion).
On a server (this run is a deployment run) each step is a deployment run on its own work pool
(ingest on `ragtune-ingest`, synthesize/retrain/evaluate on `ragtune-train`) that a user can open, retry or
cancel; locally the same chain runs in-process.

    prefect deploy --all     # deployments/prefect.yaml schedules this at 02:00
"""

from __future__ import annotations

from typing import Any, Callable, Literal, NamedTuple

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.runtime import deployment

from flows.evaluate import evaluate
from flows.ingest import ingest
from flows.retrain import retrain
from flows.synthesize import synthesize as synthesize_flow
from tasks.config import load_settings

KEPT = {"ingest": "the previous table version", "synthesize": "the previous synthetic set", "retrain": "the adapter registry",
        "evaluate": "the current champion"}
DEFAULT_DEPLOYMENTS = {"ingest": "ingest/ingest-demo", "synthesize": "synthesize/synthesize-demo", "retrain": "retrain/retrain-demo",
                       "evaluate": "evaluate/evaluate-demo"}


class NightlyStepFailed(Exception):
    """One step of the chain failed; the message names it and what stayed in service."""

    def __init__(self, message: str, steps: dict[str, dict[str, Any]] | None = None):
        super().__init__(message)
        self.steps = steps or {}


class StepRunFailed(Exception):
    """A step's flow run (a deployment run on its pool) ended failed, crashed or cancelled."""


class Step(NamedTuple):  # not a dataclass: `prefect deploy` may load this file without registering the module
    """One link of the chain: the flow it runs in-process and the deployment it runs on a server."""

    name: str
    deployment: str
    parameters: dict[str, Any]  # None values left out, so the deployment's own defaults stand
    local: Callable[[], dict[str, Any]]


def chain_steps(
    source: str, force_train: bool, max_steps: int | None, arms: list[str] | None, limit: int | None,
    table: str | None, config_file: str | None, deployments: dict[str, str], synthesize: bool = False,
) -> list[Step]:  # fmt: skip
    def given(**kw: Any) -> dict[str, Any]:
        return {k: v for k, v in kw.items() if v is not None}

    # suggest_retrain=False: the chain retrains next itself, so the retrain-on-change automation must not too
    ingest_p = given(source=source, table=table, config_file=config_file, suggest_retrain=False)
    synth_p = given(table=table, config_file=config_file)
    retrain_p = given(force=force_train, max_steps=max_steps, table=table, config_file=config_file)
    # A limited run is a smoke run: report-only, also on a server where the deployment's form says apply_gate: true.
    evaluate_p = given(arms=arms, limit=limit, apply_gate=False if limit else None, table=table, config_file=config_file)
    return [
        Step("ingest", deployments["ingest"], ingest_p, lambda: ingest(**ingest_p)),
        *([Step("synthesize", deployments["synthesize"], synth_p, lambda: synthesize_flow(**synth_p))] if synthesize else []),
        Step("retrain", deployments["retrain"], retrain_p, lambda: retrain(**retrain_p)),
        Step("evaluate", deployments["evaluate"], evaluate_p, lambda: evaluate(**evaluate_p)),
    ]


def run_in_process(step: Step) -> str:
    return _detail(step.name, step.local())


def run_as_deployment(step: Step) -> str:
    """The step as its own flow run on its deployment's pool; waits for it and checks how it ended."""
    run: FlowRun = run_deployment(step.deployment, parameters=step.parameters, timeout=None)
    state = run.state
    where = f"flow run {run.name!r} ({run.id}) of deployment {step.deployment}"
    if state is None or not state.is_completed():
        how = state.name if state else "without a state"
        raise StepRunFailed(f"{where} ended {how}" + (f": {state.message}" if state and state.message else ""))
    try:  # results are only readable when the child persisted them
        result = state.result(raise_on_failure=False)
    except Exception:  # noqa: BLE001 - the run completed; its detail is in its own artifacts
        result = None
    return (_detail(step.name, result) + "; " if isinstance(result, dict) else "") + f"{where} completed"


def run_chain(steps: list[Step], run_step: Callable[[Step], str]) -> dict[str, dict[str, Any]]:
    """Run the steps in order; the first failure stops the chain and names the step (NightlyStepFailed)."""
    done: dict[str, dict[str, Any]] = {}
    for i, step in enumerate(steps):
        try:
            detail = run_step(step)
        except Exception as e:  # noqa: BLE001 - the chain stops at the failing step and says which
            done[step.name] = {"state": "failed", "detail": f"{type(e).__name__}: {e}"}
            for later in steps[i + 1 :]:
                done[later.name] = {"state": "not run"}
            raise NightlyStepFailed(
                f"nightly step {step.name!r} failed ({type(e).__name__}: {e}); {KEPT[step.name]} stays in service", done
            ) from e
        done[step.name] = {"state": "completed", "detail": detail}
    return done


def summary_markdown(steps: dict[str, dict[str, Any]]) -> str:
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
    synthesize: bool | None = None,
    ingest_deployment: str = DEFAULT_DEPLOYMENTS["ingest"],
    synthesize_deployment: str = DEFAULT_DEPLOYMENTS["synthesize"],
    retrain_deployment: str = DEFAULT_DEPLOYMENTS["retrain"],
    evaluate_deployment: str = DEFAULT_DEPLOYMENTS["evaluate"],
    step_mode: Literal["auto", "deployments", "in-process"] = "auto",
) -> dict[str, Any]:
    """Ingest, retrain when something changed, evaluate every arm and gate the candidate.

    Args:
        source: document directory to ingest incrementally.
        force_train: train even when dataset, base model and recipe are unchanged.
        max_steps: cap on training steps (default from `training.max_steps`).
        arms: arena arms (default `evaluation.arms`).
        limit: a smoke run: N questions, N calibration rows, N canary questions; the gate reports only.
        table: chunk table (default from settings).
        config_file: optional TOML settings file.
        synthesize: generate synthetic questions after the ingest (default: when the settings use them,
            `dataset.synthetic` or `evaluation.synthetic`).
        ingest_deployment: deployment of the ingest step when the chain runs on a server.
        synthesize_deployment: deployment of the synthesize step (on the training pool).
        retrain_deployment: deployment of the retrain step (on the training pool).
        evaluate_deployment: deployment of the evaluate step (on the training pool).
        step_mode: auto = each step as its own deployment run when this run is itself a deployment run
            (a server), in-process otherwise (`ragtune nightly`, tests).
    """
    on_server = step_mode == "deployments" or (step_mode == "auto" and deployment.get_id() is not None)
    if synthesize is None:
        settings = load_settings(config_file)
        synthesize = settings.dataset.synthetic or settings.evaluation.synthetic
    deployments = {"ingest": ingest_deployment, "synthesize": synthesize_deployment, "retrain": retrain_deployment,
                   "evaluate": evaluate_deployment}
    steps = chain_steps(source, force_train, max_steps, arms, limit, table, config_file, deployments, synthesize)
    try:
        done = run_chain(steps, run_as_deployment if on_server else run_in_process)
    except NightlyStepFailed as e:
        create_markdown_artifact(key="nightly", markdown=summary_markdown(e.steps), description="nightly chain")
        raise
    create_markdown_artifact(key="nightly", markdown=summary_markdown(done), description="nightly chain")
    return {"steps": done, "report": done["evaluate"]["detail"], "mode": "deployments" if on_server else "in-process"}


def _detail(step: str, result: dict[str, Any]) -> str:
    if step == "ingest":
        c = result.get("counts", {})
        return f"{result.get('status')}: +{c.get('added', 0)} ~{c.get('updated', 0)} -{c.get('deleted', 0)}, {c.get('quarantined', 0)} quarantined"
    if step == "synthesize":
        kept = sum(result.get("funnel", {}).get("kept", {}).values())
        return f"{kept} questions kept from {result.get('chunks_drafted')} chunks" + (" (stopped at the time budget)" if result.get("stopped_early") else "")
    if step == "retrain":
        return ("trained " + result["adapter"]["name"]) if result["trained"] else f"skipped: {result['reason']}"
    return str(result.get("report"))
