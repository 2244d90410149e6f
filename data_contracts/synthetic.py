"""Synthetic question candidates (`tasks/synth.py`), declared once.

One row per generated question before filtering. The derived columns are what the quality filters
check; a null means the check does not apply (an unanswerable question has no answer to find) or
was not reached (a row that already failed a cheap check is not sent through the round trip).
`suites.synthetic_row_suite` is derived from these columns; each failed expectation is one named
filter in the run's artifact (`FILTERS`).
"""

from __future__ import annotations

import pyarrow as pa

from data_contracts.schemas import Column

STRATEGIES = ("rules", "generator", "paraphrase", "unanswerable")
SPAN_KINDS = ("number", "money", "percent", "date", "year", "name", "term")

SYNTH_COLUMNS: tuple[Column, ...] = (
    Column("id", pa.string(), True, "Stable id: hash of the source chunk, strategy and question."),
    Column("question", pa.string(), True, "The generated question."),
    Column("answer", pa.string(), False, "The answer span taken from the source chunk; null when unanswerable."),
    Column("answer_kind", pa.string(), True, "What kind of span the answer is (number, date, name, ...)."),
    Column("strategy", pa.string(), True, "rules (cloze to question), generator (the configured LLM), paraphrase (the LLM rewords a rule question) or unanswerable."),
    Column("chunk_id", pa.string(), True, "The chunk the question was generated from."),
    Column("doc_id", pa.string(), True, "Its document: the unit the train/evaluation split is drawn by."),
    Column("paraphrase_group", pa.string(), True, "Questions about the same answer in the same chunk share it."),
    # derived columns: the filters
    Column("answer_in_source", pa.bool_(), False, "The answer occurs in the source chunk as whole words."),
    Column("answer_in_question", pa.bool_(), False, "The question gives its own answer away."),
    Column("question_words", pa.int32(), True, "Words in the question."),
    Column("answer_words", pa.int32(), False, "Words in the answer."),
    Column("pii_found", pa.int32(), True, "Personal data found in the question or the answer."),
    Column("duplicate_of", pa.string(), False, "Id of an earlier near-duplicate question; null for the first."),
    Column("retrieval_rank", pa.int32(), False, "Rank of the source chunk when the question is searched (0 = not in the top k)."),
    Column("reader_ok", pa.bool_(), False, "The generator, given the source chunk, answers with the answer (round trip)."),
    Column("absent_from_corpus", pa.bool_(), False, "Unanswerable only: the invented detail occurs in no chunk."),
)

# Filter name of each checked column, as the artifact and the rejects name them.
FILTERS = {
    "answer_in_source": "answer_not_in_source",
    "answer_in_question": "answer_in_question",
    "question_words": "length",
    "answer_words": "length",
    "pii_found": "pii",
    "duplicate_of": "near_duplicate",
    "retrieval_rank": "round_trip_retrieval",
    "reader_ok": "round_trip_reader",
    "absent_from_corpus": "unanswerable_found_in_corpus",
    "strategy": "bad_strategy",
}


def synthetic_schema() -> pa.Schema:
    return pa.schema([c.field() for c in SYNTH_COLUMNS])
