"""Training throughput: the LoRA recipe (tasks/train.py) vs a naive HF Trainer baseline, packaged SmolLM2.

    .venv/bin/python bench/training.py [--threads 2] [--steps 6] [--warmup 1] [--batch-size 2] [--grad-accum 4]
                                       [--baseline-pad max_length|longest]
    .venv/bin/python bench/training.py --quick --threads 1      # smoke run: 3 steps of 2 examples

Both arms train the same LoRA (training settings' defaults: r=8 on q/k/v/o) on the same RAG-style chat
examples, with the same threads, micro-batch size, accumulation and number of examples (one epoch of
steps x batch_size x grad_accum rows):
- recipe: `tasks.train.train_lora` (answer-only loss, logits only where there is a label, dynamic padding,
  length-grouped micro-batches);
- baseline: `transformers.Trainer` with its defaults apart from batch size, accumulation and steps,
  every row padded to one fixed length, loss on every real token. The length is training.max_length
  (1,536; what a naive script pads to), or with `--baseline-pad longest` the longest row rounded up to 64.
Each arm runs in its own process, so its peak RSS (ru_maxrss) is its own. Throughput is real
(non-padding) tokens per second of optimizer-step wall time, the median over the steps after
`--warmup`; the aggregate over those steps is reported too.

Ceiling: float32 matmul FLOP/s is measured with torch at the same thread count on the model's own
projection shapes (1,024 rows), weighted as in one forward pass. Training costs about 6 x N FLOPs per
token (N = the parameters used as matmul weights, lm_head included): an upper-bound approximation, since
LoRA computes no weight gradients for the frozen weights, so ~4 x N is closer; attention's own FLOPs
are left out of both. Examples: the train-split questions of demo/eval.jsonl with chunks of the demo
corpus (parsed and chunked as ingestion does, default chunk settings) as sources, 1-5 per example, one
from a gold document 80 % of the time, packed into the generator's context budget and formatted by the
production prompt code (`tasks.generate`), answered like "£185 [1]." (or with the abstention when no
source has the answer).

Memory: autograd keeps ~2.5-3 MB of activations per token of a micro-batch on SmolLM2 (30 layers, no
activation checkpointing), so peak RSS follows micro-batch rows x row length. The bench therefore uses
micro-batches of 2 with 4 accumulation steps (the same 8 rows per optimizer step as the settings'
default 4 x 2): the baseline at 4 rows x 1,536 tokens would need ~20 GB.
A full run is estimated at about a quarter of an hour on 2 idle cores (mostly the baseline).
Results: bench/results/training-latest.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.common import write_results  # noqa: E402

DATA = REPO / "bench" / "data" / "training"
RESULTS = REPO / "bench" / "results"
PAD_MULTIPLE = 64
MATMUL_ROWS = 1024


# --- examples -----------------------------------------------------------------------------------------


def corpus_passages() -> list[dict[str, Any]]:
    """The demo corpus as ingestion cuts it: every file parsed and chunked with the default chunk settings."""
    from tasks.chunk import HFTokenizer, chunk_document
    from tasks.config import PACKAGED_EMBEDDER, ChunkSettings
    from tasks.models import load_tokenizer
    from tasks.parse import QuarantineError, parse_document

    tokenizer, c = HFTokenizer(load_tokenizer(PACKAGED_EMBEDDER)), ChunkSettings()
    root = REPO / "demo" / "corpus"
    passages = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        try:
            doc = parse_document(path)
        except QuarantineError:  # the demo corpus holds deliberately broken files too
            continue
        for chunk in chunk_document(doc, tokenizer, size=c.size, overlap=c.overlap, max_tokens=256, context_max_tokens=c.context_max_tokens):
            passages.append({"doc_id": str(path.relative_to(root)), "title": doc.title, "text": chunk.text,
                             "page": chunk.page, "heading_path": list(chunk.heading_path)})
    return passages


def rag_examples(n: int, tokenizer: Any, seed: int = 0) -> list[list[dict[str, str]]]:
    """`n` RAG chat conversations: system prompt, 1-5 sources + question, a short cited answer."""
    import numpy as np

    from tasks.config import GeneratorSettings
    from tasks.generate import ABSTAIN, pack_sources, rag_messages
    from tasks.retrieve import Hit

    rng = random.Random(seed)
    passages = corpus_passages()
    budget = GeneratorSettings().context_tokens
    questions = [json.loads(line) for line in (REPO / "demo" / "eval.jsonl").read_text().splitlines() if line.strip()]
    questions = [q for q in questions if q.get("split") == "train"]

    def hit(p: dict[str, str], i: int) -> Hit:
        return Hit(chunk_id=f"c{i}", doc_id=p["doc_id"], title=p["title"], text=p["text"], page=p["page"], heading_path=p["heading_path"],
                   source_path=p["doc_id"], format="markdown", groups=["*"], vector=np.zeros(1, dtype=np.float32))

    def count_tokens(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    examples = []
    for i in range(n):
        q = questions[i % len(questions)]
        chosen = rng.sample(range(len(passages)), rng.randint(1, 5))
        gold = [j for j, p in enumerate(passages) if p["doc_id"] in q["gold_docs"]]
        if gold and rng.random() < 0.8:
            chosen[rng.randrange(len(chosen))] = rng.choice(gold)
        sources = pack_sources([hit(passages[j], j) for j in chosen], count_tokens, budget)
        cited = [s.n for s in sources if s.hit.doc_id in q["gold_docs"]]
        answer = f"{q['answers'][0]} [{cited[0]}]." if q["answerable"] and cited else ABSTAIN
        examples.append(rag_messages(q["question"], sources) + [{"role": "assistant", "content": answer}])
    return examples


# --- arms (each in its own process) ---------------------------------------------------------------------


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _per_step(tokens: list[int], seconds: list[float], warmup: int) -> dict[str, Any]:
    tokens, seconds = tokens[warmup:], seconds[warmup:]
    return {
        "measured_steps": len(seconds),
        "tokens_per_s": statistics.median(t / s for t, s in zip(tokens, seconds)),
        "aggregate_tokens_per_s": sum(tokens) / sum(seconds),
        "step_s": statistics.median(seconds),
        "real_tokens_per_step": statistics.median(tokens),
    }


def recipe_arm(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    from tasks.config import PACKAGED_GENERATOR, TrainingSettings
    from tasks.train import train_lora

    examples = json.loads(Path(spec["examples"]).read_text())
    settings = TrainingSettings(**spec["settings"])
    work = Path(tempfile.mkdtemp(prefix="recipe-", dir=DATA))
    result = train_lora(PACKAGED_GENERATOR, examples, [], settings, work, Path(spec["models_dir"]), spec["threads"], max_steps=spec["steps"])
    shutil.rmtree(work, ignore_errors=True)
    out = _per_step([h["tokens"] for h in result.history], [h["step_s"] for h in result.history], spec["warmup"])
    return {**out, "steps": result.steps, "real_tokens": result.real_tokens, "answer_tokens": result.answer_tokens,
            "train_loss_first": result.history[0]["train_loss"], "torch_threads": torch.get_num_threads(),
            "peak_rss_mb": round(_peak_rss_mb(), 1)}


def baseline_arm(spec: dict[str, Any]) -> dict[str, Any]:
    """HF Trainer, rows padded to one length, labels on every real token; timed by a callback."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainerCallback, TrainingArguments

    from tasks.config import PACKAGED_GENERATOR, TrainingSettings
    from tasks.models import resolve_generator, set_threads

    set_threads(spec["threads"])
    s = TrainingSettings(**spec["settings"])
    location, _ = resolve_generator(PACKAGED_GENERATOR, Path(spec["models_dir"]))
    tokenizer = AutoTokenizer.from_pretrained(location, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(location, dtype=torch.float32, local_files_only=True)
    model = get_peft_model(model, LoraConfig(r=s.lora_r, lora_alpha=s.lora_alpha, lora_dropout=s.lora_dropout,
                                             target_modules=list(s.target_modules), task_type="CAUSAL_LM"))
    examples = json.loads(Path(spec["examples"]).read_text())
    texts = [tokenizer.apply_chat_template(c, tokenize=False) for c in examples]
    enc = tokenizer(texts, padding="max_length", max_length=spec["pad_to"], add_special_tokens=False)
    labels = [[t if m else -100 for t, m in zip(ids, mask)] for ids, mask in zip(enc["input_ids"], enc["attention_mask"])]
    dataset = Dataset.from_dict({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels})

    steps: list[dict[str, float]] = []

    class Timed(Trainer):
        tokens = 0

        def training_step(self, model, inputs, *args, **kwargs):
            Timed.tokens += int(inputs["attention_mask"].sum())
            return super().training_step(model, inputs, *args, **kwargs)

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.began, self.tokens = time.perf_counter(), Timed.tokens

        def on_step_end(self, args, state, control, **kwargs):
            steps.append({"s": time.perf_counter() - self.began, "tokens": Timed.tokens - self.tokens})

    output_dir = Path(tempfile.mkdtemp(prefix="baseline-", dir=DATA))
    args = TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=s.batch_size, gradient_accumulation_steps=s.grad_accum, max_steps=spec["steps"],
        use_cpu=True, report_to="none", save_strategy="no", disable_tqdm=True,
    )
    Timed(model=model, args=args, train_dataset=dataset, callbacks=[StepTimer()]).train()
    shutil.rmtree(output_dir, ignore_errors=True)
    out = _per_step([x["tokens"] for x in steps], [x["s"] for x in steps], spec["warmup"])
    return {**out, "steps": len(steps), "real_tokens": sum(x["tokens"] for x in steps), "pad_to": spec["pad_to"],
            "torch_threads": torch.get_num_threads(), "peak_rss_mb": round(_peak_rss_mb(), 1)}


