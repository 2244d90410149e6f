"""Evaluation sets and evaluation runs, declared once.

- `EVAL_COLUMNS`: the evaluation-set rows a user points ragtune at (JSONL); the GX suite
  `suites.eval_set_suite` is derived from them.
- `EvalRun` / `ArmResult` / `GateResult`: what one `evaluate` run measured, saved as
  `reports/<run_id>/results.json` and read back by the report (trends, per-question diffs).
- `QuestionRecord`: one arm's answer to one question with its per-question scores,
  saved as `reports/<run_id>/questions.jsonl`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import pyarrow as pa
from pydantic import BaseModel, Field

from data_contracts.schemas import Column

EVAL_COLUMNS: tuple[Column, ...] = (
    Column("id", pa.string(), True, "Unique question id (per-question diffs between runs follow it)."),
    Column("question", pa.string(), True, "The question as a user would ask it."),
    Column("answers", pa.list_(pa.string()), True, "Gold answers (any one counts); empty when unanswerable."),
    Column("answerable", pa.bool_(), True, "False when the documents do not answer it: the right response is to abstain."),
    Column("gold_docs", pa.list_(pa.string()), False, "Doc ids (paths relative to the source root) holding the answer."),
    Column("category", pa.string(), False, "Optional label for breakdowns (numeric, date, policy, fresh, ...)."),
    Column("paraphrase_group", pa.string(), False, "Questions sharing it are paraphrases (behavioural consistency)."),
    Column("split", pa.string(), False, "train / test: only the evaluated split is scored, the other may feed training."),
)

# lora / hybrid: a LoRA adapter without / with retrieval; full / full+rag: a fully fine-tuned model.
ARM_KINDS = ("base", "rag", "lora", "hybrid", "full", "full+rag")
ArmKind = Literal["base", "rag", "lora", "hybrid", "full", "full+rag"]
TUNED_METHOD = {"lora": "lora", "hybrid": "lora", "full": "full", "full+rag": "full"}  # arm kind -> training.method
RETRIEVAL_KINDS = ("rag", "hybrid", "full+rag")


class Estimate(BaseModel):
    """A metric value with its bootstrap confidence interval; all None when n == 0."""

    value: float | None
    low: float | None
    high: float | None
    n: int


class ArmResult(BaseModel):
    name: str = Field(description="Arm label: base, rag, lora, hybrid; with both adapters lora/hybrid get @champion / @candidate.")
    kind: ArmKind
    adapter: str | None = Field(None, description="Registered adapter name, None for base/rag.")
    adapter_role: Literal["champion", "candidate", "latest"] | None = None
    retrieval: bool
    metrics: dict[str, Estimate] = Field(description="Every metric of tasks/metrics.py, with bootstrap CIs.")
    questions: int
    wall_s: float = Field(description="Wall time to answer every question of this arm (batched).")
    questions_per_min: float
    train_wall_s: float | None = Field(None, description="Training wall time of the arm's adapter (its cost).")
    served_to: str | None = Field(
        None, description="Callers the arm's adapter may be served to (its access record): 'everyone', the groups "
        "its chunks need, or 'no one' (no record); other callers get the base model."
    )


class GateResult(BaseModel):
    candidate: str
    incumbent: str = Field(description="Champion adapter name, or 'base' (the rag arm) when there is none.")
    promote: bool
    applied: bool = Field(description="Whether the registry was changed (False in a dry run).")
    reasons: list[str]
    numbers: dict[str, Any]


class AlongsideSet(BaseModel):
    """Another evaluation set the same arms answered in the same run (same threshold, same adapters): reported beside
    the evaluation set, never gated on. Today: the synthetic set's held-out documents (`evaluation.synthetic`)."""

    name: str = Field(description="What the set is, e.g. 'synthetic' (generated from the documents, no labels).")
    path: str
    split: str | None
    eval_hash: str
    questions: int
    arms: list[ArmResult]


class EvalRun(BaseModel):
    run_id: str
    created_at: datetime
    eval_path: str
    eval_split: str | None
    eval_hash: str = Field(description="sha256 of the evaluated rows: trends compare runs on the same set.")
    questions: int
    table: str
    table_version: int | None
    generator: str
    settings: dict[str, Any] = Field(default_factory=dict, description="Generator and retrieval settings of the run.")
    arms: list[ArmResult]
    canary: dict[str, dict[str, Estimate]] = Field(default_factory=dict, description="Arm name -> canary metrics.")
    gate: GateResult | None = None
    fresh_questions: int = Field(0, description="Questions whose gold documents changed after the evaluated adapter was trained.")
    calibration: dict[str, Any] | None = Field(
        None, description="The grounding threshold this run used and how it was chosen (tasks/calibrate.py); None: no retrieval arm."
    )
    alongside: list[AlongsideSet] = Field(default_factory=list, description="Other sets the arms answered in this run (not gated).")


class QuestionRecord(BaseModel):
    """One arm's answer to one question and its per-question scores (None = not applicable)."""

    run_id: str
    arm: str
    id: str
    question: str
    answer: str
    abstained: bool
    answerable: bool
    golds: list[str]
    category: str | None = None
    paraphrase_group: str | None = None
    correct: bool | None = None
    fresh: bool = False
    scores: dict[str, float | None] = Field(default_factory=dict)
    citations: list[str] = Field(default_factory=list, description="Cited doc ids.")
