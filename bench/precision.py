"""Inference precision: float32 (the default) vs bfloat16, per arena arm, in one run.

    .venv/bin/python bench/precision.py [--questions 24] [--batch 16] [--threads 2]

Each arm answers the same test-split questions of demo/eval.jsonl (the arena's home, ingested as in
bench/arena.py, measured by its `measure`) at one batch size, once per precision: questions per minute, the share of answers
that are identical, and accuracy on the answerable questions (`tasks.metrics.is_correct`), so the
speed is weighed against what it does to the answers. Results: bench/results/precision-latest.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.common import DATA, bench_home, write_results  # noqa: E402

DTYPES = ("float32", "bfloat16")


def markdown(result: dict) -> str:
    lines = [
        f"# Inference precision ({result['finished_at']})",
        "",
        f"`bench/precision.py` — {result['questions']} test questions of demo/eval.jsonl per arm "
        f"({result['answerable']} answerable), batch {result['batch']}, {result['threads']} torch threads, packaged SmolLM2.",
        "",
        "| arm | float32 q/min | bfloat16 q/min | speed-up | same answers | accuracy float32 | accuracy bfloat16 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for arm, r in result["arms"].items():
        f, b = r["float32"], r["bfloat16"]
        lines.append(f"| {arm} | {f['questions_per_min']:.1f} | {b['questions_per_min']:.1f} | **{r['speedup']:.2f}x** | "
                     f"{r['same_answers']:.0%} | {f['accuracy']:.3f} | {b['accuracy']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=24)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--arms", default="base,rag,lora,hybrid")
    args = parser.parse_args()
    home = bench_home(DATA / "home-arena", args.threads)
    from prefect.testing.utilities import prefect_test_harness

    from bench.arena import fresh_adapter, measure
    from flows.ingest import ingest
    from tasks.config import load_settings

    started = time.perf_counter()
    with prefect_test_harness(server_startup_timeout=120):
        ingest(str(REPO / "demo" / "corpus"))
    rows = [json.loads(line) for line in (REPO / "demo" / "eval.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r["split"] == "test"][: args.questions]
    adapter = fresh_adapter(load_settings(), home / "untrained-adapter")
    result: dict = {"questions": len(rows), "answerable": sum(bool(r["answerable"]) for r in rows), "batch": args.batch,
                    "threads": args.threads, "arms": {}}
    for arm in args.arms.split(","):
        per = {}
        for dtype in DTYPES:
            os.environ["RAGTUNE_GENERATOR__DTYPE"] = dtype
            got = measure(load_settings(), arm, rows, args.batch, adapter)
            per[dtype] = {k: got[k] for k in ("questions_per_min", "accuracy", "answers")}
        same = sum(a == b for a, b in zip(per["float32"].pop("answers"), per["bfloat16"].pop("answers"))) / len(rows)
        speedup = per["bfloat16"]["questions_per_min"] / per["float32"]["questions_per_min"]
        result["arms"][arm] = {**per, "speedup": round(speedup, 2), "same_answers": round(same, 3)}
        print(arm, result["arms"][arm], flush=True)
    result["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    result["seconds"] = round(time.perf_counter() - started, 1)
    md = markdown(result)
    write_results("precision", result, md)
    print(md)


if __name__ == "__main__":
    main()
