"""Quality benchmark (issue 13 §4): the production loop on public data, HaluEval QA dev rows 0–4999.

    .venv/bin/python bench/quality.py                 # full run, ~60-75 min on 1 torch thread
    .venv/bin/python bench/quality.py --quick         # ~10 min smoke run: few questions, few steps
    .venv/bin/python bench/quality.py --eval-questions 150 --train-rows 400 --steps 60 --synth-chunks 300

Data: the HaluEval QA development rows (never beyond row 4999), deduplicated by passage text and
shuffled with a fixed seed, are cut into disjoint evaluation rows, training rows and distractor rows.
Their passages are pooled, one file each, and ingested through the real `ingest` flow, except the
passages of `--holdout-share` of the evaluation rows: those questions are `answerable: false` (the
right response is to abstain). A held-out row is only chosen when its gold answer occurs in no
ingested passage, so "unanswerable" is true of the corpus and not just of one file. The labelled
evaluation file has the training rows as `split: train` and the evaluation rows as `split: test`.

Everything then runs through the flows (`ingest`, `synthesize`, `retrain`, `evaluate`), in this
process under one Prefect test harness, each with a generated ragtune.toml and its own home
(`bench/data/quality[-quick]/home-<variant>/`), because a registry holds one candidate at a time:
- `labelled`: RAFT from the labelled training rows (`dataset.qa_pairs`, split train);
- `synthetic`: RAFT from `ragtune synth`'s training pool alone (`dataset.synthetic = true`, no labels);
- `both`: the two together.
The index is ingested once (home-labelled) and its `lancedb/` and `synth/` folders are copied to the
other two homes, the generator cache is shared by symlink, and the grounding calibration of the first
evaluation is copied too (same key: same generator, index version, rows), so every arm of every home
uses the same threshold. The same step budget (`training.max_steps`) trains each adapter. The
`labelled` home evaluates base, rag, lora, hybrid and, beside them, the synthetic set's held-out
documents (`evaluation.synthetic = true`); the other two evaluate lora and hybrid on the same
labelled test questions. No run uses `--limit` (a limited run is report-only and calibrates on fewer
rows): `--quick` makes the sets small instead.

Grounding scorers: on the rag arm's own drafts. The evaluation's questions.jsonl keeps a withheld
draft only as the abstention text, without its sources, so while the `labelled` evaluation runs a
capture hook (`DraftCapture`) wraps the answerers it builds and records each draft with the exact
sources, question and lexical support it was judged on (the answers themselves are unchanged).
`TrainedGroundingScorer` is fitted on the calibration drafts (the base generator's rag drafts to the
first `--calibration` training rows, nothing withheld) and compared with the lexical scorer on the
rag arm's drafts of the test rows (label: the draft contains a gold answer; any draft to an
unanswerable question is wrong), with the paired-bootstrap adoption rule of `tasks/ground_model.py`.
The same drafts are re-scored offline at each scorer's threshold to show what the rag arm would
answer with it.

Results: bench/results/quality-latest.{json,md}; a --quick run writes bench/data/quality-quick/quality-quick-latest.*.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.common import DATA, RESULTS, add_answer_args, bench_home, commit, seed_models, write_config, write_results  # noqa: E402
from bench.retrieval import halueval_rows  # noqa: E402

VARIANTS = ("labelled", "synthetic", "both")
ARMS = ("base", "rag", "lora", "hybrid")
SHOWN = ("contains", "f1", "accuracy", "hallucination_rate", "abstention_precision", "abstention_recall", "abstention_rate", "cost_cpu_s")
OUTCOMES = ("answered", "unsupported", "model_abstained", "low_retrieval_confidence", "no_sources")
GOALS = {"hybrid_contains": 0.60, "hybrid_f1": 0.50, "hybrid_hallucination": 0.10, "hybrid_abstention_recall": 0.80, "synthetic_gap": 0.10}


# --- data --------------------------------------------------------------------------------------


def _norm_tokens(text: str) -> str:
    from tasks.metrics import normalise_answer

    return f" {normalise_answer(text)} "


def split_rows(n_eval: int, n_train: int, n_corpus: int, holdout_share: float, seed: int) -> dict[str, Any]:
    """Disjoint evaluation / training / distractor rows of HaluEval QA dev (rows 0–4999), and the held-out ones."""
    rows = halueval_rows(5000)
    seen: set[str] = set()
    unique = []
    for i, r in enumerate(rows):
        text = r["knowledge"].strip()
        if text and text not in seen and r["right_answer"].strip() and r["question"].strip():
            seen.add(text)
            unique.append(i)
    random.Random(seed).shuffle(unique)
    n_corpus = max(n_corpus, n_eval + n_train)
    if n_corpus > len(unique):
        sys.exit(f"--corpus-rows {n_corpus} exceeds the {len(unique)} distinct dev passages")
    eval_ids, train_ids, extra_ids = unique[:n_eval], unique[n_eval : n_eval + n_train], unique[n_eval + n_train : n_corpus]
    wanted = round(holdout_share * n_eval)
    corpus = set(eval_ids) | set(train_ids) | set(extra_ids)
    flat = {i: _norm_tokens(rows[i]["knowledge"]) for i in corpus}
    held: list[int] = []
    for i in eval_ids:  # in shuffled order
        if len(held) >= wanted:
            break
        gold = _norm_tokens(rows[i]["right_answer"])
        if gold.strip() in ("yes", "no", ""):
            continue  # a yes/no answer is never "in" a passage: no way to check the corpus cannot answer it
        if any(gold in flat[j] for j in corpus if j != i and j not in held):
            continue  # another passage states the answer: not unanswerable
        held.append(i)
    return {"rows": rows, "eval": eval_ids, "train": train_ids, "extra": extra_ids, "held_out": held, "distinct_passages": len(unique)}


def doc_id(i: int) -> str:
    return f"h{i:04d}.txt"


def write_corpus(split: dict[str, Any], root: Path) -> int:
    """One text file per ingested passage (the held-out ones are left out); returns the count."""
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    held = set(split["held_out"])
    n = 0
    for i in split["eval"] + split["train"] + split["extra"]:
        if i not in held:
            (root / doc_id(i)).write_text(split["rows"][i]["knowledge"].strip(), encoding="utf-8")
            n += 1
    return n


def write_eval_file(split: dict[str, Any], path: Path) -> dict[str, int]:
    """The labelled set in the evaluation-set format: training rows `train`, evaluation rows `test`."""
    rows, held = split["rows"], set(split["held_out"])
    out = []
    for part, ids in (("train", split["train"]), ("test", split["eval"])):
        for i in ids:
            r = rows[i]
            answerable = i not in held
            gold = r["right_answer"].strip()
            category = "unanswerable" if not answerable else ("yes/no" if gold.lower() in ("yes", "no") else "span")
            out.append({
                "id": f"halueval-{i:04d}", "question": r["question"].strip(), "answers": [gold] if answerable else [],
                "answerable": answerable, "gold_docs": [doc_id(i)] if answerable else [], "category": category,
                "paraphrase_group": None, "split": part,
            })  # fmt: skip
    path.write_text("".join(json.dumps(o, ensure_ascii=False) + "\n" for o in out), encoding="utf-8")
    test = [o for o in out if o["split"] == "test"]
    return {"train": len(out) - len(test), "test": len(test), "test_unanswerable": sum(not o["answerable"] for o in test)}


# --- homes and their settings -------------------------------------------------------------------


def configs(root: Path, eval_file: Path, a: argparse.Namespace) -> dict[str, Path]:
    out = {}
    for variant in VARIANTS:
        home = root / f"home-{variant}"
        home.mkdir(parents=True, exist_ok=True)
        models = home / "models"
        if not models.exists():
            models.symlink_to(root / "models", target_is_directory=True)
        dataset: dict[str, Any] = {"synthetic": variant != "labelled", "validation_share": 0.1}
        if variant != "synthetic":
            dataset.update(qa_pairs=str(eval_file), qa_split="train")
        out[variant] = write_config(home, {
            "generator": {"max_new_tokens": a.max_new_tokens, "context_tokens": a.context_tokens},
            "retrieval": {"k": a.k},
            "dataset": dataset,
            "training": {"max_steps": a.steps, "grad_accum": a.grad_accum, "learning_rate": a.learning_rate, "warmup_steps": max(1, a.steps // 10),
                         "eval_every": a.steps, "checkpoint_every": max(10, a.steps // 2), "patience": 0},
            "evaluation": {"path": str(eval_file), "split": "test", "arms": list(ARMS) if variant == "labelled" else ["lora", "hybrid"],
                           "synthetic": variant == "labelled", "calibration_limit": a.calibration, "apply_gate": False,
                           "canary": str(a.canary) if a.canary else None},
            "synth": {"max_chunks": a.synth_chunks, "max_minutes": 120.0},
        }, {"home": str(home), "torch_threads": a.threads, "progress": False})  # fmt: skip
    return out


class Stages:
    """Wall and CPU seconds of each stage of the benchmark."""

    def __init__(self) -> None:
        self.times: dict[str, dict[str, float]] = {}

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        wall, cpu = time.perf_counter(), time.process_time()
        print(f"[quality] {datetime.now(timezone.utc):%H:%M:%S} {name} …", file=sys.stderr, flush=True)
        out = fn()
        self.times[name] = {"wall_s": round(time.perf_counter() - wall, 1), "cpu_s": round(time.process_time() - cpu, 1)}
        print(f"[quality] {name}: {self.times[name]['wall_s']} s", file=sys.stderr, flush=True)
        return out


# --- grounding drafts ---------------------------------------------------------------------------


class RecordingScorer:
    """Delegates to the answerer's scorer and keeps every (draft, sources, lexical support) it judged, by question."""

    def __init__(self, inner: Any, seen: dict[str, dict[str, Any]]) -> None:
        self.inner, self.threshold, self.seen = inner, getattr(inner, "threshold", None), seen

    def score_many(self, items: Sequence[tuple[str, Sequence[str]]], questions: Sequence[str] | None = None) -> Any:
        from tasks.ground import answer_support

        out = self.inner.score_many(items, questions)
        for (answer, sources), q, supports in zip(items, questions or [""] * len(items), out):
            self.seen.setdefault(q, {}).update(draft=answer, sources=list(sources), support=answer_support(supports) if supports else None)
        return out


