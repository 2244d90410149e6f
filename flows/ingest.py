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
from prefect.futures import as_completed
from prefect.runtime import flow_run

from data_contracts.manifest import IngestManifest, QuarantinedFile
from data_contracts.suites import chunk_suite, document_suite
from flows import runners
from flows.events import emit
from tasks import events, faults, ingest as steps
from tasks.config import config_path, Settings, load_settings
from tasks.models import load_embedder_for
from tasks.progress import progress_bar
from tasks.report import ingest_markdown, write_manifest
from tasks.sources import Plan, SourceError, SourceFile, discover, plan
from tasks.store import ChunkStore, WriterLock, redacted, writer_lock
from tasks.validate import ContractViolation, require_valid

# Heavy objects (tables, models) pass between these tasks in memory and are never persisted as
# Prefect results; caching by input hash would hash whole tables for nothing.
_TASK = dict(cache_policy=NO_CACHE, persist_result=False)
PARSE_GROUP = 256  # files per parse task run: one sandbox pool start per group


class IngestFailed(Exception):
    """`--strict` found quarantined files, after the others were committed (the message says so)."""


@task(name="discover-sources", retries=3, retry_delay_seconds=1, retry_condition_fn=faults.retry_unless(SourceError), **_TASK)
def discover_sources(source: Path, settings: Settings) -> tuple[list[SourceFile], list[Any]]:
    faults.maybe_fail("discover-sources")
    return discover(source, settings.ingest.include, settings.ingest.exclude)


@task(name="plan-changes", retries=3, retry_delay_seconds=1, **_TASK)
def plan_changes(files: list[SourceFile], ledger: dict[str, dict[str, Any]], pipeline: str, force: bool) -> Plan:
    faults.maybe_fail("plan-changes")
    return plan(files, ledger, pipeline, force=force)


@task(name="parse-and-chunk", retries=3, retry_delay_seconds=1, **_TASK)
def parse_and_chunk(group: list[tuple[SourceFile, str]], embedder: Any, settings: Settings, advance: Any) -> list[steps.DocumentResult]:
    faults.maybe_fail("parse-and-chunk")
    return steps.parsed_documents(group, embedder, settings, on_progress=advance)


@task(name="parse-and-chunk-on-worker", retries=3, retry_delay_seconds=1, **_TASK)
def parse_and_chunk_on_worker(group: list[tuple[SourceFile, str]], settings: Settings) -> list[steps.DocumentResult]:
    """On an engine worker: files in, chunks out; the embedder's tokenizer is loaded once per worker."""
    faults.maybe_fail("parse-and-chunk-on-worker")
    return steps.parsed_documents(group, load_embedder_for(settings), settings)


@task(name="embed-batch-on-worker", retries=3, retry_delay_seconds=2, **_TASK)
def embed_batch_on_worker(texts: list[str], settings: Settings) -> Any:
    """On an engine worker: texts in, vectors out; the model is loaded once per worker and kept.
    Only the flow writes them (spool, then the commit), so the store keeps one writer."""
    faults.maybe_fail("embed-batch-on-worker")
    return load_embedder_for(settings).embed(texts)


@task(name="embed-chunks", retries=3, retry_delay_seconds=2, **_TASK)
def embed_chunks(vectors: steps.Vectors, embedder: Any, store: ChunkStore, settings: Settings) -> int:
    faults.maybe_fail("embed-chunks")
    with progress_bar("embedding", len(vectors.todo), unit="chunks") as advance:
        return steps.embed_missing(vectors, embedder, store, batch_size=settings.embedder.batch_size * 4, on_progress=advance)


@task(name="validate-contracts", retries=3, retry_delay_seconds=1, retry_condition_fn=faults.retry_unless(ContractViolation), **_TASK)
def validate_contracts(chunks: Any, documents: Any, dimension: int, max_tokens: int) -> list[dict[str, Any]]:
    faults.maybe_fail("validate-contracts")
    reports = []
    if chunks.num_rows:
        reports.append(require_valid(chunks, chunk_suite(dimension, max_tokens), key="chunk_id").as_dict())
    if documents.num_rows:
        reports.append(require_valid(documents, document_suite(), key="doc_id").as_dict())
    return reports


