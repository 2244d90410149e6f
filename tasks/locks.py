"""One writer per table across hosts: a lease object next to the table on S3, GCS or Azure Blob.

The local `fcntl` lock in `tasks/store.py` only serialises processes on one machine. For a table at
an `s3://`, `gs://` or `az://` URI, a `Lease` keeps a small JSON object
`<prefix>/_ragtune_locks/<table>.lease` next to it. Every provider offers the same primitive, a
write that succeeds only if the object is absent, or only if it is still at the version the writer
last saw; the lease uses nothing else:

| provider | create (absent only) | replace (unchanged only) | version | release | client |
|---|---|---|---|---|---|
| S3 | `PUT` `If-None-Match: *` | `PUT` `If-Match: <ETag>` | ETag | `DELETE` `If-Match: <ETag>` | boto3 |
| GCS | `PUT` `x-goog-if-generation-match: 0` | `x-goog-if-generation-match: <generation>` | generation | replace with a tombstone | obstore |
| Azure Blob | `Put Blob` `If-None-Match: *` | `Put Blob` `If-Match: <ETag>` | ETag | replace with a tombstone | obstore |

The store itself decides each conditional write atomically: of several writers with the same
precondition exactly one succeeds, the others get `412 Precondition Failed` (`409` from Azurite for a
create). obstore (Python bindings of object_store, the Rust crate LanceDB writes with) has no conditional delete, so on GCS and
Azure a release *replaces* the lease with a tombstone (`"released": true`) under the holder's own
version; a tombstone counts as a free lease, taken with a conditional replace.

- **acquire**: create the object; if it exists and is a tombstone, replace it (conditional on the
  tombstone's version). Either way exactly one of several concurrent acquirers wins; the others wait.
- **heartbeat**: the holder rewrites the object every `ttl/3`, conditional on its own version; every
  body carries a fresh token and every write gets a new version (ETag/generation), so a renewal
  changes it. A renewal refused by the precondition means the lease was lost.
- **stale takeover**: a waiter never compares timestamps written by another host. It remembers the
  version it saw and when it saw it *by its own monotonic clock*; if the same version is still there
  after `ttl`, the holder has not renewed for at least `ttl` and is presumed dead. The takeover is
  itself a replace conditional on that stale version, so of two waiters only one wins, and a holder
  that renews in the meantime makes the takeover fail. Clock skew between hosts therefore does not
  matter; only clock *rate* does (ttl is long against any drift).
- **release**: conditional on the holder's own version (S3: a conditional `DELETE`; GCS/Azure: the
  tombstone), so a holder that lost its lease never deletes or frees the new holder's lease.
- **crash**: the lease simply stops being renewed; the next writer takes over after `ttl` (default
  60 s, `store.lease_ttl_s`).

- **check**: right before each write the flow calls `writer_lock(...)`'s `check()`, which renews the
  lease synchronously. A holder that lost it (paused, or cut off from the store for longer than `ttl`:
  a renewal that has not succeeded for `ttl` counts as lost, it is never assumed to still hold) stops
  with a `LockError` instead of writing chunks, the ledger, or clearing the spool the new holder uses.
- **timeouts**: every call of the lease is bounded well under `ttl/3` (connect/request timeouts and
  one retry), so a hung request cannot outlast the heartbeat; renew and release share a mutex, so a
  release never races a renewal still in flight, and no renewal runs after the release.

Why it is safe: the lease gives mutual exclusion while holders are alive and can reach the store.
The one case it cannot cover is a holder paused (or partitioned) longer than `ttl` between its last
`check()` and the end of the write it guards. Even then the table is not corrupted: Lance commits each
version by writing `_versions/<n>.manifest` with a put-if-not-exists (its ConditionalPutCommitHandler,
Lance's default for s3://, gs:// and az://: the same conditional create), so two commits can never both
become version n; the loser retries against the new version (conflict resolution) or fails with a
commit conflict. The worst case is that the paused run's
ledger lags, and the next run re-parses those files; chunk ids are deterministic, so it converges
without duplicates. The holder logs an error when it notices it lost the lease.

Credentials: the lease's own messages and log lines name its URI and an error code or class, never a
store's error text; an exception from the store propagates to `tasks/store.py`, which redacts every
secret option value from it before a user sees it (object_store itself already replaces a request URL
that carries a SAS by `REDACTED`).
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
from datetime import timedelta
from typing import Any, Callable, Iterator, Mapping, Protocol

log = logging.getLogger(__name__)

LOCKS_PREFIX = "_ragtune_locks"

# The schemes a lease exists for, by provider (the URI forms LanceDB opens: s3://bucket/prefix,
# gs://bucket/prefix, az://container/prefix with the account in the storage options).
S3_SCHEMES, GCS_SCHEMES, AZURE_SCHEMES = ("s3", "s3a"), ("gs",), ("az",)


class LockError(Exception):
    """The writer lock could not be taken or kept; the message says what to do."""


def is_object_store(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def split_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` (or gs://, az://container/...) -> ("bucket", "some/prefix")."""
    rest = uri.split("://", 1)[1]
    bucket, _, prefix = rest.partition("/")
    return bucket, prefix.strip("/")


