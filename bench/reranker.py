"""Reranker benchmark: fusion order vs a cross-encoder ragtune fine-tunes on each corpus's own chunks.

    .venv/bin/python bench/reranker.py [--rows 300] [--train-seconds 540] [--queries 300] [--demo-depths 20] [--quick]

For each corpus (the demo corpus; HaluEval QA dev passages, pooled as in bench/retrieval.py) a
cross-encoder is trained from the packaged MiniLM with `tasks.rerank_train.train_reranker` on
queries synthesised from that corpus's chunks only (never the evaluation questions), then compared
with fusion order on the evaluation questions. Candidates are the default pipeline's: dense top-50 and
BM25 top-50, weighted fusion 0.4. Methods:
- `none`: fusion order (the current default);
- `cross-encoder@N`: the fine-tuned model reorders the top N fused candidates (the rest keep fusion order);
- `blend@N`: min-max normalised cross-encoder and fusion scores averaged (`tasks.retrieve.weighted`, 0.5),
  weight fixed before measuring.
Demo: N = 20 (and 50 with `--demo-depths 20,50`; doc-level gold, 84 answerable questions). HaluEval:
N = 20 on the first `--rows` dev rows (the corpus stays all 4,979 passages, as in bench/retrieval.py).
Rerank latency per query (p50/p95, one torch thread) for 20 and 50 candidates; a depth not scored for
quality is timed on the first 10 questions. On 1 thread a 20-candidate rerank takes seconds, which is
why the defaults are small (300 HaluEval rows, 300 training queries): the whole run is ~25 min. Results: bench/results/reranker-latest.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import bench_home, write_results  # noqa: E402
from bench.retrieval import DATA, DEPTH, RESULTS, halueval_rows, ingest, percentiles, quality, write_corpus  # noqa: E402

DENSE_WEIGHT = 0.4  # the default fusion
BLEND_WEIGHT = 0.5  # cross-encoder share in the blend, fixed before measuring
LATENCY_QUERIES = 10  # depths not scored for quality are timed on this many questions


def fused_candidates(retriever, questions: list[str]) -> list[list]:
    """The default pipeline's fused candidates per question (dense top-50 + BM25 top-50, weighted 0.4)."""
    from tasks.retrieve import SearchFilters, fts_query, fuse

    where = SearchFilters().where()
    vectors = retriever.embedder.embed(questions)
    return [
        fuse(retriever.dense(v, where, DEPTH), retriever.lexical(fts_query(q), where, DEPTH), "weighted", dense_weight=DENSE_WEIGHT)
        for q, v in zip(questions, vectors)
    ]


def timed_scores(model, question: str, hits: list) -> tuple[np.ndarray, float]:
    """Cross-encoder scores of (question, hit text) as `CrossEncoderReranker` computes them, and the seconds taken."""
    start = time.perf_counter()
    scores = model.predict([(question, h.text) for h in hits], batch_size=32, show_progress_bar=False)
    return np.asarray(scores, dtype=np.float64), time.perf_counter() - start


def reranked(hits: list, scores: np.ndarray, n: int) -> dict[str, list[str]]:
    """Doc-id rankings (top 10) for the cross-encoder alone and the blend, over the first `n` candidates."""
    from tasks.retrieve import weighted

    head, tail = hits[:n], hits[n:]
    ce = [head[i] for i in np.argsort(-scores[:n], kind="stable")]
    mixed = weighted({h.chunk_id: float(s) for h, s in zip(head, scores[:n])}, {h.chunk_id: h.score for h in head}, BLEND_WEIGHT)
    blend = sorted(head, key=lambda h: (-mixed[h.chunk_id], h.chunk_id))
    return {
        f"cross-encoder@{n}": [h.doc_id for h in (ce + tail)[:10]],
        f"blend@{n}": [h.doc_id for h in (blend + tail)[:10]],
    }


def evaluate(model, questions: list[str], candidates: list[list], gold: list[set[str]], depths: tuple[int, ...], latency_depths: tuple[int, ...]) -> dict:
    """Quality of fusion order vs the reranker at each depth, and rerank latency at `latency_depths`."""
    deepest = max(depths)
    ranked: dict[str, list[list[str]]] = {"none (fusion order)": []}
    seconds: dict[int, list[float]] = {n: [] for n in latency_depths}
    for i, (q, hits) in enumerate(zip(questions, candidates)):
        scores, took = timed_scores(model, q, hits[:deepest])
        if deepest in seconds:
            seconds[deepest].append(took)
        ranked["none (fusion order)"].append([h.doc_id for h in hits[:10]])
        for n in depths:
            for name, ranking in reranked(hits, scores, n).items():
                ranked.setdefault(name, []).append(ranking)
        for n in latency_depths:  # depths not scored above: timed on the first questions only
            if n != deepest and i < LATENCY_QUERIES:
                seconds[n].append(timed_scores(model, q, hits[:n])[1])
    return {
        "metrics": quality(ranked, gold),
        "rerank_latency": {f"{n} candidates": {**percentiles(s), "queries": len(s)} for n, s in seconds.items()},
    }


