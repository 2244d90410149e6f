"""The measurements: the real `ingest` flow, called in-process, against the model's raw encode speed.

Import this module only after the environment is set (`bench/run.py` does it): Prefect reads its
settings at import.
"""

from __future__ import annotations

import resource
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from prefect import flow

from flows.ingest import PARSE_GROUP, ingest
from tasks import ingest as steps
from tasks.config import Settings
from tasks.models import load_embedder_for
from tasks.sources import discover
from tasks.store import ChunkStore

WARMUP_TEXTS = [f"Warm-up sentence {i}: the quick brown fox jumps over the lazy dog." for i in range(64)]


@flow(name="bench-warmup")
def _warmup_flow() -> int:
    return 1


def start_prefect() -> float:
    """Run a trivial flow so the temporary Prefect server is up before anything is timed; returns its seconds."""
    start = time.perf_counter()
    _warmup_flow()
    return time.perf_counter() - start


def load_model(settings: Settings) -> tuple[Any, float, float]:
    """Load the embedder as the flow does (it is cached per process) and run one warm-up batch.

    Returns (embedder, load seconds, warm-up seconds); the flow's own `load_models` stage then
    only finds the cached model.
    """
    start = time.perf_counter()
    embedder = load_embedder_for(settings)
    loaded = time.perf_counter()
    embedder.embed(WARMUP_TEXTS)
    return embedder, loaded - start, time.perf_counter() - loaded


class CpuMeter:
    """Wall time and who used the CPU meanwhile, in CPU-seconds.

    `self` is this process; `workers` its children that exited (the parse workers); `server` its
    children still alive (the temporary Prefect server); `others` every other process on the
    machine, i.e. contention that slows the measurement down.
    """

    def __enter__(self) -> "CpuMeter":
        self._start = self._snapshot()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall_s = time.perf_counter() - self._t0
        end = self._snapshot()
        live = sum(v - self._start["live"].get(pid, 0.0) for pid, v in end["live"].items())
        own = {"self": end["self"] - self._start["self"], "workers": end["workers"] - self._start["workers"], "server": live}
        others = end["busy"] - self._start["busy"] - sum(own.values())
        self.cpu_s = {k: round(v, 1) for k, v in {**own, "others": max(0.0, others)}.items()}

    @staticmethod
    def _snapshot() -> dict[str, Any]:
        me, sys_cpu = resource.getrusage(resource.RUSAGE_SELF), psutil.cpu_times()
        workers = resource.getrusage(resource.RUSAGE_CHILDREN)
        live = {}
        for child in psutil.Process().children(recursive=True):
            try:
                t = child.cpu_times()
                live[child.pid] = t.user + t.system
            except psutil.Error:
                continue
        return {
            "self": me.ru_utime + me.ru_stime,
            "workers": workers.ru_utime + workers.ru_stime,
            "live": live,
            # Machine-wide busy CPU; guest time is already inside user time, steal was never ours.
            "busy": sum(sys_cpu) - sum(getattr(sys_cpu, f, 0.0) for f in ("idle", "iowait", "steal", "guest", "guest_nice")),
        }


def peak_rss_mb() -> dict[str, float]:
    """`ru_maxrss` so far of this process and of its largest terminated child.

    On Linux a child's `ru_maxrss` starts at its parent's RSS when it is forked before `exec`, so
    the children figure is about this process's size when the parse workers started, not theirs:
    `ChildRssSampler` measures the workers themselves.
    """
    return {
        "self": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "children": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
    }