split_s3_uri = split_uri  # the old name


def _call_timeout(ttl_s: float) -> float:
    return max(0.5, min(5.0, ttl_s / 20))


def call_budget(ttl_s: float) -> dict[str, Any]:
    """Connect/read timeouts and retries of one S3 lease call: at most 2 attempts of 2 timeouts plus a
    short backoff, i.e. about ttl/5 + 1 s, well under the ttl/3 between heartbeats (60 s ttl: 3 s each)."""
    timeout = _call_timeout(ttl_s)
    return {"connect_timeout": timeout, "read_timeout": timeout, "retries": {"max_attempts": 1, "mode": "standard"}}


def obstore_budget(ttl_s: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """Client options and retry config of one GCS/Azure lease call: at most 2 attempts, each bounded by
    a whole-request timeout, plus at most 1 s of backoff (60 s ttl: 2 x 3 s + 1 s, under ttl/3)."""
    timeout = timedelta(seconds=_call_timeout(ttl_s))
    client = {"timeout": timeout, "connect_timeout": timeout}
    retry = {
        "max_retries": 1,
        "retry_timeout": 2 * timeout + timedelta(seconds=1),
        "backoff": {"init_backoff": timedelta(milliseconds=100), "max_backoff": timedelta(seconds=1), "base": 2},
    }
    return client, retry


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


# object_store's HTTP client options (ClientConfigKey); the request timeouts are the lease's own.
_CLIENT_OPTIONS = {
    "allow_http", "allow_invalid_certificates", "default_content_type", "http1_only", "http2_only",
    "http2_keep_alive_interval", "http2_keep_alive_timeout", "http2_keep_alive_while_idle",
    "pool_idle_timeout", "pool_max_idle_per_host", "proxy_url", "proxy_ca_certificate", "proxy_excludes",
    "randomize_addresses", "root_certificate", "user_agent",
}
_TIMEOUT_OPTIONS = {"timeout", "connect_timeout", "read_timeout"}


def obstore_store(scheme: str, bucket: str, storage_options: Mapping[str, str], ttl_s: float = 60.0) -> Any:
    """An obstore GCSStore/AzureStore for `bucket` (a GCS bucket, an Azure container) from LanceDB-style
    storage options: the provider's keys (google_*/azure_* and their short forms, as object_store
    reads them) go to the store, HTTP options such as `allow_http` to the client, LanceDB-only keys
    are dropped; what is not given falls back to the provider's environment variables."""
    try:
        from obstore.exceptions import UnknownConfigurationKeyError
        from obstore.store import AzureStore, GCSStore
    except ImportError:
        raise LockError(
            f"the cross-host writer lease for a {scheme}:// store needs obstore, which is not installed: "
            "pip install 'ragtune[object-store]' (or pip install obstore)"
        ) from None
    cls = GCSStore if scheme in GCS_SCHEMES else AzureStore
    client, retry = obstore_budget(ttl_s)
    config: dict[str, str] = {}
    for key, value in storage_options.items():
        name = str(key).lower()
        if name in _TIMEOUT_OPTIONS:
            continue
        if name in _CLIENT_OPTIONS:
            client[name] = value
            continue
        try:  # does this store know the key? (a placeholder value: only the name is checked)
            cls("probe", config={name: "x"})
        except UnknownConfigurationKeyError:
            continue
        except Exception:  # noqa: BLE001 - known key, incomplete config: fine for a probe
            pass
        config[name] = value
    return cls(bucket, config=config, client_options=client, retry_config=retry)


def _code(e: Exception) -> str:
    return str(getattr(e, "response", {}).get("Error", {}).get("Code", ""))


def _why(e: Exception) -> str:
    """What to log about a failed call: the S3 error code or the exception class, never its message."""
    return _code(e) or type(e).__name__


class RetryLater(Exception):
    """The store reports a conflicting write in progress (S3's 409): neither won nor lost, try again."""


class ConditionalObject(Protocol):
    """The one object a lease lives in, with the store's conditional writes. A version is opaque (an
    ETag, a generation) and changes with every write."""

    url: str

    def create(self, body: bytes) -> Any | None:
        """Write `body` if the object does not exist: its new version, or None if it exists."""

    def replace(self, body: bytes, version: Any) -> Any | None:
        """Write `body` if the object is still at `version`: the new version, or None if it changed or is
        gone (`RetryLater` when the store cannot tell yet)."""

    def read(self) -> tuple[Any | None, bytes]:
        """(version, body), or (None, b"") when there is no object."""

    def release(self, version: Any, tombstone: bytes) -> bool:
        """Free the lease if it is still at `version` (False if it is not)."""


_S3_PRECONDITION = ("PreconditionFailed", "412")
_S3_CONFLICT = ("ConditionalRequestConflict", "409")  # a concurrent conditional write: retry


class S3Object:
    """The lease object on S3 (boto3): conditional PUT and DELETE."""

    def __init__(self, client: Any, bucket: str, key: str):
        self.client, self.bucket, self.key = client, bucket, key
        self.url = f"s3://{bucket}/{key}"

    def create(self, body: bytes) -> str | None:
        try:
            return self.client.put_object(Bucket=self.bucket, Key=self.key, Body=body, IfNoneMatch="*")["ETag"]
        except Exception as e:  # noqa: BLE001
            if _code(e) in _S3_PRECONDITION + _S3_CONFLICT:
                return None  # it exists (or is being written): read it
            raise

    def replace(self, body: bytes, version: str) -> str | None:
        try:
            return self.client.put_object(Bucket=self.bucket, Key=self.key, Body=body, IfMatch=version)["ETag"]
        except Exception as e:  # noqa: BLE001
            if _code(e) in _S3_PRECONDITION + ("NoSuchKey", "404"):
                return None  # another writer took it over, or it is gone
            if _code(e) in _S3_CONFLICT:
                raise RetryLater(_code(e)) from None
            raise

    def read(self) -> tuple[str | None, bytes]:
        try:
            r = self.client.get_object(Bucket=self.bucket, Key=self.key)
        except Exception as e:  # noqa: BLE001 - only "no such key" is expected
            if _code(e) in ("NoSuchKey", "404"):
                return None, b""
            raise
        return r["ETag"], r["Body"].read()

    def release(self, version: str, tombstone: bytes) -> bool:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.key, IfMatch=version)
        except Exception as e:  # noqa: BLE001
            if _code(e) in _S3_PRECONDITION + ("NoSuchKey", "404"):
                return False
            raise
        return True