class DraftCapture:
    """Keeps the drafts the evaluation itself makes, which its questions.jsonl does not: a withheld draft is
    saved as the abstention text, without the sources it was judged on.

    While active, `make_answerer` (as `flows/evaluate.py` and `tasks/calibrate.py` call it) returns the real
    answerer with its scorer wrapped in a `RecordingScorer` and its `ask_many` noting each answer's reason.
    Tags: `calibration` (retrieval, no adapter, nothing withheld: the calibration drafts), `rag`, `hybrid`.
    """

    def __init__(self) -> None:
        self.seen: dict[str, dict[str, dict[str, Any]]] = {}

    def __enter__(self) -> "DraftCapture":
        import flows.evaluate
        import tasks.resources

        self._originals = (tasks.resources.make_answerer, flows.evaluate.make_answerer)
        real = self._originals[0]

        def make_answerer(settings: Any, table: Any = None, retrieval: bool = True, adapter: Any = None, min_support: Any = None) -> Any:
            answerer = real(settings, table, retrieval=retrieval, adapter=adapter, min_support=min_support)
            if not retrieval:
                return answerer
            tag = "hybrid" if adapter else ("calibration" if min_support == 0.0 else "rag")
            seen = self.seen.setdefault(tag, {})
            answerer.scorer = RecordingScorer(answerer.scorer, seen)
            ask_many = answerer.ask_many

            def noting(questions: Sequence[str], filters: Any = None) -> Any:
                answers = ask_many(questions, filters)
                for q, ans in zip(questions, answers):
                    seen.setdefault(q, {}).update(abstained=ans.abstained, reason=ans.reason)
                return answers

            answerer.ask_many = noting
            return answerer

        tasks.resources.make_answerer = make_answerer
        flows.evaluate.make_answerer = make_answerer
        return self

    def __exit__(self, *exc: Any) -> None:
        import flows.evaluate
        import tasks.resources

        tasks.resources.make_answerer, flows.evaluate.make_answerer = self._originals

    def records(self, tag: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The drafts of `rows` under `tag`, labelled: right = answerable and the draft contains a gold answer."""
        from tasks.metrics import contains_gold

        out = []
        for row in rows:
            got = self.seen.get(tag, {}).get(row["question"])
            if got is None:
                continue
            draft = got.get("draft")
            out.append({"id": row["id"], "question": row["question"], "answerable": row["answerable"], "golds": row["answers"],
                        "abstained": got.get("abstained"), "reason": got.get("reason"), "support": got.get("support"),
                        "draft": draft, "sources": got.get("sources"),
                        "right": (bool(row["answerable"]) and bool(contains_gold(draft, row["answers"]))) if draft is not None else None})  # fmt: skip
        return out


def rescored(records: list[dict[str, Any]], score_key: str, threshold: float, resamples: int) -> dict[str, Any]:
    """The rag arm as it would score if the drafts were withheld below `threshold` of `score_key` (offline)."""
    from tasks.generate import ABSTAIN
    from tasks.metrics import QuestionResult, ScoringRules, arm_metrics

    results = []
    for r in records:
        s = r.get(score_key)
        answered = r["draft"] is not None and s is not None and s >= threshold
        results.append(QuestionResult(id=r["id"], question=r["question"], arm=score_key, answerable=r["answerable"], golds=r["golds"],
                                      answer=r["draft"] if answered else ABSTAIN, abstained=not answered,
                                      support=s if answered else None))  # fmt: skip
    rules = ScoringRules(support_threshold=threshold, format_pattern=None)
    m = arm_metrics(results, rules, None, resamples=resamples)
    return {k: m[k].as_dict() for k in ("contains", "f1", "hallucination_rate", "abstention_rate", "abstention_precision", "abstention_recall")}


def reasons(records: list[dict[str, Any]]) -> dict[str, int]:
    """Why each question was answered or not: answered, model_abstained, unsupported, low_retrieval_confidence, ..."""
    from collections import Counter

    return dict(Counter("answered" if not r["abstained"] else (r["reason"] or "abstained") for r in records))


def grounding_part(capture: DraftCapture, eval_file: Path, model_path: Path, threshold: float, resamples: int, embedder: Any) -> dict[str, Any]:
    """Lexical vs trained scorer on the rag arm's own drafts of the test rows; the trained one fitted on the
    calibration drafts (training rows only)."""
    from tasks.evalset import load_eval_set
    from tasks.ground import answer_support
    from tasks.ground_model import TrainedGroundingScorer, adoption, auroc

    train = load_eval_set(eval_file, "train", strict=True).rows
    test = load_eval_set(eval_file, "test", strict=True).rows
    fit, rep = capture.records("calibration", train), capture.records("rag", test)
    if len(rep) != len(test):
        raise RuntimeError(f"captured {len(rep)} rag answers of {len(test)} test questions: the capture hook missed the arena")
    fit_j = [d for d in fit if d["draft"] is not None and d["support"] is not None]
    rep_j = [d for d in rep if d["draft"] is not None and d["support"] is not None]
    y_fit = np.array([int(d["right"]) for d in fit_j])
    scorer = TrainedGroundingScorer.fit(
        embedder, [(d["draft"], d["sources"]) for d in fit_j], y_fit, [d["question"] for d in fit_j],
        fitted_on={"data": "HaluEval QA dev, training rows of bench/quality.py (the evaluation's calibration drafts)",
                   "rows": len(fit_j), "labels": "1 = draft contains the gold answer"},
    )  # fmt: skip
    scorer.save(model_path)
    trained = [answer_support(s) for s in scorer.score_many([(d["draft"], d["sources"]) for d in rep_j], [d["question"] for d in rep_j])]
    for d, p in zip(rep_j, trained):
        d["trained"] = float(p)
    y = np.array([int(d["right"]) for d in rep_j])
    lexical = np.array([d["support"] for d in rep_j], dtype=np.float64)
    rule = adoption(lexical, np.array(trained), y)
    answerable = np.array([bool(d["answerable"]) for d in rep_j])
    both = answerable.any() and len(np.unique(y[answerable])) == 2
    return {
        "fit": {"rows": len(fit), "drafts": len(fit_j), "right": int(y_fit.sum())},
        "report": {"rows": len(rep), "drafts": len(rep_j), "right": int(y.sum()), "unanswerable_drafts": int((~answerable).sum()),
                   "right_of_answerable_rows": round(int(y.sum()) / max(1, sum(r["answerable"] for r in rep)), 3)},
        "adoption": rule.to_json(),
        "auroc_answerable_only": {"lexical": auroc(lexical[answerable], y[answerable]) if both else None,
                                  "trained": auroc(np.array(trained)[answerable], y[answerable]) if both else None},
        "model_path": str(model_path.relative_to(REPO)),
        "model_threshold": scorer.model.threshold,
        "coefficients": dict(zip(scorer.model.features, [round(c, 3) for c in scorer.model.coef])),
        "rag_offline": {
            "lexical, nothing withheld (every draft shown)": rescored(rep, "support", 0.0, resamples),
            f"lexical at the run's threshold {threshold:.3f}": rescored(rep, "support", threshold, resamples),
            f"trained at its own threshold {scorer.model.threshold:.2f}": rescored(rep, "trained", scorer.model.threshold, resamples),
        },
    }


# --- the flows ------------------------------------------------------------------------------------


def run_eval(config: Path) -> dict[str, Any]:
    from data_contracts.evaluation import EvalRun
    from flows.evaluate import evaluate

    result = evaluate(config_file=str(config), apply_gate=False)
    folder = Path(result["results"]).parent
    run = EvalRun.model_validate_json((folder / "results.json").read_text())
    records = [json.loads(line) for line in (folder / "questions.jsonl").read_text().splitlines() if line.strip()]
    return {"run": run, "records": records, "folder": folder}


def per_question(records: list[dict[str, Any]], arm: str, metric: str, ids: list[str]) -> list[float | None]:
    by_id = {r["id"]: r["scores"].get(metric) for r in records if r["arm"] == arm}
    return [by_id.get(i) for i in ids]


def copy_index(source: Path, target: Path) -> None:
    for part in ("lancedb", "synth"):
        if (target / part).exists():
            shutil.rmtree(target / part)
        if (source / part).exists():
            shutil.copytree(source / part, target / part)


# --- report -------------------------------------------------------------------------------------


def _e(m: dict[str, Any] | None, digits: int = 3) -> str:
    if not m or m.get("value") is None:
        return "–"
    v, lo, hi = m["value"], m.get("low"), m.get("high")
    return f"{v:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]" if lo is not None else f"{v:.{digits}f}"


def _d(d: dict[str, Any]) -> str:
    return "–" if d.get("value") is None else f"{d['value']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"


def markdown(r: dict[str, Any]) -> str:
    c = r["config"]
    L = [f"# Quality benchmark: HaluEval QA dev ({r['finished_at']}{', --quick' if r['quick'] else ''})", ""]
    d = r["data"]
    L += [f"{d['test']} labelled test questions ({d['test_unanswerable']} unanswerable: passage held out of the index), "
          f"{d['train']} labelled training rows, {d['passages_ingested']} passages ingested ({d['chunks']} chunks); "
          f"rows drawn from HaluEval QA rows 0–4999 only. SmolLM2-135M, {c['threads']} torch thread, k={c['k']}, "
          f"{c['context_tokens']}-token context, {c['max_new_tokens']} new tokens; every adapter {c['steps']} steps "
          f"(batch 2 × {c['grad_accum']}), lr {c['learning_rate']}. Grounding threshold {r['threshold']:.3f} ({r['threshold_origin']}). "
          f"Wall time {r['seconds'] / 60:.1f} min.", ""]
    L += ["## Arms on the labelled test questions (95 % bootstrap intervals)", "",
          "| arm | adapter | contains | F1 | hallucination | abst. precision | abst. recall | abstained | CPU-s/answer |",
          "|---|---|---|---|---|---|---|---|---:|"]
    for row in r["arms"]:
        m = row["metrics"]
        L.append(f"| {row['arm']} | {row['adapter']} | {_e(m.get('contains'))} | {_e(m.get('f1'))} | {_e(m.get('hallucination_rate'))} | "
                 f"{_e(m.get('abstention_precision'))} | {_e(m.get('abstention_recall'))} | {_e(m.get('abstention_rate'))} | "
                 f"{_e(m.get('cost_cpu_s'), 2)} |")
    L += ["", "Why each test question was answered or not (retrieval arms; `unsupported` = draft below the grounding threshold):", "",
          "| arm | " + " | ".join(OUTCOMES) + " |", "|---|" + "---:|" * len(OUTCOMES)]
    for arm, x in r["outcomes"].items():
        L.append(f"| {arm} | " + " | ".join(str(x.get(o, 0)) for o in OUTCOMES) + " |")
    L += ["", "Paired differences on the same questions (hybrid − rag; synthetic / both − labelled):", "",
          "| comparison | contains | F1 | hallucination |", "|---|---|---|---|"]
    for name, diff in r["differences"].items():
        L.append(f"| {name} | {_d(diff['contains'])} | {_d(diff['f1'])} | {_d(diff['hallucination_rate'])} |")
    L += ["", "## Goals (issue 13)", "", "| goal | measured | met |", "|---|---|---|"]
    for g in r["goals"]:
        L.append(f"| {g['goal']} | {g['measured']} | {'**yes**' if g['met'] else '**no**'} |")
    t = r["training"]
    L += ["", "## Training", "", "| adapter | pairs | train rows | val rows | rejected | steps | train loss | val loss | wall s |",
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for v, x in t.items():
        L.append(f"| {v} | {x['pairs']} | {x['train']} | {x['validation']} | {x['rejected']} | {x['steps']} | "
                 f"{x['train_loss'] if x['train_loss'] is None else round(x['train_loss'], 3)} | "
                 f"{x['val_loss'] if x['val_loss'] is None else round(x['val_loss'], 3)} | {x['wall_s']} |")
    g = r["grounding"] or {}
    a = g.get("adoption")
    if a is None:
        L += ["", "## Grounding scorers", "", "Not measured (see the notes)."]
    else:
        L += grounding_markdown(g, a)
    L += synthetic_markdown(r)
    L += ["", "## Stages (wall s)", "", " · ".join(f"{k} {v['wall_s']:.0f}" for k, v in r["stages"].items())]
    if r.get("notes"):
        L += ["", "## Notes", ""] + [f"- {n}" for n in r["notes"]]
    return "\n".join(L) + "\n"


def grounding_markdown(g: dict[str, Any], a: dict[str, Any]) -> list[str]:
    L: list[str] = []
    L += ["", "## Grounding scorers on the rag drafts of the test questions", "",
          f"Fitted on {g['fit']['drafts']} drafts of training rows ({g['fit']['right']} right); scored on {g['report']['drafts']} drafts "
          f"of the test rows ({g['report']['right']} right, {g['report']['unanswerable_drafts']} to unanswerable questions, counted wrong). "
          "Label: the draft contains a gold answer.", "",
          "| scorer | AUROC (all drafts) | 95 % | AUROC (answerable only) |", "|---|---:|---|---:|",
          f"| lexical (default) | {a['current']:.3f} | [{a['current_interval'][0]:.3f}, {a['current_interval'][1]:.3f}] | "
          f"{_f(g['auroc_answerable_only']['lexical'])} |",
          f"| trained (`{g['model_path']}`) | {a['candidate']:.3f} | [{a['candidate_interval'][0]:.3f}, {a['candidate_interval'][1]:.3f}] | "
          f"{_f(g['auroc_answerable_only']['trained'])} |", "",
          f"Adoption rule: {a['reason']} → {'adopt' if a['adopted'] else 'keep lexical'}.", "",
          "The same drafts re-scored offline (what the rag arm would answer with each scorer):", "",
          "| scorer, threshold | contains | F1 | hallucination | abst. precision | abst. recall |", "|---|---|---|---|---|---|"]
    for name, m in g["rag_offline"].items():
        L.append(f"| {name} | {_e(m['contains'])} | {_e(m['f1'])} | {_e(m['hallucination_rate'])} | "
                 f"{_e(m['abstention_precision'])} | {_e(m['abstention_recall'])} |")
    return L


def synthetic_markdown(r: dict[str, Any]) -> list[str]:
    L: list[str] = []
    s = r["synthetic"]
    f = s["funnel"]
    L += ["", "## Synthetic questions", "",
          f"{s['chunks_drafted']} of {s['chunks_sampled']} sampled chunks drafted in {s['seconds']:.0f} s; generated "
          f"{f['generated']}, kept {f['kept']} (survival {f['survival']}); splits {f['splits']}, documents {f['documents']}.", "",
          "| filter | dropped | share of generated passing it |", "|---|---:|---:|"]
    for name, x in s["filters"].items():
        L.append(f"| {name} | {x['dropped']} | {x['passing']:.3f} |")
    L += ["", f"Arms on the synthetic held-out set ({s['eval_questions']} questions) vs the labelled set:", "",
          "| arm | synthetic F1 | labelled F1 | synthetic contains | labelled contains |", "|---|---|---|---|---|"]
    for arm, x in s["arms"].items():
        L.append(f"| {arm} | {_e(x['synthetic_f1'])} | {_e(x['labelled_f1'])} | {_e(x['synthetic_contains'])} | {_e(x['labelled_contains'])} |")
    for metric, (same, pairs) in s["rank_agreement"].items():
        L.append(f"\nRank agreement ({metric}, `tasks/eval_report.py:rank_agreement`): {same} of {pairs} pairs of arms in the same order.")
    return L


def _f(x: float | None) -> str:
    return "–" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.3f}"


# --- main ---------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="~10-minute smoke run: 16 questions, 40 training rows, 3 steps, 8 canary questions")
    p.add_argument("--eval-questions", type=int, default=120, help="labelled test questions (incl. the unanswerable ones)")
    p.add_argument("--holdout-share", type=float, default=0.2, help="share of test questions whose passage is not ingested")
    p.add_argument("--train-rows", type=int, default=300, help="labelled training rows (RAFT pairs)")
    p.add_argument("--corpus-rows", type=int, default=900, help="passages pooled in all (test + training + distractors)")
    p.add_argument("--steps", type=int, default=40, help="training.max_steps of every adapter (the same budget)")
    p.add_argument("--learning-rate", type=float, default=5e-4)
    p.add_argument("--grad-accum", type=int, default=2, help="training.grad_accum (micro-batches of 2 per step)")
    p.add_argument("--synth-chunks", type=int, default=200, help="synth.max_chunks")
    p.add_argument("--calibration", type=int, default=80,
                   help="evaluation.calibration_limit: training rows the base generator drafts for the threshold; "
                   "the same drafts fit the trained grounding scorer")
    add_answer_args(p)
    a = p.parse_args(argv)
    a.canary = None
    if a.quick:
        a.eval_questions, a.train_rows, a.corpus_rows, a.steps = 16, 40, 120, 3
        a.synth_chunks, a.calibration = 24, 20
    root = DATA / ("quality-quick" if a.quick else "quality")
    root.mkdir(parents=True, exist_ok=True)
    if a.quick:  # the forgetting check on 8 of the 32 canary questions: a smoke run checks that it runs
        from tasks.evalset import CANARY

        a.canary = root / "canary-8.jsonl"
        a.canary.write_text("".join(CANARY.read_text().splitlines(keepends=True)[:8]))
    for v in VARIANTS:  # a fresh start: the registry, datasets and reports of an earlier run would change what is compared
        shutil.rmtree(root / f"home-{v}", ignore_errors=True)
    bench_home(root / "prefect-home", a.threads)
    os.environ.pop("RAGTUNE_HOME", None)  # each generated ragtune.toml names its home (the environment would override it)
    os.environ["RAGTUNE_TORCH_THREADS"] = str(a.threads)
    seed_models(root)
    started = time.perf_counter()
    stages = Stages()
    split = split_rows(a.eval_questions, a.train_rows, a.corpus_rows, a.holdout_share, a.seed)
    passages = write_corpus(split, root / "corpus")
    eval_file = root / "eval.jsonl"
    counts = write_eval_file(split, eval_file)
    cfg = configs(root, eval_file, a)
    notes: list[str] = []
    if len(split["held_out"]) < round(a.holdout_share * a.eval_questions):
        notes.append(f"only {len(split['held_out'])} test rows could be held out (gold answer found in another passage otherwise)")

    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        from flows.ingest import ingest
        from flows.retrain import retrain
        from flows.synthesize import synthesize

        manifest = stages.run("ingest", lambda: ingest(str(root / "corpus"), config_file=str(cfg["labelled"])))
        synth = stages.run("synth", lambda: synthesize(config_file=str(cfg["labelled"])))
        for v in VARIANTS[1:]:
            copy_index(root / "home-labelled", root / f"home-{v}")
        trained = {v: stages.run(f"train {v}", lambda v=v: retrain(force=True, config_file=str(cfg[v]))) for v in VARIANTS}
        with DraftCapture() as capture:
            evals = {"labelled": stages.run("eval labelled (base, rag, lora, hybrid + synthetic set)", lambda: run_eval(cfg["labelled"]))}
        from tasks.evalset import load_eval_set

        test_rows = load_eval_set(eval_file, "test", strict=True).rows
        hybrid_reasons = {"labelled": reasons(capture.records("hybrid", test_rows))}
        calibration = root / "home-labelled" / "calibration" / "grounding.json"
        for v in VARIANTS[1:]:
            if calibration.is_file():
                (root / f"home-{v}" / "calibration").mkdir(parents=True, exist_ok=True)
                shutil.copy2(calibration, root / f"home-{v}" / "calibration" / "grounding.json")
            with DraftCapture() as capture_v:
                evals[v] = stages.run(f"eval {v} (lora, hybrid)", lambda v=v: run_eval(cfg[v]))
            hybrid_reasons[v] = reasons(capture_v.records("hybrid", test_rows))
    base_run = evals["labelled"]["run"]
    threshold = base_run.settings["retrieval"]["min_support"]
    cal = base_run.calibration or {}
    for v in VARIANTS[1:]:
        other = evals[v]["run"].settings["retrieval"]["min_support"]
        if abs(other - threshold) > 1e-9:
            notes.append(f"the {v} evaluation used grounding threshold {other:.3f}, not {threshold:.3f}: its calibration was redone")
    from tasks.config import load_settings
    from tasks.models import load_embedder_for

    embedder = load_embedder_for(load_settings(cfg["labelled"]))
    try:
        grounding = stages.run("grounding scorers", lambda: grounding_part(
            capture, eval_file, root / "grounding-scorer.json", threshold, 1000, embedder))
    except Exception as e:  # noqa: BLE001 - keep the arms' numbers when only this part fails
        notes.append(f"grounding part failed: {type(e).__name__}: {e}")
        grounding = None
    outcomes = {"rag": reasons(capture.records("rag", test_rows)), **{f"hybrid ({v})": hybrid_reasons[v] for v in VARIANTS}}

    arms_out = []
    for v in VARIANTS:
        for arm in evals[v]["run"].arms:
            if v != "labelled" and arm.kind not in ("lora", "hybrid"):
                continue
            label = arm.name if arm.kind in ("base", "rag") else f"{arm.name} ({v})"
            arms_out.append({"arm": label, "variant": v if arm.adapter else None, "adapter": arm.adapter or "–",
                             "metrics": {k: arm.metrics[k].model_dump() for k in SHOWN if k in arm.metrics},
                             "train_wall_s": arm.train_wall_s, "questions": arm.questions})  # fmt: skip
    ids = [r["id"] for r in evals["labelled"]["records"] if r["arm"] == "rag"]
    from tasks.metrics import paired_difference

    def diff(run_a: str, arm_a: str, run_b: str, arm_b: str) -> dict[str, Any]:
        out = {}
        for metric in ("contains", "f1", "hallucination_rate"):
            e = paired_difference(per_question(evals[run_a]["records"], arm_a, metric, ids),
                                  per_question(evals[run_b]["records"], arm_b, metric, ids))
            out[metric] = e.as_dict()
        return out

    differences = {f"hybrid ({v}) − rag": diff(v, "hybrid", "labelled", "rag") for v in VARIANTS}
    differences["hybrid (synthetic) − hybrid (labelled)"] = diff("synthetic", "hybrid", "labelled", "hybrid")
    differences["hybrid (both) − hybrid (labelled)"] = diff("both", "hybrid", "labelled", "hybrid")
    differences["lora (synthetic) − lora (labelled)"] = diff("synthetic", "lora", "labelled", "lora")

    def metric(v: str, arm: str, name: str) -> dict[str, Any]:
        found = next(x for x in evals[v]["run"].arms if x.name == arm)
        return found.metrics[name].model_dump()

    goals = []
    for v in VARIANTS:
        c_, f_ = metric(v, "hybrid", "contains"), metric(v, "hybrid", "f1")
        dif = differences[f"hybrid ({v}) − rag"]
        beats = all((dif[m]["low"] or 0) > 0 for m in ("contains", "f1"))
        goals.append({"goal": f"hybrid ({v}): contains ≥ {GOALS['hybrid_contains']:.2f} and F1 ≥ {GOALS['hybrid_f1']:.2f}, "
                              "both beating rag beyond the paired interval",
                      "measured": f"contains {_e(c_)}, F1 {_e(f_)}; vs rag {_d(dif['contains'])} / {_d(dif['f1'])}",
                      "met": bool(c_["value"] >= GOALS["hybrid_contains"] and f_["value"] >= GOALS["hybrid_f1"] and beats)})  # fmt: skip
        h_, r_ = metric(v, "hybrid", "hallucination_rate"), metric(v, "hybrid", "abstention_recall")
        goals.append({"goal": f"hybrid ({v}): hallucination ≤ {GOALS['hybrid_hallucination']:.2f} with abstention recall ≥ "
                              f"{GOALS['hybrid_abstention_recall']:.2f}",
                      "measured": f"hallucination {_e(h_)}, abstention recall {_e(r_)}",
                      "met": bool(h_["value"] is not None and r_["value"] is not None and h_["value"] <= GOALS["hybrid_hallucination"]
                                  and r_["value"] >= GOALS["hybrid_abstention_recall"])})  # fmt: skip
    for arm in ("hybrid", "lora"):
        gap = differences[f"{arm} (synthetic) − {arm} (labelled)"]
        for m in ("f1", "contains"):
            goals.append({"goal": f"synthetic-only adapter within {GOALS['synthetic_gap']:.2f} of the labelled one ({arm} {m})",
                          "measured": f"{_d(gap[m])}", "met": bool(gap[m]["value"] is not None and gap[m]["value"] >= -GOALS["synthetic_gap"])})

    from tasks.eval_report import rank_agreement

    alongside = base_run.alongside[0] if base_run.alongside else None
    funnel = synth["funnel"]
    generated = sum(funnel["generated"].values())
    synthetic: dict[str, Any] = {
        "path": synth["path"], "chunks_sampled": synth["chunks_sampled"], "chunks_drafted": synth["chunks_drafted"],
        "seconds": synth["seconds"], "stopped_early": synth["stopped_early"], "funnel": funnel,
        "filters": {f: {"dropped": n, "passing": round(1 - n / generated, 3) if generated else 0.0} for f, n in funnel["dropped_by_filter"].items()},
        "kept_share": round(sum(funnel["kept"].values()) / generated, 3) if generated else 0.0,
        "eval_questions": alongside.questions if alongside else 0, "arms": {}, "rank_agreement": {},
    }  # fmt: skip
    if alongside:
        labelled_arms = {x.name: x for x in base_run.arms}
        for x in alongside.arms:
            synthetic["arms"][x.name] = {
                "synthetic_f1": x.metrics["f1"].model_dump(), "labelled_f1": labelled_arms[x.name].metrics["f1"].model_dump(),
                "synthetic_contains": x.metrics["contains"].model_dump(), "labelled_contains": labelled_arms[x.name].metrics["contains"].model_dump(),
            }  # fmt: skip
        for m in ("f1", "contains"):
            synthetic["rank_agreement"][m] = list(rank_agreement(base_run.arms, alongside.arms, m))
    else:
        notes.append("the labelled evaluation scored no synthetic set (none was saved?)")

    training = {}
    for v in VARIANTS:
        t = trained[v]
        ad = t.get("adapter") or {}
        meta = ad.get("metadata", ad)
        counts_ = t["dataset"]["counts"]
        training[v] = {"pairs": json.loads((Path(t["dataset"]["path"]) / "dataset.json").read_text())["sources"].get("pairs"),
                       "train": counts_["train"], "validation": counts_["validation"], "rejected": counts_["rejected"],
                       "rejects_by_reason": counts_["rejects_by_reason"], "by_kind": counts_["by_kind"],
                       "steps": meta.get("training", {}).get("steps"), "train_loss": meta.get("train_loss"), "val_loss": meta.get("val_loss"),
                       "wall_s": round(meta.get("wall_s") or 0, 1), "adapter": ad.get("name")}  # fmt: skip
    result = {
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "quick": a.quick,
        "commit": commit(),
        "machine": {"nproc": os.cpu_count(), "python": platform.python_version()},
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
        "data": {**counts, "passages_ingested": passages, "chunks": manifest["counts"]["chunks_total"],
                 "held_out": len(split["held_out"]), "distinct_dev_passages": split["distinct_passages"],
                 "rows": "HaluEval QA rows 0-4999 (development) only"},  # fmt: skip
        "threshold": threshold,
        "threshold_origin": "calibrated" if cal.get("calibrated") else f"default kept: {cal.get('reason', 'n/a')}",
        "calibration": cal,
        "arms": arms_out,
        "differences": differences,
        "goals": goals,
        "training": training,
        "grounding": grounding,
        "outcomes": outcomes,
        "synthetic": synthetic,
        "gate": base_run.gate.model_dump() if base_run.gate else None,
        "reports": {v: str(evals[v]["folder"].relative_to(REPO)) for v in VARIANTS},
        "stages": stages.times,
        "notes": notes,
        "seconds": round(time.perf_counter() - started, 1),
    }
    md = markdown(result)
    # A quick run only checks that everything runs: its numbers stay under bench/data (git-ignored).
    write_results("quality-quick" if a.quick else "quality", json.loads(json.dumps(result, default=str)), md, root if a.quick else RESULTS)
    print(md)


if __name__ == "__main__":
    main()
