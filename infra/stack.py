"""`make serve` / `make serve-stop`: the stack a team runs, on one machine.

    python -m infra.stack up        # PostgreSQL → Prefect server → work pools → deployments → automations → workers
    python -m infra.stack down      # stops exactly what `up` started (recorded PIDs); data stays
    python -m infra.stack status

Everything lives under `$RAGTUNE_HOME/server/`: `stack.json` (what was started: PIDs, ports, whether
the database is ours), `env.sh` (the environment a shell needs: `source .ragtune/server/env.sh`), and
one log per process. PostgreSQL is a private cluster under `$RAGTUNE_HOME/postgres` owned by ragtune,
unless `PREFECT_API_DATABASE_CONNECTION_URL` names a database, which is then used as it is.

`up` is idempotent: whatever is already running and healthy is reused, the pools and deployments are
re-applied (same names, so nothing is duplicated), and a second `up` after `down` reuses the data.
Environment of the workers (and so of every flow run): the caller's, plus `RAGTUNE_HOME`,
`RAGTUNE_REPO` and `PREFECT_API_URL`.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEPLOYMENTS_FILE = REPO / "deployments" / "prefect.yaml"
# Pool name → concurrency limit (None = unlimited). Training and evaluation are CPU-bound: one at a time.
POOLS: dict[str, int | None] = {"ragtune-ingest": None, "ragtune-train": 1}
DEFAULT_SERVER_PORT = 4200
DEFAULT_POSTGRES_PORT = 5433  # not 5432: a system cluster may already listen there
PG_LIB = Path("/usr/lib/postgresql")  # Debian keeps each major version's binaries under <version>/bin
INSTALL_HINT = "install PostgreSQL 15 first: apt-get install -y postgresql (Debian/Ubuntu)"


class StackError(Exception):
    """The stack cannot start; the message says what to do."""


@dataclass
class StackConfig:
    home: Path
    server_port: int = DEFAULT_SERVER_PORT
    postgres_port: int = DEFAULT_POSTGRES_PORT
    host: str = "127.0.0.1"
    database_url: str | None = None  # an external database; None = ragtune's own cluster
    worker_poll_seconds: float = 10.0
    scheduler_loop_seconds: float | None = None  # Prefect's default (60 s) when None
    timeout_s: float = 180.0

    @classmethod
    def from_env(cls, **overrides: Any) -> "StackConfig":
        env = os.environ
        values: dict[str, Any] = {
            "home": Path(env.get("RAGTUNE_HOME", ".ragtune")).expanduser().resolve(),
            "server_port": int(env.get("RAGTUNE_SERVER_PORT", DEFAULT_SERVER_PORT)),
            "postgres_port": int(env.get("RAGTUNE_POSTGRES_PORT", DEFAULT_POSTGRES_PORT)),
            "host": env.get("RAGTUNE_SERVER_HOST", "127.0.0.1"),
            "database_url": env.get("PREFECT_API_DATABASE_CONNECTION_URL") or None,
            "worker_poll_seconds": float(env.get("PREFECT_WORKER_QUERY_SECONDS", 10)),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @property
    def state_dir(self) -> Path:
        return self.home / "server"

    @property
    def postgres_dir(self) -> Path:
        return self.home / "postgres"

    @property
    def api_url(self) -> str:
        return f"http://{self.host}:{self.server_port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://{self.host}:{self.server_port}"

    @property
    def own_database(self) -> bool:
        return self.database_url is None

    @property
    def password_file(self) -> Path:
        return self.state_dir / "postgres-password"

    @property
    def db_url(self) -> str:
        if self.database_url:
            return self.database_url
        password = self.password_file.read_text().strip() if self.password_file.is_file() else ""
        return f"postgresql+asyncpg://postgres:{password}@127.0.0.1:{self.postgres_port}/prefect"


@dataclass
class StackState:
    """What `up` started, so `down` stops exactly that."""

    api_url: str
    ui_url: str
    postgres_dir: str | None = None  # set when ragtune's own cluster was started by `up`
    pids: dict[str, int] = field(default_factory=dict)  # process name -> PID (server, worker-<pool>)
    # process name -> its start time (/proc/<pid>/stat): a PID reused after a reboot is not ours
    starts: dict[str, str] = field(default_factory=dict)

    def running(self, name: str) -> bool:
        """Whether the process recorded as `name` is still the one `up` started."""
        pid = self.pids.get(name)
        return _alive(pid) and _start_time(pid) == self.starts.get(name)

    def record(self, name: str, pid: int) -> None:
        self.pids[name], self.starts[name] = pid, _start_time(pid)

    @classmethod
    def load(cls, path: Path) -> "StackState | None":
        if not path.is_file():
            return None
        try:
            return cls(**json.loads(path.read_text()))
        except (ValueError, TypeError) as e:
            raise StackError(f"{path} is not a stack record ({e}): stop the processes by hand and delete it") from e

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(path)


# --- PostgreSQL ---------------------------------------------------------------------------------


def postgres_bin(name: str) -> str:
    """A PostgreSQL binary from PATH or Debian's versioned directory; a clear error when absent."""
    found = shutil.which(name)
    if found:
        return found
    for d in sorted(PG_LIB.glob("*/bin"), reverse=True):
        if (d / name).is_file():
            return str(d / name)
    raise StackError(f"PostgreSQL's {name} was not found: {INSTALL_HINT}, or set PREFECT_API_DATABASE_CONNECTION_URL to an existing database")


