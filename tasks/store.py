"""The LanceDB store: a chunk table and its document ledger.

Writes are atomic per table: a run's chunk changes (upserts of changed documents and removal of
their stale and deleted chunks) go in **one** `merge_insert` commit, so a failure before it leaves
the previous version untouched, and the ledger is written after it. A crash between the two only
makes the next run re-parse those files; chunk ids are deterministic, so the re-upsert creates no
duplicates. Keep one writer per table: `writer_lock` serialises runs on the same home with a local
file lock and, for a table on s3://, gs:// or az://, across hosts with a lease object (`tasks/locks.py`).

The store may live at an object-store URI (`store.uri`); its storage options hold credentials, so
they are kept out of `uri`, `status()` and every error message (`redacted`).
"""

from __future__ import annotations

import fcntl
import logging
import math
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa

from data_contracts.schemas import chunk_schema, document_schema, vector_dimension
from tasks.locks import Lease, LockError, held, is_object_store, lease_for

log = logging.getLogger(__name__)

_IN_BATCH = 500


def sql_str(value: str) -> str:
    """A SQL string literal for LanceDB filters."""
    return "'" + value.replace("'", "''") + "'"


def sql_in(column: str, values: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(sql_str(v) for v in values)})"


class StoreError(Exception):
    """The store cannot be used as configured; the message says how to fix it."""


_SECRET_KEY_PARTS = ("secret", "key", "token", "password", "credential", "sas")


def is_secret_option(name: str) -> bool:
    """Storage options whose value is a secret (access key ids, keys, tokens, passwords, SAS...)."""
    return any(part in name.lower() for part in _SECRET_KEY_PARTS)


def redacted(text: str, storage_options: Mapping[str, str] | None) -> str:
    """`text` with the value of every secret-looking storage option replaced by ***, however short.

    Other options (endpoint, region, allow_http...) stay visible: they are what a user has to fix.
    """
    secrets = {str(v) for k, v in (storage_options or {}).items() if v and is_secret_option(str(k))}
    for value in sorted(secrets, key=len, reverse=True):  # longest first: no partial leftovers
        text = text.replace(value, "***")
    return text


_redact = redacted  # the old private name


class WriterLock:
    """What `writer_lock` yields: `check()` right before each write confirms this run still holds it."""

    def __init__(self, lease: Lease | None = None, storage_options: Mapping[str, str] | None = None):
        self.lease = lease
        self._storage_options = storage_options

    def check(self) -> None:
        """No-op for a local file lock (held until the block exits); for an object-store lease a
        synchronous renewal, raising `StoreError` when the lease is lost or cannot be confirmed within its ttl."""
        if self.lease is None:
            return
        try:
            self.lease.check()
        except LockError as e:
            raise StoreError(str(e)) from None
        except Exception as e:  # noqa: BLE001 - never write when the lease cannot be confirmed
            raise StoreError(
                f"cannot confirm the writer lease {self.lease.url}: "
                f"{redacted(f'{type(e).__name__}: {e}', self._storage_options)}; this run stopped before writing"
            ) from None


@contextmanager
def writer_lock(
    locks_dir: Path,
    table: str,
    wait_s: float = 600.0,
    *,
    uri: str | None = None,
    storage_options: Mapping[str, str] | None = None,
    lease_ttl_s: float = 60.0,
) -> Iterator[WriterLock]:
    """One writer per table: a second ingest into the same table waits, then fails clearly.

    Always a local file lock under `locks_dir`; when `uri` is an object store, also a lease next to
    the table that serialises writers on different hosts (`tasks/locks.py` says why it is safe).
    Yields a `WriterLock`: call its `check()` right before each write, so that a run that lost its
    lease (paused or cut off longer than the ttl) stops instead of writing over the new holder.
    """
    with _local_lock(locks_dir, table, wait_s), ExitStack() as stack:
        handle = WriterLock()
        if uri is not None and is_object_store(uri):
            try:
                handle = WriterLock(stack.enter_context(held(lease_for(uri, table, storage_options or {}, lease_ttl_s), wait_s)), storage_options)
            except LockError as e:
                raise StoreError(str(e)) from None
            except Exception as e:  # noqa: BLE001 - the store is unreachable or refuses: say where, not the secrets
                raise StoreError(
                    f"cannot take the writer lease for table {table!r} at {uri}: "
                    f"{redacted(f'{type(e).__name__}: {e}', storage_options)}; check store.uri and store.storage_options"
                ) from None
        yield handle