@task(name="write-chunks", retries=3, retry_delay_seconds=2, **_TASK)
def write_chunks(store: ChunkStore, rows: Any, source_root: str, doc_ids: list[str]) -> int:
    faults.maybe_fail("write-chunks")
    return store.replace_documents(rows, source_root, doc_ids)


@task(name="write-ledger", retries=3, retry_delay_seconds=2, **_TASK)
def write_ledger(store: ChunkStore, rows: Any, source_root: str, deleted: list[str]) -> int:
    faults.maybe_fail("write-ledger")
    return store.write_ledger(rows, source_root, deleted)


@task(name="maintain-indexes", retries=3, retry_delay_seconds=1, **_TASK)
def maintain_indexes(store: ChunkStore, settings: Settings) -> dict[str, Any]:
    faults.maybe_fail("maintain-indexes")
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
    suggest_retrain: bool = True,
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
        suggest_retrain: label this ingest for the retrain-on-change automation (when enough chunks
            changed); the nightly chain sets false because it retrains itself.
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
        with writer_lock(settings.locks_dir, settings.store.table, uri=settings.store_uri, storage_options=settings.store_options(), lease_ttl_s=settings.store.lease_ttl_s) as lock:
            _run(root, settings, force, manifest, timer, lock)
        if strict and manifest.quarantine:
            raise IngestFailed(
                f"{len(manifest.quarantine)} file(s) quarantined and --strict is set: "
                + "; ".join(f"{q.doc_id}: {q.reason}" for q in manifest.quarantine[:5])
                + f". The other files were committed (chunk table version {manifest.chunk_table_version}); "
                "fix or remove the quarantined ones and rerun"
            )
    except Exception as e:
        manifest.status, manifest.error = "failed", redacted(f"{type(e).__name__}: {e}", settings.store_options())
        manifest.failed_stage = timer.failed or ("strict" if isinstance(e, IngestFailed) else None)
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
    # After the manifest is written: the event says what this run changed (tasks/events.py).
    emit([events.ingest_completed(manifest, settings.events.retrain_changed_share, suggest_retrain=suggest_retrain,
                                  config_file=config_path(config_file))])
    return manifest.model_dump(mode="json")