class ChildRssSampler:
    """Peak RSS of child processes, sampled every `interval` s: parse workers apart from the rest."""

    def __init__(self, interval: float = 0.2):
        self.interval = interval
        self.peak_mb = {"parse_workers": 0.0, "other_children": 0.0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.wait(self.interval):
            for child in me.children(recursive=True):
                try:
                    kind = "parse_workers" if "_worker_main" in " ".join(child.cmdline()) else "other_children"
                    self.peak_mb[kind] = max(self.peak_mb[kind], round(child.memory_info().rss / 2**20, 1))
                except psutil.Error:
                    continue  # exited between listing and reading

    def __enter__(self) -> "ChildRssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class FlowRun:
    wall_s: float
    cpu_s: dict[str, float]  # see CpuMeter
    manifest: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        counts, stages = self.manifest["counts"], self.manifest["timings"]
        parsed = counts["added"] + counts["updated"] + counts["quarantined"]
        return {
            "wall_s": round(self.wall_s, 3),
            "cpu_s": self.cpu_s,
            "files_parsed": parsed,
            "documents_per_s": round(parsed / self.wall_s, 2),
            "chunks_embedded_per_s": round(counts["chunks_embedded"] / self.wall_s, 2),
            "chunks_embedded_per_s_excl_load_models": round(
                counts["chunks_embedded"] / (self.wall_s - stages.get("load_models", 0.0)), 2
            ),
            "stages_s": stages,
            "stages_sum_s": round(sum(stages.values()), 3),
            "counts": counts,
            "quarantine": self.manifest["quarantine"],
            "run_id": self.manifest["run_id"],
        }


def run_flow(source: Path) -> FlowRun:
    """Call the real `ingest` flow once and time it from outside."""
    with CpuMeter() as meter:
        manifest = ingest(source=str(source))
    return FlowRun(wall_s=meter.wall_s, cpu_s=meter.cpu_s, manifest=manifest)


def embedded_texts(source: Path, embedder: Any, settings: Settings) -> list[str]:
    """The exact texts the cold run embedded, in the order it embedded them.

    The chunk table keeps the chunk text and heading path but not the (possibly truncated) context
    prefix, so the texts are rebuilt by re-chunking the same files with the pipeline's own functions
    (`discover` → `parsed_documents` → `Chunk.embed_text`, unique by embed hash as `stored_vectors`
    dedups them) and then checked against the `embed_hash` column of the stored table.
    """
    files, _ = discover(source.resolve(), settings.ingest.include, settings.ingest.exclude)
    texts: dict[str, str] = {}
    for start in range(0, len(files), PARSE_GROUP):
        group = [(f, "") for f in files[start : start + PARSE_GROUP]]
        for result in steps.parsed_documents(group, embedder, settings):
            for h, chunk in zip(steps.embed_hashes(embedder, result.chunks), result.chunks):
                texts.setdefault(h, chunk.embed_text)
    table = ChunkStore(settings.store_uri, settings.store.table, storage_options=settings.store_options()).chunks
    stored = set(table.to_arrow().column("embed_hash").to_pylist())
    if stored != set(texts):
        raise RuntimeError(
            f"re-chunking gave {len(texts)} texts but the table holds {len(stored)} embed hashes "
            f"({len(stored - set(texts))} not rebuilt): the raw encode would not time the same texts"
        )
    return list(texts.values())


def time_encode(embedder: Any, texts: list[str], repeats: int) -> list[CpuMeter]:
    """`SentenceTransformer.encode` over all `texts` with the pipeline's batch size, `repeats` times."""
    runs = []
    for _ in range(repeats):
        with CpuMeter() as meter:
            embedder.model.encode(
                texts,
                batch_size=embedder.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        runs.append(meter)
    return runs


def raw_encode(source: Path, embedder: Any, settings: Settings, repeats: int) -> dict[str, Any]:
    """Rebuild the cold run's texts and time the bare model on them (the model is already warm)."""
    texts = embedded_texts(source, embedder, settings)
    runs = time_encode(embedder, texts, repeats)
    median = statistics.median(r.wall_s for r in runs)
    middle = sorted(runs, key=lambda r: r.wall_s)[len(runs) // 2]
    return {
        "texts": len(texts),
        "verified_against_embed_hash": True,
        "batch_size": embedder.batch_size,
        "runs_s": [round(r.wall_s, 3) for r in runs],
        "cpu_s": middle.cpu_s,  # of the middle run
        "median_s": round(median, 3),
        "chunks_per_s": round(len(texts) / median, 2),
    }

