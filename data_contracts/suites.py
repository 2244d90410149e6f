"""Great Expectations suites, derived from the schemas in `schemas.py`.

Suites are plain JSON-shaped dicts (`{"name", "expectations": [{"type", "kwargs"}]}`) so they can be
read, diffed and dumped without importing Great Expectations; `tasks/validate.py` turns them into
`gx.ExpectationSuite(**suite)` and runs them. Required columns come from the schema, so a column
added there is checked here without a second edit.

Vector checks run on derived columns the validator adds to the frame before validation:
`vector_dim` (length), `vector_norm` (L2 norm) and `vector_finite` (no NaN/inf).
"""

from __future__ import annotations

from typing import Any

from data_contracts.evaluation import EVAL_COLUMNS
from data_contracts.schemas import (
    CHUNK_COLUMNS,
    DOCUMENT_COLUMNS,
    DOCUMENT_STATUSES,
    EXAMPLE_KINDS,
    FORMATS,
    SPLITS,
    TRAINING_COLUMNS,
    Column,
)

Suite = dict[str, Any]

# Unit norm within float32 rounding of a normalised embedding.
NORM_TOLERANCE = 1e-3


def _expect(type_: str, **kwargs: Any) -> dict[str, Any]:
    return {"type": type_, "kwargs": kwargs}


def _when(column: str, value: str) -> dict[str, Any]:
    """GX 1.x row condition `column == value`, in its JSON form."""
    return {"type": "comparison", "column": {"name": column}, "operator": "==", "parameter": value}


def _required(columns: tuple[Column, ...]) -> list[dict[str, Any]]:
    out = [_expect("expect_column_to_exist", column=c.name) for c in columns]
    out += [_expect("expect_column_values_to_not_be_null", column=c.name) for c in columns if c.required]
    return out


def chunk_suite(dimension: int, max_tokens: int) -> Suite:
    """Contract for chunk rows about to be written: text, token bounds, ids, vectors."""
    expectations = _required(CHUNK_COLUMNS)
    expectations += [
        _expect("expect_column_value_lengths_to_be_between", column="text", min_value=1),
        _expect("expect_column_value_lengths_to_be_between", column="doc_id", min_value=1),
        _expect("expect_column_values_to_be_between", column="token_count", min_value=1, max_value=max_tokens),
        _expect("expect_column_values_to_be_unique", column="chunk_id"),
        _expect("expect_column_values_to_be_in_set", column="format", value_set=list(FORMATS)),
        _expect("expect_column_values_to_be_between", column="page", min_value=1, mostly=1.0),
        _expect("expect_column_values_to_be_between", column="ordinal", min_value=0),
        _expect("expect_column_values_to_be_in_set", column="vector_dim", value_set=[dimension]),
        _expect("expect_column_values_to_be_in_set", column="vector_finite", value_set=[True]),
        _expect(
            "expect_column_values_to_be_between",
            column="vector_norm",
            min_value=1.0 - NORM_TOLERANCE,
            max_value=1.0 + NORM_TOLERANCE,
        ),
    ]
    return {"name": "chunks", "expectations": expectations}


def document_suite() -> Suite:
    """Contract for document ledger rows: identity, status, quarantine reasons, counts."""
    expectations = _required(DOCUMENT_COLUMNS)
    expectations += [
        _expect("expect_compound_columns_to_be_unique", column_list=["source_root", "doc_id"]),
        _expect("expect_column_values_to_be_in_set", column="status", value_set=list(DOCUMENT_STATUSES)),
        _expect("expect_column_values_to_be_between", column="byte_size", min_value=0),
        _expect("expect_column_values_to_be_between", column="chunk_count", min_value=0),
        # An ingested document has chunks and a format; a quarantined one says why.
        _expect(
            "expect_column_values_to_be_between",
            column="chunk_count",
            min_value=1,
            row_condition=_when("status", "ingested"),
        ),
        _expect(
            "expect_column_values_to_be_in_set",
            column="format",
            value_set=list(FORMATS),
            row_condition=_when("status", "ingested"),
        ),
        _expect(
            "expect_column_values_to_not_be_null",
            column="reason",
            row_condition=_when("status", "quarantined"),
        ),
        _expect(
            "expect_column_values_to_not_be_null",
            column="detail",
            row_condition=_when("status", "quarantined"),
        ),
    ]
    return {"name": "documents", "expectations": expectations}


