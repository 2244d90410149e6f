"""The `ingest` flow fanned out on real engines: a local Dask cluster (2 workers) and a local Ray (2 CPUs).

Each engine must give the table the `thread` default gives (chunk ids, texts, vectors within 1e-5),
and a rerun must embed nothing. Engines are started by the flow and torn down by it, even on failure.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from flows.ingest import ingest
from tasks.store import ChunkStore
from tests.flows.corpus import write_corpus

pytest.importorskip("prefect_dask")
pytest.importorskip("prefect_ray")


@pytest.fixture(autouse=True)
def _quiet_engines(monkeypatch, tmp_path):
    # Ray writes ~/.ray/auth_token unless token auth is off, and phones home unless told not to.
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.setenv("RAGTUNE_ORCHESTRATION__WORKERS", "2")
    before = (Path.home() / ".ray").exists()
    yield
    import ray

    ray.shutdown()  # no-op when the flow already shut its Ray down
    assert (Path.home() / ".ray").exists() == before, "Ray wrote under ~/.ray"


def _corpus(root: Path) -> Path:
    return write_corpus(root, notes=9, sentences=90)  # enough chunks for several embedding batches


def _table(home: Path) -> dict[str, tuple[str, np.ndarray]]:
    rows = ChunkStore(home / "lancedb", "chunks").chunks.search().select(["chunk_id", "text", "vector"]).limit(None).to_arrow()
    return {r["chunk_id"]: (r["text"], np.asarray(r["vector"], dtype=np.float32)) for r in rows.to_pylist()}


def _ingest_with(runner: str, home: Path, src: Path, monkeypatch, **kwargs) -> dict:
    monkeypatch.setenv("RAGTUNE_HOME", str(home))
    monkeypatch.setenv("RAGTUNE_ORCHESTRATION__TASK_RUNNER", runner)
    return ingest(str(src), **kwargs)


def _same_tables(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for cid, (text, vector) in a.items():
        assert b[cid][0] == text
        np.testing.assert_allclose(b[cid][1], vector, atol=1e-5)


# Ray (~10 s to start a local cluster) in the extended tier: make test keeps to its 15-minute budget.
@pytest.mark.parametrize("runner", ["dask", pytest.param("ray", marks=pytest.mark.extended)])
def test_engine_gives_the_thread_table_and_a_rerun_embeds_nothing(runner, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAGTUNE_EMBEDDER__MODEL", "hashing:32")
    src = _corpus(tmp_path / "src")
    reference = _ingest_with("thread", tmp_path / "thread", src, monkeypatch)
    assert "engine" not in " ".join(reference["timings"])

    cold = _ingest_with(runner, tmp_path / runner, src, monkeypatch)
    assert cold["status"] == "completed"
    assert cold["counts"]["chunks_embedded"] == reference["counts"]["chunks_embedded"] == cold["counts"]["chunks_total"] > 12
    _same_tables(_table(tmp_path / "thread"), _table(tmp_path / runner))

    unchanged = _ingest_with(runner, tmp_path / runner, src, monkeypatch)  # nothing to parse: no engine start
    assert unchanged["counts"]["chunks_embedded"] == 0 and unchanged["counts"]["chunks_written"] == 0

    forced = _ingest_with(runner, tmp_path / runner, src, monkeypatch, force=True)  # re-parsed on the engine
    assert forced["counts"]["chunks_embedded"] == 0
    assert forced["counts"]["chunks_reused"] == cold["counts"]["chunks_total"]
    _same_tables(_table(tmp_path / "thread"), _table(tmp_path / runner))


@pytest.mark.models
@pytest.mark.extended  # 41 s; the dask engine is also covered in make test by the tiny-embedder table test
def test_real_embedder_on_dask_matches_thread(tmp_path, monkeypatch):
    """The packaged MiniLM: one torch thread per worker gives the vectors of the in-flow path."""
    monkeypatch.chdir(tmp_path)
    src = _corpus(tmp_path / "src")
    _ingest_with("thread", tmp_path / "thread", src, monkeypatch)
    cold = _ingest_with("dask", tmp_path / "dask", src, monkeypatch)
    assert cold["counts"]["chunks_embedded"] == cold["counts"]["chunks_total"] > 12
    _same_tables(_table(tmp_path / "thread"), _table(tmp_path / "dask"))


def test_engine_batches_are_spooled_by_the_flow_as_they_return(tmp_path, monkeypatch):
    """A batch that fails on a worker stops the run after the returned batches were spooled: the rerun resumes."""
    from prefect.task_runners import ThreadPoolTaskRunner

    import flows.ingest as ingest_flow
    from tasks import ingest as steps
    from tasks.config import Settings

    calls = []

    class FailsAfterFirstBatch:
        def embed(self, texts):
            calls.append(len(texts))
            if len(calls) > 1:
                raise RuntimeError("worker lost")
            return np.ones((len(texts), 4), np.float32) / 2

    monkeypatch.setattr(ingest_flow, "load_embedder_for", lambda settings: FailsAfterFirstBatch())
    settings = Settings(embedder={"model": "hashing:4", "batch_size": 2}, orchestration={"workers": 2})
    store = ChunkStore(tmp_path / "lancedb", "chunks")
    todo = {f"h{i}": f"text {i}" for i in range(10)}
    vectors = steps.Vectors(by_hash={}, todo=dict(todo), reused=0, tokens={h: 10 - i for i, h in enumerate(todo)})
    with ThreadPoolTaskRunner(max_workers=1) as engine, pytest.raises(RuntimeError, match="worker lost"):
        ingest_flow._embedded_on(engine, vectors, store, settings)
    first = steps.embedding_batches(steps.Vectors({}, dict(todo), 0, vectors.tokens), 4)[0]
    assert calls[0] == len(first) == 4  # ten texts, two workers: batches of 4, 4, 2 (whole model batches)
    assert set(store.vectors_for(list(todo))) == set(first)  # spooled by the flow, ready for the rerun
