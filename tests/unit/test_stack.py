"""`infra/stack.py` without a server: what `make serve` records, writes and stops."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from infra import stack


def test_missing_postgres_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setattr(stack.shutil, "which", lambda name: None)
    monkeypatch.setattr(stack, "PG_LIB", tmp_path)
    with pytest.raises(stack.StackError, match=r"apt-get install -y postgresql"):
        stack.postgres_bin("initdb")
    (tmp_path / "15" / "bin").mkdir(parents=True)
    (tmp_path / "15" / "bin" / "initdb").write_text("")
    assert stack.postgres_bin("initdb") == str(tmp_path / "15" / "bin" / "initdb")


def test_an_external_database_is_used_as_it_is_and_its_password_never_printed(monkeypatch, tmp_path):
    url = "postgresql+asyncpg://prefect:s3cret@db.internal:5432/prefect"
    monkeypatch.setenv("PREFECT_API_DATABASE_CONNECTION_URL", url)
    monkeypatch.setenv("RAGTUNE_HOME", str(tmp_path))
    cfg = stack.StackConfig.from_env()
    assert not cfg.own_database and cfg.db_url == url
    assert "s3cret" not in stack._redact(url) and "db.internal:5432/prefect" in stack._redact(url)
    monkeypatch.delenv("PREFECT_API_DATABASE_CONNECTION_URL")
    own = stack.StackConfig.from_env(postgres_port=6001)
    assert own.own_database and own.db_url.endswith("@127.0.0.1:6001/prefect")


def test_env_file_sources_in_a_shell(tmp_path):
    home = tmp_path / "it's home"
    cfg = stack.StackConfig(home=home, server_port=4999)
    env_file = stack.write_env_file(cfg)
    out = subprocess.run(["bash", "-c", f"source {str(env_file)!r} && printf '%s|%s' \"$PREFECT_API_URL\" \"$RAGTUNE_HOME\""], capture_output=True, text=True, check=True)
    assert out.stdout == f"http://127.0.0.1:4999/api|{home}"


def test_a_corrupt_record_names_the_file(tmp_path):
    record = tmp_path / "stack.json"
    record.write_text("{not json")
    with pytest.raises(stack.StackError, match=str(record)):
        stack.StackState.load(record)


def test_down_stops_exactly_the_recorded_processes_and_their_children(tmp_path):
    cfg = stack.StackConfig(home=tmp_path)
    # A "worker" that starts a child of its own, like a process worker running a flow.
    # Its second child runs in a session of its own, as Prefect's process worker starts flow runs.
    code = ("import subprocess, sys, time; sleep = [sys.executable, '-c', 'import time; time.sleep(600)']; "
            "subprocess.Popen(sleep); subprocess.Popen(sleep, start_new_session=True); time.sleep(600)")
    pid = stack._spawn([sys.executable, "-c", code], env={"PATH": "/usr/bin:/bin"}, log_file=cfg.state_dir / "w.log")
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        state = stack.StackState(api_url=cfg.api_url, ui_url=cfg.ui_url)
        state.record("worker-x", pid)
        # A recorded PID that now belongs to another process (reused after a reboot) is left alone.
        state.pids["worker-stale"], state.starts["worker-stale"] = bystander.pid, "1"
        state.save(cfg.state_dir / "stack.json")
        deadline, children = time.monotonic() + 30, []
        while len(children) < 2 and time.monotonic() < deadline:  # the worker's child starts (slowly on a busy machine)
            time.sleep(0.2)
            children = subprocess.run(["pgrep", "-g", str(pid)], capture_output=True, text=True).stdout.split()
        assert len(children) == 2
        deadline, flow_run = time.monotonic() + 30, []
        while not flow_run and time.monotonic() < deadline:
            time.sleep(0.2)
            flow_run = [p for p in stack._descendants(pid) if str(p) not in children]
        assert len(flow_run) == 1 and os.getpgid(flow_run[0]) == flow_run[0]
        messages: list[str] = []
        stack.down(cfg, log=messages.append)
        assert not stack._alive(pid)
        assert not any(stack._alive(int(c)) for c in children)
        assert not stack._alive(flow_run[0]), "a flow run in its own session outlived `down`"
        assert bystander.poll() is None, "down must not touch processes it did not start"
        assert any("worker-stale" in m and "no longer running" in m for m in messages)
        assert not (cfg.state_dir / "stack.json").exists()
        stack.down(cfg, log=messages.append)
        assert "nothing to stop" in messages[-1]
    finally:
        bystander.kill()
