"""The chunk table on S3: the `ingest` and `answer` paths against a real S3-compatible server (moto) on 127.0.0.1."""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path

import pytest

from flows.ingest import ingest
from tasks.config import load_settings
from tasks.locks import lease_for
from tasks.resources import open_retriever, search_filters
from tasks.store import ChunkStore, StoreError, writer_lock

BUCKET = "ragtune-test"


@pytest.fixture(scope="module")
def s3_endpoint():
    boto3 = pytest.importorskip("boto3")
    server_mod = pytest.importorskip("moto.server")
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="x",
                 aws_secret_access_key="x").create_bucket(Bucket=BUCKET)
    yield endpoint
    server.stop()


@pytest.fixture
def secret() -> str:
    return "SeCrEt-" + uuid.uuid4().hex


@pytest.fixture
def s3_store(home, s3_endpoint, secret, monkeypatch) -> str:
    """RAGTUNE_STORE__URI at a fresh prefix, with a recognisable secret key."""
    uri = f"s3://{BUCKET}/{uuid.uuid4().hex[:8]}/ragtune"
    options = {"aws_endpoint": s3_endpoint, "aws_region": "us-east-1", "allow_http": "true",
               "aws_access_key_id": "AKIA-TEST", "aws_secret_access_key": secret}
    monkeypatch.setenv("RAGTUNE_STORE__URI", uri)
    monkeypatch.setenv("RAGTUNE_STORE__STORAGE_OPTIONS", json.dumps(options))
    return uri


def _corpus(root: Path) -> Path:
    (root / "hr").mkdir(parents=True)
    (root / "hr" / "salaries.md").write_text("# Salaries\n\nThe salary band for engineers is confidential hr data.\n")
    (root / "faq.txt").write_text("The support line opens at 08:00 CET.\n\nTickets are answered within 4 hours.\n")
    for i in range(3):
        (root / f"note-{i}.md").write_text(f"# Note {i}\n\n" + " ".join(f"Sentence {j} of note {i}." for j in range(30)))
    return root


def _store() -> ChunkStore:
    s = load_settings()
    return ChunkStore(s.store_uri, s.store.table, storage_options=s.store_options())


def _doc_ids() -> set[str]:
    return set(_store().chunks.search().select(["doc_id"]).limit(None).to_arrow().column("doc_id").to_pylist())


def test_ingest_rerun_delete_search_on_s3(home, tmp_path, s3_store, secret, monkeypatch):
    monkeypatch.setenv("RAGTUNE_INGEST__ACCESS_GROUPS", '{"hr/**": ["hr"]}')
    src = _corpus(tmp_path / "src")
    monkeypatch.setenv("RAGTUNE_INGEST__ACCESS_ROOT", str(src))
    first = ingest(str(src))
    assert first["status"] == "completed" and first["counts"]["added"] == 5
    assert not (home / "lancedb").exists()  # the table is on S3, not under the home
    assert _doc_ids() == {"hr/salaries.md", "faq.txt", "note-0.md", "note-1.md", "note-2.md"}

    second = ingest(str(src))
    assert second["counts"]["chunks_embedded"] == 0 and second["counts"]["unchanged"] == 5
    assert second["chunk_table_version"] == first["chunk_table_version"]

    (src / "note-2.md").unlink()
    third = ingest(str(src))
    assert third["counts"]["deleted"] == 1
    assert "note-2.md" not in _doc_ids()

    settings = load_settings()
    retriever = open_retriever(settings)
    public = retriever.search("salary band engineers", k=10, filters=search_filters(settings, groups=[]))
    assert public.hits and all(h.doc_id != "hr/salaries.md" for h in public.hits)
    hr = retriever.search("salary band engineers", k=10, filters=search_filters(settings, groups=["hr"]))
    assert hr.hits[0].doc_id == "hr/salaries.md"

    # The secret never reaches the run directory (manifests JSON + MD), the status, or an error.
    for path in (home / "runs").rglob("*"):
        if path.is_file():
            assert secret not in path.read_text(errors="replace"), path
    assert secret not in json.dumps(_store().status())
    assert secret not in repr(_store()) and secret not in repr(settings)