class ObstoreObject:
    """The lease object on GCS or Azure Blob (obstore): `put(mode="create")` and `put(mode=<version>)`.

    A version is obstore's `UpdateVersion`: the ETag and the generation as the store returned them
    (Azure matches on the ETag, GCS on the generation)."""

    def __init__(self, store: Any, key: str, url: str):
        self.store, self.key, self.url = store, key, url

    @staticmethod
    def _version(result: Any) -> dict[str, str]:
        v = {"e_tag": result.get("e_tag"), "version": result.get("version")}
        return {k: x for k, x in v.items() if x is not None}

    def create(self, body: bytes) -> dict[str, str] | None:
        import obstore
        from obstore.exceptions import AlreadyExistsError, PreconditionError

        try:
            return self._version(obstore.put(self.store, self.key, body, mode="create", use_multipart=False))
        except (AlreadyExistsError, PreconditionError):
            return None

    def replace(self, body: bytes, version: dict[str, str]) -> dict[str, str] | None:
        import obstore
        from obstore.exceptions import NotFoundError, PreconditionError

        try:
            return self._version(obstore.put(self.store, self.key, body, mode=dict(version), use_multipart=False))
        except (PreconditionError, NotFoundError, FileNotFoundError):
            return None  # another writer took it over, or it is gone

    def read(self) -> tuple[dict[str, str] | None, bytes]:
        import obstore
        from obstore.exceptions import NotFoundError

        try:
            result = obstore.get(self.store, self.key)
            body = bytes(result.bytes())
        except (NotFoundError, FileNotFoundError):
            return None, b""
        return self._version(result.meta), body

    def release(self, version: dict[str, str], tombstone: bytes) -> bool:
        # No conditional delete in obstore: free the lease by replacing it, under our own version.
        return self.replace(tombstone, version) is not None