def matmul_arm(spec: dict[str, Any]) -> dict[str, Any]:
    """Float32 matmul FLOP/s on the model's projection shapes, and the per-token FLOPs they imply."""
    import torch

    from tasks.models import set_threads

    set_threads(spec["threads"])
    c = json.loads((Path(spec["location"]) / "config.json").read_text())
    d, inter, layers, vocab = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
    kv = c.get("head_dim", d // c["num_attention_heads"]) * c.get("num_key_value_heads", c["num_attention_heads"])
    shapes = {  # name: (in, out, uses per forward pass)
        "q_proj/o_proj": (d, d, 2 * layers), "k_proj/v_proj": (d, kv, 2 * layers),
        "gate_proj/up_proj": (d, inter, 2 * layers), "down_proj": (inter, d, layers), "lm_head": (d, vocab, 1),
    }
    per_shape, flops_total, time_total = {}, 0.0, 0.0
    for name, (k, n, uses) in shapes.items():
        x, w = torch.randn(MATMUL_ROWS, k), torch.randn(k, n)
        for _ in range(2):
            x @ w
        times = []
        for _ in range(spec["repeats"]):
            began = time.perf_counter()
            x @ w
            times.append(time.perf_counter() - began)
        t = statistics.median(times)
        flops = 2 * MATMUL_ROWS * k * n
        per_shape[name] = round(flops / t / 1e9, 1)
        flops_total += uses * flops
        time_total += uses * t
    matmul_params = sum(k * n * uses for k, n, uses in shapes.values())
    return {"rows": MATMUL_ROWS, "gflops_by_shape": per_shape, "gflops_model_mix": round(flops_total / time_total / 1e9, 1),
            "matmul_params": matmul_params, "torch_threads": torch.get_num_threads()}


ARMS = {"recipe": recipe_arm, "baseline": baseline_arm, "matmul": matmul_arm}


def run_arm(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    """One arm in a fresh process; also what the rest of the machine used meanwhile."""
    import psutil

    spec_path, out_path = DATA / f"spec-{name}.json", DATA / f"out-{name}.json"
    spec_path.write_text(json.dumps(spec))
    out_path.unlink(missing_ok=True)
    cpu_before, children_before, began = psutil.cpu_times(), resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    subprocess.run([sys.executable, __file__, "--arm", name, "--spec", str(spec_path), "--out", str(out_path)], check=True)
    wall = time.perf_counter() - began
    cpu_after, children_after = psutil.cpu_times(), resource.getrusage(resource.RUSAGE_CHILDREN)
    busy = sum(getattr(cpu_after, f) - getattr(cpu_before, f) for f in ("user", "system", "nice", "irq", "softirq"))
    ours = (children_after.ru_utime - children_before.ru_utime) + (children_after.ru_stime - children_before.ru_stime)
    result = json.loads(out_path.read_text())
    result["process_wall_s"] = round(wall, 1)
    result["others_cpu_share"] = round(max(0.0, busy - ours) / (wall * (os.cpu_count() or 1)), 3)
    return result


# --- report -------------------------------------------------------------------------------------------


def _percentile(values: list[int], q: float) -> int:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def markdown(r: dict[str, Any]) -> str:
    rec, base, mm, ex, ceil = r["recipe"], r["baseline"], r["matmul"], r["examples"], r["ceiling"]
    s = r["settings"]
    lines = [
        f"# Training throughput benchmark ({r['finished_at']})",
        "",
        f"`bench/training.py{' --quick' if r['quick'] else ''} --threads {r['threads']} --steps {r['steps']} "
        f"--batch-size {s['batch_size']} --grad-accum {s['grad_accum']} --baseline-pad {r['baseline_pad']}` — "
        f"{r['seconds']} s. Packaged SmolLM2-135M-Instruct (float32, CPU), LoRA r={s['lora_r']} on "
        f"{'/'.join(s['target_modules'])}, micro-batch {s['batch_size']} x accumulation {s['grad_accum']}, "
        f"{r['steps']} steps ({r['warmup']} warm-up), {r['threads']} torch thread(s).",
        "",
        f"Examples: the same {ex['count']} RAG chats for both arms (demo/eval.jsonl train questions, demo corpus chunks as "
        f"1-5 sources), one epoch; tokens per "
        f"row p10/p50/p90/max = {ex['p10']}/{ex['p50']}/{ex['p90']}/{ex['max']}, answer tokens (recipe labels) "
        f"{ex['answer_tokens']} of {ex['real_tokens']}.",
        "",
        "| arm | real tokens/s (median step) | aggregate | step s (median) | tokens computed (with padding) | peak RSS MB |",
        "|---|---:|---:|---:|---:|---:|",
        f"| recipe (`tasks/train.py`) | {rec['tokens_per_s']:.0f} | {rec['aggregate_tokens_per_s']:.0f} | "
        f"{rec['step_s']:.1f} | {ex['recipe_padded_tokens']} | {rec['peak_rss_mb']:.0f} |",
        f"| baseline (HF Trainer, padded to {base['pad_to']}) | {base['tokens_per_s']:.0f} | "
        f"{base['aggregate_tokens_per_s']:.0f} | {base['step_s']:.1f} | {ex['baseline_padded_tokens']} | {base['peak_rss_mb']:.0f} |",
        "",
        f"**Recipe / baseline: {r['ratio']:.2f}x** real tokens/s (median step; aggregate {r['ratio_aggregate']:.2f}x); "
        f"goal >= 3x: {'met' if r['ratio'] >= 3 else 'not met'}.",
        "",
        "## Ceiling",
        "",
        f"float32 matmul at {mm['torch_threads']} thread(s), {mm['rows']} rows: "
        + ", ".join(f"{k} {v}" for k, v in mm["gflops_by_shape"].items())
        + f" GFLOP/s; {mm['gflops_model_mix']} GFLOP/s weighted as in one forward pass.",
        f"N = {mm['matmul_params'] / 1e6:.1f}M matmul parameters (lm_head included). "
        f"6N FLOPs/token (upper-bound approximation) -> at most **{ceil['tokens_per_s_6n']:.0f}** tokens/s; "
        f"4N (closer for LoRA: no weight gradients for frozen weights) -> **{ceil['tokens_per_s_4n']:.0f}** tokens/s. "
        f"Attention FLOPs are left out of both.",
        f"The recipe runs at {ceil['recipe_share_of_4n']:.0%} of the 4N ceiling (its lm_head runs only on answer tokens, "
        f"so its real per-token cost is below 4N); the baseline at {ceil['baseline_share_of_4n']:.0%}.",
        "",
        f"Other processes used {max(rec['others_cpu_share'], base['others_cpu_share']):.0%} of the machine's CPU during "
        "the arms"
        + (" — the machine was shared: rerun on an idle machine before trusting these numbers." if r["shared"] else "."),
        "",
    ]
    if r["quick"]:
        lines += ["`--quick` is a smoke run: a handful of examples and steps, so the numbers are indicative only.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per arm, warm-up included")
    parser.add_argument("--warmup", type=int, default=1, help="steps left out of the medians")
    parser.add_argument("--batch-size", type=int, default=2, help="micro-batch rows (see the memory note above)")
    parser.add_argument("--grad-accum", type=int, default=4, help="micro-batches per optimizer step")
    parser.add_argument("--quick", action="store_true", help="3 steps of one micro-batch of 2: a smoke run")
    parser.add_argument(
        "--baseline-pad", choices=["max_length", "longest"], default="max_length",
        help="baseline rows padded to training.max_length (what a naive script does; default) or to the longest row rounded up to 64",
    )
    parser.add_argument("--arm", choices=sorted(ARMS), help=argparse.SUPPRESS)
    parser.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.arm:  # a child process measuring one arm
        args.out.write_text(json.dumps(ARMS[args.arm](json.loads(args.spec.read_text()))))
        return 0

    from transformers import AutoTokenizer

    from tasks.config import PACKAGED_GENERATOR, TrainingSettings, load_settings
    from tasks.models import resolve_generator
    from tasks.train import end_of_turn_ids, optimizer_steps, tokenized_examples

    started = time.perf_counter()
    DATA.mkdir(parents=True, exist_ok=True)
    if args.quick:
        args.steps, args.grad_accum = min(args.steps, 3), 1
    settings = TrainingSettings(
        epochs=1, eval_every=10_000, checkpoint_every=10_000, patience=0, batch_size=args.batch_size, grad_accum=args.grad_accum
    )
    if args.steps <= args.warmup:
        parser.error("--steps must be larger than --warmup")
    models_dir = load_settings().models_dir  # $RAGTUNE_HOME/models: the SmolLM2 cache `make models` converts
    location, _ = resolve_generator(PACKAGED_GENERATOR, models_dir)
    tokenizer = AutoTokenizer.from_pretrained(location, local_files_only=True)
    count = args.steps * settings.batch_size * settings.grad_accum
    examples = rag_examples(count, tokenizer)
    tokenized = tokenized_examples(tokenizer, examples, end_of_turn_ids(tokenizer), settings.max_length, "bench")
    lengths = [len(e.input_ids) for e in tokenized]
    longest = math.ceil(max(lengths) / PAD_MULTIPLE) * PAD_MULTIPLE
    pad_to = settings.max_length if args.baseline_pad == "max_length" else longest
    plan = optimizer_steps(lengths, settings.batch_size, settings.grad_accum, settings.seed, args.steps)
    recipe_padded = sum(max(lengths[i] for i in b) * len(b) for _, _, batches in plan for b in batches)
    examples_path = DATA / "examples.json"
    examples_path.write_text(json.dumps(examples, ensure_ascii=False))

    spec = {"examples": str(examples_path), "settings": settings.model_dump(mode="json"), "steps": args.steps,
            "warmup": args.warmup, "threads": args.threads, "models_dir": str(models_dir), "pad_to": pad_to,
            "location": location, "repeats": 7}
    result: dict[str, Any] = {
        "quick": args.quick, "threads": args.threads, "baseline_pad": args.baseline_pad, "steps": args.steps, "warmup": args.warmup,
        "settings": settings.model_dump(mode="json"),
        "examples": {"count": count, "p10": _percentile(lengths, 0.1), "p50": _percentile(lengths, 0.5),
                     "p90": _percentile(lengths, 0.9), "max": max(lengths), "real_tokens": sum(lengths),
                     "answer_tokens": sum(e.answer_tokens for e in tokenized), "recipe_padded_tokens": recipe_padded,
                     "baseline_padded_tokens": pad_to * count},
        "machine": {"nproc": os.cpu_count(), "python": platform.python_version(), "processor": platform.processor()},
    }
    for name in ("matmul", "recipe", "baseline"):
        print(f"running {name} ...", flush=True)
        result[name] = run_arm(name, spec)
    result["ratio"] = result["recipe"]["tokens_per_s"] / result["baseline"]["tokens_per_s"]
    result["ratio_aggregate"] = result["recipe"]["aggregate_tokens_per_s"] / result["baseline"]["aggregate_tokens_per_s"]
    flops = result["matmul"]["gflops_model_mix"] * 1e9
    n = result["matmul"]["matmul_params"]
    result["ceiling"] = {
        "tokens_per_s_6n": flops / (6 * n), "tokens_per_s_4n": flops / (4 * n),
        "recipe_share_of_4n": result["recipe"]["tokens_per_s"] / (flops / (4 * n)),
        "baseline_share_of_4n": result["baseline"]["tokens_per_s"] / (flops / (4 * n)),
    }
    result["shared"] = max(result[a]["others_cpu_share"] for a in ("recipe", "baseline", "matmul")) > 0.1
    import peft
    import torch
    import transformers

    result["versions"] = {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}
    result["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    result["seconds"] = round(time.perf_counter() - started, 1)
    write_results("training", result, markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
