"""Parse untrusted files in worker subprocesses with per-file time and memory limits.

Why a sandbox: document parsers run native code (PDFium, libxml2) over files nobody vetted. A
crafted or just broken file can hang a parser, allocate without bound, or segfault. Each of those
must cost one quarantined file, never the ingestion run.

Design:

* A small pool of persistent workers, each parsing one file at a time. Work goes over a
  ``multiprocessing`` connection (a socketpair), so one worker start (~0.15 s) is amortised over
  the whole batch instead of paid per file.
* Workers are fresh interpreters started with ``subprocess`` (fork + immediate exec): never a bare
  ``fork`` of the parent, which may hold torch threads and locks. We exec the interpreter ourselves
  rather than use multiprocessing's "spawn" because spawn re-imports the parent's ``__main__`` in
  every child -- for a Prefect flow module that means torch, prefect and lancedb, seconds of start-up
  and hundreds of MB of address space charged against the worker's memory cap before it parses a byte.
* Each worker caps its own address space with ``RLIMIT_AS`` before importing the parsers, so a
  runaway allocation fails inside the worker (``MemoryError``, or a native abort) instead of
  pushing the host into the OOM killer.
* The parent waits on the worker with the per-file timeout. On timeout it kills the worker, records
  the file as ``timeout`` and starts a fresh worker; a worker that dies gives ``memory_limit`` or
  ``crashed`` for its file and is replaced the same way.
* A worker starts with a minimal environment (:func:`sandbox_env`): parsers read files nobody
  vetted, so they get no settings, passwords or cloud credentials to leak. What parsing needs
  (the PDF password) comes over the pipe.
* A parsed document may hold at most ``ParseLimits.max_chars`` characters of text: chunking and
  embedding run outside the sandbox, and their cost follows the text, not the file size.
"""

from __future__ import annotations

import faulthandler
import importlib
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, Pipe, wait
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    # Only for annotations: importing the parsers here would load them in the worker before its
    # memory cap is set (the worker imports this module first), see _worker_main.
    from tasks.parse import ParsedDocument

DEFAULT_PARSE_FN = "tasks.parse:parse_document"

# How long a worker may take to start (interpreter + parser imports) before we give up on the pool.
_START_TIMEOUT_S = 30.0
# How long a worker asked to stop gets to exit before it is killed.
_STOP_GRACE_S = 2.0

# All a worker inherits from the parent's environment: what the interpreter and the parsers'
# native libraries need to start and behave (locale, temp dir, thread counts, loader path).
_ENV_NAMES = frozenset(
    {
        "PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TMP", "TEMP", "LD_LIBRARY_PATH",
        "PYTHONHOME", "PYTHONUTF8", "PYTHONIOENCODING", "PYTHONDONTWRITEBYTECODE", "MALLOC_ARENA_MAX",
        "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
    }
)
_ENV_PREFIXES = ("LC_",)


@dataclass(frozen=True)
class ParseLimits:
    """Per-file limits for sandboxed parsing."""

    timeout_s: float = 60.0
    memory_mb: int = 2048  # address-space cap per worker (RLIMIT_AS)
    max_bytes: int = 100 * 2**20
    pdf_password: str | None = None
    # Text one document may yield (about 5,000 pages): chunking and embedding a 100 MB paragraph
    # would take the ingesting process hours and gigabytes, outside this sandbox's limits.
    max_chars: int = 10_000_000


@dataclass(frozen=True)
class ParseOutcome:
    """What happened to one input file: a document, or a quarantine reason and detail."""

    path: Path
    document: ParsedDocument | None
    reason: str | None  # quarantine reason code when document is None
    detail: str | None
    seconds: float  # parse wall time, measured in the worker; for timeouts and crashes, by the parent


class WorkerStartError(RuntimeError):
    """A parse worker could not start: an environment or configuration problem, not a bad file."""


