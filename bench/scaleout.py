"""Scale-out: the `ingest` flow on thread vs Dask (1 and 2 single-threaded workers) vs Ray (2 CPUs).

    .venv/bin/python bench/scaleout.py [--max-files 40] [--repeats 1]

One process, one temporary Prefect server, the same Debian subset (bench/corpus.py: `apt-get download`
+ `dpkg -x`, HTML and text, no PDF) ingested cold into a fresh home per engine with the packaged MiniLM.
Measured per engine: chunks/s over the whole flow (engine start included) and over parse+embed only,
the engine's start-up (start, then one trivial task round-trip), and, once, the single writer's commit
time for 10k chunks (`ChunkStore.replace_documents`, one `merge_insert`). Results:
`bench/results/scaleout-latest.{json,md}`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import DATA, bench_home, write_results  # noqa: E402
from bench.corpus import build  # noqa: E402

ENGINES = [("thread", "thread", 1), ("dask, 1 worker", "dask", 1), ("dask, 2 workers", "dask", 2), ("ray, 2 CPUs", "ray", 2)]


def _noop() -> int:
    return 1


def engine_startup(runner: str, workers: int) -> float:
    """Seconds to start the engine and get one trivial task back (workers import Prefect first)."""
    from prefect import task

    from flows import runners
    from tasks.config import load_settings

    settings = load_settings(orchestration={"task_runner": runner, "workers": workers})
    start = time.perf_counter()
    with runners.engine(settings) as engine:  # as the flow does: workers share this process's Prefect API
        engine.submit(task(_noop, name="startup-probe"), {}).result()
    return time.perf_counter() - start


def ingest_once(root: Path, home: Path, runner: str, workers: int) -> dict[str, Any]:
    from flows.ingest import ingest

    os.environ["RAGTUNE_HOME"] = str(home)
    os.environ["RAGTUNE_ORCHESTRATION__TASK_RUNNER"] = runner
    os.environ["RAGTUNE_ORCHESTRATION__WORKERS"] = str(workers)
    from bench.ingest import CpuMeter

    with CpuMeter() as cpu:
        start = time.perf_counter()
        m = ingest(str(root))
        wall = time.perf_counter() - start
    work = m["timings"].get("parse_chunk", 0) + m["timings"].get("embed", 0)
    n = m["counts"]["chunks_embedded"]
    return {"wall_s": round(wall, 2), "parse_embed_s": round(work, 2), "chunks": n, "timings": m["timings"],
            "chunks_per_s": round(n / wall, 2), "chunks_per_s_parse_embed": round(n / work, 2) if work else None,
            # CPU-s by whom; `others` is contention from other processes (Ray's own processes may land there too).
            "cpu_s": cpu.cpu_s}


def commit_10k(home: Path) -> dict[str, float]:
    """The single writer's cost: one `replace_documents` commit of 10,000 chunks (384-d), into an empty and a 10k table."""
    import numpy as np
    import pyarrow as pa

    from tasks.store import ChunkStore

    source = ChunkStore(home, "chunks").chunks.to_arrow()
    reps = -(-10_000 // source.num_rows)
    rows = pa.concat_tables([source] * reps).slice(0, 10_000)
    ids = pa.array([f"bench-{i:06d}" for i in range(rows.num_rows)])
    docs = pa.array([f"doc-{i // 20:04d}" for i in range(rows.num_rows)])
    rows = rows.set_column(rows.schema.get_field_index("chunk_id"), "chunk_id", ids)
    rows = rows.set_column(rows.schema.get_field_index("doc_id"), "doc_id", docs)
    store = ChunkStore(home.parent / "commit-bench", "chunks")
    root = rows.column("source_root")[0].as_py()
    doc_ids = sorted(set(docs.to_pylist()))
    out = {}
    for label in ("into_empty_table_s", "replacing_the_same_10k_s"):
        start = time.perf_counter()
        store.replace_documents(rows, root, doc_ids)
        out[label] = round(time.perf_counter() - start, 2)
    assert store.chunks.count_rows() == 10_000 and np.isfinite(out["into_empty_table_s"])
    return out


def to_markdown(r: dict[str, Any]) -> str:
    lines = [
        f"# Scale-out ({r['timestamp']}, {r['corpus']['files']} files, {r['runs'][0]['chunks']} chunks, packaged MiniLM, 2 cores, "
        f"median of {r['repeats']} cold runs per engine)",
        "",
        "| engine | start-up s | flow wall s | chunks/s (flow) | parse+embed s | chunks/s (parse+embed) | CPU-s of other processes |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in r["runs"]:
        lines.append(f"| {row['engine']} | {row['startup_s']} | {row['wall_s']} | {row['chunks_per_s']} | {row['parse_embed_s']} | {row['chunks_per_s_parse_embed']} | {row['cpu_s']['others']} |")
    c = r["commit_10k_chunks"]
    lines += ["", f"Single writer, one commit of 10k chunks: {c['into_empty_table_s']} s into an empty table, "
              f"{c['replacing_the_same_10k_s']} s replacing them (merge_insert + delete of stale ids).", ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--max-files", type=int, default=40, help="HTML/text files from the Debian subset (default 40)")
    p.add_argument("--repeats", type=int, default=1, help="cold runs per engine; medians reported")
    args = p.parse_args()
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    corpus = build(DATA, args.max_files, with_pdf=False)
    base = DATA / f"scaleout-{stamp}"
    bench_home(base / "home", threads=2)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # else Ray writes ~/.ray/auth_token
    from bench.ingest import start_prefect

    from tasks.models import forget_loaded_models

    prefect_s = start_prefect()  # the temporary Prefect server starts before anything is timed
    runs = []
    for label, runner, workers in ENGINES:
        startups = [0.0 if runner == "thread" else engine_startup(runner, workers) for _ in range(args.repeats)]
        tries = []
        for i in range(args.repeats):
            # Every run is cold: engine workers are new processes, so the in-flow embedder is dropped too.
            forget_loaded_models()
            tries.append(ingest_once(corpus.root, base / f"{runner}-{workers}-{i}", runner, workers))
        middle = sorted(tries, key=lambda t: t["wall_s"])[len(tries) // 2]  # its stage timings are reported
        best = {k: statistics.median(t[k] for t in tries) for k in ("wall_s", "parse_embed_s", "chunks_per_s", "chunks_per_s_parse_embed")}
        runs.append({"engine": label, "startup_s": round(statistics.median(startups), 2), **middle, **best,
                     "tries": [{k: t[k] for k in ("wall_s", "parse_embed_s", "chunks_per_s")} for t in tries]})
        print(runs[-1], flush=True)
    result = {
        "benchmark": "scaleout", "timestamp": stamp, "command": " ".join(["python", "bench/scaleout.py", *sys.argv[1:]]),
        "corpus": {k: v for k, v in corpus.describe().items() if k != "source_dir"}, "repeats": args.repeats,
        "torch_threads": {"thread": 2, "engine workers": 1}, "prefect_server_start_s": round(prefect_s, 2), "runs": runs,
        "commit_10k_chunks": commit_10k(base / "thread-1-0" / "lancedb"),
    }
    md = to_markdown(result)
    write_results("scaleout", result, md)
    print(md)


if __name__ == "__main__":
    main()
