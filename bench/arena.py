"""Evaluation throughput: questions per minute per arena arm, how it scales with batch size, and the
batched vs one-at-a-time generation ratio (goal >= 3x).

    .venv/bin/python bench/arena.py [--questions 24] [--batch-sizes 1,4,8,16] [--threads 2]
    .venv/bin/python bench/arena.py --quick          # 8 questions, batch sizes 1 and 8
    (float32 vs bfloat16 inference: bench/precision.py)

The demo corpus is ingested into a private home (bench/data/home-arena) with the packaged models.
Each arm answers the same test-split questions of demo/eval.jsonl through the production path
(`tasks.resources.make_answerer` + `tasks.arena.run_arm`): base (closed-book), rag, lora and hybrid.
The lora/hybrid arms load a freshly initialised LoRA adapter (r=8 on q/k/v/o, B = 0): the answers
equal base's, the compute is a real adapter's. Throughput = questions / wall time of the arm after
a warm-up batch; answers of batch 1 and batch N are compared for equality (greedy decoding).

Two more numbers per arm explain the ratio:
- `padded`: the largest batch with the previous engine (the whole batch prefilled as one padded
  batch: `prefill_tokens` unlimited), measured in the same run;
- `prefill floor`: seconds per question of prefilling each prompt alone (one forward pass, no
  decoding). Prefill is compute-bound, so batching cannot make it cheaper: one-at-a-time time ÷ this
  floor is the most any batch size could gain, however well the decoding is batched.
Results: bench/results/arena-latest.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.common import DATA, RESULTS, bench_home, write_results  # noqa: E402

ARMS = {"base": (False, False), "rag": (True, False), "lora": (False, True), "hybrid": (True, True)}


def fresh_adapter(settings, folder: Path) -> Path:
    """A LoRA adapter as the recipe would save it, untrained (B = 0)."""
    from peft import LoraConfig, get_peft_model

    from tasks.models import load_generator

    if (folder / "adapter_config.json").is_file():
        return folder
    base, _ = load_generator(settings.generator.model, settings.models_dir, threads=settings.threads)
    t = settings.training
    model = get_peft_model(base, LoraConfig(r=t.lora_r, lora_alpha=t.lora_alpha, target_modules=t.target_modules, task_type="CAUSAL_LM"))
    model.save_pretrained(folder)
    model.unload()  # give the cached base model back its plain layers
    return folder


def _answerer(settings, arm: str, adapter: Path):
    from tasks.resources import make_answerer

    retrieval, with_adapter = ARMS[arm]
    return make_answerer(settings, None, retrieval=retrieval, adapter=adapter if with_adapter else None)


def measure(settings, arm: str, rows: list[dict], batch: int, adapter: Path, prefill_tokens: int | None = None) -> dict:
    """Throughput of one arm at one batch size after a warm-up batch, its answers, and accuracy on the answerable."""
    from tasks.arena import ArmSpec, run_arm
    from tasks.generate import PREFILL_TOKENS
    from tasks.metrics import ScoringRules, is_correct
    from tasks.resources import search_filters

    retrieval = ARMS[arm][0]
    answerer = _answerer(settings, arm, adapter)
    answerer.generator.batch_size = batch
    answerer.generator.prefill_tokens = prefill_tokens or PREFILL_TOKENS
    spec = ArmSpec(arm, arm, retrieval)
    run_arm(spec, rows[:batch], answerer, search_filters(settings), batch)  # warm-up
    started = time.perf_counter()
    run = run_arm(spec, rows, answerer, search_filters(settings), batch)
    wall = time.perf_counter() - started
    answerable = [r for r in run.results if r.answerable]
    return {
        "questions": len(rows),
        "wall_s": round(wall, 2),
        "questions_per_min": round(60 * len(rows) / wall, 2),
        "cpu_s_per_question": round(sum(r.cpu_seconds or 0 for r in run.results) / len(rows), 3),
        "accuracy": round(sum(is_correct(r, ScoringRules()) for r in answerable) / max(1, len(answerable)), 3),
        "answers": [a.draft or a.answer for a in run.answers],
    }


def prefill_floor(settings, arm: str, rows: list[dict], adapter: Path) -> float:
    """Seconds per question to prefill each prompt alone: the compute no batch size removes."""
    import torch

    from tasks.generate import base_messages, rag_messages
    from tasks.resources import search_filters

    answerer = _answerer(settings, arm, adapter)
    g, questions = answerer.generator, [r["question"] for r in rows]
    if answerer.retriever is None:
        conversations = [base_messages(q) for q in questions]
    else:
        found = answerer.retriever.search_many(questions, max(answerer.k * 4, answerer.retriever.candidates), search_filters(settings))
        conversations = [rag_messages(q, answerer._retrieve(q, r).sources) for q, r in zip(questions, found)]
    prompts = [g.tokenizer(g.prompt(c), add_special_tokens=False, return_tensors="pt")["input_ids"] for c in conversations]
    with torch.inference_mode():
        g.model(input_ids=prompts[0], logits_to_keep=1)  # warm-up
        started = time.perf_counter()
        for ids in prompts:
            g.model(input_ids=ids, logits_to_keep=1)
    return (time.perf_counter() - started) / len(prompts)


def markdown(result: dict) -> str:
    sizes = result["batch_sizes"]
    lines = [
        f"# Arena throughput ({result['finished_at']})",
        "",
        f"`bench/arena.py` — {result['questions']} test questions of demo/eval.jsonl per arm, {result['threads']} torch threads, "
        f"packaged SmolLM2 ({result.get('dtype', 'float32')}, greedy, max {result['max_new_tokens']} new tokens), k={result['k']} sources.",
        "",
        "| arm | " + " | ".join(f"batch {b} q/min" for b in sizes)
        + f" | batch {sizes[-1]} ÷ batch 1 | same answers | batch {sizes[-1]}, padded prefill | prefill floor s/q | ceiling |",
        "|---|" + "---:|" * (len(sizes) + 5),
    ]
    for arm, r in result["arms"].items():
        cells = [f"{r[str(b)]['questions_per_min']:.1f}" for b in sizes]
        lines.append(
            f"| {arm} | " + " | ".join(cells) + f" | **{r['ratio']:.2f}x** | {r['same_answers']:.0%} | "
            f"{r['padded']['questions_per_min']:.1f} ({r['padded_ratio']:.2f}x) | {r['prefill_floor_s']:.2f} | {r['ceiling']:.2f}x |"
        )
    lines += [
        "",
        f"Batched ÷ one-at-a-time (batch {result['best_batch']}), median over arms: **{result['median_ratio']:.2f}x** (goal ≥ 3x).",
        "",
        "`padded prefill`: the same batch with the whole batch prefilled as one padded batch (the engine before split "
        "prefill), in q/min and ÷ batch 1. `prefill floor`: seconds per question to prefill each prompt alone; "
        "`ceiling` = batch-1 seconds per question ÷ that floor, the most any batching of the decoding could gain.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=24)
    parser.add_argument("--batch-sizes", default="1,4,8,16")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--arms", default="base,rag,lora,hybrid")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.questions, args.batch_sizes = 8, "1,8"
    home = bench_home(DATA / "home-arena", args.threads)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    from prefect.testing.utilities import prefect_test_harness

    from flows.ingest import ingest
    from tasks.config import load_settings

    started = time.perf_counter()
    with prefect_test_harness(server_startup_timeout=120):
        ingest(str(REPO / "demo" / "corpus"))
    settings = load_settings()
    rows = [json.loads(line) for line in (REPO / "demo" / "eval.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r["split"] == "test"][: args.questions]
    adapter = fresh_adapter(settings, home / "untrained-adapter")
    result: dict = {"questions": len(rows), "batch_sizes": sizes, "threads": args.threads, "arms": {}, "dtype": settings.generator.dtype,
                    "max_new_tokens": settings.generator.max_new_tokens, "k": settings.retrieval.k}
    for arm in args.arms.split(","):
        per = {str(b): measure(settings, arm, rows, b, adapter) for b in sizes}
        one, best = per[str(sizes[0])], per[str(sizes[-1])]
        padded = measure(settings, arm, rows, sizes[-1], adapter, prefill_tokens=10**9)
        same = sum(a == b for a, b in zip(one["answers"], best["answers"])) / len(rows)
        for r in (*per.values(), padded):
            r.pop("answers")
        floor = prefill_floor(settings, arm, rows, adapter)
        result["arms"][arm] = {
            **per, "ratio": round(best["questions_per_min"] / one["questions_per_min"], 2), "same_answers": same,
            "padded": padded, "padded_ratio": round(padded["questions_per_min"] / one["questions_per_min"], 2),
            "prefill_floor_s": round(floor, 3), "ceiling": round(one["wall_s"] / len(rows) / floor, 2),
        }
        print(arm, {b: r["questions_per_min"] for b, r in per.items()}, "padded", padded["questions_per_min"],
              "floor", round(floor, 3), flush=True)
    ratios = sorted(r["ratio"] for r in result["arms"].values())
    result["median_ratio"] = ratios[len(ratios) // 2] if len(ratios) % 2 else sum(ratios[len(ratios) // 2 - 1 : len(ratios) // 2 + 1]) / 2
    result["best_batch"] = sizes[-1]
    result["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    result["seconds"] = round(time.perf_counter() - started, 1)
    md = markdown(result)
    write_results("arena", result, md, folder=home / "bench" if args.quick else RESULTS)  # a smoke run keeps the published results
    print(md)


if __name__ == "__main__":
    main()
