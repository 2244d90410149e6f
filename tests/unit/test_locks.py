"""The cross-host writer lease (tasks/locks.py), against an in-memory conditional-PUT store."""

from __future__ import annotations

import sys
import threading
import time

import pytest

from tasks.locks import LockError, S3Lease



class _Conditional(Exception):
    def __init__(self, code: str):
        self.response = {"Error": {"Code": code}}


class FakeS3:
    """put/get/delete with S3's If-None-Match / If-Match semantics, ETag = md5 of the body."""

    def __init__(self):
        self.objects: dict[str, bytes] = {}

    @staticmethod
    def _etag(body: bytes) -> str:
        import hashlib

        return '"' + hashlib.md5(body).hexdigest() + '"'

    def put_object(self, Bucket, Key, Body, IfNoneMatch=None, IfMatch=None):
        current = self.objects.get(Key)
        if IfNoneMatch == "*" and current is not None:
            raise _Conditional("PreconditionFailed")
        if IfMatch is not None and (current is None or self._etag(current) != IfMatch):
            raise _Conditional("PreconditionFailed" if current is not None else "NoSuchKey")
        self.objects[Key] = Body
        return {"ETag": self._etag(Body)}

    def get_object(self, Bucket, Key):
        import io

        if Key not in self.objects:
            raise _Conditional("NoSuchKey")
        return {"ETag": self._etag(self.objects[Key]), "Body": io.BytesIO(self.objects[Key])}

    def delete_object(self, Bucket, Key, IfMatch=None):
        current = self.objects.get(Key)
        if IfMatch is not None and (current is None or self._etag(current) != IfMatch):
            raise _Conditional("PreconditionFailed")
        self.objects.pop(Key, None)


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _lease(s3, clock, ttl=10.0):


    return S3Lease(s3, "bucket", "prefix/_ragtune_locks/chunks.lease", ttl_s=ttl, clock=clock)


def test_only_one_of_two_creators_gets_the_lease():
    s3, clock = FakeS3(), Clock()
    a, b = _lease(s3, clock), _lease(s3, clock)
    assert a.try_acquire({}) and not b.try_acquire({})


def test_a_renewed_lease_is_never_taken_over_however_long_it_is_held():
    s3, clock = FakeS3(), Clock()
    holder, waiter, seen = _lease(s3, clock), _lease(s3, clock), {}
    assert holder.try_acquire({})
    for _ in range(10):
        assert not waiter.try_acquire(seen)
        clock.now += 6  # less than the ttl between renewals
        assert holder.renew()
    assert not waiter.try_acquire(seen) and not holder.lost


def test_a_stale_lease_goes_to_exactly_one_waiter_after_ttl_by_its_own_clock():
    s3, clock = FakeS3(), Clock()
    dead, w1, w2 = _lease(s3, clock), _lease(s3, clock), _lease(s3, clock)
    assert dead.try_acquire({})
    seen1, seen2 = {}, {}
    assert not w1.try_acquire(seen1) and not w2.try_acquire(seen2)  # first sight starts each waiter's timer
    clock.now += 9.9
    assert not w1.try_acquire(seen1)  # not stale yet
    clock.now += 0.2
    assert w1.try_acquire(seen1)  # conditional takeover (If-Match the stale ETag)
    assert not w2.try_acquire(seen2)  # the ETag changed: w2's timer restarts, it cannot win too
    # The dead holder comes back: its renewal fails, and its release does not delete w1's lease.
    assert not dead.renew() and dead.lost
    dead.release()
    assert s3.objects and w1.renew()


def test_a_waiter_ignores_timestamps_written_by_a_skewed_host():
    import json

    s3, clock = FakeS3(), Clock()
    holder, waiter = _lease(s3, clock), _lease(s3, clock)
    assert holder.try_acquire({})
    key = holder.key
    body = json.loads(s3.objects[key])
    body["written_at"] -= 10 * 365 * 86400  # a holder whose clock is years behind
    s3.objects[key] = json.dumps(body).encode()
    holder.etag = FakeS3._etag(s3.objects[key])
    assert not waiter.try_acquire({})  # only the waiter's own observation time counts


def test_release_frees_the_lease_for_the_next_writer():
    s3, clock = FakeS3(), Clock()
    a, b = _lease(s3, clock), _lease(s3, clock)
    assert a.try_acquire({})
    a.release()
    assert not s3.objects and b.try_acquire({})


