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


def test_lease_key_sits_next_to_the_table_and_gs_is_refused():
    from tasks.locks import LockError, lease_for, split_s3_uri

    assert split_s3_uri("s3://bucket/a/b/") == ("bucket", "a/b")
    lease = lease_for("s3://bucket/a/b", "chunks", {"aws_region": "us-east-1"}, ttl_s=5)
    assert (lease.bucket, lease.key) == ("bucket", "a/b/_ragtune_locks/chunks.lease")
    with pytest.raises(LockError, match="gs://"):
        lease_for("gs://bucket/a", "chunks", {}, ttl_s=5)


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
