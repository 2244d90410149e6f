"""The `retrain` flow: build the dataset, decide whether anything changed, train a LoRA candidate.

    ragtune train [--max-steps N] [--force]     # the CLI runs this flow
    prefect deploy --all                         # deployments/prefect.yaml schedules it

Trains only when the dataset hash, the base model or the recipe changed since the newest adapter
(or with `force`), and records why it skipped. The adapter is registered as a `candidate`; the
evaluation's gate decides whether it becomes champion. A failed run leaves the registry untouched,
and its rerun resumes from the last checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.dataset import build_dataset
from flows.events import emit, events_markdown
from tasks import dataset as datasets
from tasks import events, faults
from tasks import retrain as steps
from tasks.config import Settings, load_settings
from tasks.progress import progress_bar
from tasks.registry import Registry, RegistryError
from tasks.report import retrain_markdown

_TASK = dict(cache_policy=NO_CACHE, persist_result=False)


@task(name="plan-training", retries=3, retry_delay_seconds=1, retry_condition_fn=faults.retry_unless(RegistryError), **_TASK)
def plan_training(registry: Registry, settings: Settings, dataset: datasets.SavedDataset, force: bool) -> steps.TrainPlan:
    faults.maybe_fail("plan-training")
    return steps.plan(registry, settings, dataset, force)


# No retries: a failure after registration would register the adapter twice; a rerun resumes from the checkpoint.
@task(name="train-adapter", **_TASK)
def train_adapter(registry: Registry, settings: Settings, dataset: datasets.SavedDataset, key: str, max_steps: int | None) -> dict[str, Any]:
    faults.maybe_fail("train-adapter")
    total = max_steps or settings.training.max_steps or 0
    with progress_bar("training", total, unit="steps") as advance:
        adapter = steps.train_candidate(registry, settings, dataset, key, max_steps=max_steps, on_step=lambda _: advance(1))
    return adapter.as_dict()


@flow(name="retrain", log_prints=False)
def retrain(
    force: bool = False,
    max_steps: int | None = None,
    table: str | None = None,
    config_file: str | None = None,
) -> dict[str, Any]:
    """Build the training dataset and train a candidate adapter when something changed.

    Args:
        force: train even when dataset, base model and recipe are unchanged.
        max_steps: cap on optimizer steps for this run (default from `training.max_steps`).
        table: chunk table for the retrieval-aware examples (default from settings).
        config_file: optional TOML settings file ("" = none, as an automation passes on an ingest that had none).
    """
    config_file = config_file or None
    settings = load_settings(config_file)
    built = build_dataset(table=table, config_file=config_file)
    dataset = datasets.load(Path(built["path"]))
    registry = Registry(settings.adapters_dir, settings.locks_dir)
    decision = plan_training(registry, settings, dataset, force)
    result: dict[str, Any] = {"trained": decision.train, "reason": decision.reason, "dataset": built, "adapter": None}
    if decision.train:
        result["adapter"] = train_adapter(registry, settings, dataset, decision.key, max_steps)
    event = events.training_finished(result)
    create_markdown_artifact(key="retrain", markdown=retrain_markdown(result) + events_markdown([event]),
                             description="retraining decision and result")
    emit([event])
    return result
