"""What to say when the draft is withheld: abstain, or quote the closest source sentence (HaluEval QA dev).

    .venv/bin/python bench/fallback.py                    # 160 questions, ~12 min with one torch thread
    .venv/bin/python bench/fallback.py --eval-questions 60

The rag arm's answerer (packaged SmolLM2, default grounding) over the same disjoint HaluEval dev rows
as bench/quality.py (`split_rows`; 20 % of the questions have their passage left out of the index,
so they are unanswerable). Every question is answered once with `retrieval.fallback = "quote"` and
no similarity floor, so each withheld draft carries the quote it would get and that quote's
similarity; the policies are then scored on the same answers:

- `abstain`: every withheld draft abstains (today's default);
- `quote@t`: a withheld draft is replaced by its quote when the similarity is >= t;
- `calibrated@t`: the floor ragtune's own calibration fits on the tuning half (`choose_quote_floor`).

The questions are split in two halves (alternating): t is chosen on the first (the largest contains-gold with a
hallucination rate <= 0.10), and both policies are reported on the second with paired differences.
Results: bench/results/fallback-latest.{json,md}.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.common import add_answer_args, bench_home, seed_models, write_config, write_results  # noqa: E402
from bench.quality import _d, _e, split_rows, write_corpus, write_eval_file  # noqa: E402

SHOWN = ("contains", "f1", "hallucination_rate", "abstention_recall", "abstention_rate")
GRID = tuple(round(0.30 + 0.05 * i, 2) for i in range(10))  # 0.30 … 0.75
MAX_HALLUCINATION = 0.10


def policy(answers: Sequence[Any], floor: float | None) -> list[Any]:
    """The answers under one policy: quotes below `floor` (all of them when None) become abstentions."""
    from tasks.generate import ABSTAIN

    out = []
    for a in answers:
        if a.quoted and (floor is None or a.grounding[0]["similarity"] < floor):
            a = dataclasses.replace(a, answer=ABSTAIN, abstained=True, quoted=False, grounding=[], support=None, reason="unsupported")
        out.append(a)
    return out


def scores(rows: Sequence[dict[str, Any]], answers: Sequence[Any], name: str) -> dict[str, list[float | None]]:
    from tasks.metrics import QuestionResult, question_scores

    return question_scores([QuestionResult.of(r, name, a) for r, a in zip(rows, answers)])


def summary(values: dict[str, list[float | None]]) -> dict[str, Any]:
    from tasks.metrics import bootstrap

    return {m: bootstrap(values[m]).as_dict() for m in SHOWN}


def choose_floor(rows: Sequence[dict[str, Any]], answers: Sequence[Any]) -> tuple[float | None, list[dict[str, Any]]]:
    """The floor with the largest contains-gold whose hallucination rate is <= MAX_HALLUCINATION (None: never quote)."""
    curve, best, best_contains = [], None, None
    for floor in GRID:
        s = scores(rows, policy(answers, floor), f"quote@{floor}")
        point = {m: _mean(s[m]) for m in SHOWN}
        curve.append({"floor": floor, **point})
        if point["hallucination_rate"] <= MAX_HALLUCINATION and (best_contains is None or point["contains"] > best_contains):
            best, best_contains = floor, point["contains"]
    return best, curve


def product_floor(rows: Sequence[dict[str, Any]], answers: Sequence[Any], settings: Any) -> Any:
    """The floor ragtune's own calibration would choose from these answers (`choose_quote_floor`, the
    product's utility and adoption rule, not this benchmark's hallucination cap)."""
    from tasks.calibrate import choose_quote_floor
    from tasks.metrics import QuestionResult, is_correct

    similarities, right = [], []
    for r, a in zip(rows, answers):
        if a.quoted:
            similarities.append(float(a.grounding[0]["similarity"]))
            right.append(bool(r["answerable"]) and is_correct(QuestionResult.of(r, "quote", a)))
    from tasks.config import RetrievalSettings

    default = RetrievalSettings().quote_min_similarity  # this run's own floor is -1: every withheld draft quoted
    return choose_quote_floor(similarities, right, settings.evaluation.calibration_wrong_cost, default)


def _mean(values: Sequence[float | None]) -> float:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else float("nan")


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--eval-questions", type=int, default=160, help="questions (both halves, incl. the unanswerable ones)")
    p.add_argument("--corpus-rows", type=int, default=800)
    p.add_argument("--holdout-share", type=float, default=0.2)
    add_answer_args(p)
    p.add_argument("--root", default="/tmp/ragtune-bench-fallback")
    a = p.parse_args(argv)

    root = Path(a.root)
    root.mkdir(parents=True, exist_ok=True)
    bench_home(root / "prefect-home", a.threads)
    seed_models(root)
    split = split_rows(a.eval_questions, 0, a.corpus_rows, a.holdout_share, a.seed)
    write_corpus(split, root / "corpus")
    write_eval_file(split, root / "eval.jsonl")
    config = write_config(root, {
        "generator": {"max_new_tokens": a.max_new_tokens, "context_tokens": a.context_tokens},
        "retrieval": {"k": a.k, "fallback": "quote", "quote_min_similarity": -1.0},
    }, {"home": str(root), "torch_threads": a.threads, "progress": False})  # fmt: skip

    from prefect.testing.utilities import prefect_test_harness

    from tasks.evalset import load_eval_set

    with prefect_test_harness(server_startup_timeout=120):
        from flows.ingest import ingest
        from tasks.config import load_settings
        from tasks.resources import make_answerer

        began = time.monotonic()
        ingest(str(root / "corpus"), config_file=str(config))
        ingest_s = time.monotonic() - began
        settings = load_settings(config)
        answerer = make_answerer(settings)
        rows = load_eval_set(root / "eval.jsonl", split="test", strict=True).rows
        began = time.monotonic()
        answers = []
        for start in range(0, len(rows), 8):
            answers += answerer.ask_many([r["question"] for r in rows[start : start + 8]])
        answer_s = time.monotonic() - began

    # Alternate questions between the halves: the unanswerable ones come first in the file.
    tune_rows, tune_answers, report_rows, report_answers = rows[0::2], answers[0::2], rows[1::2], answers[1::2]
    half = len(tune_rows)
    floor, curve = choose_floor(tune_rows, tune_answers)
    fitted = product_floor(tune_rows, tune_answers, settings)
    base = scores(report_rows, policy(report_answers, None), "abstain")
    chosen = scores(report_rows, policy(report_answers, floor), f"quote@{floor}") if floor is not None else base
    product = scores(report_rows, policy(report_answers, fitted.threshold), "calibrated")
    from tasks.metrics import paired_difference

    quoted = [a for a in policy(report_answers, floor) if a.quoted]
    result = {
        "settings": vars(a), "questions": len(rows), "tuning_questions": half, "report_questions": len(report_rows),
        "unanswerable_report": sum(not r["answerable"] for r in report_rows),
        "threshold": answerer.min_support, "ingest_s": round(ingest_s, 1), "answer_s_each": round(answer_s / len(rows), 2),
        "tuning_curve": curve, "chosen_floor": floor,
        "calibrated_floor": dataclasses.asdict(fitted),
        "report": {"abstain": summary(base), f"quote@{floor}": summary(chosen), f"calibrated@{fitted.threshold:.3f}": summary(product)},
        "difference": {m: paired_difference(chosen[m], base[m]).as_dict() for m in SHOWN},
        "difference_calibrated": {m: paired_difference(product[m], base[m]).as_dict() for m in SHOWN},
        "quoted_report": len(quoted),
        "quoted_words_median": sorted(len(q.answer.split()) for q in quoted)[len(quoted) // 2] if quoted else None,
        "examples": [{"question": q.question, "quote": q.answer, "similarity": q.grounding[0]["similarity"], "draft": q.draft}
                     for q in quoted[:5]],
    }  # fmt: skip
    path = write_results("fallback", result, markdown(result))
    print(markdown(result))
    print(f"results: {path}")


def markdown(r: dict[str, Any]) -> str:
    L = ["# Withheld drafts: abstain or quote (HaluEval QA dev)", "",
         f"{r['questions']} questions: floor chosen on {r['tuning_questions']}, reported on {r['report_questions']} "
         f"({r['unanswerable_report']} unanswerable); grounding threshold {r['threshold']:.3f}; "
         f"{r['answer_s_each']} s per answer.", "",
         "Tuning half (floor: quote when similarity >= floor):", "", "| floor | contains | F1 | hallucination | abstention recall |",
         "|---|---|---|---|---|"]  # fmt: skip
    for c in r["tuning_curve"]:
        L.append(f"| {c['floor']} | {c['contains']:.3f} | {c['f1']:.3f} | {c['hallucination_rate']:.3f} | {c['abstention_recall']:.3f} |")
    L += ["", f"Chosen floor: {r['chosen_floor']}. Report half:", "",
          "| policy | contains | F1 | hallucination | abstention recall | abstention rate |", "|---|---|---|---|---|---|"]
    for name, m in r["report"].items():
        L.append(f"| {name} | {_e(m['contains'])} | {_e(m['f1'])} | {_e(m['hallucination_rate'])} | "
                 f"{_e(m['abstention_recall'])} | {_e(m['abstention_rate'])} |")
    c = r["calibrated_floor"]
    L += ["", f"ragtune's own calibration on the tuning half (`choose_quote_floor`): floor {c['threshold']:.3f}, "
          f"{'adopted' if c['calibrated'] else 'default kept'}: {c['reason']}."]
    L += ["", "Paired (quote − abstain): " + ", ".join(f"{m} {_d(d)}" for m, d in r["difference"].items()),
          "", "Paired (calibrated − abstain): " + ", ".join(f"{m} {_d(d)}" for m, d in r["difference_calibrated"].items()),
          "", f"Quoted answers on the report half: {r['quoted_report']} (median {r['quoted_words_median']} words)."]
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    main()
