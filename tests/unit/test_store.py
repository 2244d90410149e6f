"""The LanceDB store: atomic replace, embedding reuse and spool, ANN index with measured recall."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pytest

from data_contracts.schemas import chunk_schema
from tasks.store import ChunkStore, StoreError

DIM = 16


def _rows(doc_id: str, n: int, seed: int = 0, root: str = "/r") -> pa.Table:
    rng = np.random.default_rng(seed)
    now = datetime.now(timezone.utc)
    v = rng.normal(size=(n, DIM)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return pa.Table.from_pylist(
        [
            {
                "chunk_id": f"{doc_id}-{seed}-{i}", "doc_id": doc_id, "source_root": root, "source_path": f"{root}/{doc_id}",
                "title": doc_id, "format": "text", "page": None, "heading_path": [], "ordinal": i,
                "text": f"{doc_id} chunk {i} seed {seed}", "token_count": 5, "text_hash": "t",
                "embed_hash": f"e-{doc_id}-{seed}-{i}", "pipeline": "p", "groups": [], "doc_modified_at": now,
                "ingested_at": now, "vector": v[i].tolist(),
            }
            for i in range(n)
        ],
        schema=chunk_schema(DIM),
    )


def test_replace_documents_swaps_exactly_their_chunks(tmp_path):
    store = ChunkStore(tmp_path / "db", "chunks")
    store.replace_documents(pa.concat_tables([_rows("a", 3), _rows("b", 2)]), "/r", ["a", "b"])
    store.replace_documents(_rows("a", 2, seed=1), "/r", ["a"])
    ids = sorted(store.chunks.search().select(["chunk_id"]).limit(None).to_arrow().column("chunk_id").to_pylist())
    assert ids == ["a-1-0", "a-1-1", "b-0-0", "b-0-1"]
    store.replace_documents(_rows("a", 0), "/r", ["b"])  # b deleted
    assert store.chunks.count_rows() == 2


def test_same_doc_id_under_another_root_is_left_alone(tmp_path):
    store = ChunkStore(tmp_path / "db", "chunks")
    store.replace_documents(_rows("a", 2, root="/r1"), "/r1", ["a"])
    store.replace_documents(_rows("a", 0, root="/r2"), "/r2", ["a"])
    assert store.chunks.count_rows() == 2


def test_vectors_are_reused_from_table_and_spool(tmp_path):
    store = ChunkStore(tmp_path / "db", "chunks")
    rows = _rows("a", 2)
    store.replace_documents(rows, "/r", ["a"])
    spooled = np.eye(DIM, dtype=np.float32)[:1]
    store.spool(["new-hash"], spooled)
    found = store.vectors_for(["e-a-0-0", "new-hash", "unknown"])
    assert set(found) == {"e-a-0-0", "new-hash"}
    assert np.allclose(found["e-a-0-0"], np.array(rows.column("vector")[0].as_py()))
    store.clear_spool()
    assert "new-hash" not in store.vectors_for(["new-hash"])


def test_dimension_mismatch_is_refused_with_advice(tmp_path):
    store = ChunkStore(tmp_path / "db", "chunks")
    store.replace_documents(_rows("a", 1), "/r", ["a"])
    with pytest.raises(StoreError, match="another table"):
        store.check_dimension(DIM * 2)


def test_fts_index_then_ann_index_past_threshold(tmp_path):
    store = ChunkStore(tmp_path / "db", "chunks")
    store.replace_documents(_rows("a", 300), "/r", ["a"])
    first = store.maintain_indexes(ann_min_rows=1000, ann_min_recall=0.9, keep_days=7)
    assert (first.fts, first.vector) == ("created", "flat")
    assert [r["chunk_id"] for r in store.chunks.search("chunk 7", query_type="fts").limit(50).to_list()]
    store.replace_documents(_rows("b", 1200, seed=2), "/r", ["b"])
    second = store.maintain_indexes(ann_min_rows=1000, ann_min_recall=0.9, keep_days=7)
    assert second.vector == "created"
    assert 0.0 < second.ann_recall_at_10 <= 1.0
    assert second.ann_recall_at_10 >= 0.8  # IVF-PQ with refinement on 1.5k vectors
    assert not store.indexes_missing()


# --- the cross-host writer lease (tasks/locks.py), against an in-memory conditional-PUT store --------


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
    from tasks.locks import S3Lease

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


def test_store_settings_reveal_secrets_only_on_request(monkeypatch, tmp_path):
    from tasks.config import load_settings

    monkeypatch.setenv("RAGTUNE_HOME", str(tmp_path / "h"))
    assert load_settings().store_uri == str(tmp_path / "h" / "lancedb")
    monkeypatch.setenv("RAGTUNE_STORE__URI", "s3://bucket/prefix")
    monkeypatch.setenv("RAGTUNE_STORE__STORAGE_OPTIONS", '{"aws_secret_access_key": "very-secret-1"}')
    settings = load_settings()
    assert settings.store_uri == "s3://bucket/prefix"
    assert settings.store_options() == {"aws_secret_access_key": "very-secret-1"}
    assert "very-secret-1" not in repr(settings) and "very-secret-1" not in settings.model_dump_json()


def test_open_errors_redact_storage_option_values():
    from tasks.store import _redact

    assert _redact("denied for key abcd-1234 at s3://b", {"aws_secret_access_key": "abcd-1234", "allow_http": "true"}) == (
        "denied for key *** at s3://b"
    )
