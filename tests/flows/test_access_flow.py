"""Access groups through the real ingest flow: the same whichever folder is ingested or link followed."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.ingest import ingest
from tasks.access import AccessError
from tasks.store import ChunkStore

POLICY = '{"hr/**": ["hr"], "finance/**": ["finance"]}'
TEXT = "The {name} document explains the {name} procedure in several plain sentences for readers."


def _share(root: Path) -> Path:
    for rel in ("hr/pay.md", "finance/q1.md", "public/faq.md"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(TEXT.format(name=Path(rel).stem) + "\n")
    return root


def _groups(home: Path, table: str = "chunks") -> dict[str, list[str]]:
    rows = ChunkStore(home / "lancedb", table).chunks.search().select(["source_path", "groups"]).limit(None).to_list()
    return {Path(r["source_path"]).name + ("@" + Path(r["source_path"]).parent.name): sorted(r["groups"]) for r in rows}


@pytest.fixture
def policy(monkeypatch, tmp_path):
    share = _share(tmp_path / "org" / "share")
    monkeypatch.setenv("RAGTUNE_INGEST__ACCESS_GROUPS", POLICY)
    monkeypatch.setenv("RAGTUNE_INGEST__ACCESS_ROOT", str(share))
    return share


def test_groups_are_the_same_from_the_root_the_parent_and_the_subfolder(home, policy):
    ingest(str(policy), table="root")
    ingest(str(policy.parent), table="parent")
    ingest(str(policy / "hr"), table="sub")
    root, parent, sub = _groups(home, "root"), _groups(home, "parent"), _groups(home, "sub")
    assert root["pay.md@hr"] == parent["pay.md@hr"] == sub["pay.md@hr"] == ["hr"]
    assert root["q1.md@finance"] == parent["q1.md@finance"] == ["finance"]
    assert root["faq.md@public"] == parent["faq.md@public"] == ["*"]


def test_a_link_inside_the_root_keeps_the_targets_restriction(home, policy):
    (policy / "public" / "x.md").symlink_to(Path("..") / "hr" / "pay.md")
    ingest(str(policy))
    assert _groups(home)["x.md@public"] == ["hr"]


def test_a_link_between_groups_with_no_common_reader_is_quarantined(home, policy):
    (policy / "hr" / "q1.md").symlink_to(Path("..") / "finance" / "q1.md")
    result = ingest(str(policy))
    assert [(q["doc_id"], q["reason"]) for q in result["quarantine"]] == [("hr/q1.md", "access_conflict")]
    assert "q1.md@hr" not in _groups(home) and _groups(home)["q1.md@finance"] == ["finance"]


def test_relative_globs_without_access_root_stop_the_run_before_any_work(home, tmp_path, monkeypatch):
    share = _share(tmp_path / "share")
    monkeypatch.setenv("RAGTUNE_INGEST__ACCESS_GROUPS", POLICY)
    with pytest.raises(AccessError, match="access_root"):
        ingest(str(share))
    assert ChunkStore(home / "lancedb", "chunks").chunks is None


def test_a_tightened_policy_withdraws_the_kept_chunks_of_a_now_quarantined_file(home, tmp_path, monkeypatch):
    share = _share(tmp_path / "share")
    ingest(str(share))
    assert _groups(home)["pay.md@hr"] == ["*"]
    # The policy now restricts hr/, and the file changes into one that cannot be read: its last good
    # (public) chunks must not stay searchable under the old groups.
    monkeypatch.setenv("RAGTUNE_INGEST__ACCESS_GROUPS", POLICY)
    monkeypatch.setenv("RAGTUNE_INGEST__ACCESS_ROOT", str(share))
    (share / "hr" / "pay.md").write_text("   \n")
    result = ingest(str(share))
    assert {q["doc_id"] for q in result["quarantine"]} == {"hr/pay.md"}
    groups = _groups(home)
    assert "pay.md@hr" not in groups and groups["q1.md@finance"] == ["finance"]
