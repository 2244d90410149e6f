"""Which engine a flow fans its tasks out on: `orchestration.task_runner` → a Prefect task runner.

    thread            ThreadPoolTaskRunner; the ingest flow then runs its tasks in its own process, as always
    dask              prefect-dask on a local cluster of `orchestration.workers` single-threaded processes
    dask://HOST:PORT  an existing Dask scheduler
    ray               prefect-ray on a local Ray with `orchestration.workers` CPUs
    ray://HOST:PORT   an existing Ray cluster (Ray Client)

prefect-dask / prefect-ray are imported only when chosen (`pip install 'ragtune[dask]'` / `'ragtune[ray]'`).
A flow's own task runner is fixed when it is decorated; this one is entered as a context manager inside
the flow run (the use Prefect documents for task runners), so the engine starts only when there is
work and is torn down when the block ends, even on error.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner


class EngineMissing(ImportError):
    """The configured engine's Prefect integration is not installed."""


def _require(module: str, extra: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise EngineMissing(
            f"orchestration.task_runner needs {module.replace('_', '-')}, which is not installed ({e}): "
            f"run `pip install 'ragtune[{extra}]'`, or set RAGTUNE_ORCHESTRATION__TASK_RUNNER=thread"
        ) from e


def task_runner(settings: Any) -> TaskRunner:
    """A fresh, unstarted task runner for `settings.orchestration`."""
    o = settings.orchestration
    choice = o.task_runner
    if choice == "thread":
        return ThreadPoolTaskRunner(max_workers=o.workers)
    if choice == "dask" or choice.startswith(("dask://", "tcp://")):
        runner_cls = _require("prefect_dask", "dask").DaskTaskRunner
        if choice != "dask":
            return runner_cls(address="tcp://" + choice.split("://", 1)[1])
        # One thread per worker process: torch with 2 threads per worker collapses under contention
        # (distributed's nanny also sets OMP_NUM_THREADS=1 before spawning). `dashboard_address=None`
        # still binds :8787, so ask for a free port instead.
        return runner_cls(
            cluster_kwargs={"n_workers": o.workers, "threads_per_worker": 1, "processes": True, "dashboard_address": ":0"}
        )
    if choice == "ray" or choice.startswith("ray://"):
        runner_cls = _require("prefect_ray", "ray").RayTaskRunner
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # read by ray.init; ragtune never phones home
        if choice != "ray":
            return runner_cls(address=choice)
        return runner_cls(init_kwargs={"num_cpus": o.workers, "include_dashboard": False})
    raise ValueError(f"orchestration.task_runner {choice!r}: use thread, dask, dask://HOST:PORT, ray or ray://HOST:PORT")


def fans_out(settings: Any) -> bool:
    """Whether tasks go to an engine (dask/ray) rather than run in the flow's own process."""
    return settings.orchestration.task_runner != "thread"


@contextmanager
def engine(settings: Any, needed: bool = True) -> Iterator[TaskRunner | None]:
    """The started engine for the block, or None (run the tasks in the flow: `thread`, or nothing to do)."""
    if not needed or not fans_out(settings):
        yield None
        return
    with _api_for_workers(remote="://" in settings.orchestration.task_runner), task_runner(settings) as runner:
        yield runner


@contextmanager
def _api_for_workers(remote: bool = False) -> Iterator[None]:
    """Point engine workers at this process's Prefect API. Without PREFECT_API_URL (the CLI's default)
    the flow talks to a temporary server it started; workers would each start their own (~10-20 s
    each, their task runs recorded nowhere). The URL travels in the settings context Prefect
    serialises with every submitted task. Remote engines need a real PREFECT_API_URL (infra/README.md)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if PREFECT_API_URL.value():
        yield
        return
    if remote:
        raise ValueError(
            "a remote Dask/Ray cluster needs a Prefect server its workers can reach: set PREFECT_API_URL "
            "(e.g. `make serve` and `source .ragtune/server/env.sh`, with the server listening on an address the workers reach)"
        )
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()  # a per-process singleton: the one this flow's client started
    server.start()  # no-op when already running
    with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
        yield


def worker_settings(settings: Any) -> Any:
    """The settings sent to engine workers: one torch thread and one parse sandbox each, since the
    engine's workers are the parallelism."""
    return settings.model_copy(
        update={"torch_threads": 1, "ingest": settings.ingest.model_copy(update={"parse_workers": 1})}
    )