def test_secret_absent_from_prefect_artifacts_runs_and_logs(home, tmp_path, s3_store, secret, caplog):
    import asyncio
    import logging

    from prefect.logging.handlers import APILogHandler

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, LogFilter, LogFilterFlowRunId

    caplog.set_level(logging.DEBUG)
    result = ingest(str(_corpus(tmp_path / "src")))
    flow_run_id = uuid.UUID(result["flow_run_id"])
    APILogHandler().flush()

    async def prefect_texts() -> tuple[list[str], list[str], str]:
        async with get_client() as client:
            artifacts = await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(like_="ingest-")))
            logs = await client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
            run = await client.read_flow_run(flow_run_id)
            tasks = await client.read_task_runs()
            return ([json.dumps(a.model_dump(mode="json")) for a in artifacts], [l.message for l in logs],
                    json.dumps(run.model_dump(mode="json")) + json.dumps([t.model_dump(mode="json") for t in tasks]))

    artifacts, logs, runs = asyncio.run(prefect_texts())
    # Something was recorded and none of it holds the secret. caplog sees every Python log record of the
    # run (Prefect's run loggers, lancedb, boto, moto's access log); the API may hold none of them here.
    assert artifacts and caplog.records
    assert all(secret not in t for t in artifacts + logs) and secret not in runs
    assert secret not in caplog.text


def test_ask_on_s3(home, tmp_path, s3_store, tiny_llama, monkeypatch):
    monkeypatch.setenv("RAGTUNE_GENERATOR__MODEL", str(tiny_llama))
    monkeypatch.setenv("RAGTUNE_TORCH_THREADS", "1")
    from flows.answer import answer

    ingest(str(_corpus(tmp_path / "src")))
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"id": "q1", "question": "When does the support line open?"}) + "\n")
    out = answer(str(questions), str(tmp_path / "answers.jsonl"), adapter="none")
    assert out["questions"] == 1
    row = json.loads(Path(out["output"]).read_text().splitlines()[0])
    assert row["id"] == "q1" and ("answer" in row)


def test_failure_mid_write_keeps_previous_version_and_rerun_converges(home, tmp_path, s3_store, monkeypatch):
    from lancedb.merge import LanceMergeInsertBuilder

    src = _corpus(tmp_path / "src")
    first = ingest(str(src))
    before = _store().chunks.to_arrow().sort_by("chunk_id")
    (src / "faq.txt").write_text("The support line opens at 09:00 CET.\n\nA new paragraph about refunds.\n")
    (src / "new.md").write_text("# New\n\nA brand new document.\n")

    real_execute = LanceMergeInsertBuilder.execute

    def crash(self, *args, **kwargs):
        raise OSError("injected crash in the middle of the chunk write")

    monkeypatch.setattr(LanceMergeInsertBuilder, "execute", crash)
    with pytest.raises(Exception, match="injected crash"):
        ingest(str(src))
    # Vectors were embedded and spooled on S3 (partial work), the table still reads its previous version.
    after = _store().chunks
    assert after.version == first["chunk_table_version"]
    assert after.to_arrow().sort_by("chunk_id").equals(before)

    monkeypatch.setattr(LanceMergeInsertBuilder, "execute", real_execute)
    rerun = ingest(str(src))
    assert rerun["status"] == "completed" and rerun["counts"]["chunks_embedded"] == 0  # reused from the S3 spool
    ids = _store().chunks.to_arrow().column("chunk_id").to_pylist()
    assert len(ids) == len(set(ids)) and "new.md" in _doc_ids()
    texts = " ".join(_store().chunks.to_arrow().column("text").to_pylist())
    assert "09:00" in texts and "08:00" not in texts


