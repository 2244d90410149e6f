"""Injected task failures (tasks/faults.py) through the real Prefect engine: retries absorb them, and the
ingest flow ends with exactly the rows of a clean run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from prefect import flow, task

from flows.ingest import ingest
from tasks import faults
from tasks.faults import InjectedFault
from tasks.store import ChunkStore
from tests.flows.corpus import write_corpus


pytestmark = pytest.mark.usefixtures("no_faults")


def _rows(home: Path) -> dict[str, tuple]:
    table = ChunkStore(home / "lancedb", "chunks").chunks
    rows = table.search().select(["chunk_id", "doc_id", "text", "vector"]).limit(None).to_arrow().to_pylist()
    assert len(rows) == len({r["chunk_id"] for r in rows}), "duplicate chunk_id"
    return {r["chunk_id"]: (r["doc_id"], r["text"], np.asarray(r["vector"], np.float32)) for r in rows}


def _ledger(home: Path, root: Path) -> dict[str, tuple]:
    rows = ChunkStore(home / "lancedb", "chunks").ledger(str(root.resolve()))
    return {d: (r["status"], r["content_hash"], r["chunk_count"]) for d, r in rows.items()}


def _retries(flow_run_id: str) -> int:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return sum(max(0, r.run_count - 1) for r in runs)


def test_ingest_with_30_percent_failed_task_attempts_gives_the_clean_rows(home, tmp_path, monkeypatch):
    src = write_corpus(tmp_path / "src")
    clean = ingest(str(src))
    expected, expected_ledger = _rows(home), _ledger(home, src)

    faulty_home = tmp_path / "faulty-home"
    monkeypatch.setenv("RAGTUNE_HOME", str(faulty_home))
    monkeypatch.setenv(faults.RATE_ENV, "0.3")
    # Seed 0 fails embed-chunks once, validate-contracts and write-chunks twice each with today's task
    # sequence: every retry budget is exercised and none is exhausted.
    monkeypatch.setenv(faults.SEED_ENV, "0")
    result = ingest(str(src))
    injected = sum(faults.stats()["injected"].values())

    assert result["status"] == "completed" and injected >= 1
    assert _retries(result["flow_run_id"]) == injected  # each injected failure became one Prefect retry
    got = _rows(faulty_home)
    assert got.keys() == expected.keys() and len(got) == clean["counts"]["chunks_total"]
    assert all(got[k][:2] == expected[k][:2] and np.array_equal(got[k][2], expected[k][2]) for k in got)
    assert _ledger(faulty_home, src) == expected_ledger


class Permanent(Exception):
    pass


def test_retries_skip_permanent_errors_and_retry_the_rest():
    calls: list[str] = []

    @task(retries=2, retry_condition_fn=faults.retry_unless(Permanent))
    def fails_with(kind: str) -> None:
        calls.append(kind)
        raise Permanent(kind) if kind == "permanent" else InjectedFault(kind)

    @flow
    def run(kind: str) -> None:
        fails_with(kind)

    with pytest.raises(Permanent):
        run("permanent")
    with pytest.raises(InjectedFault):
        run("transient")
    assert calls == ["permanent"] + ["transient"] * 3
