"""Failures, on purpose and by policy: fault injection for reliability drills, and which failures to retry.

    RAGTUNE_FAULTS=0.3 RAGTUNE_FAULTS_SEED=7 ragtune ingest DIR     # ~30 % of task attempts raise InjectedFault
    RAGTUNE_FAULTS=1 RAGTUNE_FAULTS_TASKS=write-ledger ragtune ...  # only that task, every attempt

Off unless `RAGTUNE_FAULTS` is set: `make drills` (bench/drills.py) and tests set it; nothing in a
deployment should. Every task body in `flows/` starts with `maybe_fail("<task name>")`, so an
injected failure happens where a real transient one would surface to Prefect (before the task's
work; a task's writes must be idempotent anyway, since a real failure can come after them), and
Prefect's retries and the flows' error handling do the rest.

Reproducible: the n-th draw for a task name in a process is `blake2b(seed, name, n)`, so a run is
replayed exactly by its seed, whatever other tasks draw in between. Counts of draws and injected
failures per task are kept for the drill's report (`stats()`).

The variables are read at each call, not at import (tests switch them on and off); they are not part
of the typed settings because they configure a test harness, not ragtune.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import Counter
from typing import Any, Callable

RATE_ENV = "RAGTUNE_FAULTS"
SEED_ENV = "RAGTUNE_FAULTS_SEED"
TASKS_ENV = "RAGTUNE_FAULTS_TASKS"

_lock = threading.Lock()
_draws: Counter[str] = Counter()
_injected: Counter[str] = Counter()


class InjectedFault(RuntimeError):
    """A failure injected by `maybe_fail` (RAGTUNE_FAULTS is set), never a real one."""


def _rate() -> float:
    raw = os.environ.get(RATE_ENV, "").strip()
    if not raw:
        return 0.0
    try:
        rate = float(raw)
    except ValueError:
        rate = -1.0
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"{RATE_ENV}={raw!r} is not a failure rate: give a number from 0 to 1 (0.3 = 30 % of task attempts), or unset it")
    return rate


def _seed() -> str:
    return os.environ.get(SEED_ENV, "0").strip() or "0"


def _targets() -> set[str] | None:
    names = {n.strip() for n in os.environ.get(TASKS_ENV, "").split(",") if n.strip()}
    return names or None


def draw(seed: str, name: str, n: int) -> float:
    """The n-th draw for task `name` under `seed`: a float in [0, 1), the same in every process."""
    digest = hashlib.blake2b(f"{seed}|{name}|{n}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def maybe_fail(name: str) -> None:
    """Raise `InjectedFault` for this attempt of task `name` with probability RAGTUNE_FAULTS; no-op when unset."""
    rate = _rate()
    if rate == 0.0:
        return
    targets = _targets()
    if targets is not None and name not in targets:
        return
    seed = _seed()
    with _lock:
        n = _draws[name]
        _draws[name] += 1
        fail = draw(seed, name, n) < rate
        if fail:
            _injected[name] += 1
    if fail:
        raise InjectedFault(
            f"fault injected into task {name!r} (attempt draw {n}, {RATE_ENV}={rate:g}, {SEED_ENV}={seed}); "
            f"unset {RATE_ENV} to stop injecting failures"
        )


def stats() -> dict[str, dict[str, int]]:
    """Draws (task attempts seen while injection was on) and injected failures, per task name, in this process."""
    with _lock:
        return {"draws": dict(_draws), "injected": dict(_injected)}


def reset() -> None:
    """Forget the counts: the next run's draws start again from n = 0 (the same faults for the same seed)."""
    with _lock:
        _draws.clear()
        _injected.clear()


def retry_unless(*permanent: type[BaseException]) -> Callable[[Any, Any, Any], bool]:
    """A Prefect `retry_condition_fn`: retry any failure except the `permanent` exception types, which
    the same inputs would raise again (a broken data contract, an unreadable source root)."""

    def retry(task: Any, task_run: Any, state: Any) -> bool:
        # Prefect passes the failure as a Failed state whose data is the exception.
        return not isinstance(getattr(state, "data", None), permanent)

    return retry
