"""The `answer` flow: a JSONL file of questions in, a JSONL file of grounded answers out, batched.

    from flows.answer import answer; answer("demo/eval.jsonl", "answers.jsonl")

Each output line has the `ragtune ask --json` fields (answer, abstained, citations, grounding,
timings, ...) plus the input row's `id` when it has one. Used by the evaluation flow.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from tasks import atomic, faults
from tasks.config import load_settings
from tasks.jsonl import JsonlError, read_objects
from tasks.resources import make_answerer, search_filters, serving_adapter

_TASK = dict(cache_policy=NO_CACHE, persist_result=False)
BATCH = 32  # questions per task run: one batched embedding + generation per batch


class BadQuestions(Exception):
    """The questions file cannot be used; the message names the line."""


@task(name="read-questions", retries=3, retry_delay_seconds=1, retry_condition_fn=faults.retry_unless(BadQuestions), **_TASK)
def read_questions(path: Path) -> list[dict[str, Any]]:
    faults.maybe_fail("read-questions")
    try:
        objects = read_objects(path)
    except JsonlError as e:
        raise BadQuestions(str(e)) from e
    for origin, row in objects:
        if not str(row.get("question", "")).strip():
            raise BadQuestions(f"{origin} has no non-empty 'question' field")
    return [row for _, row in objects]


@task(name="answer-batch", retries=2, retry_delay_seconds=2, **_TASK)
def answer_batch(answerer: Any, rows: list[dict[str, Any]], filters: Any) -> list[dict[str, Any]]:
    faults.maybe_fail("answer-batch")
    answers = answerer.ask_many([r["question"] for r in rows], filters)
    return [{"id": r.get("id"), **a.as_dict()} for r, a in zip(rows, answers)]


@task(name="write-answers", retries=3, retry_delay_seconds=1, **_TASK)
def write_answers(answers: list[dict[str, Any]], path: Path) -> Path:
    faults.maybe_fail("write-answers")
    # Atomic: readers never see a half-written file.
    return atomic.write_text(path, "".join(json.dumps(a, ensure_ascii=False) + "\n" for a in answers))


def summary_markdown(answers: list[dict[str, Any]], path: Path) -> str:
    total = sum(sum(a["timings"].values()) for a in answers)
    per_answer = [sum(a["timings"].values()) for a in answers]
    abstained = sum(a["abstained"] for a in answers)
    supports = [a["support"] for a in answers if a.get("support") is not None]
    return "\n".join(
        [
            f"# Answers → `{path}`",
            "",
            "| questions | answered | abstained | mean support | p50 s/answer | p95 s/answer | total s |",
            "|---:|---:|---:|---:|---:|---:|---:|",
            f"| {len(answers)} | {len(answers) - abstained} | {abstained} | "
            f"{(np.mean(supports) if supports else float('nan')):.3f} | {np.percentile(per_answer, 50) if answers else 0:.2f} | "
            f"{np.percentile(per_answer, 95) if answers else 0:.2f} | {total:.1f} |",
        ]
    )


@flow(name="answer", log_prints=False)
def answer(
    questions_file: str,
    output_file: str,
    table: str | None = None,
    groups: list[str] | None = None,
    retrieval: bool = True,
    adapter: str | None = "champion",
    config_file: str | None = None,
) -> dict[str, Any]:
    """Answer every `question` in a JSONL file.

    Args:
        questions_file: JSONL with a `question` per line (other fields, e.g. `id`, are carried over).
        output_file: where to write the answers (JSONL, written atomically).
        table: chunk table (default from settings).
        groups: the caller's access groups (default `retrieval.groups`).
        retrieval: false answers closed-book (no documents), for comparison arms.
        adapter: a registered adapter name, `champion` (none when there is no champion), `latest`,
            an adapter directory, or `none`.
        config_file: optional TOML settings file.
    """
    settings = load_settings(config_file)
    rows = read_questions(Path(questions_file))
    adapter_dir, served = serving_adapter(settings, adapter, groups)
    answerer = make_answerer(settings, table, retrieval=retrieval, adapter=adapter_dir)
    filters = search_filters(settings, groups)
    answers: list[dict[str, Any]] = []
    for start in range(0, len(rows), BATCH):
        answers += [a | served for a in answer_batch(answerer, rows[start : start + BATCH], filters)]
    out = write_answers(answers, Path(output_file))
    markdown = summary_markdown(answers, out)
    if served["adapter_withheld"]:
        markdown += f"\n\nAnswered by the base model: {served['adapter_withheld']}."
    create_markdown_artifact(key="answers", markdown=markdown, description=f"answers for {questions_file}")
    return {"output": str(out), "questions": len(answers), "abstained": sum(a["abstained"] for a in answers), **served}


@flow(name="answer-service", log_prints=False)
def answer_service(questions_file: str, output_file: str, adapter: str | None = "champion") -> dict[str, Any]:
    """Answer every `question` in a JSONL file as this deployment's caller.

    The caller's access groups are not a parameter: they are the deployment's identity, set by the
    operator in its settings (`retrieval.groups` in the worker's or the deployment's environment,
    e.g. `RAGTUNE_RETRIEVAL__GROUPS` or `RAGTUNE_CONFIG` in its job variables). The form the UI shows
    has no field for them; an adapter trained on chunks this caller may not read is not used.

    Args:
        questions_file: JSONL with a `question` per line (other fields, e.g. `id`, are carried over).
        output_file: where to write the answers (JSONL, written atomically).
        adapter: a registered adapter name, `champion` (none when there is no champion), `latest`, or `none`.
    """
    return answer(questions_file, output_file, adapter=adapter)
