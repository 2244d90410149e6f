"""The server tier: the stack `make serve` brings up (PostgreSQL, Prefect server, pools, deployments,
automations, workers), started once per session on free ports under a temporary home, and torn down
even when a test fails.

Needs Debian's `postgresql` (and `chromium` for the browser tests): `.ci/run` installs them; elsewhere
the tier is skipped with a message naming the missing package.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from infra import stack

REPO = Path(__file__).resolve().parents[2]
OUTPUT = Path(os.environ.get("RAGTUNE_TEST_OUTPUT", REPO / ".test-output")) / "server"
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}

# What flow runs on the workers use: the deterministic hashing embedder (no model load), one thread.
WORKER_ENV = {
    "RAGTUNE_EMBEDDER__MODEL": "hashing:32",
    "RAGTUNE_TORCH_THREADS": "1",
    "RAGTUNE_PROGRESS": "0",
    "PREFECT_LOGGING_LEVEL": "INFO",
}


def pytest_collection_modifyitems(items):
    for item in items:
        if Path(str(item.fspath)).is_relative_to(Path(__file__).parent):
            item.add_marker(pytest.mark.server)


def _missing() -> str | None:
    try:
        stack.postgres_bin("pg_ctl")
        stack.postgres_bin("initdb")
    except stack.StackError:
        return "PostgreSQL is not installed (apt-get install -y postgresql)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Api:
    """The Prefect REST API as the UI calls it (plain HTTP, no Prefect client state in the test process)."""

    def __init__(self, url: str):
        import httpx

        self.url = url
        self.http = httpx.Client(base_url=url, timeout=30)

    def get(self, path: str) -> Any:
        r = self.http.get(path)
        r.raise_for_status()
        return r.json()

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        r = self.http.post(path, json=body or {})
        r.raise_for_status()
        return r.json() if r.content else None

    def patch(self, path: str, body: dict[str, Any]) -> None:
        self.http.patch(path, json=body).raise_for_status()

    def deployment(self, name: str) -> dict[str, Any]:
        found = self.post("/deployments/filter", {"deployments": {"name": {"any_": [name]}}})
        assert found, f"deployment {name!r} not on the server"
        return found[0]

    def flow_runs(self, deployment_id: str) -> list[dict[str, Any]]:
        return self.post("/flow_runs/filter", {"deployments": {"id": {"any_": [deployment_id]}}, "sort": "EXPECTED_START_TIME_ASC"})

    def wait_for_run(self, run_id: str, timeout_s: float = 240) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            run = self.get(f"/flow_runs/{run_id}")
            if run["state_type"] in TERMINAL:
                return run
            time.sleep(1)
        raise AssertionError(f"flow run {run_id} not finished after {timeout_s:.0f} s (state {run['state_type']})")

    def artifacts(self, run_id: str) -> list[dict[str, Any]]:
        return self.post("/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run_id]}}})


class Webhook:
    """A local HTTP endpoint that records what the notification automation posts to it."""

    def __init__(self):
        import http.server
        import threading

        received = self.received = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - the stdlib's name
                received.append(self.rfile.read(int(self.headers.get("content-length", 0))).decode())
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/notify"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


@pytest.fixture(scope="session")
def webhook():
    hook = Webhook()
    yield hook
    hook.close()


@pytest.fixture(scope="session")
def server_stack(webhook, tiny_llama):
    """`infra.stack.up` on free ports under a temporary home; `down` and the home removed afterwards."""
    missing = _missing()
    if missing:
        if os.environ.get("RAGTUNE_REQUIRE_SERVER_TIER") == "1":
            pytest.fail(f"server tier required but {missing}")
        pytest.skip(f"server tier skipped: {missing}")
    base = Path(tempfile.mkdtemp(prefix="ragtune-server-"))
    base.chmod(0o755)  # as root the cluster runs as `postgres`, which must reach its data directory
    cfg = stack.StackConfig(
        home=base / "home",
        server_port=free_port(),
        postgres_port=free_port(),
        worker_poll_seconds=2,
        scheduler_loop_seconds=5,
        database_url=None,
    )
    env = {
        **WORKER_ENV,
        "RAGTUNE_EVENTS__NOTIFY_URL": webhook.url,  # the regression automation posts here
        "RAGTUNE_GENERATOR__MODEL": str(tiny_llama),  # retrain / evaluate runs train and answer with the tiny llama
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    OUTPUT.mkdir(parents=True, exist_ok=True)
    try:
        try:
            stack.up(cfg, log=lambda m: print(f"[stack] {m}"))
        except Exception:
            _dump_logs(cfg)
            raise
        # Every first ingest of a table changes all its chunks, so the retrain-on-change automation
        # starts a retrain for each: the training pool stays paused except in tests that train.
        Api(cfg.api_url).patch("/work_pools/ragtune-train", {"is_paused": True})
        yield cfg
    finally:
        _dump_logs(cfg)
        try:
            stack.down(cfg, log=lambda m: print(f"[stack] {m}"))
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            shutil.rmtree(base, ignore_errors=True)


def _dump_logs(cfg: stack.StackConfig) -> None:
    """Keep the stack's logs as test output (they go away with the temporary home)."""
    for log in cfg.state_dir.glob("*.log"):
        shutil.copy(log, OUTPUT / log.name)


@pytest.fixture(scope="session")
def api(server_stack) -> Api:
    return Api(server_stack.api_url)
