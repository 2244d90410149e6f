"""The `synthesize` flow: synthetic question -> answer -> source triples from the chunk table alone.

    ragtune synth [--max-chunks N] [--max-minutes M]     # the CLI runs this flow

Sample chunks the caller may read, draft questions batch by batch (checkpointed: a stopped run
resumes), then filter, add unanswerable questions and split by document (`tasks/synth.py`). The
result is an evaluation-set file whose `train` rows can feed the training data and whose `test`
rows the arena evaluates like a labelled set.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from threadpoolctl import threadpool_limits

from tasks import faults
from tasks import synth as steps
from tasks.config import Settings, load_settings
from tasks.models import load_embedder_for
from tasks.progress import progress_bar
from tasks.report import synth_markdown

_TASK = dict(cache_policy=NO_CACHE, persist_result=False)


@task(name="sample-chunks", retries=3, retry_delay_seconds=1, **_TASK)
def sample_chunks(settings: Settings, table: str | None) -> tuple[list[dict[str, Any]], str]:
    faults.maybe_fail("sample-chunks")
    session = steps.open_session(settings, table)
    chunks = steps.sample_chunks(session.table, session.drafter.filters, settings.synth.max_chunks, settings.synth.seed)
    if not chunks:
        raise steps.SynthError(f"no chunk the groups {settings.synth.groups or ['(public)']} may read: ingest documents or set synth.groups")
    return chunks, session.key


@task(name="draft-questions", retries=2, retry_delay_seconds=1, **_TASK)
def draft_questions(settings: Settings, table: str | None, batch: list[dict[str, Any]]) -> int:
    """Questions and their round trip for one batch of chunks, appended to the run's checkpoint."""
    faults.maybe_fail("draft-questions")
    session = steps.open_session(settings, table)
    found = session.drafter.draft(batch)
    session.checkpoint.append(batch, found)
    return len(found)


@task(name="finish-questions", retries=2, retry_delay_seconds=1, **_TASK)
def finish_questions(settings: Settings, table: str | None, chunks: list[dict[str, Any]], manifest: dict[str, Any]) -> dict[str, Any]:
    """Near-duplicates, unanswerable questions, the contract, the document split; saved."""
    faults.maybe_fail("finish-questions")
    session = steps.open_session(settings, table)
    _, candidates = session.checkpoint.current(chunks)
    # The near-duplicate pass is numpy's: without a limit its BLAS threads fight the other worker (14x slower at
    # 8k questions on 2 shared cores, bench/results/synth-scale-latest.md).
    with threadpool_limits(settings.threads):
        result = steps.finish(candidates, load_embedder_for(settings).embed, session.in_corpus, settings.synth, session.drafter.k)
    path = steps.save(result, settings.synth_dir, manifest)
    return {"path": str(path / "questions.jsonl"), "hash": result.hash, "funnel": result.funnel, **manifest}


@flow(name="synthesize", log_prints=False)
def synthesize(
    table: str | None = None, max_chunks: int | None = None, max_minutes: float | None = None, config_file: str | None = None
) -> dict[str, Any]:
    """Generate, filter and split synthetic questions from the chunk table.

    Args:
        table: chunk table to draw from (default from settings).
        max_chunks: chunks to sample (default `synth.max_chunks`).
        max_minutes: drafting time budget (default `synth.max_minutes`); a rerun resumes.
        config_file: optional TOML settings file.
    """
    settings = load_settings(config_file)
    updates = {k: v for k, v in {"max_chunks": max_chunks, "max_minutes": max_minutes}.items() if v is not None}
    if updates:
        settings = settings.model_copy(update={"synth": settings.synth.model_copy(update=updates)})
    began = time.monotonic()
    chunks, key = sample_chunks(settings, table)
    checkpoint = steps.Checkpoint(settings.synth_dir / ".work" / key)
    drafted, _ = checkpoint.current(chunks)
    todo = steps.batches(chunks, drafted, settings.synth.batch_chunks)
    stopped, budget, batch_seconds = False, settings.synth.max_minutes * 60, []
    with progress_bar("drafting", len(todo), unit="batches") as advance:
        for batch in todo:
            # Stop before a batch that would, at the mean pace so far, end past the budget.
            expected = sum(batch_seconds) / len(batch_seconds) if batch_seconds else 0.0
            if time.monotonic() - began + expected > budget:
                stopped = True
                break
            start = time.monotonic()
            draft_questions(settings, table, batch)
            drafted |= {c["chunk_id"] for c in batch}
            batch_seconds.append(time.monotonic() - start)
            advance(1)
    manifest = {
        "key": key, "chunks_sampled": len(chunks), "chunks_drafted": len(drafted),
        "stopped_early": stopped, "max_minutes": settings.synth.max_minutes, "seconds": round(time.monotonic() - began, 1),
        "settings": settings.synth.model_dump(mode="json"),
    }
    summary = finish_questions(settings, table, chunks, manifest)
    create_markdown_artifact(key="synthetic-questions", markdown=synth_markdown(summary), description="synthetic questions")
    return summary