def test_two_hosts_are_serialised_by_the_lease(tmp_path, s3_endpoint):
    uri = f"s3://{BUCKET}/{uuid.uuid4().hex[:8]}/ragtune"
    options = {"aws_endpoint": s3_endpoint, "aws_region": "us-east-1", "aws_access_key_id": "x", "aws_secret_access_key": "x"}
    inside, overlaps, order = [0], [], []

    def host(name: str) -> None:
        # Different local lock dirs: only the lease on S3 can serialise them.
        with writer_lock(tmp_path / name / "locks", "chunks", wait_s=30, uri=uri, storage_options=options, lease_ttl_s=5):
            inside[0] += 1
            overlaps.append(inside[0])
            order.append(name)
            time.sleep(0.5)
            inside[0] -= 1

    threads = [threading.Thread(target=host, args=(f"host-{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(order) == ["host-0", "host-1"] and max(overlaps) == 1

    # Released: nothing is left behind.
    lease = lease_for(uri, "chunks", options, ttl_s=5)
    assert lease._current()[0] is None


def test_a_busy_lease_fails_clearly_and_a_stale_one_is_taken_over(tmp_path, s3_endpoint):
    uri = f"s3://{BUCKET}/{uuid.uuid4().hex[:8]}/ragtune"
    options = {"aws_endpoint": s3_endpoint, "aws_region": "us-east-1", "aws_access_key_id": "x", "aws_secret_access_key": "x"}
    crashed = lease_for(uri, "chunks", options, ttl_s=1.5)
    assert crashed.try_acquire({})  # a holder that then dies: never renews, never releases

    with pytest.raises(StoreError, match="holds the writer lease"):
        with writer_lock(tmp_path / "a", "chunks", wait_s=0.5, uri=uri, storage_options=options, lease_ttl_s=60):
            pass
    start = time.monotonic()
    with writer_lock(tmp_path / "b", "chunks", wait_s=10, uri=uri, storage_options=options, lease_ttl_s=1.5):
        assert time.monotonic() - start >= 1.5  # not before the lease went stale by the waiter's own clock
        assert not crashed.renew() and crashed.lost  # the old holder notices it lost the lease


def test_locking_a_store_without_a_lease_is_refused_clearly(tmp_path):
    # gs:// and az:// have one too (tests/flows/test_object_store_gs_az.py); other schemes are refused.
    with pytest.raises(StoreError, match="not supported for hdfs://"):
        with writer_lock(tmp_path, "chunks", uri="hdfs://namenode/prefix", storage_options={}):
            pass


def _run_texts(home: Path) -> str:
    """The run directory (manifests JSON + MD) and every ingest artifact Prefect holds, as one text."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def artifacts() -> list[str]:
        async with get_client() as client:
            found = await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(like_="ingest-")))
            return [json.dumps(a.model_dump(mode="json")) for a in found]

    runs = [p.read_text(errors="replace") for p in (home / "runs").rglob("*") if p.is_file()]
    texts = asyncio.run(artifacts())
    assert runs and texts
    return "\n".join(runs + texts)


def test_wrong_credentials_error_names_the_uri_not_the_secret(home, tmp_path, s3_store, s3_endpoint, secret, monkeypatch):
    """S3 echoes the access key id (and may echo a token): the manifest, the artifact and the CLI
    message mask it, however short, while the endpoint and region the user must check stay visible."""
    from typer.testing import CliRunner

    from ragtune_cli import app
    from tasks.locks import S3Lease

    key_id, token = "AK7", "tok-" + uuid.uuid4().hex[:6]
    options = {"aws_endpoint": s3_endpoint, "aws_region": "eu-west-3", "allow_http": "true",
               "aws_access_key_id": key_id, "aws_secret_access_key": secret, "aws_session_token": token}
    monkeypatch.setenv("RAGTUNE_STORE__STORAGE_OPTIONS", json.dumps(options))

    def rejected(self, seen):  # what S3 answers to a wrong key pair (moto does not check credentials)
        raise RuntimeError(
            f"InvalidAccessKeyId: The AWS Access Key Id {key_id} (session token {token}, secret {secret}) "
            f"does not exist at {s3_endpoint} in eu-west-3"
        )

    monkeypatch.setattr(S3Lease, "try_acquire", rejected)
    result = CliRunner().invoke(app, ["ingest", str(_corpus(tmp_path / "src")), "--json"])
    message = result.output + (result.stderr if result.stderr_bytes is not None else "")
    assert result.exit_code == 1 and "InvalidAccessKeyId" in message
    assert s3_store in message and s3_endpoint in message and "eu-west-3" in message
    recorded = _run_texts(home)
    assert "InvalidAccessKeyId" in recorded and s3_endpoint in recorded
    for value in (key_id, token, secret):
        assert value not in message and value not in recorded, value


def test_an_s3_error_mid_run_is_redacted_in_the_manifest_and_artifact(home, tmp_path, s3_store, secret, monkeypatch):
    from lancedb.merge import LanceMergeInsertBuilder

    def denied(self, *args, **kwargs):
        raise OSError(f"Generic S3 error: PUT denied, request signed with secret {secret} and key AKIA-TEST")

    monkeypatch.setattr(LanceMergeInsertBuilder, "execute", denied)
    with pytest.raises(OSError, match="PUT denied"):
        ingest(str(_corpus(tmp_path / "src")))
    recorded = _run_texts(home)
    assert "PUT denied" in recorded
    assert secret not in recorded and "AKIA-TEST" not in recorded


def test_a_writer_that_lost_its_lease_stops_before_writing(home, tmp_path, s3_store, monkeypatch):
    """A holder paused past the ttl resumes after another host took the lease over: it must not
    write chunks or the ledger, nor clear the spool (the new holder reuses those vectors)."""
    from tasks import ingest as steps

    settings = load_settings()
    other = lease_for(settings.store_uri, settings.store.table, settings.store_options(), ttl_s=60)
    real_chunk_rows = steps.chunk_rows

    def paused_then_taken_over(*args, **kwargs):
        # Another host's takeover while this run was paused: the lease body (and ETag) changed.
        other.client.put_object(Bucket=other.bucket, Key=other.key, Body=b'{"holder": "other-host"}')
        return real_chunk_rows(*args, **kwargs)

    monkeypatch.setattr(steps, "chunk_rows", paused_then_taken_over)
    with pytest.raises(StoreError, match="lost the writer lease"):
        ingest(str(_corpus(tmp_path / "src")))
    store = _store()
    assert store.chunks is None and store.ledger_table is None  # nothing written
    assert store._open(store.spool_name) is not None  # the spool is left for the next holder
    assert other._current()[1] == {"holder": "other-host"}  # and its lease is not deleted
    manifest = json.loads(max((home / "runs").glob("ingest-*.json")).read_text())
    assert manifest["status"] == "failed" and "lost the writer lease" in manifest["error"]


def test_the_heartbeat_keeps_a_lease_held_past_its_ttl(tmp_path, s3_endpoint):
    uri = f"s3://{BUCKET}/{uuid.uuid4().hex[:8]}/ragtune"
    options = {"aws_endpoint": s3_endpoint, "aws_region": "us-east-1", "aws_access_key_id": "x", "aws_secret_access_key": "x"}
    times: dict[str, float] = {}
    first_in = threading.Event()

    def first() -> None:
        with writer_lock(tmp_path / "host-a", "chunks", wait_s=10, uri=uri, storage_options=options, lease_ttl_s=1.5) as lock:
            first_in.set()
            time.sleep(5)  # more than three ttls: only the renewals keep the lease alive
            lock.check()
            times["first_out"] = time.monotonic()

    def second() -> None:
        assert first_in.wait(10)
        # Another host: its own local lock dir, so only the lease on S3 can keep it out.
        with writer_lock(tmp_path / "host-b", "chunks", wait_s=10, uri=uri, storage_options=options, lease_ttl_s=1.5):
            times["second_in"] = time.monotonic()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert set(times) == {"first_out", "second_in"}
    assert times["second_in"] >= times["first_out"]