@contextmanager
def _local_lock(locks_dir: Path, table: str, wait_s: float) -> Iterator[None]:
    locks_dir.mkdir(parents=True, exist_ok=True)
    with open(locks_dir / f"{table}.lock", "w") as f:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise StoreError(
                        f"another run is writing table {table!r} (lock {locks_dir / f'{table}.lock'}); "
                        "wait for it to finish"
                    ) from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# The ANN search every served query uses, and the one whose recall the index build measures: what is
# measured is what is served. Refinement re-ranks nprobes' candidates by exact distance (PQ codes alone
# lose neighbours); without a vector index LanceDB searches exactly and these are ignored.
ANN_NPROBES, ANN_REFINE_FACTOR = 20, 5


def dense_search(table: Any, vector: Any) -> Any:
    """A cosine vector query on the chunk table, with the served ANN settings."""
    return table.search(vector, vector_column_name="vector").distance_type("cosine").nprobes(ANN_NPROBES).refine_factor(ANN_REFINE_FACTOR)


@dataclass
class IndexReport:
    fts: str  # "created", "updated" or "unchanged"
    vector: str  # "flat", "created", "updated"
    ann_recall_at_10: float | None = None
    seconds: float = 0.0


class ChunkStore:
    """The chunk table `name` and its ledger `name__documents` in the LanceDB at `uri`."""

    def __init__(self, uri: Path | str, name: str, storage_options: Mapping[str, str] | None = None):
        import lancedb

        self.uri = str(uri)
        self.name = name
        # Revealed secrets: handed to LanceDB only, never part of a message, status or repr.
        self._storage_options = dict(storage_options or {})
        self.ledger_name = f"{name}__documents"
        # Vectors embedded by a run that has not committed yet: a rerun after a crash reuses them.
        self.spool_name = f"{name}__embedding_spool"
        try:
            self.db = lancedb.connect(self.uri, storage_options=self._storage_options or None)
        except Exception as e:  # noqa: BLE001 - any connection failure is a store error for the user
            raise StoreError(
                f"cannot open LanceDB at {self.uri}: {redacted(str(e), self._storage_options)}; "
                "check store.uri and store.storage_options"
            ) from None

    def __repr__(self) -> str:
        return f"ChunkStore(uri={self.uri!r}, name={self.name!r})"

    # --- reading ---------------------------------------------------------------------------

    def _open(self, name: str) -> Any | None:
        if name not in self.db.list_tables().tables:
            return None
        return self.db.open_table(name)

    @property
    def chunks(self) -> Any | None:
        return self._open(self.name)

    @property
    def ledger_table(self) -> Any | None:
        return self._open(self.ledger_name)

    def check_dimension(self, dimension: int) -> None:
        table = self.chunks
        if table is not None and vector_dimension(table.schema) != dimension:
            raise StoreError(
                f"table {self.name!r} holds {vector_dimension(table.schema)}-d vectors but the configured "
                f"embedder makes {dimension}-d ones: ingest into another table (--table) or restore the embedder"
            )

    def ledger(self, source_root: str) -> dict[str, dict[str, Any]]:
        """Ledger rows of one source root, by doc_id."""
        table = self.ledger_table
        if table is None:
            return {}
        rows = table.search().where(f"source_root = {sql_str(source_root)}").limit(None).to_arrow()
        return {r["doc_id"]: r for r in rows.to_pylist()}

    def groups_of(self, source_root: str, doc_ids: Sequence[str]) -> dict[str, set[tuple[str, ...]]]:
        """The access groups stored on the chunks of `doc_ids`, by doc_id (one entry per distinct list)."""
        table, out = self.chunks, {}
        if table is None or not doc_ids:
            return out
        for start in range(0, len(doc_ids), _IN_BATCH):
            where = f"source_root = {sql_str(source_root)} AND {sql_in('doc_id', list(doc_ids[start : start + _IN_BATCH]))}"
            for r in table.search().where(where).select(["doc_id", "groups"]).limit(None).to_list():
                out.setdefault(r["doc_id"], set()).add(tuple(sorted(r["groups"] or [])))
        return out

    def vectors_for(self, embed_hashes: Sequence[str]) -> dict[str, np.ndarray]:
        """Stored vectors by embed hash (committed chunks, then the spool of an interrupted run)."""
        found = self._vectors_in(self.chunks, embed_hashes)
        missing = [h for h in embed_hashes if h not in found]
        if missing:
            found.update(self._vectors_in(self._open(self.spool_name), missing))
        return found

    def spool(self, embed_hashes: Sequence[str], vectors: np.ndarray) -> None:
        """Keep freshly embedded vectors until the run commits, so a crash does not waste them."""
        # Non-finite vectors are not kept: the chunk contract rejects them and they must be re-embedded.
        finite = np.isfinite(vectors).all(axis=1)
        embed_hashes = [h for h, ok in zip(embed_hashes, finite) if ok]
        vectors = vectors[finite]
        if not embed_hashes:
            return
        dim = vectors.shape[1]
        schema = pa.schema([pa.field("embed_hash", pa.string(), nullable=False), pa.field("vector", pa.list_(pa.float32(), dim))])
        data = pa.table(
            {
                "embed_hash": pa.array(list(embed_hashes), pa.string()),
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.astype(np.float32).ravel()), dim),
            },
            schema=schema,
        )
        table = self._open(self.spool_name)
        if table is not None and vector_dimension(table.schema) != dim:
            self.db.drop_table(self.spool_name)
            table = None
        if table is None:
            self.db.create_table(self.spool_name, data=data, exist_ok=False)
        else:
            table.add(data)

    def clear_spool(self) -> None:
        if self._open(self.spool_name) is not None:
            self.db.drop_table(self.spool_name)

    @staticmethod
    def _vectors_in(table: Any | None, embed_hashes: Sequence[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        if table is None or not embed_hashes:
            return found
        unique = sorted(set(embed_hashes))
        for start in range(0, len(unique), _IN_BATCH):
            part = unique[start : start + _IN_BATCH]
            rows = (
                table.search()
                .where(sql_in("embed_hash", part))
                .select(["embed_hash", "vector"])
                .limit(None)
                .to_arrow()
            )
            if rows.num_rows == 0:
                continue
            dim = rows.schema.field("vector").type.list_size
            flat = rows.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False)
            vectors = flat.reshape(rows.num_rows, dim).astype(np.float32)
            for h, v in zip(rows.column("embed_hash").to_pylist(), vectors):
                found[h] = v
        return found

    # --- writing ---------------------------------------------------------------------------

    def _ensure(self, name: str, schema: pa.Schema) -> Any:
        table = self._open(name)
        if table is None:
            table = self.db.create_table(name, schema=schema, exist_ok=True)
        return table

    def replace_documents(self, rows: pa.Table, source_root: str, doc_ids: Sequence[str]) -> int:
        """Make the chunks of `doc_ids` exactly `rows`, in one commit; returns the new table version.

        Chunks of those documents that are not in `rows` (stale or deleted) are removed; rows with an
        existing chunk_id are updated in place; the rest are inserted.
        """
        dimension = rows.schema.field("vector").type.list_size
        table = self._ensure(self.name, chunk_schema(dimension))
        if not doc_ids:
            return table.version
        rows = rows.select(table.schema.names).cast(table.schema)
        scope = f"source_root = {sql_str(source_root)} AND {sql_in('doc_id', doc_ids)}"
        (
            table.merge_insert("chunk_id")
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .when_not_matched_by_source_delete(scope)
            .execute(rows)
        )
        return table.version

    def write_ledger(self, rows: pa.Table, source_root: str, deleted: Sequence[str]) -> int:
        """Upsert ledger rows and drop the rows of deleted documents, in one commit.

        A ledger written by an older version gains the columns declared since (nullable, so its
        rows read as null) instead of silently dropping them from every write.
        """
        table = self._ensure(self.ledger_name, document_schema())
        missing = [f for f in document_schema() if f.name not in table.schema.names]
        if missing:
            table.add_columns(missing)
        if rows.num_rows == 0 and not deleted:
            return table.version
        rows = rows.select(table.schema.names).cast(table.schema)
        builder = table.merge_insert(["source_root", "doc_id"]).when_matched_update_all().when_not_matched_insert_all()
        if deleted:
            builder = builder.when_not_matched_by_source_delete(
                f"source_root = {sql_str(source_root)} AND {sql_in('doc_id', deleted)}"
            )
        builder.execute(rows)
        return table.version

    # --- maintenance -----------------------------------------------------------------------

    def indexes_missing(self) -> bool:
        table = self.chunks
        if table is None:
            return False
        indexed = {tuple(i.columns) for i in table.list_indices()}
        return not {("text",), ("groups",)} <= indexed

    def maintain_indexes(self, ann_min_rows: int, ann_min_recall: float, keep_days: float) -> IndexReport:
        """Keep the full-text index in sync, build an ANN index past `ann_min_rows`, compact old versions."""
        from lancedb.index import FTS, IvfPq, LabelList

        start = time.perf_counter()
        table = self.chunks
        if table is None:
            return IndexReport(fts="unchanged", vector="flat")
        indices = {tuple(i.columns): i for i in table.list_indices()}
        report = IndexReport(fts="updated", vector="flat")
        if ("text",) not in indices:
            table.create_index("text", config=FTS())
            report.fts = "created"
        if ("groups",) not in indices:
            # Every search filters on access groups: an index keeps that prefilter cheap.
            table.create_index("groups", config=LabelList())
        rows = table.count_rows()
        if ("vector",) not in indices and rows >= ann_min_rows:
            dimension = vector_dimension(table.schema)
            sub_vectors = max(1, dimension // 8) if dimension % 8 == 0 else 1
            table.create_index(
                "vector",
                config=IvfPq(distance_type="cosine", num_partitions=max(1, int(math.sqrt(rows))), num_sub_vectors=sub_vectors),
            )
            report.vector = "created"
        elif ("vector",) in indices:
            report.vector = "updated"
        # Folds new rows into the indexes, compacts fragments, prunes versions past the retention.
        table.optimize(cleanup_older_than=timedelta(days=keep_days))
        if report.vector == "created":  # measured on the index as searches will see it
            report.ann_recall_at_10 = self.ann_recall(table)
            if report.ann_recall_at_10 < ann_min_recall:
                log.warning(
                    "ANN recall@10 %.3f is below %.2f: searches should use more probes or a refine factor",
                    report.ann_recall_at_10,
                    ann_min_recall,
                )
        report.seconds = time.perf_counter() - start
        return report

    @staticmethod
    def ann_recall(table: Any, queries: int = 100, k: int = 10) -> float:
        """Mean recall@k of the ANN search as served (`dense_search`) against exact search, on vectors
        sampled from the table."""
        n = table.count_rows()
        rng = np.random.default_rng(0)
        picks = sorted(set(rng.integers(0, n, size=min(queries, n)).tolist()))
        sample = table.search().select(["vector"]).limit(None).to_arrow().take(picks)
        recalls = []
        for vec in sample.column("vector").to_pylist():
            approx = dense_search(table, vec).limit(k)
            exact = table.search(vec).distance_type("cosine").bypass_vector_index().limit(k)
            a = set(approx.select(["chunk_id"]).to_arrow().column("chunk_id").to_pylist())
            e = set(exact.select(["chunk_id"]).to_arrow().column("chunk_id").to_pylist())
            recalls.append(len(a & e) / max(1, len(e)))
        return float(np.mean(recalls)) if recalls else 1.0

    def status(self) -> dict[str, Any]:
        """Counts and versions for `ragtune status`."""
        chunks, ledger = self.chunks, self.ledger_table
        out: dict[str, Any] = {"table": self.name, "uri": self.uri, "exists": chunks is not None}
        if chunks is not None:
            out["chunks"] = chunks.count_rows()
            out["chunk_table_version"] = chunks.version
            out["dimension"] = vector_dimension(chunks.schema)
            out["indexes"] = [{"name": i.name, "type": str(i.index_type), "columns": list(i.columns)} for i in chunks.list_indices()]
        if ledger is not None:
            out["documents"] = ledger.count_rows("status = 'ingested'")
            out["quarantined"] = ledger.count_rows("status = 'quarantined'")
            out["ledger_version"] = ledger.version
        return out
