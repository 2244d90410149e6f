"""Subprocesses for the reliability drills: start, watch (stderr lines with timestamps, peak RSS), kill -9,
and find what a killed process left running.

Every drill process starts in its own session, so its process group holds it and everything it started
(parse workers, Prefect's temporary server) unless a child moved itself elsewhere; after a kill the
survivors in that group are listed by kind, then killed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import psutil

from bench.common import REPO

RAGTUNE = REPO / ".venv" / "bin" / "ragtune"
PYTHON = REPO / ".venv" / "bin" / "python"

# Prefect's console lines: "12:00:01.234 | INFO    | Task run 'write-chunks-a1b' - Finished in state Completed()"
_TASK_LINE = re.compile(r"Task run '(?P<run>[^']+)' - (?P<what>.*)")
_FLOW_LINE = re.compile(r"Flow run '[^']+' - (?P<what>.*)")


def drill_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a drill's ragtune process: its own home, the hashing embedder, Prefect at INFO
    (its task-run lines tell which stage a kill landed in), no RAGTUNE_* settings from the caller."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAGTUNE_", "PREFECT_"))}
    env.update(
        RAGTUNE_HOME=str(home),
        RAGTUNE_EMBEDDER__MODEL="hashing:64",
        RAGTUNE_PROGRESS="0",
        RAGTUNE_TORCH_THREADS="1",
        PREFECT_HOME=str(home / "prefect"),
        PREFECT_LOGGING_LEVEL="INFO",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180",
        HF_HUB_OFFLINE="1",
        DO_NOT_TRACK="1",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def event_of(line: str) -> str | None:
    m = _TASK_LINE.search(line)
    if m:
        what, name = m.group("what"), task_name(m.group("run"))
        if what.startswith("Finished in state"):
            return f"{name} finished"
        return f"{name} retry" if "Retry " in what else None
    m = _FLOW_LINE.search(line)
    if m:
        what = m.group("what")
        if what.startswith("Beginning flow run"):
            return "flow started"
        if what.startswith("Finished in state"):
            return "flow " + what.split("state", 1)[1].strip().split("(")[0].lower()
    return None


def task_name(run_name: str) -> str:
    """'write-chunks-a1b' -> 'write-chunks' (Prefect appends a short key to the task name)."""
    return run_name.rsplit("-", 1)[0] if "-" in run_name else run_name


@dataclass
class Proc:
    """One watched subprocess."""

    argv: list[str]
    popen: subprocess.Popen
    t0: float  # time.monotonic() at start
    stderr: list[tuple[float, str]] = field(default_factory=list)  # (seconds since start, line)
    stdout: list[tuple[float, str]] = field(default_factory=list)
    returncode: int | None = None
    wall_s: float | None = None
    maxrss_mb: float | None = None  # wait4: the largest of the process and its waited-for descendants
    peak_rss_mb: float = 0.0  # sampled: the main process alone
    peak_children_rss_mb: float = 0.0  # sampled: the largest single descendant
    killed_at_s: float | None = None
    leftovers: list[dict[str, Any]] = field(default_factory=list)
    _waiter: threading.Thread | None = None
    _readers: list[threading.Thread] = field(default_factory=list)
    _stop_sampling: threading.Event = field(default_factory=threading.Event)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def running(self) -> bool:
        return self.returncode is None

    # --- what the process said -----------------------------------------------------------

    def events(self) -> list[tuple[float, str]]:
        """(t, event) from Prefect's lines: 'flow started', '<task> finished', '<task> retry', 'flow <state>'."""
        return [(t, e) for t, line in list(self.stderr) if (e := event_of(line))]

    def wait_for(self, event: str, timeout_s: float) -> float | None:
        """Block until `event` is logged (its time since start), or None when the process ends first or on timeout."""
        seen, deadline = 0, time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            lines = self.stderr[seen:]
            seen += len(lines)
            for t, line in lines:
                if event_of(line) == event:
                    return t
            if not self.running():
                return None
            time.sleep(0.001)
        return None

    def phase_at(self, t: float) -> str:
        """Where the run was at `t` s: 'startup' before the flow began, else 'after <last finished task>'."""
        last = "startup"
        for when, event in self.events():
            if when > t:
                break
            if event == "flow started":
                last = "flow started"
            elif event.endswith(" finished"):
                last = "after " + event[: -len(" finished")]
            elif event.startswith("flow "):
                last = event
        return last

    def first(self, event: str) -> float | None:
        return next((t for t, e in self.events() if e == event), None)

    def json_out(self) -> dict[str, Any] | None:
        """The last JSON object printed on stdout (`--json` summaries)."""
        for _, line in reversed(self.stdout):
            line = line.strip()
            if line.startswith("{"):
                try:
                    return json.loads(line)
                except ValueError:
                    continue
        return None

    def stderr_text(self) -> str:
        return "".join(line for _, line in self.stderr)

    def summary(self) -> dict[str, Any]:
        return {
            "argv": [Path(a).name if i == 0 else a for i, a in enumerate(self.argv)],
            "returncode": self.returncode,
            "wall_s": None if self.wall_s is None else round(self.wall_s, 2),
            "killed_at_s": None if self.killed_at_s is None else round(self.killed_at_s, 2),
            "peak_rss_mb": round(self.peak_rss_mb, 1),
            "peak_child_rss_mb": round(self.peak_children_rss_mb, 1),
            "maxrss_tree_mb": None if self.maxrss_mb is None else round(self.maxrss_mb, 1),
        }