def _as_postgres_user(cmd: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root: run them as the `postgres` user then."""
    if os.geteuid() != 0:
        return cmd
    runuser = shutil.which("runuser")
    if runuser is None:
        raise StackError("running as root needs `runuser` to start PostgreSQL as the postgres user")
    return [runuser, "-u", "postgres", "--", *cmd]


def _check_traversable(path: Path) -> None:
    """As root the cluster runs as `postgres`, which must reach its data directory."""
    if os.geteuid() != 0:
        return
    for parent in [path, *path.parents]:
        if parent.exists() and not os.stat(parent).st_mode & 0o001:
            raise StackError(
                f"{parent} is not traversable by the postgres user (mode {oct(os.stat(parent).st_mode & 0o777)}): "
                f"chmod o+x {parent}, or put RAGTUNE_HOME elsewhere"
            )


def ensure_postgres(cfg: StackConfig, log: Any) -> bool:
    """Start ragtune's own cluster (initdb on first use); returns True when this call started it."""
    data = cfg.postgres_dir
    pg_ctl, initdb = postgres_bin("pg_ctl"), postgres_bin("initdb")
    _check_traversable(data.parent)
    if not (data / "PG_VERSION").is_file():
        data.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(data, "postgres", "postgres")
        data.chmod(0o700)
        log(f"initialising PostgreSQL cluster in {data}")
        # TCP logins need a password (any local user can reach 127.0.0.1); the Unix socket lives in the
        # 0700 data directory, so only its owner reaches it.
        password = secrets.token_urlsafe(24)
        cfg.password_file.parent.mkdir(parents=True, exist_ok=True)
        cfg.password_file.write_text(password + "\n")
        cfg.password_file.chmod(0o600)
        pwfile = data.parent / f".pwfile-{os.getpid()}"
        pwfile.write_text(password + "\n")
        pwfile.chmod(0o600)
        if os.geteuid() == 0:
            shutil.chown(pwfile, "postgres", "postgres")
        try:
            _run(_as_postgres_user([initdb, "-D", str(data), "-U", "postgres", "--auth-local=trust", "--auth-host=scram-sha-256",
                                    f"--pwfile={pwfile}", "-E", "UTF8"]), "initdb")  # fmt: skip
        finally:
            pwfile.unlink(missing_ok=True)
    status = subprocess.run(_as_postgres_user([pg_ctl, "-D", str(data), "status"]), capture_output=True, text=True)
    started = False
    if status.returncode != 0:
        if _port_open(cfg.host, cfg.postgres_port):
            raise StackError(f"port {cfg.postgres_port} is taken by another process: set RAGTUNE_POSTGRES_PORT to a free port")
        log(f"starting PostgreSQL on 127.0.0.1:{cfg.postgres_port}")
        opts = f"-p {cfg.postgres_port} -k {data} -c listen_addresses=127.0.0.1"
        _run(_as_postgres_user([pg_ctl, "-D", str(data), "-o", opts, "-l", str(data / "postgres.log"), "-w", "-t", "60", "start"]), "pg_ctl start")
        started = True
    _ensure_database(cfg)
    return started


def _ensure_database(cfg: StackConfig) -> None:
    psql = postgres_bin("psql")
    base = [psql, "-h", "127.0.0.1", "-p", str(cfg.postgres_port), "-U", "postgres", "-tA"]
    env = {**os.environ, "PGPASSWORD": cfg.password_file.read_text().strip() if cfg.password_file.is_file() else ""}
    exists = _run([*base, "-c", "SELECT 1 FROM pg_database WHERE datname = 'prefect'"], "psql", env=env).strip()
    if exists != "1":
        _run([*base, "-c", "CREATE DATABASE prefect"], "create database", env=env)


def stop_postgres(data: Path) -> None:
    if (data / "postmaster.pid").exists():
        subprocess.run(_as_postgres_user([postgres_bin("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]), capture_output=True)


# --- processes ------------------------------------------------------------------------------------


def _run(cmd: list[str], what: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
    if done.returncode != 0:
        raise StackError(f"{what} failed (exit {done.returncode}): {(done.stderr or done.stdout).strip()[-2000:]}")
    return done.stdout


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not reaped) is not alive.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _start_time(pid: int | None) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _spawn(cmd: list[str], env: dict[str, str], log_file: Path) -> int:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as out:
        # Own session: `down` signals the whole group (the worker's flow-run subprocesses included).
        p = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    return p.pid


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (children, their children, ...), from /proc's parent links."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _stop_tree(pid: int, log: Any = print) -> None:
    """Stop `pid`'s process group and every descendant's own group. Prefect's process worker starts
    each flow run in a new session, so stopping the worker's group alone would orphan a running flow."""
    below = _descendants(pid)
    groups = {g for g in (_pgid(p) for p in below) if g is not None and g != pid}
    if groups:
        log(f"  also stopping {len(groups)} process group(s) it started (flow runs in progress show as crashed; a rerun resumes)")
    _stop(pid)
    for group in groups:
        _stop(group)


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def _stop(pid: int, timeout_s: float = 20.0) -> None:
    if not _alive(pid):
        return
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.2)
    if _alive(pid):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def healthy(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _wait_healthy(api_url: str, pid: int, log_file: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if healthy(api_url):
            return
        if not _alive(pid):
            raise StackError(f"the Prefect server exited during start-up; see {log_file}:\n{_tail(log_file)}")
        time.sleep(0.5)
    raise StackError(f"the Prefect server was not healthy within {timeout_s:.0f} s; see {log_file}:\n{_tail(log_file)}")


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def client_env(cfg: StackConfig) -> dict[str, str]:
    """What a shell (and every worker and CLI call) needs to talk to this stack."""
    return {
        "PREFECT_API_URL": cfg.api_url,
        "RAGTUNE_HOME": str(cfg.home),
        "RAGTUNE_REPO": str(REPO),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "HF_HUB_OFFLINE": "1",
    }


def _base_env(cfg: StackConfig) -> dict[str, str]:
    env = {**os.environ, **client_env(cfg)}
    # Processes of this stack keep Prefect's client-side state under the ragtune home.
    env["PREFECT_HOME"] = str(cfg.state_dir / "prefect")
    return env


def server_env(cfg: StackConfig) -> dict[str, str]:
    env = _base_env(cfg)
    env.pop("PREFECT_API_URL")  # the server itself serves it
    env.update(
        PREFECT_API_DATABASE_CONNECTION_URL=cfg.db_url,
        PREFECT_SERVER_API_HOST=cfg.host,
        PREFECT_SERVER_API_PORT=str(cfg.server_port),
        PREFECT_UI_API_URL=cfg.api_url,
    )
    if cfg.scheduler_loop_seconds is not None:
        env["PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS"] = str(cfg.scheduler_loop_seconds)
    return env


def worker_env(cfg: StackConfig) -> dict[str, str]:
    env = _base_env(cfg)
    env["PREFECT_WORKER_QUERY_SECONDS"] = str(cfg.worker_poll_seconds)
    return env


def _prefect_cli() -> str:
    return str(Path(sys.executable).with_name("prefect"))


def write_env_file(cfg: StackConfig) -> Path:
    path = cfg.state_dir / "env.sh"
    lines = ["# source this file: the environment that talks to ragtune's Prefect stack (written by make serve)"]
    lines += [f"export {k}={_sh_quote(v)}" for k, v in client_env(cfg).items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def _sh_quote(v: str) -> str:
    return "'" + v.replace("'", "'\"'\"'") + "'"


# --- Prefect objects ------------------------------------------------------------------------------


def apply_pools(cfg: StackConfig) -> list[str]:
    """The work pools of deployments/prefect.yaml with their concurrency limits (created or updated)."""
    code = (
        "import json, sys\n"
        "from prefect.client.orchestration import get_client\n"
        "from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate\n"
        "from prefect.exceptions import ObjectNotFound\n"
        "from prefect.workers.process import ProcessWorker\n"
        "pools = json.loads(sys.argv[1])\n"
        "with get_client(sync_client=True) as c:\n"
        "    for name, limit in pools.items():\n"
        "        try:\n"
        "            c.read_work_pool(name)\n"
        "            c.update_work_pool(name, WorkPoolUpdate(concurrency_limit=limit))\n"
        "        except ObjectNotFound:\n"
        "            c.create_work_pool(WorkPoolCreate(name=name, type='process', concurrency_limit=limit,\n"
        "                base_job_template=ProcessWorker.get_default_base_job_template()))\n"
    )
    _run([sys.executable, "-c", code, json.dumps(POOLS)], "creating work pools", env=_base_env(cfg), cwd=REPO)
    return list(POOLS)


def deploy(cfg: StackConfig) -> None:
    """Every deployment in deployments/prefect.yaml (`prefect deploy --all`; re-applying updates them)."""
    _run([_prefect_cli(), "--no-prompt", "deploy", "--all", "--prefect-file", str(DEPLOYMENTS_FILE)], "prefect deploy", env=_base_env(cfg), cwd=REPO)


def apply_automations(cfg: StackConfig) -> str:
    if not (REPO / "deployments" / "automations.py").is_file():
        return "no automations defined (deployments/automations.py)"
    return _run([sys.executable, "-m", "deployments.automations"], "applying automations", env=_base_env(cfg), cwd=REPO)


# --- up / down --------------------------------------------------------------------------------------


def up(cfg: StackConfig, log: Any = print) -> StackState:
    """Bring the stack up (idempotently) and record it."""
    record = cfg.state_dir / "stack.json"
    state = StackState.load(record) or StackState(api_url=cfg.api_url, ui_url=cfg.ui_url)
    state.api_url, state.ui_url = cfg.api_url, cfg.ui_url

    if cfg.own_database:
        if ensure_postgres(cfg, log) or state.postgres_dir is None:
            state.postgres_dir = str(cfg.postgres_dir)
        state.save(record)

    server_log = cfg.state_dir / "prefect-server.log"
    if state.running("server") and healthy(cfg.api_url):
        log(f"Prefect server already running (pid {state.pids['server']})")
    else:
        if _port_open(cfg.host, cfg.server_port):
            raise StackError(f"port {cfg.server_port} is taken by another process: set RAGTUNE_SERVER_PORT to a free port")
        log(f"starting the Prefect server on {cfg.ui_url} (database {_redact(cfg.db_url)})")
        cmd = [_prefect_cli(), "server", "start", "--host", cfg.host, "--port", str(cfg.server_port), "--ui"]
        state.record("server", _spawn(cmd, server_env(cfg), server_log))
        state.save(record)
        try:
            _wait_healthy(cfg.api_url, state.pids["server"], server_log, cfg.timeout_s)
        except StackError:
            _stop(state.pids.pop("server"))  # a server that never became healthy is not left behind
            state.save(record)
            raise

    log("applying work pools: " + ", ".join(f"{p} (limit {l})" if l else p for p, l in POOLS.items()))
    apply_pools(cfg)
    log(f"deploying {DEPLOYMENTS_FILE.relative_to(REPO)}")
    deploy(cfg)
    log("applying automations")
    out = apply_automations(cfg).strip()
    if out:
        log(out)

    for pool in POOLS:
        key = f"worker-{pool}"
        if state.running(key):
            continue
        cmd = [_prefect_cli(), "worker", "start", "--pool", pool, "--type", "process", "--name", f"{pool}-{socket.gethostname()}"]
        state.record(key, _spawn(cmd, worker_env(cfg), cfg.state_dir / f"{key}.log"))
        state.save(record)
        log(f"started worker for {pool} (pid {state.pids[key]})")

    env_file = write_env_file(cfg)
    log(f"\nPrefect UI: {cfg.ui_url}\nenvironment: source {env_file}\nstop: make serve-stop")
    return state


def down(cfg: StackConfig, log: Any = print) -> None:
    """Stop what `up` recorded (workers, then the server, then ragtune's own database); data stays."""
    record = cfg.state_dir / "stack.json"
    state = StackState.load(record)
    if state is None:
        log(f"nothing recorded in {record}: nothing to stop")
        return
    for name in sorted(state.pids, key=lambda n: n == "server"):  # workers first
        if not state.running(name):
            log(f"{name} (pid {state.pids[name]}) is no longer running")
            continue
        log(f"stopping {name} (pid {state.pids[name]})")
        _stop_tree(state.pids[name], log)
    if state.postgres_dir:
        log(f"stopping PostgreSQL ({state.postgres_dir})")
        stop_postgres(Path(state.postgres_dir))
    record.unlink()


def status(cfg: StackConfig) -> dict[str, Any]:
    state = StackState.load(cfg.state_dir / "stack.json")
    if state is None:
        return {"running": False}
    return {
        "api_url": state.api_url,
        "healthy": healthy(state.api_url),
        "processes": {n: {"pid": p, "alive": state.running(n)} for n, p in state.pids.items()},
        "postgres": state.postgres_dir,
    }


def _redact(url: str) -> str:
    """A database URL without its password."""
    if "@" in url and ":" in url.split("@", 1)[0].split("//", 1)[-1]:
        scheme, rest = url.split("//", 1)
        user = rest.split("@", 1)[0].split(":", 1)[0]
        return f"{scheme}//{user}:***@{rest.split('@', 1)[1]}"
    return url


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.stack", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["up", "down", "status"])
    args = parser.parse_args(argv)
    cfg = StackConfig.from_env()
    try:
        if args.command == "up":
            up(cfg)
        elif args.command == "down":
            down(cfg)
        else:
            print(json.dumps(status(cfg), indent=2))
    except StackError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
