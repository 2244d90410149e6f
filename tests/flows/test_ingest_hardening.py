"""Ingest hardening through the real Prefect engine: huge documents, retried transient quarantines, old ledgers.

Hashing embedder, temporary LanceDB. A file that must time out uses the sandbox's own test parser
(``hang*`` files never finish), plugged in where the flow calls ``parse_many``.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from flows.ingest import ingest
from tasks import ingest as steps
from tasks.sandbox import parse_many
from tasks.sources import MAX_ATTEMPTS
from tasks.store import ChunkStore
from tests.flows.corpus import write_corpus

HOSTILE = "tests.fixtures.sandbox_helpers:misbehaving_parse"


@pytest.fixture
def home64(home, monkeypatch) -> Path:
    monkeypatch.setenv("RAGTUNE_EMBEDDER__MODEL", "hashing:64")
    return home


def _ledger(home: Path, src: Path) -> dict[str, dict]:
    return ChunkStore(home / "lancedb", "chunks").ledger(str(src.resolve()))


def _hostile_parsing(monkeypatch) -> None:
    """Parse with the misbehaving test parser (in the real sandbox) and a 1 s timeout."""
    monkeypatch.setattr(steps, "parse_many", functools.partial(parse_many, parse_fn=HOSTILE))
    monkeypatch.setenv("RAGTUNE_INGEST__PARSE_TIMEOUT_S", "1")


def test_a_huge_single_paragraph_is_quarantined_and_the_rest_ingested(home64, tmp_path):
    src = write_corpus(tmp_path / "src")
    # 24 MB in one paragraph, under ingest.max_file_mb (100). The old chunker tokenised it whole,
    # several times over: minutes and gigabytes in the ingesting process, outside the sandbox.
    sentence = "The probe firmware resets the invoice policy after every escalation of a ticket. "
    (src / "dump.txt").write_text(sentence * (24 * 2**20 // len(sentence)))
    # Long but under the text cap: chunked, every chunk within the embedder's window (the chunk
    # contract checks token_count <= max_tokens before anything is written).
    (src / "long.txt").write_text(" ".join(f"Sentence {i} of one long paragraph about probes." for i in range(30_000)))
    result = ingest(str(src))
    assert result["status"] == "completed"
    assert [(q["doc_id"], q["reason"]) for q in result["quarantine"]] == [("dump.txt", "too_much_text")]
    assert "characters of text" in result["quarantine"][0]["detail"] and "split it" in result["quarantine"][0]["detail"]
    assert result["counts"]["added"] == 8  # the 7 corpus files and long.txt
    ledger = _ledger(home64, src)
    assert ledger["long.txt"]["status"] == "ingested" and ledger["long.txt"]["chunk_count"] > 500
    assert ledger["dump.txt"]["chunk_count"] == 0


def test_a_transient_quarantine_is_retried_a_bounded_number_of_times(home64, tmp_path, monkeypatch):
    src = write_corpus(tmp_path / "src")
    (src / "hang.txt").write_text("A file whose parse never finishes.")
    (src / "empty.md").write_text("")  # permanent: never retried
    _hostile_parsing(monkeypatch)

    for attempt in range(1, MAX_ATTEMPTS + 1):
        result = ingest(str(src))
        reasons = {q["doc_id"]: q["reason"] for q in result["quarantine"]}
        assert reasons == ({"hang.txt": "timeout", "empty.md": "empty"} if attempt == 1 else {"hang.txt": "timeout"})
        assert result["counts"]["still_quarantined"] == (0 if attempt == 1 else 1)
        row = _ledger(home64, src)["hang.txt"]
        assert row["attempts"] == attempt
        detail = next(q["detail"] for q in result["quarantine"] if q["doc_id"] == "hang.txt")
        assert detail == row["detail"]
        if attempt < MAX_ATTEMPTS:
            assert f"attempt {attempt} of {MAX_ATTEMPTS}" in detail
        else:
            assert f"failed {MAX_ATTEMPTS} times in a row" in detail and "no longer retried" in detail

    final = ingest(str(src))
    assert final["counts"]["quarantined"] == 0 and final["counts"]["still_quarantined"] == 2
    assert final["counts"]["unchanged"] == 7
    row = _ledger(home64, src)["hang.txt"]
    assert row["status"] == "quarantined" and row["reason"] == "timeout" and row["attempts"] == MAX_ATTEMPTS


def test_a_retried_file_that_now_parses_is_added(home64, tmp_path, monkeypatch):
    src = write_corpus(tmp_path / "src")
    (src / "hang.txt").write_text("The night shift restarts the probes at 03:00.")
    _hostile_parsing(monkeypatch)
    assert [q["reason"] for q in ingest(str(src))["quarantine"]] == ["timeout"]

    monkeypatch.setattr(steps, "parse_many", parse_many)  # the host recovered: the real parser
    result = ingest(str(src))
    assert result["quarantine"] == [] and result["counts"]["added"] == 1 and result["counts"]["updated"] == 0
    row = _ledger(home64, src)["hang.txt"]
    assert row["status"] == "ingested" and row["attempts"] is None and row["chunk_count"] == 1


def test_a_ledger_from_before_the_attempts_column_still_works_and_gains_it(home64, tmp_path, monkeypatch):
    src = write_corpus(tmp_path / "src")
    (src / "hang.txt").write_text("A file whose parse never finishes.")
    _hostile_parsing(monkeypatch)
    ingest(str(src))
    store = ChunkStore(home64 / "lancedb", "chunks")
    store.ledger_table.drop_columns(["attempts"])  # what a ledger written by the previous version looks like
    assert "attempts" not in store.ledger_table.schema.names

    result = ingest(str(src))
    assert [q["doc_id"] for q in result["quarantine"]] == ["hang.txt"]  # a timeout row without attempts: retried
    assert "attempts" in store.ledger_table.schema.names
    ledger = _ledger(home64, src)
    assert ledger["hang.txt"]["attempts"] == 2  # the old row counted as one attempt
    assert {r["attempts"] for d, r in ledger.items() if d != "hang.txt"} == {None}
    assert store.status()["documents"] == 7
