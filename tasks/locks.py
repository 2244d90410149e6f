"""One writer per table across hosts: a lease object next to the table on S3.

The local `fcntl` lock in `tasks/store.py` only serialises processes on one machine. For a table at
an `s3://` URI, `S3Lease` keeps a small JSON object `<prefix>/_ragtune_locks/<table>.lease`:

- **acquire**: `PUT` with `If-None-Match: *`. S3 (and moto) let exactly one of several concurrent
  creators succeed; the others get `412 PreconditionFailed` and wait.
- **heartbeat**: the holder rewrites the object every `ttl/3` with `If-Match: <its ETag>`; every body
  carries a fresh token, so each renewal changes the ETag. A failed renewal means the lease was lost.
- **stale takeover**: a waiter never compares timestamps written by another host. It remembers the
  ETag it saw and when it saw it *by its own monotonic clock*; if the same ETag is still there after
  `ttl`, the holder has not renewed for at least `ttl` and is presumed dead. The takeover is itself a
  conditional `PUT` with `If-Match: <stale ETag>`, so of two waiters only one wins, and a holder
  that renews in the meantime makes the takeover fail. Clock skew between hosts therefore does not
  matter; only clock *rate* does (ttl is long against any drift).
- **release**: `DELETE` with `If-Match: <its ETag>`, so a holder that lost its lease never deletes
  the new holder's lease.
- **crash**: the lease simply stops being renewed; the next writer takes over after `ttl` (default
  60 s, `store.lease_ttl_s`).

- **check**: right before each write the flow calls `writer_lock(...)`'s `check()`, which renews the
  lease synchronously. A holder that lost it (paused, or cut off from S3 for longer than `ttl`: a
  renewal that has not succeeded for `ttl` counts as lost, it is never assumed to still hold) stops
  with a `LockError` instead of writing chunks, the ledger, or clearing the spool the new holder uses.
- **timeouts**: every S3 call of the lease is bounded well under `ttl/3` (connect/read timeouts and
  one retry), so a hung request cannot outlast the heartbeat; renew and release share a mutex, so a
  release never races a renewal still in flight, and no renewal runs after the release.

Why it is safe: the lease gives mutual exclusion while holders are alive and can reach the store.
The one case it cannot cover is a holder paused (or partitioned) longer than `ttl` between its last
`check()` and the end of the write it guards. Even then the table is not corrupted: Lance commits each version by writing
`_versions/<n>.manifest` with a put-if-not-exists, so two commits can never both become version n;
the loser retries against the new version (conflict resolution) or fails with a commit conflict.
The worst case is that the paused run's ledger lags, and the next run re-parses those files;
chunk ids are deterministic, so it converges without duplicates. The holder logs an error when it
notices it lost the lease.

gs:// and az:// have no lease implementation here yet: `lease_for` raises a clear error there;
run a single writer per table (e.g. a Prefect concurrency limit of 1 on the ingest deployment).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

log = logging.getLogger(__name__)

LOCKS_PREFIX = "_ragtune_locks"


class LockError(Exception):
    """The writer lock could not be taken or kept; the message says what to do."""


def is_object_store(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def split_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` -> ("bucket", "some/prefix")."""
    rest = uri.split("://", 1)[1]
    bucket, _, prefix = rest.partition("/")
    return bucket, prefix.strip("/")


def call_budget(ttl_s: float) -> dict[str, Any]:
    """Connect/read timeouts and retries of one lease call: at most 2 attempts of 2 timeouts plus a
    short backoff, i.e. about ttl/5 + 1 s, well under the ttl/3 between heartbeats (60 s ttl: 3 s each)."""
    timeout = max(0.5, min(5.0, ttl_s / 20))
    return {"connect_timeout": timeout, "read_timeout": timeout, "retries": {"max_attempts": 1, "mode": "standard"}}


