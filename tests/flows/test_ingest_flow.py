"""The `ingest` flow through the real Prefect engine, with the hashing embedder and a temporary LanceDB."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from flows.ingest import IngestFailed, ingest
from tasks.embed import HashEmbedder
from tasks.store import ChunkStore
from tasks.validate import ContractViolation
from tests.flows.corpus import write_corpus as _corpus

FIXTURE_PDFS = Path(__file__).resolve().parents[1] / "fixtures" / "pdf"


def _chunks(home: Path) -> dict[str, dict]:
    store = ChunkStore(home / "lancedb", "chunks")
    rows = store.chunks.search().select(["chunk_id", "doc_id", "text", "ingested_at"]).limit(None).to_arrow()
    return {r["chunk_id"]: r for r in rows.to_pylist()}


def test_cold_run_then_rerun_embeds_nothing(home, tmp_path):
    src = _corpus(tmp_path / "src")
    first = ingest(str(src))
    assert first["status"] == "completed"
    assert first["counts"]["added"] == 7 and first["counts"]["quarantined"] == 0
    assert first["counts"]["chunks_embedded"] == first["counts"]["chunks_total"] > 7
    assert {v["suite"] for v in first["validation"]} == {"chunks", "documents"}
    manifest_files = list((home / "runs").glob("ingest-*.json"))
    assert len(manifest_files) == 1 and json.loads(manifest_files[0].read_text())["run_id"] == first["run_id"]

    second = ingest(str(src))
    assert second["counts"]["unchanged"] == 7
    assert second["counts"]["chunks_embedded"] == 0 and second["counts"]["chunks_written"] == 0
    assert second["chunk_table_version"] == first["chunk_table_version"]
    assert "parse_chunk" not in second["timings"] or second["timings"]["parse_chunk"] < 0.05


def test_editing_one_file_replaces_only_its_changed_chunks(home, tmp_path):
    src = _corpus(tmp_path / "src")
    ingest(str(src))
    before = _chunks(home)
    note = src / "note-2.md"
    note.write_text(note.read_text().replace("Sentence 39 of note 2.", "A brand new closing sentence."))
    result = ingest(str(src))
    after = _chunks(home)
    assert result["counts"]["updated"] == 1 and result["counts"]["unchanged"] == 6
    assert result["counts"]["chunks_embedded"] == 1  # only the chunk whose text changed
    assert result["counts"]["chunks_reused"] == result["counts"]["chunks_written"] - 1
    untouched = {k: v for k, v in before.items() if v["doc_id"] != "note-2.md"}
    assert all(after[k]["ingested_at"] == v["ingested_at"] for k, v in untouched.items())
    changed = set(after) ^ set(before)
    assert {(before | after)[k]["doc_id"] for k in changed} == {"note-2.md"}
    assert len(changed) == 2  # one chunk out, one in; the others keep their ids


def test_deleted_file_chunks_are_removed(home, tmp_path):
    src = _corpus(tmp_path / "src")
    ingest(str(src))
    (src / "faq.txt").unlink()
    result = ingest(str(src))
    assert result["counts"]["deleted"] == 1
    assert not [c for c in _chunks(home).values() if c["doc_id"] == "faq.txt"]
    ledger = ChunkStore(home / "lancedb", "chunks").ledger(str(src.resolve()))
    assert "faq.txt" not in ledger


def test_bad_files_are_quarantined_and_the_rest_ingested(home, tmp_path):
    src = _corpus(tmp_path / "src")
    shutil.copy(FIXTURE_PDFS / "invalid.pdf", src / "invalid.pdf")
    shutil.copy(FIXTURE_PDFS / "encrypted-file.pdf", src / "locked.pdf")
    shutil.copy(FIXTURE_PDFS / "c03-29.pdf", src / "scan.pdf")
    (src / "empty.md").write_text("")
    (src / "binary.txt").write_bytes(bytes(range(256)) * 20)
    result = ingest(str(src))
    reasons = {q["doc_id"]: q["reason"] for q in result["quarantine"]}
    assert reasons == {
        "invalid.pdf": "unreadable", "locked.pdf": "encrypted", "scan.pdf": "no_text", "empty.md": "empty", "binary.txt": "binary",
    }
    assert all(q["detail"] for q in result["quarantine"])
    assert result["counts"]["added"] == 7 and result["counts"]["quarantined"] == 5
    # Unchanged quarantined files are not parsed again.
    again = ingest(str(src))
    assert again["counts"]["still_quarantined"] == 5 and again["counts"]["quarantined"] == 0
    with pytest.raises(IngestFailed, match="quarantined"):
        ingest(str(src), strict=True, force=True)


def test_a_changed_file_that_turns_corrupt_keeps_its_last_good_chunks(home, tmp_path):
    src = _corpus(tmp_path / "src")
    ingest(str(src))
    before = [c for c in _chunks(home).values() if c["doc_id"] == "faq.txt"]
    (src / "faq.txt").write_bytes(b"\x00\x01\x02" * 100)
    result = ingest(str(src))
    assert [q["reason"] for q in result["quarantine"]] == ["binary"]
    assert sorted(c["chunk_id"] for c in _chunks(home).values() if c["doc_id"] == "faq.txt") == sorted(
        c["chunk_id"] for c in before
    )


def test_failure_mid_write_leaves_previous_version_and_rerun_converges(home, tmp_path, monkeypatch):
    src = _corpus(tmp_path / "src")
    ingest(str(src))
    store = ChunkStore(home / "lancedb", "chunks")
    version, before = store.chunks.version, _chunks(home)
    for i in range(4):
        (src / f"note-{i}.md").write_text(f"# Note {i}\n\nRewritten note {i}.")

    def broken(self, *args, **kwargs):
        raise OSError("disk full (injected)")

    monkeypatch.setattr(ChunkStore, "replace_documents", broken)
    with pytest.raises(OSError, match="injected"):
        ingest(str(src))
    assert store.chunks.version == version and _chunks(home) == before
    failed = sorted((home / "runs").glob("ingest-*.json"))[-1]
    assert json.loads(failed.read_text())["status"] == "failed"

    monkeypatch.undo()
    monkeypatch.setenv("RAGTUNE_HOME", str(home))
    monkeypatch.setenv("RAGTUNE_EMBEDDER__MODEL", "hashing:32")
    result = ingest(str(src))
    assert result["counts"]["updated"] == 4
    assert result["counts"]["chunks_embedded"] == 0  # the failed run's vectors were spooled and reused
    texts = [c["text"] for c in _chunks(home).values()]
    assert len(texts) == len(set(texts)) or len(_chunks(home)) == result["counts"]["chunks_total"]
    assert "Rewritten note 3." in texts


def test_crash_after_chunk_commit_does_not_duplicate(home, tmp_path, monkeypatch):
    src = _corpus(tmp_path / "src")
    ingest(str(src))
    (src / "faq.txt").write_text("The support line now opens at 07:00 CET.\n")

    def broken(self, *args, **kwargs):
        raise OSError("ledger write failed (injected)")

    monkeypatch.setattr(ChunkStore, "write_ledger", broken)
    with pytest.raises(OSError, match="injected"):
        ingest(str(src))
    monkeypatch.undo()
    monkeypatch.setenv("RAGTUNE_HOME", str(home))
    monkeypatch.setenv("RAGTUNE_EMBEDDER__MODEL", "hashing:32")
    result = ingest(str(src))
    assert result["counts"]["updated"] == 1  # the stale ledger made it look changed; re-upsert is idempotent
    faq = [c for c in _chunks(home).values() if c["doc_id"] == "faq.txt"]
    assert [c["text"] for c in faq] == ["The support line now opens at 07:00 CET."]


def test_contract_violation_stops_the_write(home, tmp_path, monkeypatch):
    src = _corpus(tmp_path / "src")
    original = HashEmbedder.embed

    def nan_embed(self, texts):
        out = original(self, texts)
        out[0, :] = np.nan
        return out

    monkeypatch.setattr(HashEmbedder, "embed", nan_embed)
    with pytest.raises(ContractViolation, match="vector_finite"):
        ingest(str(src))
    assert ChunkStore(home / "lancedb", "chunks").chunks is None


def test_changing_chunk_settings_rechunks_and_reuses_what_it_can(home, tmp_path, monkeypatch):
    src = _corpus(tmp_path / "src")
    first = ingest(str(src))
    monkeypatch.setenv("RAGTUNE_CHUNKING__SIZE", "60")
    second = ingest(str(src))
    assert second["pipeline"] != first["pipeline"]
    assert second["counts"]["updated"] == 7
    assert second["counts"]["chunks_total"] > first["counts"]["chunks_total"]
    assert second["counts"]["chunks_reused"] > 0  # short documents chunk the same way


def test_cli_ingest_and_status_json(home, tmp_path):
    from typer.testing import CliRunner

    from ragtune_cli import app

    src = _corpus(tmp_path / "src")
    (src / "bad.pdf").write_bytes(b"%PDF-1.4 truncated")
    runner = CliRunner()
    result = runner.invoke(app, ["ingest", str(src), "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout.strip().splitlines()[-1])
    assert payload["counts"]["quarantined"] == 1
    status = runner.invoke(app, ["status", "--json"])
    info = json.loads(status.stdout.strip().splitlines()[-1])
    assert info["documents"] == 7 and info["quarantined"] == 1 and info["chunks"] == payload["counts"]["chunks_total"]
    missing = runner.invoke(app, ["ingest", str(tmp_path / "nope"), "--json"])
    assert missing.exit_code == 1 and "not a readable directory" in missing.stderr
    strict = runner.invoke(app, ["ingest", str(src), "--strict", "--force"])
    assert strict.exit_code == 3


def test_access_groups_from_config_reach_every_chunk(home, tmp_path, monkeypatch):
    src = _corpus(tmp_path / "src")
    monkeypatch.setenv("RAGTUNE_INGEST__ACCESS_GROUPS", '{"policies/**": ["hr", "finance"]}')
    monkeypatch.setenv("RAGTUNE_INGEST__ACCESS_ROOT", str(src))
    ingest(str(src))
    rows = ChunkStore(home / "lancedb", "chunks").chunks.search().select(["doc_id", "groups"]).limit(None).to_list()
    groups = {r["doc_id"]: sorted(r["groups"]) for r in rows}
    assert groups["policies/travel.md"] == ["finance", "hr"]
    assert groups["faq.txt"] == ["*"]
    assert not ChunkStore(home / "lancedb", "chunks").indexes_missing()  # FTS + groups index


def test_cli_store_failure_is_a_clear_nonzero_exit(home, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from ragtune_cli import app

    src = _corpus(tmp_path / "src")
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the home should be")
    monkeypatch.setenv("RAGTUNE_HOME", str(blocked))
    result = CliRunner().invoke(app, ["ingest", str(src), "--json"])
    assert result.exit_code == 1
    assert json.loads(result.stdout.strip().splitlines()[-1])["status"] == "failed"
    assert "error:" in result.stderr and "Traceback" not in result.stderr


def test_cli_errors_name_the_stage_and_do_not_claim_an_unchanged_table_after_a_commit(home, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import flows.ingest
    from ragtune_cli import app

    src = _corpus(tmp_path / "src")
    (src / "broken.pdf").write_bytes(b"%PDF-1.4 not really")
    runner = CliRunner()
    strict = runner.invoke(app, ["ingest", str(src), "--strict"])
    assert strict.exit_code == 3
    assert "were committed" in strict.stderr and "unchanged" not in strict.stderr

    def failing_ledger(*args, **kwargs):  # after the chunk commit: the table did change
        raise OSError("disk full")

    (src / "new.md").write_text("# New\n\nA new document with a few words in it.\n")
    monkeypatch.setattr(flows.ingest, "write_ledger", failing_ledger)
    failed = runner.invoke(app, ["ingest", str(src)])
    assert failed.exit_code == 1
    assert "at stage write" in failed.stderr and "OSError: disk full" in failed.stderr
    assert "unchanged" not in failed.stderr


def _ledger_fails_after_the_chunk_commit(monkeypatch):
    """The next ingest dies between its chunk commit and its final ledger write; returns the real task."""
    import flows.ingest

    real, calls = flows.ingest.write_ledger, []

    def ledger_fails_after_the_chunks(store, rows, source_root, deleted):
        calls.append(rows.num_rows)
        if len(calls) == 2:  # the final ledger write (the first marks the documents pending)
            raise OSError("disk full")
        return real.fn(store, rows, source_root, deleted)

    monkeypatch.setattr(flows.ingest, "write_ledger", ledger_fails_after_the_chunks)
    return real


def test_a_run_stopped_between_the_chunk_and_ledger_commits_is_repaired_even_after_a_revert(home, tmp_path, monkeypatch):
    """Found by `make drills`: the new chunks were committed, the ledger was not, the file was then
    reverted to its old content (old mtime too), and the rerun took it as unchanged."""
    import os

    import flows.ingest

    src = _corpus(tmp_path / "src")
    ingest(str(src))
    clean = {(v["doc_id"], v["text"]) for v in _chunks(home).values()}
    note = src / "note-1.md"
    old_text, old_stat = note.read_text(), note.stat()
    note.write_text(old_text.replace("Sentence 3 of note 1.", "An edit that will be reverted."))
    real = _ledger_fails_after_the_chunk_commit(monkeypatch)
    with pytest.raises(OSError):
        ingest(str(src))
    assert {(v["doc_id"], v["text"]) for v in _chunks(home).values()} != clean  # the edit was committed
    monkeypatch.setattr(flows.ingest, "write_ledger", real)
    note.write_text(old_text)
    os.utime(note, ns=(old_stat.st_atime_ns, old_stat.st_mtime_ns))
    rerun = ingest(str(src))
    assert rerun["counts"]["updated"] == 1
    assert {(v["doc_id"], v["text"]) for v in _chunks(home).values()} == clean


def test_a_file_added_by_a_run_stopped_between_its_commits_is_deleted_when_removed(home, tmp_path, monkeypatch):
    """Found by `make drills`: the new file's chunks were committed, its ledger row was not, and once
    the file was removed nothing deleted them."""
    import flows.ingest

    src = _corpus(tmp_path / "src")
    ingest(str(src))
    clean = {(v["doc_id"], v["text"]) for v in _chunks(home).values()}
    (src / "new.md").write_text("# New\n\nA document that arrives and then goes away again.\n")
    real = _ledger_fails_after_the_chunk_commit(monkeypatch)
    with pytest.raises(OSError):
        ingest(str(src))
    assert any(doc == "new.md" for doc, _ in {(v["doc_id"], v["text"]) for v in _chunks(home).values()})
    monkeypatch.setattr(flows.ingest, "write_ledger", real)
    (src / "new.md").unlink()
    rerun = ingest(str(src))
    assert rerun["counts"]["deleted"] == 1
    assert {(v["doc_id"], v["text"]) for v in _chunks(home).values()} == clean
