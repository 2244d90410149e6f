"""The `ingest` flow: documents → chunks → vectors → LanceDB, incremental and atomic.

    ragtune ingest demo/corpus            # the CLI runs this flow
    prefect deploy --all                  # deployments/prefect.yaml serves it too

Reads top to bottom as the steps it chains; the logic lives in `tasks/`.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from data_contracts.manifest import IngestManifest, QuarantinedFile
from data_contracts.suites import chunk_suite, document_suite
from tasks import ingest as steps
from tasks.config import Settings, load_settings
from tasks.models import load_embedder_for
from tasks.progress import progress_bar
from tasks.report import ingest_markdown, write_manifest
from tasks.sources import Plan, SourceFile, discover, plan
from tasks.store import ChunkStore, writer_lock
from tasks.validate import require_valid

# Heavy objects (tables, models) pass between these tasks in memory and are never persisted as
# Prefect results; caching by input hash would hash whole tables for nothing.
_TASK = dict(cache_policy=NO_CACHE, persist_result=False)
PARSE_GROUP = 256  # files per parse task run: one sandbox pool start per group


class IngestFailed(Exception):
    """A run failed; the previously committed table is untouched."""


@task(name="discover-sources", **_TASK)
def discover_sources(source: Path, settings: Settings) -> tuple[list[SourceFile], list[Any]]:
    return discover(source, settings.ingest.include, settings.ingest.exclude)


@task(name="plan-changes", **_TASK)
def plan_changes(files: list[SourceFile], ledger: dict[str, dict[str, Any]], pipeline: str, force: bool) -> Plan:
    return plan(files, ledger, pipeline, force=force)


@task(name="parse-and-chunk", **_TASK)
def parse_and_chunk(group: list[tuple[SourceFile, str]], embedder: Any, settings: Settings, advance: Any) -> list[steps.DocumentResult]:
    return steps.parsed_documents(group, embedder, settings, on_progress=advance)


@task(name="embed-chunks", retries=1, retry_delay_seconds=2, **_TASK)
def embed_chunks(vectors: steps.Vectors, embedder: Any, store: ChunkStore, settings: Settings) -> int:
    with progress_bar("embedding", len(vectors.todo), unit="chunks") as advance:
        return steps.embed_missing(vectors, embedder, store, batch_size=settings.embedder.batch_size * 4, on_progress=advance)


@task(name="validate-contracts", **_TASK)
def validate_contracts(chunks: Any, documents: Any, dimension: int, max_tokens: int) -> list[dict[str, Any]]:
    reports = []
    if chunks.num_rows:
        reports.append(require_valid(chunks, chunk_suite(dimension, max_tokens), key="chunk_id").as_dict())
    if documents.num_rows:
        reports.append(require_valid(documents, document_suite(), key="doc_id").as_dict())
    return reports


@task(name="write-chunks", retries=2, retry_delay_seconds=2, **_TASK)
def write_chunks(store: ChunkStore, rows: Any, source_root: str, doc_ids: list[str]) -> int:
    return store.replace_documents(rows, source_root, doc_ids)


@task(name="write-ledger", retries=2, retry_delay_seconds=2, **_TASK)
def write_ledger(store: ChunkStore, rows: Any, source_root: str, deleted: list[str]) -> int:
    return store.write_ledger(rows, source_root, deleted)


@task(name="maintain-indexes", retries=1, **_TASK)
def maintain_indexes(store: ChunkStore, settings: Settings) -> dict[str, Any]:
    s = settings.store
    return store.maintain_indexes(s.ann_min_rows, s.ann_min_recall, s.keep_versions_days).__dict__


@flow(name="ingest", log_prints=False)
def ingest(
    source: str,
    table: str | None = None,
    include: list[str] | None = None,
    exclude: list[str] | None = None,
    force: bool = False,
    strict: bool = False,
    config_file: str | None = None,
) -> dict[str, Any]:
    """Ingest the documents under `source` into a LanceDB chunk table, incrementally.

    Args:
        source: directory to ingest, walked recursively.
        table: chunk table name (default from settings: `chunks`).
        include: globs relative to `source` to include (default: everything).
        exclude: globs to exclude (default: hidden files).
        force: re-process every file even if unchanged (embeddings are still reused).
        strict: fail the run when any file is quarantined.
        config_file: optional TOML settings file.
    """
    settings = load_settings(config_file).with_ingest(table=table, include=include, exclude=exclude)
    root = Path(source).expanduser().resolve()
    source_root = str(root)
    manifest = IngestManifest(
        run_id=datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6],
        flow_run_id=str(flow_run.get_id()) if flow_run.get_id() else None,
        table=settings.store.table,
        source_root=source_root,
        started_at=datetime.now(timezone.utc),
    )
    timer = steps.Timer()
    try:
        with writer_lock(settings.locks_dir, settings.store.table):
            _run(root, settings, force, manifest, timer)
        if strict and manifest.quarantine:
            raise IngestFailed(
                f"{len(manifest.quarantine)} file(s) quarantined and --strict is set: "
                + "; ".join(f"{q.doc_id}: {q.reason}" for q in manifest.quarantine[:5])
            )
    except Exception as e:
        manifest.status, manifest.error = "failed", f"{type(e).__name__}: {e}"
        raise
    finally:
        manifest.finished_at = datetime.now(timezone.utc)
        manifest.timings = {k: round(v, 3) for k, v in timer.seconds.items()}
        path = write_manifest(manifest, settings.runs_dir)
        create_markdown_artifact(
            key=f"ingest-{settings.store.table.lower().replace('_', '-')}",
            markdown=ingest_markdown(manifest, path),
            description=f"ingest of {source_root} into {settings.store.table}",
        )
    return manifest.model_dump(mode="json")


def _run(root: Path, settings: Settings, force: bool, manifest: IngestManifest, timer: steps.Timer) -> None:
    source_root, counts = str(root), manifest.counts
    with timer("load_models"):
        embedder = load_embedder_for(settings)
        store = ChunkStore(settings.lancedb_dir, settings.store.table)
        store.check_dimension(embedder.dimension)
    pipeline = steps.pipeline_fingerprint(settings, embedder.fingerprint, embedder.max_tokens)
    manifest.pipeline, manifest.embedder = pipeline, embedder.fingerprint

    with timer("discover"):
        files, skipped = discover_sources(root, settings)
        previous = store.ledger(source_root)
        todo = plan_changes(files, previous, pipeline, force)
    counts.files_seen = len(files)
    counts.unchanged = len(todo.unchanged) + len(todo.touched)
    counts.still_quarantined = len(todo.still_quarantined)
    counts.skipped = len(skipped) + len(todo.unreadable)
    counts.deleted = len(todo.deleted)
    manifest.quarantine += [QuarantinedFile(doc_id=s.doc_id, reason=s.reason, detail=s.detail) for s in skipped + todo.unreadable]

    results: list[steps.DocumentResult] = []
    with timer("parse_chunk"), progress_bar("parsing", len(todo.to_parse), unit="files") as advance:
        for start in range(0, len(todo.to_parse), PARSE_GROUP):
            results += parse_and_chunk(todo.to_parse[start : start + PARSE_GROUP], embedder, settings, advance)
    good = [r for r in results if r.ok]
    steps.tally(results, previous, manifest)

    with timer("embed"):
        vectors = steps.stored_vectors([c for r in good for c in r.chunks], embedder, store)
        counts.chunks_reused = vectors.reused
        counts.chunks_embedded = embed_chunks(vectors, embedder, store, settings) if vectors.todo else 0

    with timer("validate"):
        chunks = steps.chunk_rows(good, vectors, embedder, source_root, pipeline, settings.ingest.access_groups)
        documents = steps.ledger_rows(results, todo.touched, previous, source_root, pipeline)
        manifest.validation = validate_contracts(chunks, documents, embedder.dimension, embedder.max_tokens)

    with timer("write"):
        # Documents whose chunks this run replaces: re-ingested ones and deleted ones. A changed file
        # that is now quarantined is left out, so its last good chunks stay searchable.
        replaced = sorted({r.file.doc_id for r in good} | set(todo.deleted))
        manifest.chunk_table_version = write_chunks(store, chunks, source_root, replaced)
        manifest.ledger_version = write_ledger(store, documents, source_root, todo.deleted)
        counts.chunks_written = chunks.num_rows
        store.clear_spool()

    if replaced or store.indexes_missing():
        with timer("index"):
            manifest.index = maintain_indexes(store, settings)
    table = store.chunks
    manifest.chunk_table_version = table.version if table is not None else None
    counts.chunks_total = table.count_rows() if table is not None else 0