def training_row_suite(max_tokens: int, leakage_cosine: float) -> Suite:
    """Per-row contract for training examples: each failing row is named and moved to the rejects file."""
    expectations = _required(TRAINING_COLUMNS)
    expectations += [
        _expect("expect_column_values_to_be_in_set", column="kind", value_set=list(EXAMPLE_KINDS)),
        _expect("expect_column_values_to_be_in_set", column="split", value_set=list(SPLITS)),
        _expect("expect_column_values_to_be_in_set", column="roles_ok", value_set=[True]),
        _expect("expect_column_value_lengths_to_be_between", column="answer", min_value=1),
        _expect("expect_column_values_to_be_between", column="n_tokens", min_value=1, max_value=max_tokens),
        _expect("expect_column_values_to_be_between", column="pii_remaining", min_value=0, max_value=0),
        _expect(
            "expect_column_values_to_be_between",
            column="eval_similarity",
            max_value=leakage_cosine,
            strict_max=True,
        ),
        # Nulls are skipped by GX map expectations: only the first copy of a row passes.
        _expect("expect_column_values_to_be_null", column="duplicate_of"),
        _expect("expect_column_values_to_be_in_set", column="oracle_supported", value_set=[True]),
        _expect("expect_column_values_to_not_be_null", column="has_oracle", row_condition=_when("kind", "raft")),
    ]
    return {"name": "training_examples", "expectations": expectations}


def training_set_suite(max_duplicate_rate: float, min_rows: int = 1) -> Suite:
    """Whole-set contract for training examples: breaking it fails the build (nothing is saved)."""
    return {
        "name": "training_set",
        "expectations": [
            _expect("expect_table_row_count_to_be_between", min_value=min_rows),
            _expect(
                "expect_column_proportion_of_unique_values_to_be_between",
                column="example_id",
                min_value=1.0 - max_duplicate_rate,
            ),
        ],
    }


def eval_set_suite() -> Suite:
    """Contract for evaluation-set rows: unique ids, real questions, gold answers where answerable.

    Checked on a derived column `answers_ok` (answerable rows have a non-empty gold answer).
    """
    expectations = _required(EVAL_COLUMNS)
    expectations += [
        _expect("expect_column_values_to_be_unique", column="id"),
        _expect("expect_column_value_lengths_to_be_between", column="id", min_value=1),
        _expect("expect_column_value_lengths_to_be_between", column="question", min_value=3),
        _expect("expect_column_values_to_be_in_set", column="answers_ok", value_set=[True]),
        _expect("expect_table_row_count_to_be_between", min_value=1),
    ]
    return {"name": "eval_set", "expectations": expectations}


def synthetic_row_suite(min_words: int, max_words: int, max_answer_words: int, k: int) -> Suite:
    """Per-row quality filters of synthetic questions (`data_contracts/synthetic.py`): a failing row is
    dropped and counted under its filter. Nulls are skipped: the check did not apply or was not reached."""
    from data_contracts.synthetic import STRATEGIES, SYNTH_COLUMNS

    expectations = _required(SYNTH_COLUMNS)
    expectations += [
        _expect("expect_column_values_to_be_unique", column="id"),
        _expect("expect_column_values_to_be_in_set", column="strategy", value_set=list(STRATEGIES)),
        _expect("expect_column_values_to_be_in_set", column="answer_in_source", value_set=[True]),
        _expect("expect_column_values_to_be_in_set", column="answer_in_question", value_set=[False]),
        _expect("expect_column_values_to_be_between", column="question_words", min_value=min_words, max_value=max_words),
        _expect("expect_column_values_to_be_between", column="answer_words", min_value=1, max_value=max_answer_words),
        _expect("expect_column_values_to_be_between", column="pii_found", min_value=0, max_value=0),
        _expect("expect_column_values_to_be_null", column="duplicate_of"),
        _expect("expect_column_values_to_be_between", column="retrieval_rank", min_value=1, max_value=k),
        _expect("expect_column_values_to_be_in_set", column="reader_ok", value_set=[True]),
        _expect("expect_column_values_to_be_in_set", column="absent_from_corpus", value_set=[True]),
    ]
    return {"name": "synthetic_questions", "expectations": expectations}