def start(argv: Sequence[str], env: dict[str, str], cwd: Path, sample_rss: bool = True) -> Proc:
    """Start `argv` in a new session, reading both pipes line by line on threads."""
    popen = subprocess.Popen(
        [str(a) for a in argv], env=env, cwd=str(cwd), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, errors="replace", bufsize=1, start_new_session=True,
    )
    proc = Proc(argv=[str(a) for a in argv], popen=popen, t0=time.monotonic())

    def read(stream: Any, sink: list[tuple[float, str]]) -> None:
        for line in stream:
            sink.append((proc.elapsed(), line))
        stream.close()

    for stream, sink in ((popen.stdout, proc.stdout), (popen.stderr, proc.stderr)):
        reader = threading.Thread(target=read, args=(stream, sink), daemon=True)
        reader.start()
        proc._readers.append(reader)

    def wait4() -> None:
        # wait4 instead of Popen.wait: it also returns the child's resource usage (ru_maxrss, KiB on Linux).
        _, status, usage = os.wait4(popen.pid, 0)
        proc.wall_s = proc.elapsed()
        proc.maxrss_mb = usage.ru_maxrss / 1024
        proc.returncode = popen.returncode = os.waitstatus_to_exitcode(status)
        proc._stop_sampling.set()

    proc._waiter = threading.Thread(target=wait4, daemon=True)
    proc._waiter.start()
    if sample_rss:
        threading.Thread(target=_sample, args=(proc,), daemon=True).start()
    return proc


def _sample(proc: Proc, every_s: float = 0.1) -> None:
    try:
        main = psutil.Process(proc.pid)
    except psutil.Error:
        return
    while not proc._stop_sampling.wait(every_s):
        try:
            proc.peak_rss_mb = max(proc.peak_rss_mb, main.memory_info().rss / 2**20)
            for child in main.children(recursive=True):
                try:
                    proc.peak_children_rss_mb = max(proc.peak_children_rss_mb, child.memory_info().rss / 2**20)
                except psutil.Error:
                    pass
        except psutil.Error:
            return


def wait(proc: Proc, timeout_s: float, readers_s: float = 10.0) -> Proc:
    """Wait for the process to exit; on timeout kill its whole group and mark it (returncode -9).
    Then up to `readers_s` for its pipes to close (a surviving child that inherited them keeps them open)."""
    assert proc._waiter is not None
    proc._waiter.join(timeout_s)
    if proc._waiter.is_alive():
        proc.killed_at_s = proc.elapsed()
        _killpg(proc.pid)
        proc._waiter.join(30)
    deadline = time.monotonic() + readers_s
    for reader in proc._readers:
        reader.join(max(0.0, deadline - time.monotonic()))
    return proc


def kill(proc: Proc, settle_s: float = 2.0, spare: Sequence[str] = ()) -> Proc:
    """SIGKILL the main process only (as the OOM killer or a power cut would), then list what is still
    running in its process group after `settle_s` (orphaned parse workers exit within ~1 s by design),
    and kill those too, except survivors of a kind in `spare` (their pids stay in `proc.leftovers`)."""
    proc.killed_at_s = proc.elapsed()
    try:
        os.kill(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    wait(proc, 30, readers_s=0.0)
    time.sleep(settle_s)
    proc.leftovers = survivors(proc.pid)
    for p in proc.leftovers:
        if p["kind"] not in spare:
            kill_pid(p["pid"])
    deadline = time.monotonic() + 2.0
    for reader in proc._readers:
        reader.join(max(0.0, deadline - time.monotonic()))
    return proc


def kill_pid(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def survivors(pgid: int) -> list[dict[str, Any]]:
    """Processes still in process group `pgid`, by kind."""
    found = []
    for p in psutil.process_iter(["pid", "cmdline", "memory_info"]):
        try:
            if os.getpgid(p.pid) != pgid or p.pid == os.getpid():
                continue
        except (ProcessLookupError, PermissionError):
            continue
        cmd = " ".join(p.info.get("cmdline") or [])
        if "uvicorn" in cmd and "prefect" in cmd:
            kind = "prefect temporary server"
        elif "_worker_main" in cmd:
            kind = "parse worker"
        else:
            kind = "other: " + cmd[:80]
        rss = p.info.get("memory_info")
        found.append({"pid": p.pid, "kind": kind, "rss_mb": round(rss.rss / 2**20, 1) if rss else None})
    return found


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def ingest_argv(source: Path, *extra: str) -> list[str]:
    return [str(RAGTUNE), "ingest", str(source), "--json", *extra]


def run_ingest(source: Path, home: Path, cwd: Path, timeout_s: float = 900, env_extra: dict[str, str] | None = None, *extra: str) -> Proc:
    """`ragtune ingest SOURCE --json` to the end (killed after `timeout_s`)."""
    return wait(start(ingest_argv(source, *extra), drill_env(home, **(env_extra or {})), cwd), timeout_s)