def _run(root: Path, settings: Settings, force: bool, manifest: IngestManifest, timer: steps.Timer, lock: WriterLock) -> None:
    source_root, counts = str(root), manifest.counts
    policy = steps.access_policy(settings)  # before any work: a policy that cannot be applied stops the run
    with timer("load_models"):
        embedder = load_embedder_for(settings)
        store = ChunkStore(settings.store_uri, settings.store.table, storage_options=settings.store_options())
        store.check_dimension(embedder.dimension)
        manifest.counts.chunks_before = store.chunks.count_rows() if store.chunks is not None else 0
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

    # `thread`: the tasks run here, as they always did. dask/ray: parsing and embedding fan out to the
    # engine's workers, started only when there is something to parse, torn down after embedding.
    with runners.engine(settings, needed=bool(todo.to_parse)) as engine:
        results: list[steps.DocumentResult] = []
        with timer("parse_chunk"), progress_bar("parsing", len(todo.to_parse), unit="files") as advance:
            if engine is None:
                for start in range(0, len(todo.to_parse), PARSE_GROUP):
                    results += parse_and_chunk(todo.to_parse[start : start + PARSE_GROUP], embedder, settings, advance)
            else:
                results = _parsed_on(engine, todo.to_parse, settings, advance)
        steps.apply_access(results, policy)
        good = [r for r in results if r.ok]
        steps.tally(results, previous, manifest)

        with timer("embed"):
            vectors = steps.stored_vectors([c for r in good for c in r.chunks], embedder, store)
            counts.chunks_reused = vectors.reused
            if not vectors.todo:
                counts.chunks_embedded = 0
            elif engine is None:
                counts.chunks_embedded = embed_chunks(vectors, embedder, store, settings)
            else:
                counts.chunks_embedded = _embedded_on(engine, vectors, store, settings)

    withdrawn = steps.stale_access(results, previous, store, source_root, policy)
    for doc_id in withdrawn:  # the ledger then counts no chunks for them
        previous[doc_id] = {**previous[doc_id], "chunk_count": 0}

    with timer("validate"):
        chunks = steps.chunk_rows(good, vectors, embedder, source_root, pipeline)
        documents = steps.ledger_rows(results, todo.touched, previous, source_root, pipeline)
        manifest.validation = validate_contracts(chunks, documents, embedder.dimension, embedder.max_tokens)

    with timer("write"):
        # Documents whose chunks this run replaces: re-ingested ones and deleted ones. A changed file
        # that is now quarantined is left out, so its last good chunks stay searchable, unless those
        # chunks carry groups the access policy no longer gives them (withdrawn).
        replaced = sorted({r.file.doc_id for r in good} | set(todo.deleted) | set(withdrawn))
        lock.check()  # a run that lost its writer lease stops here, before writing over the new holder
        # Mark the replaced documents first: a run stopped between the two commits below re-parses them.
        write_ledger(store, steps.pending_ledger_rows(good, previous, source_root), source_root, [])
        lock.check()
        manifest.chunk_table_version = write_chunks(store, chunks, source_root, replaced)
        lock.check()
        manifest.ledger_version = write_ledger(store, documents, source_root, todo.deleted)
        counts.chunks_written = chunks.num_rows
        lock.check()
        store.clear_spool()

    if replaced or store.indexes_missing():
        with timer("index"):
            manifest.index = maintain_indexes(store, settings)
    table = store.chunks
    manifest.chunk_table_version = table.version if table is not None else None
    counts.chunks_total = table.count_rows() if table is not None else 0


def _parsed_on(engine: Any, files: list[tuple[SourceFile, str]], settings: Settings, advance: Any) -> list[steps.DocumentResult]:
    """Parse-and-chunk groups fanned out on `engine`, results in input order."""
    workers = runners.worker_settings(settings)
    # Enough groups to keep every worker busy, each still big enough to amortise its sandbox start.
    size = max(8, min(PARSE_GROUP, -(-len(files) // (4 * settings.orchestration.workers))))
    futures = [engine.submit(parse_and_chunk_on_worker, {"group": files[i : i + size], "settings": workers}) for i in range(0, len(files), size)]
    results: list[steps.DocumentResult] = []
    for future in futures:
        part = future.result()
        results += part
        advance(len(part))
    return results


def _embedded_on(engine: Any, vectors: steps.Vectors, store: ChunkStore, settings: Settings) -> int:
    """Embed `vectors.todo` on `engine`'s workers; the flow spools each batch as it returns, so a
    crashed run still resumes from the spool and the flow stays the store's only writer."""
    workers = runners.worker_settings(settings)
    # Several batches per worker so none idles at the end; whole model batches, at most the in-flow size.
    model_batch = settings.embedder.batch_size
    per_worker = -(-len(vectors.todo) // (2 * settings.orchestration.workers))
    parts = steps.embedding_batches(vectors, min(4 * model_batch, model_batch * -(-per_worker // model_batch)))
    futures = {}
    for part in parts:
        future = engine.submit(embed_batch_on_worker, {"texts": [vectors.todo[h] for h in part], "settings": workers})
        futures[future.task_run_id] = (future, part)
    with progress_bar("embedding", len(vectors.todo), unit="chunks") as advance:
        for future in as_completed([f for f, _ in futures.values()]):
            part = futures[future.task_run_id][1]
            steps.keep_vectors(vectors, store, part, future.result())
            advance(len(part))
    return sum(len(p) for p in parts)
