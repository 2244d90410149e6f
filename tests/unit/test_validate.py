"""The Great Expectations contracts catch bad chunks and documents, and fail closed."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pytest

from data_contracts.schemas import chunk_schema, document_schema
from data_contracts.suites import chunk_suite, document_suite
from tasks.validate import ContractViolation, require_valid, validate

DIM = 8


def _chunks(n: int = 4) -> list[dict]:
    now = datetime.now(timezone.utc)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        v = rng.normal(size=DIM)
        rows.append(
            {
                "chunk_id": f"c{i}", "doc_id": "a.md", "source_root": "/r", "source_path": "/r/a.md", "title": "A",
                "format": "markdown", "page": None, "heading_path": ["A"], "ordinal": i, "text": f"text {i}",
                "token_count": 10, "text_hash": "h", "embed_hash": f"e{i}", "pipeline": "p", "groups": [],
                "doc_modified_at": now, "ingested_at": now, "vector": (v / np.linalg.norm(v)).astype(np.float32).tolist(),
            }
        )
    return rows


def _table(rows):
    return pa.Table.from_pylist(rows, schema=chunk_schema(DIM))


def test_good_chunks_pass():
    report = require_valid(_table(_chunks()), chunk_suite(DIM, 256), key="chunk_id")
    assert report.success and report.evaluated > 20


@pytest.mark.parametrize(
    "breakage, expectation",
    [
        (lambda r: r.update(text=""), "expect_column_value_lengths_to_be_between"),
        (lambda r: r.update(token_count=300), "expect_column_values_to_be_between"),
        (lambda r: r.update(chunk_id="c0"), "expect_column_values_to_be_unique"),
        (lambda r: r.update(vector=[float("nan")] * DIM), "expect_column_values_to_be_in_set"),
        (lambda r: r.update(vector=[1.0] * DIM), "expect_column_values_to_be_between"),
        (lambda r: r.update(format="exe"), "expect_column_values_to_be_in_set"),
    ],
)
def test_a_bad_chunk_is_caught_and_named(breakage, expectation):
    rows = _chunks()
    breakage(rows[2])
    with pytest.raises(ContractViolation) as err:
        require_valid(_table(rows), chunk_suite(DIM, 256), key="chunk_id")
    failures = err.value.report.failures
    assert any(f.expectation == expectation for f in failures)
    assert any("c2" in f.rows or "c0" in f.rows for f in failures)
    assert "nothing was written" in str(err.value)


def test_wrong_dimension_is_caught():
    rows = _chunks()
    report = validate(_table(rows), chunk_suite(DIM + 1, 256), key="chunk_id")
    assert not report.success and any(f.column == "vector_dim" for f in report.failures)


def test_a_suite_that_evaluates_nothing_fails():
    with pytest.raises(ContractViolation, match="zero expectations"):
        require_valid(_table(_chunks()), {"name": "empty", "expectations": []}, key="chunk_id")


def test_document_contract_requires_reasons_for_quarantine():
    now = datetime.now(timezone.utc)
    base = {
        "source_root": "/r", "source_path": "/r/x", "title": "X", "format": "pdf", "status": "ingested",
        "reason": None, "detail": None, "modified_at": now, "mtime_ns": 1, "byte_size": 10, "content_hash": "h",
        "pages": 1, "chunk_count": 2, "pipeline": "p", "ingested_at": now,
    }
    rows = [
        {**base, "doc_id": "ok.pdf"},
        {**base, "doc_id": "bad.pdf", "status": "quarantined", "chunk_count": 0},  # no reason given
        {**base, "doc_id": "empty.pdf", "chunk_count": 0},  # ingested without chunks
    ]
    report = validate(pa.Table.from_pylist(rows, schema=document_schema()), document_suite(), key="doc_id")
    failed = {(f.column, tuple(f.rows)) for f in report.failures}
    assert ("reason", ("bad.pdf",)) in failed
    assert ("chunk_count", ("empty.pdf",)) in failed
