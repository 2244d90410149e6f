"""Scheduled retraining semantics: train only when something that shapes the adapter changed.

The training key hashes the base model, the dataset's content hash and the recipe settings. When the
newest registered adapter has the same key the run is skipped (and says so), unless forced. A run
trains in `adapters/.work/<key>/`, so a crashed run's rerun resumes from its last checkpoint, and only
a finished adapter is moved into the registry: a failed run leaves the registry untouched.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from tasks.config import Settings
from tasks.dataset import SavedDataset
from tasks.models import generator_fingerprint
from tasks.registry import Adapter, Registry, RegistryError, code_version
from tasks.store import StoreError, writer_lock


@dataclass
class TrainPlan:
    train: bool
    reason: str
    key: str
    previous: str | None  # the newest adapter before this run


def recipe_key(settings: Settings) -> dict[str, Any]:
    """The recipe part of the training key: what shapes the weights, without the caps on one run."""
    from tasks.train import recipe_identity

    recipe = recipe_identity(settings.training)
    recipe.pop("max_steps", None)  # a cap on this run, not part of what the adapter is
    return recipe


def training_key(settings: Settings, dataset_hash: str) -> str:
    parts = [generator_fingerprint(settings.generator.model, settings.models_dir), dataset_hash, json.dumps(recipe_key(settings), sort_keys=True)]
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def plan(registry: Registry, settings: Settings, dataset: SavedDataset, force: bool = False) -> TrainPlan:
    """Whether to train, and why (the reason is shown in the CLI and the run's artifact)."""
    key = training_key(settings, dataset.hash)
    latest = registry.latest()
    previous = latest.name if latest else None
    if latest is None:
        return TrainPlan(True, "no adapter yet", key, None)
    if force:
        return TrainPlan(True, "forced (--force)", key, previous)
    cut = latest.metadata.get("training", {})
    if latest.metadata.get("training_key") == key and cut.get("stopped_for_time"):
        return TrainPlan(
            True, f"resuming: adapter {latest.name} stopped at training.max_minutes after {cut.get('steps')} of "
            f"{cut.get('total_steps')} steps", key, previous,
        )
    if latest.metadata.get("training_key") == key:
        return TrainPlan(False, f"dataset {dataset.hash[:12]}, base model and recipe unchanged since adapter {latest.name}", key, previous)
    changed = [
        what
        for what, field, value in (
            ("dataset", "dataset_hash", dataset.hash),
            ("base model", "base_model_fingerprint", generator_fingerprint(settings.generator.model, settings.models_dir)),
            ("recipe", "recipe", recipe_key(settings)),
        )
        if latest.metadata.get(field) != value
    ]
    return TrainPlan(True, f"{' and '.join(changed) or 'training key'} changed since adapter {latest.name}", key, previous)


def train_candidate(
    registry: Registry,
    settings: Settings,
    dataset: SavedDataset,
    key: str,
    max_steps: int | None = None,
    on_step: Callable[[Any], None] | None = None,
) -> Adapter:
    """Train with the recipe in the key's work directory, then register the adapter as a candidate."""
    # One run per key at a time: a second one would share (and clean up) the first one's checkpoints.
    with ExitStack() as held:
        try:
            held.enter_context(writer_lock(registry.locks_dir, f"training-{key[:16]}", wait_s=5.0))
        except StoreError as e:
            raise RegistryError(
                f"another training of the same dataset, base model and recipe (key {key[:16]}) is running; "
                "it will register the adapter, so this run stops without touching its checkpoints"
            ) from e
        return _train_and_register(registry, settings, dataset, key, max_steps, on_step)


def _train_and_register(
    registry: Registry, settings: Settings, dataset: SavedDataset, key: str, max_steps: int | None, on_step: Callable[[Any], None] | None
) -> Adapter:
    from tasks.train import train_lora

    started = datetime.now(timezone.utc)
    work = registry.work_dir(key)
    result = train_lora(
        settings.generator.model,
        dataset.train,
        dataset.validation,
        settings.training,
        work_dir=work,
        models_dir=settings.models_dir,
        threads=settings.threads,
        max_steps=max_steps,
        on_step=on_step,
    )
    counts = dataset.manifest.get("counts", {})
    metadata = {
        "created_at": started.isoformat(timespec="seconds"),
        "base_model": settings.generator.model,
        "base_model_fingerprint": generator_fingerprint(settings.generator.model, settings.models_dir),
        "dataset_hash": dataset.hash,
        "dataset_path": str(dataset.path),
        "dataset_size": {"train": counts.get("train", len(dataset.train)), "validation": counts.get("validation", len(dataset.validation))},
        "table_version": dataset.manifest.get("table_version"),
        # Who may be served this adapter (tasks/registry.py:withheld_for); null for datasets built
        # before ragtune recorded it, and such an adapter is served to no one.
        "access": dataset.manifest.get("access"),
        "method": settings.training.method,
        "recipe": recipe_key(settings),
        "max_steps": max_steps or settings.training.max_steps or None,
        "training_key": key,
        "training": result.as_dict(),
        "train_loss": result.train_loss,
        "val_loss": result.val_loss,
        "wall_s": result.wall_s,
        "tokens_per_s": result.tokens_per_s,
        "code_version": code_version(),
    }
    name = f"{started:%Y%m%d-%H%M%S}-{key[:8]}"
    adapter = registry.register(Path(result.adapter_dir), name, metadata)
    return adapter
