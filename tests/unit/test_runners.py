"""`orchestration.task_runner` → the Prefect task runner (nothing is started here)."""

from __future__ import annotations

import os
import sys

import pytest
from prefect.task_runners import ThreadPoolTaskRunner

from flows import runners
from tasks.config import Settings


def _settings(runner: str, workers: int = 2) -> Settings:
    return Settings(orchestration={"task_runner": runner, "workers": workers})


def test_thread_is_the_default_and_runs_in_the_flow():
    s = Settings()
    assert s.orchestration.task_runner == "thread"
    assert isinstance(runners.task_runner(s), ThreadPoolTaskRunner)
    assert not runners.fans_out(s)
    with runners.engine(s) as engine:
        assert engine is None


def test_local_dask_is_single_threaded_processes_without_the_default_dashboard_port():
    from prefect_dask import DaskTaskRunner

    r = runners.task_runner(_settings("dask", workers=3))
    assert isinstance(r, DaskTaskRunner) and r.address is None
    assert r.cluster_kwargs == {"n_workers": 3, "threads_per_worker": 1, "processes": True, "dashboard_address": ":0"}


@pytest.mark.parametrize("choice", ["dask://127.0.0.1:8786", "tcp://127.0.0.1:8786"])
def test_existing_dask_cluster_by_address(choice):
    r = runners.task_runner(_settings(choice))
    assert r.address == "tcp://127.0.0.1:8786" and not r.cluster_kwargs


def test_ray_local_and_remote(monkeypatch):
    from prefect_ray import RayTaskRunner

    monkeypatch.delenv("RAY_USAGE_STATS_ENABLED", raising=False)
    local = runners.task_runner(_settings("ray", workers=2))
    assert isinstance(local, RayTaskRunner) and local.address is None
    assert local.init_kwargs["num_cpus"] == 2 and local.init_kwargs["include_dashboard"] is False
    assert os.environ["RAY_USAGE_STATS_ENABLED"] == "0"
    assert runners.task_runner(_settings("ray://head:10001")).address == "ray://head:10001"


def test_nothing_to_do_starts_no_engine():
    with runners.engine(_settings("dask"), needed=False) as engine:
        assert engine is None


@pytest.mark.parametrize(("choice", "extra", "module"), [("dask", "dask", "prefect_dask"), ("ray://h:1", "ray", "prefect_ray")])
def test_missing_integration_names_the_extra(monkeypatch, choice, extra, module):
    monkeypatch.setitem(sys.modules, module, None)  # what an absent package looks like to import
    with pytest.raises(runners.EngineMissing, match=rf"pip install 'ragtune\[{extra}\]'"):
        runners.task_runner(_settings(choice))


def test_workers_get_one_thread_and_one_sandbox():
    s = Settings(torch_threads=2, ingest={"parse_workers": 4})
    w = runners.worker_settings(s)
    assert w.threads == 1 and w.ingest.parse_workers == 1
    assert s.threads == 2 and s.ingest.parse_workers == 4  # the flow's own settings are untouched


def test_unknown_runner_is_refused_by_settings():
    with pytest.raises(ValueError, match="use thread, dask"):
        _settings("spark")


def test_a_remote_engine_without_a_prefect_server_is_refused():
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: None}):
        with pytest.raises(ValueError, match="set PREFECT_API_URL"):
            with runners.engine(_settings("dask://127.0.0.1:9")):
                pass
