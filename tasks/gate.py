"""The promotion gate: does a candidate (a LoRA adapter or a fully fine-tuned model) become the champion?

A candidate is promoted only if all of these hold, each judged on the same questions (matched by id)
with a paired bootstrap of candidate - incumbent (`tasks.metrics.paired_difference`):

1. **Beats the incumbent on the primary metric beyond the interval.** On the candidate's retrieval
   arm (`hybrid`; `full+rag` for a fully fine-tuned model) against the champion's retrieval arm, or
   the base model's `rag` results when there is no champion (the caller passes whichever is the
   incumbent: `tasks/arena.py:gated_arms`). Default primary: answer token F1. "Beyond" means the
   whole interval is on the good side: lower bound > 0 (upper bound < 0 for lower-is-better metrics).
2. **Not worse on the guard metrics** (default groundedness, draft groundedness and hallucination
   rate; draft groundedness is what the generator writes before the validator withholds anything). Worse means
   either *significantly* worse (the whole interval on the bad side, however small the change: a
   consistent loss of grounding is still a loss) or *materially* worse (the point estimate on the
   bad side by more than the metric's tolerance, default 0.02, whatever the interval says). A change
   that is both small and within noise passes. Requiring the interval to exclude any loss instead
   would reject nearly every candidate on a ~100-question set.
3. **No forgetting on the canary set** (a small general-ability QA set, answered without retrieval
   by the candidate and by the incumbent's model): the canary metric (default `contains`, since the
   generator answers in sentences) must not be worse by the same two-way rule, tolerance 0.05 (the
   set is small, so its point estimate is noisy).

Every check is evaluated and reported, also after one has failed, so the report shows the whole
picture. A metric that cannot be computed (no values on one side) fails its check.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from tasks.metrics import (
    LOWER_IS_BETTER,
    NO_DIRECTION,
    Estimate,
    QuestionResult,
    ScoringRules,
    bootstrap,
    check_results,
    paired_difference,
    question_scores,
)

DEFAULT_GUARDS = ("groundedness", "draft_groundedness", "hallucination_rate")
DEFAULT_TOLERANCES = {"groundedness": 0.02, "draft_groundedness": 0.02, "hallucination_rate": 0.02, "canary": 0.05}


@dataclass
class GateDecision:
    promote: bool
    reasons: list[str]  # the verdict first, then one line per check with its numbers
    numbers: dict[str, Any] = field(default_factory=dict)  # JSON-safe

    def as_dict(self) -> dict[str, Any]:
        return {"promote": self.promote, "reasons": list(self.reasons), "numbers": self.numbers}


def aligned(
    candidate: Sequence[QuestionResult], incumbent: Sequence[QuestionResult], what: str = "evaluation"
) -> tuple[list[QuestionResult], list[QuestionResult]]:
    """Both result lists in the candidate's order; a ValueError unless they cover the same question ids."""
    check_results(candidate, f"candidate {what} results")
    check_results(incumbent, f"incumbent {what} results")
    by_id = {r.id: r for r in incumbent}
    c_ids, i_ids = {r.id for r in candidate}, set(by_id)
    if c_ids != i_ids:
        only_c, only_i = sorted(c_ids - i_ids), sorted(i_ids - c_ids)
        raise ValueError(
            f"candidate and incumbent {what} results cover different questions "
            f"({len(only_c)} only in the candidate, e.g. {only_c[:3]}; {len(only_i)} only in the incumbent, "
            f"e.g. {only_i[:3]}): run both on the same evaluation set"
        )
    if not candidate:
        raise ValueError(f"no {what} results to compare: the gate needs at least one question")
    return list(candidate), [by_id[r.id] for r in candidate]


@dataclass
class _Check:
    key: str
    role: str  # primary | guard | canary
    passed: bool
    reason: str
    numbers: dict[str, Any]


def _fmt(x: float | None, signed: bool = False) -> str:
    if x is None:
        return "n/a"
    return f"{x:+.3f}" if signed else f"{x:.3f}"


def _describe(label: str, cand: Estimate, inc: Estimate, diff: Estimate, confidence: float) -> str:
    return (
        f"{label} {_fmt(diff.value, True)} [{_fmt(diff.low, True)}, {_fmt(diff.high, True)}] "
        f"({int(confidence * 100)}% CI, n={diff.n}; candidate {_fmt(cand.value)} vs incumbent {_fmt(inc.value)})"
    )


def _compare(
    cand_values: Sequence[float | None], inc_values: Sequence[float | None], ci: Mapping[str, Any]
) -> tuple[Estimate, Estimate, Estimate]:
    """Candidate estimate, incumbent estimate, paired difference (candidate - incumbent)."""
    return (
        bootstrap(cand_values, **ci),
        bootstrap(inc_values, **ci),
        paired_difference(cand_values, inc_values, **ci),
    )


def _primary_check(metric: str, cand: Estimate, inc: Estimate, diff: Estimate, confidence: float) -> _Check:
    text = _describe(metric, cand, inc, diff, confidence)
    lower_better = metric in LOWER_IS_BETTER
    if diff.value is None or diff.low is None or diff.high is None:
        passed, verdict = False, "cannot compare (no values on one side)"
    elif (diff.high < 0) if lower_better else (diff.low > 0):
        passed, verdict = True, "beats the incumbent beyond the CI"
    else:
        passed, verdict = False, "not a win beyond the CI (the interval reaches 0 or the bad side)"
    numbers = {"role": "primary", "candidate": cand.as_dict(), "incumbent": inc.as_dict(),
               "difference": diff.as_dict(), "lower_is_better": lower_better, "passed": passed}  # fmt: skip
    return _Check(metric, "primary", passed, f"{text}: {verdict}", numbers)


