"""A document's access groups come from the document (its real path), not from how it was reached."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.access import AccessConflict, AccessError, AccessPolicy, most_restrictive


@pytest.fixture
def share(tmp_path: Path) -> Path:
    for rel in ("hr/pay.md", "finance/q1.md", "public/faq.md"):
        (tmp_path / "share" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "share" / rel).write_text("text")
    return tmp_path / "share"


def test_relative_globs_are_anchored_at_access_root_not_at_the_ingest_root(share):
    policy = AccessPolicy.from_settings({"hr/**": ["hr"]}, share)
    assert policy.groups_for(share / "hr" / "pay.md") == ["hr"]
    assert policy.groups_for(share / "public" / "faq.md") == ["*"]
    # the same file named through another path (a "." or ".." in it) still resolves to hr
    assert policy.groups_for(share / "public" / ".." / "hr" / "pay.md") == ["hr"]


def test_a_link_to_a_restricted_file_keeps_the_targets_groups(share):
    (share / "public" / "pay.md").symlink_to(share / "hr" / "pay.md")
    assert AccessPolicy.from_settings({"hr/**": ["hr"]}, share).groups_for(share / "public" / "pay.md") == ["hr"]


def test_a_restricted_name_for_a_public_file_is_restrictive(share):
    (share / "hr" / "faq-link.md").symlink_to(share / "public" / "faq.md")
    assert AccessPolicy.from_settings({"hr/**": ["hr"]}, share).groups_for(share / "hr" / "faq-link.md") == ["hr"]


def test_names_with_no_common_reader_are_a_conflict(share):
    (share / "hr" / "q1.md").symlink_to(share / "finance" / "q1.md")
    policy = AccessPolicy.from_settings({"hr/**": ["hr"], "finance/**": ["finance"]}, share)
    with pytest.raises(AccessConflict, match="share no reader"):
        policy.groups_for(share / "hr" / "q1.md")


def test_absolute_globs_match_the_real_path(share):
    policy = AccessPolicy.from_settings({f"{share.resolve()}/finance/**": ["finance"]}, None)
    assert policy.groups_for(share / "finance" / "q1.md") == ["finance"]
    assert policy.groups_for(share / "hr" / "pay.md") == ["*"]


def test_relative_globs_without_an_anchor_are_refused(share):
    with pytest.raises(AccessError, match="access_root"):
        AccessPolicy.from_settings({"hr/**": ["hr"]}, None)
    with pytest.raises(AccessError, match="not a directory"):
        AccessPolicy.from_settings({"hr/**": ["hr"]}, share / "missing")
    assert AccessPolicy.from_settings({}, None).groups_for(share / "hr" / "pay.md") == ["*"]


def test_most_restrictive():
    assert most_restrictive(["*"], ["hr"]) == ["hr"]
    assert most_restrictive(["hr", "legal"], ["*"]) == ["hr", "legal"]
    assert most_restrictive(["hr", "legal"], ["legal", "finance"]) == ["legal"]
    assert most_restrictive(["*"], ["*"]) == ["*"]
    with pytest.raises(AccessConflict):
        most_restrictive(["hr"], ["finance"])
