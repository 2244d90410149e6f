"""Transient quarantines are retried on the next runs, a bounded number of times; permanent ones are not."""

from __future__ import annotations

import os

import pytest

from tasks.sources import MAX_ATTEMPTS, attempts_note, content_hash, discover, plan, transient_attempts


def _one_file(tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    (root / "manual.pdf").write_bytes(b"%PDF-1.7 pretend")
    files, _ = discover(root, ["**/*"], [])
    return files


def _row(f, reason, attempts=None, pipeline="p1", **extra):
    row = {
        "doc_id": f.doc_id, "byte_size": f.size, "mtime_ns": f.mtime_ns, "content_hash": content_hash(f.path),
        "pipeline": pipeline, "status": "quarantined", "reason": reason, "attempts": attempts,
    }
    return {f.doc_id: {**row, **extra}}


@pytest.mark.parametrize("reason", ["timeout", "memory_limit", "crashed"])
def test_unchanged_transient_quarantine_is_retried_while_attempts_remain(tmp_path, reason):
    (f,) = files = _one_file(tmp_path)
    for attempts in range(1, MAX_ATTEMPTS):
        result = plan(files, _row(f, reason, attempts), "p1")
        assert [x.doc_id for x, _ in result.to_parse] == [f.doc_id] and not result.still_quarantined
        assert result.to_parse[0][1] == content_hash(f.path)
    result = plan(files, _row(f, reason, MAX_ATTEMPTS), "p1")
    assert result.still_quarantined == [f] and not result.to_parse


@pytest.mark.parametrize("reason", ["encrypted", "no_text", "empty", "binary", "unreadable", "too_much_text", "parser_error"])
def test_permanent_quarantine_is_not_retried(tmp_path, reason):
    (f,) = files = _one_file(tmp_path)
    result = plan(files, _row(f, reason), "p1")
    assert result.still_quarantined == [f] and not result.to_parse


def test_a_ledger_row_from_before_the_attempts_column_counts_as_one_attempt(tmp_path):
    (f,) = files = _one_file(tmp_path)
    ledger = _row(f, "timeout")
    del ledger[f.doc_id]["attempts"]
    assert [x for x, _ in plan(files, ledger, "p1").to_parse] == [f]
    assert transient_attempts("timeout", ledger[f.doc_id], ledger[f.doc_id]["content_hash"], "p1") == 2


def test_a_touched_transient_quarantine_is_retried_not_just_touched(tmp_path):
    (f,) = _one_file(tmp_path)
    ledger = _row(f, "timeout", 1)
    os.utime(f.path, ns=(f.mtime_ns + 10**9, f.mtime_ns + 10**9))
    files, _ = discover(f.path.parent, ["**/*"], [])
    result = plan(files, ledger, "p1")
    assert [x for x, _ in result.to_parse] == files and not result.touched
    # Out of attempts: only the ledger's mtime moves.
    result = plan(files, _row(f, "timeout", MAX_ATTEMPTS), "p1")
    assert [x for x, _ in result.touched] == files and not result.to_parse


def test_attempts_count_in_a_row_and_restart_when_content_or_pipeline_changes(tmp_path):
    (f,) = _one_file(tmp_path)
    prev = _row(f, "timeout", 2)[f.doc_id]
    digest = prev["content_hash"]
    assert transient_attempts("timeout", prev, digest, "p1") == 3
    assert transient_attempts("memory_limit", prev, digest, "p1") == 3  # any transient reason continues the run
    assert transient_attempts("timeout", prev, "other-content", "p1") == 1
    assert transient_attempts("timeout", prev, digest, "p2") == 1  # e.g. a raised parse timeout
    assert transient_attempts("timeout", None, digest, "p1") == 1
    assert transient_attempts("encrypted", prev, digest, "p1") is None
    assert "retried on the next run" in attempts_note(1)
    assert "no longer retried" in attempts_note(MAX_ATTEMPTS)