def s3_client(storage_options: Mapping[str, str], ttl_s: float = 60.0) -> Any:
    """A boto3 client from LanceDB-style storage options (missing keys fall back to boto3's own chain)."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise LockError(
            "the cross-host writer lease for an s3:// store needs boto3, which is not installed: "
            "pip install boto3"
        ) from None

    o = {k.lower(): v for k, v in storage_options.items()}
    kwargs: dict[str, Any] = {
        "endpoint_url": o.get("aws_endpoint") or o.get("endpoint") or o.get("aws_endpoint_url"),
        "region_name": o.get("aws_region") or o.get("region"),
        "aws_access_key_id": o.get("aws_access_key_id") or o.get("access_key_id"),
        "aws_secret_access_key": o.get("aws_secret_access_key") or o.get("secret_access_key"),
        "aws_session_token": o.get("aws_session_token") or o.get("session_token"),
    }
    kwargs = {k: v for k, v in kwargs.items() if v}
    return boto3.client("s3", config=Config(**call_budget(ttl_s)), **kwargs)


def _code(e: Exception) -> str:
    return str(getattr(e, "response", {}).get("Error", {}).get("Code", ""))


@dataclass
class S3Lease:
    """A lease on `key` in `bucket`; see the module docstring for the protocol."""

    client: Any
    bucket: str
    key: str
    ttl_s: float = 60.0
    holder: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}")
    clock: Callable[[], float] = time.monotonic
    etag: str | None = None
    lost: bool = False
    released: bool = False
    # When (own clock, taken *before* the request) the lease was last known to be ours: a waiter can
    # take it over no earlier than `ttl_s` after that.
    confirmed_at: float | None = None
    _mutex: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def _body(self) -> bytes:
        # A fresh token in every body: each write has a new ETag even when nothing else changed.
        return json.dumps(
            {"holder": self.holder, "token": uuid.uuid4().hex, "written_at": time.time(), "ttl_s": self.ttl_s}
        ).encode()

    def _current(self) -> tuple[str | None, dict[str, Any]]:
        try:
            r = self.client.get_object(Bucket=self.bucket, Key=self.key)
        except Exception as e:  # noqa: BLE001 - only "no such key" is expected
            if _code(e) in ("NoSuchKey", "404"):
                return None, {}
            raise
        try:
            info = json.loads(r["Body"].read())
        except ValueError:
            info = {}
        return r["ETag"], info

    def try_acquire(self, seen: dict[str, Any]) -> bool:
        """One attempt: create the lease, or take over one whose ETag has not changed for `ttl_s`.

        `seen` carries the waiter's memory between attempts: the ETag last seen and when (own clock).
        """
        started = self.clock()
        try:
            self.etag = self.client.put_object(Bucket=self.bucket, Key=self.key, Body=self._body(), IfNoneMatch="*")["ETag"]
            self.confirmed_at, self.lost, self.released = started, False, False
            return True
        except Exception as e:  # noqa: BLE001
            if _code(e) not in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409"):
                raise
        etag, info = self._current()
        if etag is None:
            return False  # released just now: the next attempt creates it
        now = self.clock()
        if seen.get("etag") != etag:
            seen.update(etag=etag, since=now, holder=info.get("holder", "?"))
            return False
        if now - seen["since"] < self.ttl_s:
            return False
        try:
            self.etag = self.client.put_object(Bucket=self.bucket, Key=self.key, Body=self._body(), IfMatch=etag)["ETag"]
            self.confirmed_at, self.lost, self.released = now, False, False
        except Exception as e:  # noqa: BLE001
            if _code(e) in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409", "NoSuchKey"):
                return False  # another waiter took it over, or the holder renewed
            raise
        log.warning("took over a stale writer lease s3://%s/%s from %s", self.bucket, self.key, seen.get("holder"))
        return True

    def renew(self) -> bool:
        """Rewrite the lease (If-Match its ETag). False once it is lost, released, or could not be
        confirmed for `ttl_s` (a waiter may have taken it over by then: never assume it is still held);
        True after a transient failure within the ttl (the heartbeat tries again)."""
        return self._renew() != "lost"

    def _renew(self) -> str:
        """"confirmed", "transient" (not confirmed, still within the ttl) or "lost"."""
        with self._mutex:
            if self.etag is None or self.lost or self.released:
                return "lost"
            started = self.clock()
            try:
                self.etag = self.client.put_object(Bucket=self.bucket, Key=self.key, Body=self._body(), IfMatch=self.etag)["ETag"]
                self.confirmed_at = started
                return "confirmed"
            except Exception as e:  # noqa: BLE001
                if _code(e) in ("PreconditionFailed", "NoSuchKey", "412", "404"):
                    self._mark_lost("another writer took it over")
                    return "lost"
                if self.confirmed_at is None or self.clock() - self.confirmed_at >= self.ttl_s:
                    self._mark_lost(f"not confirmed for {self.ttl_s:.0f} s: {_code(e) or type(e).__name__}")
                    return "lost"
                log.warning("could not renew the writer lease s3://%s/%s: %s", self.bucket, self.key, _code(e) or type(e).__name__)
                return "transient"

    def _mark_lost(self, why: str) -> None:
        self.lost = True
        log.error(
            "lost the writer lease s3://%s/%s (%s): another writer may be active; this run stops before its next write",
            self.bucket, self.key, why,
        )

    def check(self, retry_s: float | None = None) -> None:
        """Confirm the lease right now (a synchronous renewal) or raise `LockError`.

        A transient failure is retried until the lease has gone `ttl_s` unconfirmed; then it counts as lost.
        """
        pause = min(1.0, self.ttl_s / 10) if retry_s is None else retry_s
        while True:
            outcome = self._renew()
            if outcome == "confirmed":
                return
            if outcome == "lost":
                raise LockError(
                    f"this run lost the writer lease s3://{self.bucket}/{self.key} (another writer took it over, "
                    f"or it could not be renewed within {self.ttl_s:.0f} s); it stopped before writing: "
                    "the previously committed table is unchanged, rerun when the other run is done"
                )
            time.sleep(pause)

    def release(self) -> None:
        # Under the mutex: waits for a renewal in flight (its new ETag is the one to delete), and marks
        # the lease released so that no later renewal re-creates it.
        with self._mutex:
            self.released = True
            if self.etag is None or self.lost:
                return
            try:
                self.client.delete_object(Bucket=self.bucket, Key=self.key, IfMatch=self.etag)
            except Exception as e:  # noqa: BLE001 - releasing is best effort: an unreleased lease goes stale
                log.warning("could not release the writer lease s3://%s/%s: %s", self.bucket, self.key, _code(e) or type(e).__name__)
            self.etag = None


def lease_for(uri: str, table: str, storage_options: Mapping[str, str], ttl_s: float) -> S3Lease:
    """The lease object for `table` in the LanceDB at object-store `uri`."""
    scheme = uri.split("://", 1)[0].lower()
    if scheme not in ("s3", "s3a"):
        raise LockError(
            f"cross-host writer locking is not supported for {scheme}:// yet (table {table!r} at {uri}); "
            "use an s3:// store, or make sure only one ingest runs per table (e.g. a Prefect concurrency limit of 1)"
        )
    bucket, prefix = split_s3_uri(uri)
    key = "/".join(p for p in (prefix, LOCKS_PREFIX, f"{table}.lease") if p)
    return S3Lease(s3_client(storage_options, ttl_s), bucket, key, ttl_s=ttl_s)


@contextmanager
def held(lease: S3Lease, wait_s: float, poll_s: float = 1.0) -> Iterator[S3Lease]:
    """Hold `lease` for the block, renewing it every ttl/3; waits up to `wait_s`, then fails clearly."""
    deadline, seen = time.monotonic() + wait_s, {}
    while not lease.try_acquire(seen):
        if time.monotonic() > deadline:
            raise LockError(
                f"another run ({seen.get('holder', 'unknown')}) holds the writer lease s3://{lease.bucket}/{lease.key}; "
                f"wait for it to finish (a crashed holder's lease goes stale after {lease.ttl_s:.0f} s)"
            )
        time.sleep(min(poll_s, lease.ttl_s / 3))
    stop = threading.Event()

    def heartbeat() -> None:
        while not stop.wait(lease.ttl_s / 3):
            if stop.is_set() or not lease.renew():
                return

    beat = threading.Thread(target=heartbeat, name=f"lease-{lease.key}", daemon=True)
    beat.start()
    try:
        yield lease
    finally:
        stop.set()
        beat.join(timeout=10)
        lease.release()