def test_lease_key_sits_next_to_the_table_on_every_provider_and_other_schemes_are_refused():
    from tasks.locks import LockError, lease_for, split_s3_uri

    assert split_s3_uri("s3://bucket/a/b/") == ("bucket", "a/b")
    lease = lease_for("s3://bucket/a/b", "chunks", {"aws_region": "us-east-1"}, ttl_s=5)
    assert (lease.bucket, lease.key) == ("bucket", "a/b/_ragtune_locks/chunks.lease")
    pytest.importorskip("obstore")
    assert lease_for("gs://bucket/a", "chunks", {}, ttl_s=5).url == "gs://bucket/a/_ragtune_locks/chunks.lease"
    az = lease_for("az://container/a/b", "chunks", {"azure_storage_account_name": "acct"}, ttl_s=5)
    assert az.url == "az://container/a/b/_ragtune_locks/chunks.lease"
    for uri in ("hdfs://namenode/a", "abfss://fs@acct.dfs.core.windows.net/a"):
        with pytest.raises(LockError, match="not supported for"):
            lease_for(uri, "chunks", {}, ttl_s=5)


def test_gcs_and_azure_options_are_split_into_store_and_client_options_with_the_lease_budget():
    pytest.importorskip("obstore")
    from tasks.locks import lease_for, obstore_budget

    secret = "c2VjcmV0LWtleQ=="
    options = {"azure_storage_account_name": "acct", "AZURE_STORAGE_ACCOUNT_KEY": secret, "allow_http": "true",
               "azure_storage_endpoint": "http://127.0.0.1:1/acct", "timeout": "600s", "download_retry_count": "3"}
    for ttl in (60.0, 30.0):
        lease = lease_for("az://container/a", "chunks", options, ttl_s=ttl)
        store = lease.obj.store
        assert store.config["account_name"] == "acct" and store.config["account_key"] == secret
        assert store.config["endpoint"] == "http://127.0.0.1:1/acct" and "download_retry_count" not in store.config
        client = store.client_options
        assert client["allow_http"] == "true" and client["timeout"] != "600s"  # the lease's own timeouts win
        assert store.retry_config["max_retries"] == 1
        budget, retry = obstore_budget(ttl)
        worst = 2 * budget["timeout"].total_seconds() + retry["backoff"]["max_backoff"].total_seconds()
        assert worst < ttl / 3 and retry["retry_timeout"].total_seconds() < ttl / 3, (ttl, budget, retry)
        assert secret not in repr(lease)
    key = '{"gcs_base_url": "http://127.0.0.1:1", "disable_oauth": true, "client_email": "", "private_key": "", "private_key_id": ""}'
    gs = lease_for("gs://bucket/a", "chunks", {"google_service_account_key": key, "allow_http": "true"}, ttl_s=60).obj.store
    assert gs.config["service_account_key"] == key and gs.client_options["allow_http"] == "true"


def test_missing_obstore_is_a_clear_error(monkeypatch):
    from tasks.locks import lease_for

    monkeypatch.setitem(sys.modules, "obstore", None)
    monkeypatch.setitem(sys.modules, "obstore.store", None)
    monkeypatch.setitem(sys.modules, "obstore.exceptions", None)
    for uri in ("gs://bucket/a", "az://container/a"):
        with pytest.raises(LockError, match="needs obstore"):
            lease_for(uri, "chunks", {}, ttl_s=5)


# --- GCS / Azure: no conditional delete, a release is a tombstone -----------------------------------


class FakeTombstoneStore:
    """The object as obstore gives it on GCS/Azure: conditional create and replace, versions that
    change on every write, no conditional delete (release replaces the lease with a tombstone)."""

    def __init__(self):
        self.version, self.body, self.url, self._n = None, b"", "az://container/_ragtune_locks/chunks.lease", 0

    def _write(self, body):
        self._n += 1
        self.version, self.body = {"e_tag": f'"0x{self._n}"'}, body
        return self.version

    def create(self, body):
        return None if self.version is not None else self._write(body)

    def replace(self, body, version):
        return self._write(body) if self.version is not None and self.version == version else None

    def read(self):
        return self.version, self.body

    def release(self, version, tombstone):
        return self.replace(tombstone, version) is not None


def _tomb_lease(obj, clock, ttl=10.0):
    from tasks.locks import Lease

    return Lease(obj, ttl, clock=clock)


def test_a_released_lease_is_a_tombstone_taken_at_once_by_exactly_one_acquirer():
    import json

    obj, clock = FakeTombstoneStore(), Clock()
    a, b, c = (_tomb_lease(obj, clock) for _ in range(3))
    assert a.try_acquire({})
    a.release()
    assert json.loads(obj.body)["released"] is True  # a tombstone, not a deleted object
    assert b.try_acquire({}) and not c.try_acquire({})  # no ttl wait for a released lease; only one gets it
    assert b.renew() and not c.renew()


def test_a_lost_holder_cannot_tombstone_its_successors_lease():
    import json

    obj, clock = FakeTombstoneStore(), Clock()
    paused, other = _tomb_lease(obj, clock), _tomb_lease(obj, clock)
    assert paused.try_acquire({})
    seen = {}
    assert not other.try_acquire(seen)
    clock.now += 11
    assert other.try_acquire(seen)
    paused.release()  # it has not noticed: its conditional release must fail
    assert json.loads(obj.body)["holder"] == other.holder and "released" not in json.loads(obj.body)
    assert other.renew() and json.loads(obj.body)["holder"] == other.holder