def markdown(result: dict) -> str:
    lines = [f"# Reranker benchmark ({result['finished_at']})", "", f"Torch threads: {result['machine']['threads']}; total {result['seconds']} s.", ""]
    for name, block in result["corpora"].items():
        t = block["training"]
        lines += [
            f"## {name}: {block['queries']} queries, {block['corpus']}",
            "",
            f"Reranker trained on {t['train_groups']} synthetic queries from {t['chunks']} chunks "
            f"({', '.join(f'{k} {v}' for k, v in sorted(t['queries'].items()))}; "
            f"{t['settings']['hard']} hard + {t['settings']['random_negatives']} random negatives each), "
            f"{t['training']['steps']} steps in {t['training']['seconds']} s "
            f"(mining {t['seconds']['mine']} s); held-out synthetic positive MRR "
            f"{t['held_out_positive_mrr']['before']} → {t['held_out_positive_mrr']['after']}.",
            "",
            "| method | recall@1 | recall@5 | recall@10 | MRR | nDCG@10 |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for method, m in block["metrics"].items():
            lines.append(f"| {method} | {m['recall@1']:.3f} | {m['recall@5']:.3f} | {m['recall@10']:.3f} | {m['mrr']:.3f} | {m['ndcg@10']:.3f} |")
        lines += ["", "| rerank latency | p50 ms | p95 ms | queries |", "|---|---:|---:|---:|"]
        for depth, l in block["rerank_latency"].items():
            lines.append(f"| {depth} | {l['p50_ms']:.0f} | {l['p95_ms']:.0f} | {l['queries']} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=300, help="HaluEval dev rows to evaluate (≤ 5000)")
    parser.add_argument("--train-seconds", type=float, default=540.0, help="training time cap per corpus")
    parser.add_argument("--queries", type=int, default=300, help="synthetic training queries per corpus (sized to fit the cap on 1 thread)")
    parser.add_argument("--demo-depths", default="20", help="comma-separated candidate depths scored for demo quality (20,50 doubles the time)")
    parser.add_argument("--quick", action="store_true", help="50 rows, 40 queries, 30 s training: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.queries, args.train_seconds = 50, 40, 30.0
    os.environ["RAGTUNE_TORCH_THREADS"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"
    bench_home(DATA / "home-retrieval", 1)  # the tables bench/retrieval.py ingests; ingestion below is incremental
    from prefect.testing.utilities import prefect_test_harness

    from tasks.config import load_settings
    from tasks.models import set_threads
    from tasks.rerank import make_reranker
    from tasks.rerank_train import train_reranker
    from tasks.resources import open_retriever

    set_threads(1)
    started = time.perf_counter()
    result: dict = {"machine": {"nproc": os.cpu_count(), "python": platform.python_version(), "threads": 1}, "corpora": {}}
    rows = halueval_rows(5000)
    gold_ids = write_corpus(rows, DATA / "halueval-corpus")  # all dev passages: the same corpus as bench/retrieval.py
    with prefect_test_harness(server_startup_timeout=120):
        ingest(DATA / "halueval-corpus", "halueval")
        ingest(REPO / "demo" / "corpus", "demo")
    settings = load_settings()

    demo_depths = tuple(int(d) for d in args.demo_depths.split(","))
    demo_rows = [json.loads(line) for line in (REPO / "demo" / "eval.jsonl").read_text().splitlines() if line.strip()]
    demo_rows = [r for r in demo_rows if r["answerable"]]
    sets = {
        "demo eval (answerable, doc-level)": ("demo", [r["question"] for r in demo_rows], [set(r["gold_docs"]) for r in demo_rows], demo_depths, "demo corpus"),
        "HaluEval QA dev": ("halueval", [r["question"] for r in rows[: args.rows]], [{g} for g in gold_ids[: args.rows]], (20,), f"{len(set(gold_ids))} passages"),
    }
    for name, (table, questions, gold, depths, corpus) in sets.items():
        retriever = open_retriever(settings, table)
        out_dir = settings.home / "rerankers" / table
        print(f"[{name}] training on synthetic queries from {table!r} ...", flush=True)
        training = train_reranker(retriever, out_dir, queries=args.queries, max_seconds=args.train_seconds, threads=1)
        training.pop("examples")
        reranker = make_reranker(training["reranker"])  # the path config would load
        print(f"[{name}] evaluating {len(questions)} questions ...", flush=True)
        candidates = fused_candidates(retriever, questions)
        block = evaluate(reranker.model, questions, candidates, gold, depths, (20, 50))
        result["corpora"][name] = {"queries": len(questions), "corpus": corpus, "training": training, **block}
        print(json.dumps(block["metrics"], indent=1), flush=True)
    result["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    result["seconds"] = round(time.perf_counter() - started, 1)
    # A smoke run does not replace the published results.
    write_results("reranker", result, markdown(result), folder=settings.home / "bench" if args.quick else RESULTS)
    print(markdown(result))


if __name__ == "__main__":
    main()
