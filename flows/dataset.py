"""The `build-dataset` flow: training examples from instruction files and QA pairs, checked by the
training contract, saved by content hash under `<home>/datasets/`.

    ragtune dataset build --config demo/ragtune.toml      # the CLI runs this flow
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from tasks import dataset as steps
from tasks import faults
from tasks.config import Settings, load_settings
from tasks.report import dataset_markdown
from tasks.validate import ContractViolation

_TASK = dict(cache_policy=NO_CACHE, persist_result=False)


@task(name="build-examples", retries=3, retry_delay_seconds=1, retry_condition_fn=faults.retry_unless(steps.DatasetError, ContractViolation), **_TASK)
def build_examples(settings: Settings, table: str | None) -> steps.DatasetBuild:
    """Read the sources, build RAFT rows over the index and run the training contract."""
    faults.maybe_fail("build-examples")
    return steps.build(settings, table)


@task(name="save-dataset", retries=3, retry_delay_seconds=2, **_TASK)
def save_dataset(build: steps.DatasetBuild, settings: Settings) -> Path:
    faults.maybe_fail("save-dataset")
    return steps.save(build, settings.datasets_dir)


@flow(name="build-dataset", log_prints=False)
def build_dataset(table: str | None = None, config_file: str | None = None) -> dict[str, Any]:
    """Build and validate the training dataset; an unchanged build reuses the saved one.

    Args:
        table: chunk table the RAFT examples retrieve from (default from settings).
        config_file: optional TOML settings file (the `[dataset]` section says where the data is).
    """
    settings = load_settings(config_file)
    build = build_examples(settings, table)
    path = save_dataset(build, settings)
    summary = {"path": str(path), "hash": build.hash, "counts": build.counts(), "rejects": str(path / "rejects.jsonl")}
    create_markdown_artifact(key="dataset", markdown=dataset_markdown(summary, build.rejects), description="training dataset build")
    return summary