def parse_many(
    paths: Sequence[Path],
    limits: ParseLimits,
    workers: int = 1,
    *,
    parse_fn: str = DEFAULT_PARSE_FN,
) -> Iterator[ParseOutcome]:
    """Parse files in worker subprocesses with per-file time and memory limits; one hostile file never stops the batch.

    Yields exactly one :class:`ParseOutcome` per input path, **in input order** (results that
    finish early are held back briefly; at most ``4 * workers`` files are in flight or buffered).
    Workers start on the first ``next()`` and are shut down when the generator finishes, is closed
    (``close()``, or garbage-collected after the consumer stops iterating) or the consumer raises.

    ``workers`` is the number of worker processes (clamped to 1..len(paths)); each holds one file
    at a time.  ``parse_fn`` is an import path ``"module:function"`` of a callable with the signature of
    :func:`tasks.parse.parse_document`; it exists so tests can plug in a parser that misbehaves on
    purpose (hangs, allocates, crashes), since monkeypatching does not reach a separate process.

    Raises :class:`WorkerStartError` if a worker cannot start (bad ``parse_fn``, or a
    ``memory_mb`` too small for the interpreter itself).
    """
    items = list(paths)  # outcome.path is the caller's own object, so it can key a dict
    if not items:
        return
    if limits.timeout_s <= 0:
        raise ValueError(f"timeout_s must be positive, got {limits.timeout_s}")
    size = max(1, min(workers, len(items)))
    window = 4 * size
    pool: list[_Worker] = []
    done: dict[int, ParseOutcome] = {}
    next_send = 0
    next_yield = 0
    try:
        pool = _start_workers(size, limits, parse_fn)
        while next_yield < len(items):
            for slot, worker in enumerate(pool):
                if worker.index is None and next_send < len(items) and next_send < next_yield + window:
                    pool[slot] = _dispatch(worker, next_send, items[next_send], limits, parse_fn)
                    next_send += 1
            while next_yield in done:
                yield done.pop(next_yield)
                next_yield += 1
            busy = [w for w in pool if w.index is not None]
            if not busy:
                continue
            # A deadline already passed (the consumer was slow) still gets a zero-timeout look, so
            # a worker that finished in time is never mistaken for a hung one.
            soonest = min(w.deadline for w in busy)
            ready = wait([w.conn for w in busy], timeout=max(0.0, soonest - time.monotonic()))
            for slot, worker in enumerate(pool):
                if worker.index is None:
                    continue
                if worker.conn in ready:
                    outcome, healthy = worker.collect(items[worker.index], limits)
                elif time.monotonic() >= worker.deadline:
                    outcome, healthy = worker.timed_out(items[worker.index], limits), False
                else:
                    continue
                done[worker.index] = outcome
                worker.index = None
                if not healthy:
                    worker.kill()
                    pool[slot] = _Worker.start(limits, parse_fn)
                    pool[slot].wait_ready()
    finally:
        _shutdown(pool)