# --- a holder that lost its lease must notice before it writes -------------------------------------


class _Transient(Exception):
    def __init__(self):
        self.response = {"Error": {"Code": "SlowDown"}}


def test_check_raises_once_another_writer_took_the_lease_over():
    s3, clock = FakeS3(), Clock()
    paused, other = _lease(s3, clock), _lease(s3, clock)
    assert paused.try_acquire({})
    paused.check()  # still ours: a synchronous renewal
    seen = {}
    assert not other.try_acquire(seen)
    clock.now += 11  # the holder was paused longer than the ttl
    assert other.try_acquire(seen)
    with pytest.raises(LockError, match="lost the writer lease"):
        paused.check()
    assert paused.lost and other.renew()


def test_a_holder_cut_off_longer_than_the_ttl_does_not_believe_it_still_holds_the_lease():
    s3, clock = FakeS3(), Clock()
    lease = _lease(s3, clock)
    assert lease.try_acquire({})
    real_put = s3.put_object

    def unreachable(**kwargs):
        clock.now += 2  # each failing call takes time
        raise _Transient()

    s3.put_object = unreachable
    clock.now += 3
    assert lease.renew() and not lease.lost  # transient and within the ttl: keep trying
    clock.now += 5
    assert not lease.renew() and lease.lost  # unconfirmed for a whole ttl: counted as lost
    s3.put_object = real_put
    with pytest.raises(LockError, match="lost the writer lease"):
        lease.check()


def test_check_retries_a_transient_failure_within_the_ttl_then_gives_up():
    s3, clock = FakeS3(), Clock()
    lease = _lease(s3, clock)
    assert lease.try_acquire({})
    real_put, calls = s3.put_object, []

    def flaky(**kwargs):
        calls.append(1)
        if len(calls) < 3:
            clock.now += 1
            raise _Transient()
        return real_put(**kwargs)

    s3.put_object = flaky
    lease.check(retry_s=0)  # confirmed on the third try
    assert len(calls) == 3 and not lease.lost

    def down(**kwargs):
        clock.now += 1
        raise _Transient()

    s3.put_object = down
    with pytest.raises(LockError, match="within 10 s"):
        lease.check(retry_s=0)


def test_release_waits_for_a_renewal_in_flight_and_no_renewal_follows_it():
    s3, clock = FakeS3(), Clock()
    lease = _lease(s3, clock)
    assert lease.try_acquire({})
    real_put, written, go = s3.put_object, threading.Event(), threading.Event()

    def slow_response(**kwargs):
        out = real_put(**kwargs)  # the new body is stored...
        written.set()
        go.wait(5)  # ...but the response is still on its way
        return out

    s3.put_object = slow_response
    renewal = threading.Thread(target=lease.renew)
    renewal.start()
    assert written.wait(5)
    release = threading.Thread(target=lease.release)
    release.start()
    time.sleep(0.2)
    go.set()
    renewal.join(5)
    release.join(5)
    assert not s3.objects  # released with the renewed ETag, not left behind to go stale
    s3.put_object = real_put
    assert not lease.renew() and not s3.objects  # a late heartbeat does not re-create it


def test_lease_calls_are_bounded_well_under_a_third_of_the_ttl():
    from tasks.locks import lease_for

    for ttl in (60.0, 30.0):
        config = lease_for("s3://bucket/a", "chunks", {"aws_region": "us-east-1"}, ttl_s=ttl).client.meta.config
        attempts = config.retries["total_max_attempts"]  # botocore: the first try plus the retries
        worst = attempts * (config.connect_timeout + config.read_timeout) + 1.0  # plus a short backoff
        assert worst < ttl / 3, (ttl, config.connect_timeout, config.read_timeout, config.retries)


def test_missing_boto3_is_a_clear_error_not_a_store_misconfiguration(monkeypatch, tmp_path):
    from tasks.locks import lease_for
    from tasks.store import StoreError, writer_lock

    monkeypatch.setitem(sys.modules, "boto3", None)  # `import boto3` raises ImportError
    with pytest.raises(LockError, match="pip install boto3"):
        lease_for("s3://bucket/a", "chunks", {}, ttl_s=5)
    with pytest.raises(StoreError) as e:
        with writer_lock(tmp_path, "chunks", wait_s=1, uri="s3://bucket/a", storage_options={}):
            pass
    assert "pip install boto3" in str(e.value) and "check store.uri" not in str(e.value)


def test_a_local_writer_lock_yields_a_handle_whose_check_is_a_no_op(tmp_path):
    from tasks.store import writer_lock

    with writer_lock(tmp_path, "chunks", wait_s=1) as lock:
        lock.check()
        assert lock.lease is None