def _not_worse_check(
    key: str, label: str, metric: str, role: str, cand: Estimate, inc: Estimate, diff: Estimate,
    tolerance: float, confidence: float,
) -> _Check:  # fmt: skip
    text = _describe(label, cand, inc, diff, confidence)
    lower_better = metric in LOWER_IS_BETTER
    bad = "rises" if lower_better else "drops"
    if diff.value is None or diff.low is None or diff.high is None:
        passed, verdict = False, "cannot compare (no values on one side)"
    else:
        significantly = diff.low > 0 if lower_better else diff.high < 0
        loss = diff.value if lower_better else -diff.value
        materially = loss > tolerance
        problems = (["beyond the CI"] if significantly else []) + (
            [f"by {loss:.3f} > tolerance {tolerance:.3f}"] if materially else []
        )
        passed = not problems
        verdict = (
            f"not worse (CI not entirely on the bad side, change within tolerance {tolerance:.3f})"
            if passed
            else f"worse: {bad} " + " and ".join(problems)
        )
    numbers = {"role": role, "metric": metric, "candidate": cand.as_dict(), "incumbent": inc.as_dict(),
               "difference": diff.as_dict(), "tolerance": tolerance, "lower_is_better": lower_better,
               "passed": passed}  # fmt: skip
    return _Check(key, role, passed, f"{text}: {verdict}", numbers)


def _check_metric(name: str, available: Sequence[str], what: str) -> None:
    if name not in available:
        raise ValueError(f"unknown {what} metric {name!r}: choose one of {sorted(available)}")
    if name in NO_DIRECTION:
        raise ValueError(f"{what} metric {name!r} has no better direction; choose a quality metric such as 'f1'")


def decide(
    candidate: Sequence[QuestionResult],
    incumbent: Sequence[QuestionResult],
    candidate_canary: Sequence[QuestionResult],
    incumbent_canary: Sequence[QuestionResult],
    *,
    primary: str = "f1",
    guards: Sequence[str] = DEFAULT_GUARDS,
    canary_metric: str = "contains",
    tolerances: Mapping[str, float] | None = None,
    rules: ScoringRules = ScoringRules(),
    embed: Callable[[Sequence[str]], np.ndarray] | None = None,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> GateDecision:
    """Promote the candidate only if it wins on `primary`, holds the guards and doesn't forget (module docstring).

    `candidate` / `incumbent`: one arm each on the evaluation set (candidate `hybrid` or `full+rag`;
    incumbent the champion's retrieval arm or the base model's `rag`). The canary lists: the same canary questions
    answered by each side's model. `tolerances` overrides `DEFAULT_TOLERANCES` per guard metric and
    for "canary".
    """
    tol = {**DEFAULT_TOLERANCES, **(tolerances or {})}
    cand, inc = aligned(candidate, incumbent, "evaluation")
    cand_canary, inc_canary = aligned(candidate_canary, incumbent_canary, "canary")
    ci = {"resamples": resamples, "confidence": confidence, "seed": seed}

    cand_scores, inc_scores = question_scores(cand, rules, embed), question_scores(inc, rules, embed)
    _check_metric(primary, list(cand_scores), "primary")
    for g in guards:
        _check_metric(g, list(cand_scores), "guard")
        if g not in tol:
            raise ValueError(f"no tolerance for guard metric {g!r}: pass tolerances={{{g!r}: ...}}")
    _check_metric(canary_metric, list(cand_scores), "canary")

    checks = [_primary_check(primary, *_compare(cand_scores[primary], inc_scores[primary], ci), confidence)]
    for g in guards:
        if g == primary:  # already held to the stricter rule
            continue
        estimates = _compare(cand_scores[g], inc_scores[g], ci)
        checks.append(_not_worse_check(g, g, g, "guard", *estimates, tol[g], confidence))
    cand_c = question_scores(cand_canary, rules, embed)[canary_metric]
    inc_c = question_scores(inc_canary, rules, embed)[canary_metric]
    estimates = _compare(cand_c, inc_c, ci)
    checks.append(
        _not_worse_check(f"canary:{canary_metric}", f"canary {canary_metric}", canary_metric, "canary",
                         *estimates, tol["canary"], confidence)  # fmt: skip
    )

    promote = all(c.passed for c in checks)
    failed = [c.key for c in checks if not c.passed]
    verdict = (
        f"promote: beats the incumbent on {primary} beyond the CI, guards hold, no forgetting on the canary set"
        if promote
        else f"reject: failed {', '.join(failed)}"
    )
    numbers = {
        "promote": promote,
        "primary": primary,
        "arms": {"candidate": cand[0].arm, "incumbent": inc[0].arm,
                 "candidate_canary": cand_canary[0].arm, "incumbent_canary": inc_canary[0].arm},
        "questions": len(cand),
        "canary_questions": len(cand_canary),
        "bootstrap": {"resamples": resamples, "confidence": confidence, "seed": seed},
        "rules": {"k": rules.k, "support_threshold": rules.support_threshold, "correct_f1": rules.correct_f1,
                  "agree_f1": rules.agree_f1},
        "checks": {c.key: c.numbers for c in checks},
    }  # fmt: skip
    return GateDecision(promote, [verdict] + [c.reason for c in checks], numbers)