def sandbox_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a parse worker starts with: the allow-listed names of `environ` (default
    ``os.environ``), so ``RAGTUNE_*`` settings, ``AWS_*`` keys and other secrets never reach a parser."""
    source = os.environ if environ is None else environ
    return {k: v for k, v in source.items() if k in _ENV_NAMES or k.startswith(_ENV_PREFIXES)}


# --------------------------------------------------------------------------- parent side


class _Worker:
    """Parent-side handle on one worker process."""

    def __init__(self, proc: subprocess.Popen, conn: Connection, memory_mb: int) -> None:
        self.proc = proc
        self.conn = conn
        self.memory_mb = memory_mb
        self.index: int | None = None  # input index of the file being parsed, None when idle
        self.sent_at = 0.0
        self.deadline = 0.0

    @classmethod
    def start(cls, limits: ParseLimits, parse_fn: str) -> _Worker:
        parent_conn, child_conn = Pipe(duplex=True)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-c", _BOOTSTRAP.format(module=__name__), str(child_conn.fileno())],
                pass_fds=(child_conn.fileno(),),
                env=sandbox_env(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,  # parsers that print must not garble the parent's output
                # stderr is inherited so native crash messages and faulthandler tracebacks reach the logs
            )
        except OSError as exc:
            parent_conn.close()
            raise WorkerStartError(f"cannot start a parse worker ({exc}); check the Python executable {sys.executable}") from exc
        finally:
            child_conn.close()
        worker = cls(proc, parent_conn, limits.memory_mb)
        try:
            # The password travels over the pipe, not argv or the environment, so `ps` never shows it
            # and the worker's environment holds no secret.
            parent_conn.send(list(sys.path))
            parent_conn.send(
                {
                    "parse_fn": parse_fn,
                    "memory_mb": limits.memory_mb,
                    "max_bytes": limits.max_bytes,
                    "max_chars": limits.max_chars,
                    "pdf_password": limits.pdf_password,
                    "parent_pid": os.getpid(),
                }
            )
        except OSError:
            pass  # the worker already died; wait_ready reports why
        return worker

    def wait_ready(self) -> None:
        """Block until the worker has set its limits and imported the parser."""
        problem: str
        if self.conn.poll(_START_TIMEOUT_S):
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                message = None
            if isinstance(message, tuple) and message[0] == "ready":
                return
            if isinstance(message, tuple) and message[0] == "setup_error":
                problem = message[1]
                if "MemoryError" in problem or "failed to map" in problem:
                    problem += f"; memory_mb={self.memory_mb} is too small for the parser libraries, raise it"
            else:
                self.proc.wait(timeout=5)
                problem = f"it exited during start-up with {_describe_exit(self.proc.returncode)}"
                if self.memory_mb < 512:
                    problem += f"; memory_mb={self.memory_mb} may be too small for the interpreter, raise it"
        else:
            problem = f"it did not start within {_START_TIMEOUT_S:.0f} s"
        self.kill()
        raise WorkerStartError(f"parse worker failed to start: {problem}")

    def send(self, index: int, path: Path, timeout_s: float) -> None:
        self.conn.send(str(path))
        self.index = index
        self.sent_at = time.monotonic()
        self.deadline = self.sent_at + timeout_s

    def collect(self, path: Path, limits: ParseLimits) -> tuple[ParseOutcome, bool]:
        """Read the worker's reply; returns the outcome and whether the worker can be reused."""
        elapsed = time.monotonic() - self.sent_at
        try:
            reply = self.conn.recv()
        except (EOFError, OSError):
            return self._died(path, limits, elapsed), False
        kind = reply[0]
        if kind == "ok":
            return ParseOutcome(path, reply[1], None, None, reply[2]), True
        if kind == "quarantine":
            return ParseOutcome(path, None, reply[1], reply[2], reply[3]), True
        # A worker that ran out of memory or raised something unexpected (parser_error) may have a
        # corrupted native heap; replace it rather than trust it with the next file.
        return ParseOutcome(path, None, kind, reply[1], reply[2]), False

    def timed_out(self, path: Path, limits: ParseLimits) -> ParseOutcome:
        return ParseOutcome(
            path,
            None,
            "timeout",
            f"parsing took longer than {limits.timeout_s:g} s and was stopped; the file may be pathological "
            "(check it opens normally) or very large (raise ingest.parse_timeout_s if it is legitimate)",
            time.monotonic() - self.sent_at,
        )

    def _died(self, path: Path, limits: ParseLimits, elapsed: float) -> ParseOutcome:
        try:
            code = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()  # closed its end of the pipe but kept running: not trustworthy
            code = self.proc.returncode
        if code == -signal.SIGKILL:
            # We did not send it; on Linux that is almost always the kernel OOM killer (or a cgroup limit).
            return ParseOutcome(
                path,
                None,
                "memory_limit",
                f"the parser was killed (SIGKILL, most likely out of memory) while parsing this file; "
                f"the file may be a decompression bomb, or raise ingest.parse_memory_mb (now {limits.memory_mb} MB) if it is legitimate",
                elapsed,
            )
        return ParseOutcome(
            path,
            None,
            "crashed",
            f"the parser process died ({_describe_exit(code)}) while parsing this file; the file is probably malformed "
            f"(or needed more than the {limits.memory_mb} MB memory cap): check it opens normally, re-export it or remove it",
            elapsed,
        )

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass  # unkillable (stuck in the kernel); nothing more we can do from here
        self.conn.close()


def _start_workers(count: int, limits: ParseLimits, parse_fn: str) -> list[_Worker]:
    # Start every process before waiting on any, so their start-up overlaps.
    pool: list[_Worker] = []
    try:
        for _ in range(count):
            pool.append(_Worker.start(limits, parse_fn))
        for worker in pool:
            worker.wait_ready()
    except BaseException:
        _shutdown(pool)
        raise
    return pool


def _dispatch(worker: _Worker, index: int, path: Path, limits: ParseLimits, parse_fn: str) -> _Worker:
    """Send a file to an idle worker, replacing the worker first if it died while idle."""
    try:
        worker.send(index, path, limits.timeout_s)
        return worker
    except OSError:
        worker.kill()
        fresh = _Worker.start(limits, parse_fn)
        fresh.wait_ready()
        fresh.send(index, path, limits.timeout_s)
        return fresh