class Lease:
    """A writer lease in one `ConditionalObject`; see the module docstring for the protocol."""

    def __init__(
        self,
        obj: ConditionalObject,
        ttl_s: float = 60.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        holder: str | None = None,
    ):
        self.obj = obj
        self.ttl_s = ttl_s
        self.clock = clock
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.version: Any | None = None  # the object's version as this holder last wrote it
        self.lost = False
        self.released = False
        # When (own clock, taken *before* the request) the lease was last known to be ours: a waiter can
        # take it over no earlier than `ttl_s` after that.
        self.confirmed_at: float | None = None
        self._mutex = threading.Lock()

    @property
    def url(self) -> str:
        return self.obj.url

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r}, holder={self.holder!r}, lost={self.lost})"

    def _body(self, **extra: Any) -> bytes:
        # A fresh token in every body: each write has a new version even when nothing else changed.
        return json.dumps(
            {"holder": self.holder, "token": uuid.uuid4().hex, "written_at": time.time(), "ttl_s": self.ttl_s, **extra}
        ).encode()

    def _current(self) -> tuple[Any | None, dict[str, Any]]:
        version, raw = self.obj.read()
        if version is None:
            return None, {}
        try:
            info = json.loads(raw)
        except ValueError:
            info = {}
        return version, info if isinstance(info, dict) else {}

    def _hold(self, version: Any, confirmed_at: float) -> bool:
        self.version, self.confirmed_at, self.lost, self.released = version, confirmed_at, False, False
        return True

    def try_acquire(self, seen: dict[str, Any]) -> bool:
        """One attempt: create the lease, take a released one, or take over one whose version has not
        changed for `ttl_s`.

        `seen` carries the waiter's memory between attempts: the version last seen and when (own clock).
        """
        started = self.clock()
        version = self.obj.create(self._body())
        if version is not None:
            return self._hold(version, started)
        current, info = self._current()
        if current is None:
            return False  # released just now: the next attempt creates it
        if info.get("released"):
            started = self.clock()
            version = self._replace_or_none(current)
            return version is not None and self._hold(version, started)
        now = self.clock()
        if seen.get("version") != current:
            seen.update(version=current, since=now, holder=info.get("holder", "?"))
            return False
        if now - seen["since"] < self.ttl_s:
            return False
        version = self._replace_or_none(current)
        if version is None:
            return False  # another waiter took it over, or the holder renewed
        log.warning("took over a stale writer lease %s from %s", self.url, seen.get("holder"))
        return self._hold(version, now)

    def _replace_or_none(self, version: Any) -> Any | None:
        try:
            return self.obj.replace(self._body(), version)
        except RetryLater:
            return None

    def renew(self) -> bool:
        """Rewrite the lease (conditional on its version). False once it is lost, released, or could not
        be confirmed for `ttl_s` (a waiter may have taken it over by then: never assume it is still held);
        True after a transient failure within the ttl (the heartbeat tries again)."""
        return self._renew() != "lost"

    def _renew(self) -> str:
        """"confirmed", "transient" (not confirmed, still within the ttl) or "lost"."""
        with self._mutex:
            if self.version is None or self.lost or self.released:
                return "lost"
            started = self.clock()
            try:
                version = self.obj.replace(self._body(), self.version)
            except Exception as e:  # noqa: BLE001
                if self.confirmed_at is None or self.clock() - self.confirmed_at >= self.ttl_s:
                    self._mark_lost(f"not confirmed for {self.ttl_s:.0f} s: {_why(e)}")
                    return "lost"
                log.warning("could not renew the writer lease %s: %s", self.url, _why(e))
                return "transient"
            if version is None:
                self._mark_lost("another writer took it over")
                return "lost"
            self.version, self.confirmed_at = version, started
            return "confirmed"

    def _mark_lost(self, why: str) -> None:
        self.lost = True
        log.error(
            "lost the writer lease %s (%s): another writer may be active; this run stops before its next write",
            self.url, why,
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
                    f"this run lost the writer lease {self.url} (another writer took it over, "
                    f"or it could not be renewed within {self.ttl_s:.0f} s); it stopped before writing: "
                    "the previously committed table is unchanged, rerun when the other run is done"
                )
            time.sleep(pause)

    def release(self) -> None:
        # Under the mutex: waits for a renewal in flight (its new version is the one to release), and
        # marks the lease released so that no later renewal re-creates it.
        with self._mutex:
            self.released = True
            if self.version is None or self.lost:
                return
            try:
                if not self.obj.release(self.version, self._body(released=True)):
                    log.warning("did not release the writer lease %s: it was no longer this run's", self.url)
            except Exception as e:  # noqa: BLE001 - releasing is best effort: an unreleased lease goes stale
                log.warning("could not release the writer lease %s: %s", self.url, _why(e))
            self.version = None


