"""Discovery (globs, symlinks) and the cheap-first change plan."""

from __future__ import annotations

import os

import pytest

from tasks.sources import SourceError, content_hash, discover, plan


def _tree(root):
    (root / "a").mkdir(parents=True)
    (root / "a" / "one.md").write_text("# One\n")
    (root / "two.txt").write_text("two")
    (root / ".hidden.md").write_text("secret")
    (root / "a" / "skip.log").write_text("log")
    return root


def test_discover_applies_globs_and_sorts(tmp_path):
    root = _tree(tmp_path / "src")
    files, skipped = discover(root, ["**/*.md", "**/*.txt"], ["**/.*"])
    assert [f.doc_id for f in files] == ["a/one.md", "two.txt"]
    assert skipped == []
    files, _ = discover(root, ["**/*"], ["a/**"])
    assert [f.doc_id for f in files] == [".hidden.md", "two.txt"]


def test_symlinks_leaving_the_root_are_not_followed(tmp_path):
    root = _tree(tmp_path / "src")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.md").write_text("do not ingest")
    os.symlink(outside / "secret.md", root / "link.md")
    os.symlink(outside, root / "linkdir")
    os.symlink(root / "two.txt", root / "inside-link.txt")
    files, skipped = discover(root, ["**/*"], [])
    ids = [f.doc_id for f in files]
    assert "link.md" not in ids and not any(i.startswith("linkdir") for i in ids)
    assert "inside-link.txt" in ids
    assert {s.doc_id: s.reason for s in skipped} == {"link.md": "symlink_outside_root", "linkdir": "symlink_outside_root"}


def test_missing_root_is_a_real_failure(tmp_path):
    with pytest.raises(SourceError, match="not a readable directory"):
        discover(tmp_path / "nope", ["**/*"], [])


def _ledger(files, pipeline="p1", status="ingested"):
    return {
        f.doc_id: {
            "doc_id": f.doc_id,
            "byte_size": f.size,
            "mtime_ns": f.mtime_ns,
            "content_hash": content_hash(f.path),
            "pipeline": pipeline,
            "status": status,
        }
        for f in files
    }


def test_plan_reads_nothing_for_unchanged_files(tmp_path, monkeypatch):
    root = _tree(tmp_path / "src")
    files, _ = discover(root, ["**/*"], [])
    ledger = _ledger(files)
    import tasks.sources as sources

    monkeypatch.setattr(sources, "content_hash", lambda p: pytest.fail(f"hashed {p}"))
    result = plan(files, ledger, "p1")
    assert len(result.unchanged) == len(files) and not result.to_parse


def test_plan_separates_touched_changed_new_deleted(tmp_path):
    root = _tree(tmp_path / "src")
    files, _ = discover(root, ["**/*"], [])
    ledger = _ledger(files)
    os.utime(root / "two.txt", ns=(1, 1))  # touched: same bytes, new mtime
    (root / "a" / "one.md").write_text("# One, edited\n")
    (root / "new.md").write_text("new")
    (root / "a" / "skip.log").unlink()
    files, _ = discover(root, ["**/*"], [])
    result = plan(files, ledger, "p1")
    assert [f.doc_id for f, _ in result.touched] == ["two.txt"]
    assert sorted(f.doc_id for f, _ in result.to_parse) == ["a/one.md", "new.md"]
    assert result.deleted == ["a/skip.log"]


def test_plan_reprocesses_on_pipeline_change_or_force(tmp_path):
    root = _tree(tmp_path / "src")
    files, _ = discover(root, ["**/*"], [])
    assert len(plan(files, _ledger(files), "p2").to_parse) == len(files)
    assert len(plan(files, _ledger(files), "p1", force=True).to_parse) == len(files)


def test_unchanged_quarantined_files_are_not_retried(tmp_path):
    root = _tree(tmp_path / "src")
    files, _ = discover(root, ["**/*"], [])
    result = plan(files, _ledger(files, status="quarantined"), "p1")
    assert len(result.still_quarantined) == len(files) and not result.to_parse