def _shutdown(pool: list[_Worker]) -> None:
    # Idle workers get a polite stop; busy ones (consumer left early) are killed outright.
    for worker in pool:
        if worker.index is None and worker.proc.poll() is None:
            try:
                worker.conn.send(None)
            except OSError:
                pass
    deadline = time.monotonic() + _STOP_GRACE_S
    for worker in pool:
        if worker.index is None:
            try:
                worker.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        worker.kill()


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "no exit status"
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


# --------------------------------------------------------------------------- worker side

# Runs in a fresh interpreter: adopt the parent's import path (as multiprocessing's spawn does),
# then hand over to _worker_main.  argv[1] is the inherited socket's file descriptor.
_BOOTSTRAP = (
    "import sys\n"
    "from multiprocessing.connection import Connection\n"
    "conn = Connection(int(sys.argv[1]))\n"
    "sys.path[:] = conn.recv()\n"
    "from {module} import _worker_main\n"
    "_worker_main(conn)\n"
)


def _worker_main(conn: Connection) -> None:
    """Worker loop: apply limits, import the parser, then parse one path per request until told to stop."""
    # Ctrl-C reaches the whole process group; the parent decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    faulthandler.enable()  # a native crash leaves a Python traceback on stderr
    config = conn.recv()
    try:
        # Cap first, import second: the parser libraries' own footprint counts against the cap,
        # and a cap too small for them fails here, at start-up, rather than on some later file.
        _limit_address_space(config["memory_mb"])
        from tasks.parse import ParsedDocument, QuarantineError

        parse = _import_callable(config["parse_fn"])
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises WorkerStartError
        conn.send(("setup_error", f"{type(exc).__name__}: {exc}"))
        return
    _exit_when_orphaned(config["parent_pid"])
    conn.send(("ready", os.getpid()))

    while True:
        try:
            request = conn.recv()
        except EOFError:
            return  # parent went away
        if request is None:
            return
        started = time.monotonic()
        try:
            document = parse(Path(request), pdf_password=config["pdf_password"], max_bytes=config["max_bytes"])
            if not isinstance(document, ParsedDocument):
                raise TypeError(f"{config['parse_fn']} returned {type(document).__name__}, not ParsedDocument")
            chars = sum(len(s.text) for s in document.sections)
            if chars > config["max_chars"]:
                raise QuarantineError(
                    "too_much_text",
                    f"the file holds {chars:,} characters of text, more than one document may ({config['max_chars']:,}); "
                    "split it into smaller files",
                )
            reply: tuple = ("ok", document, time.monotonic() - started)
        except QuarantineError as exc:
            reply = ("quarantine", exc.reason, exc.detail, time.monotonic() - started)
        except MemoryError:
            reply = (
                "memory_limit",
                f"parsing needed more than the {config['memory_mb']} MB memory limit; the file may be a "
                "decompression bomb, or raise ingest.parse_memory_mb if it is legitimate",
                time.monotonic() - started,
            )
        except Exception as exc:  # noqa: BLE001 - a parser bug must cost one file, not the batch
            # Not a crash of the process and not proof the file is bad: say what raised.
            reply = (
                "parser_error",
                f"{config['parse_fn']} raised {type(exc).__name__}: {exc}; this is a bug in the parser, "
                "not necessarily in the file: report it with the file",
                time.monotonic() - started,
            )
        try:
            conn.send(reply)  # pickles fully before writing, so a failure here leaves the pipe clean
        except MemoryError:
            conn.send(("memory_limit", "the parsed result was too large to send back under the memory limit; split the file", time.monotonic() - started))
        except Exception as exc:  # noqa: BLE001 - e.g. a custom parse_fn returned something unpicklable
            conn.send(("parser_error", f"the parse result could not be sent back ({type(exc).__name__}: {exc})", time.monotonic() - started))


def _limit_address_space(memory_mb: int) -> None:
    limit = memory_mb * 2**20
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)  # cannot raise above an inherited hard cap
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _import_callable(spec: str) -> Callable[..., ParsedDocument]:
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"parse_fn must look like 'package.module:function', got {spec!r}")
    target = importlib.import_module(module_name)
    for part in attr.split("."):
        target = getattr(target, part)
    if not callable(target):
        raise TypeError(f"parse_fn {spec!r} is not callable")
    return target


def _exit_when_orphaned(parent_pid: int) -> None:
    """Exit if the parent dies (e.g. SIGKILL) while we are busy and would never read the closed pipe."""

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="orphan-watchdog", daemon=True).start()