class S3Lease(Lease):
    """A lease on `key` in S3 `bucket` through a boto3 client."""

    def __init__(
        self,
        client: Any,
        bucket: str,
        key: str,
        ttl_s: float = 60.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        holder: str | None = None,
    ):
        super().__init__(S3Object(client, bucket, key), ttl_s, clock=clock, holder=holder)

    client = property(lambda self: self.obj.client)
    bucket = property(lambda self: self.obj.bucket)
    key = property(lambda self: self.obj.key)

    @property
    def etag(self) -> str | None:
        return self.version

    @etag.setter
    def etag(self, value: str | None) -> None:
        self.version = value


def lease_for(uri: str, table: str, storage_options: Mapping[str, str], ttl_s: float) -> Lease:
    """The lease object for `table` in the LanceDB at object-store `uri`."""
    scheme = uri.split("://", 1)[0].lower()
    bucket, prefix = split_uri(uri)
    key = "/".join(p for p in (prefix, LOCKS_PREFIX, f"{table}.lease") if p)
    if scheme in S3_SCHEMES:
        return S3Lease(s3_client(storage_options, ttl_s), bucket, key, ttl_s=ttl_s)
    if scheme in GCS_SCHEMES + AZURE_SCHEMES:
        store = obstore_store(scheme, bucket, storage_options, ttl_s)
        return Lease(ObstoreObject(store, key, f"{scheme}://{bucket}/{key}"), ttl_s)
    raise LockError(
        f"cross-host writer locking is not supported for {scheme}:// (table {table!r} at {uri}); "
        "use an s3://, gs:// or az:// store, or make sure only one ingest runs per table "
        "(e.g. a Prefect concurrency limit of 1)"
    )


@contextmanager
def held(lease: Lease, wait_s: float, poll_s: float = 1.0) -> Iterator[Lease]:
    """Hold `lease` for the block, renewing it every ttl/3; waits up to `wait_s`, then fails clearly."""
    deadline, seen = time.monotonic() + wait_s, {}
    while not lease.try_acquire(seen):
        if time.monotonic() > deadline:
            raise LockError(
                f"another run ({seen.get('holder', 'unknown')}) holds the writer lease {lease.url}; "
                f"wait for it to finish (a crashed holder's lease goes stale after {lease.ttl_s:.0f} s)"
            )
        time.sleep(min(poll_s, lease.ttl_s / 3))
    stop = threading.Event()

    def heartbeat() -> None:
        while not stop.wait(lease.ttl_s / 3):
            if stop.is_set() or not lease.renew():
                return

    beat = threading.Thread(target=heartbeat, name=f"lease-{lease.url}", daemon=True)
    beat.start()
    try:
        yield lease
    finally:
        stop.set()
        beat.join(timeout=10)
        lease.release()
