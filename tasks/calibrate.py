"""Calibrate the grounding threshold on the generator's own answers.

The validator's default threshold (`tasks.ground.DEFAULT_THRESHOLD`) was fitted on HaluEval, where
right and hallucinated answers are written by people. A small generator's answers look different:
on SmolLM2's answers the same threshold withheld many right answers (bench/results/grounding-latest.md).
So before an evaluation, the grounded answerer drafts answers to questions outside the scored
split (the evaluation file's `train` split by default), each draft is labelled right or wrong, and
the threshold is chosen where keeping answers pays most:

    utility(t) = right drafts kept - wrong_cost x wrong drafts kept,   kept = support >= t

A draft is right when it would count as correct (`tasks.metrics.is_correct`); any draft for an
unanswerable question is wrong (answering it is a hallucination). Ties go to the higher threshold.

A threshold fitted on a few dozen drafts can fit their noise: on the demo's 46 training-split drafts
the best threshold (0.78) kept 3 right / 1 wrong there but 2 right / 3 wrong on the test split, where
the default kept 12 / 7. So the fitted threshold is adopted only when it generalises within the
drafts themselves: over random halvings, the threshold chosen on one half must beat the default on
the other half in at least `adopt_share` of the splits. Otherwise, with too few drafts, or with
drafts of one kind only, the default stays and the calibration says why.

The quote fallback's floor (`retrieval.fallback = "quote"`) is fitted the same way on the same drafts:
each draft that the chosen threshold withholds (and each the model withheld itself) is paired with
the source sentence a quote would take and its similarity to the question; a quote is right when it
contains the gold answer, and any quote for an unanswerable question is wrong. A floor that does not
transfer between corpora (0.4 answered 17 of the demo's 18 unanswerable questions) is thus chosen
on the corpus it serves, or the default stays with the reason.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from tasks import atomic
from tasks.metrics import QuestionResult, ScoringRules, is_correct

if TYPE_CHECKING:
    from tasks.config import Settings
    from tasks.evalset import EvalSet

# Just above the highest support seen: withhold every judged draft. Only offered while that stays
# <= 1.0, the largest threshold the answerer takes (drafts with nothing checkable score 1.0 and pass any).
ABOVE = 1e-9
# Fewer withheld drafts than grounding drafts exist, so the quote floor is fitted on fewer (the held-out
# halvings still decide whether it is adopted).
QUOTE_MIN_DRAFTS = 12


@dataclass
class Calibration:
    """The chosen threshold, what it was chosen on, and what it changes there."""

    threshold: float
    default: float
    calibrated: bool  # False: the default was kept (see `reason`)
    reason: str
    wrong_cost: float
    drafts: int  # drafts whose support decided (the model did not abstain itself)
    right: int
    wrong: int
    auroc: float | None  # P(a right draft gets more support than a wrong one)
    fitted: float | None = None  # the utility-maximising threshold on all drafts (adopted only if it generalises)
    held_out_wins: float | None = None  # share of halvings where the half-fitted threshold beat the default
    at_default: dict[str, int] = field(default_factory=dict)  # kept / right_kept / wrong_kept at the default
    at_threshold: dict[str, int] = field(default_factory=dict)
    key: str = ""
    generator: str = ""  # fingerprint of the generator whose drafts it was chosen on
    scope: dict[str, Any] = field(default_factory=dict)  # what else `ask` must share to use it (`answer_scope`)
    created_at: str = ""
    rows: int = 0  # calibration rows drafted for it (0: nothing drafted)
    limited: bool = False  # drafted on the first rows only (a limited run): used by that run, never saved
    what: str = "grounding threshold"
    quote: "Calibration | None" = None  # the quote fallback's floor, fitted on the withheld drafts' quotes

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Calibration":
        """From its JSON record (`asdict`), the quote floor's nested one included."""
        quote = data.get("quote")
        return cls(**{**data, "quote": cls(**quote) if isinstance(quote, dict) else None})

    @classmethod
    def default_kept(cls, default: float, wrong_cost: float, reason: str, **measured: Any) -> "Calibration":
        """The default threshold and why; `measured`: what was seen of the drafts, if any."""
        counts = {"drafts": 0, "right": 0, "wrong": 0, "auroc": None, **measured}
        return cls(threshold=default, default=default, calibrated=False, reason=reason, wrong_cost=wrong_cost,
                   at_threshold=dict(counts.get("at_default", {})), **counts)

    def summary(self) -> str:
        text = self._summary()
        if self.quote is not None:
            text += f"; {self.quote._summary()}"
        if self.limited:
            text += f" (limited run: drafted only the first {self.rows} calibration rows; not saved for other runs)"
        return text

    def origin(self) -> str:
        """The threshold and where it came from, in a few words (a limited run's notes)."""
        t = f"{self.threshold:.3f}"
        if self.limited:
            return f"{t} from drafts to the first {self.rows} calibration rows only (not saved)"
        if self.key:  # drafted now or stored: made on every calibration row
            return f"{t} from a calibration on every calibration row"
        return f"{t}, the default ({self.reason})"

    def _summary(self) -> str:
        if not self.calibrated:
            seen = ""
            if self.drafts:
                auroc = f", AUROC {self.auroc:.2f}" if self.auroc is not None else ""
                seen = f" on {self.drafts} drafts ({self.right} right, {self.wrong} wrong{auroc})"
            return f"{self.what} {self.threshold:.3f}: default kept{seen}: {self.reason}"
        d, t = self.at_default, self.at_threshold
        return (
            f"{self.what} {self.threshold:.3f} (default {self.default:.3f}), chosen on {self.drafts} drafts "
            f"({self.right} right, {self.wrong} wrong, AUROC {self.auroc:.2f}): keeps {t['right_kept']} right / "
            f"{t['wrong_kept']} wrong, where the default kept {d['right_kept']} / {d['wrong_kept']}"
        )


def kept(supports: Sequence[float], right: Sequence[bool], threshold: float) -> dict[str, int]:
    keep = [s >= threshold for s in supports]
    return {
        "kept": sum(keep),
        "right_kept": sum(k and r for k, r in zip(keep, right)),
        "wrong_kept": sum(k and not r for k, r in zip(keep, right)),
    }


def auroc(supports: Sequence[float], right: Sequence[bool]) -> float | None:
    """Share of (right, wrong) pairs where the right draft has more support (ties count half)."""
    pos = [s for s, r in zip(supports, right) if r]
    neg = [s for s, r in zip(supports, right) if not r]
    if not pos or not neg:
        return None
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def utility(supports: Sequence[float], right: Sequence[bool], threshold: float, wrong_cost: float) -> float:
    k = kept(supports, right, threshold)
    return k["right_kept"] - wrong_cost * k["wrong_kept"]


def best_threshold(supports: Sequence[float], right: Sequence[bool], wrong_cost: float) -> float:
    """The support value (or just above the highest: withhold all) where keeping answers pays most; ties go higher.

    Every candidate is a threshold the answerer can use as it is (<= 1.0). One sweep from the highest
    support down, so the held-out check's 200 fits stay cheap on large calibration sets.
    """
    best, best_gain = None, 0.0
    if supports and max(supports) + ABOVE <= 1.0:
        best = max(supports) + ABOVE  # keep nothing: utility 0
    gain = 0.0
    pairs = sorted(zip(supports, right), reverse=True)
    for i, (support, is_right) in enumerate(pairs):
        gain += 1.0 if is_right else -wrong_cost
        if i + 1 < len(pairs) and pairs[i + 1][0] == support:
            continue  # a threshold keeps every draft with this support
        if best is None or gain > best_gain:
            best, best_gain = support, gain
    return 0.0 if best is None else best


def held_out_wins(
    supports: Sequence[float], right: Sequence[bool], wrong_cost: float, default: float, splits: int = 100, seed: int = 0
) -> float:
    """Share of random halvings (both ways) where the threshold fitted on one half beats the default on the other."""
    rng = random.Random(seed)
    index = list(range(len(supports)))
    wins = 0
    for _ in range(splits):
        rng.shuffle(index)
        half = len(index) // 2
        for fit, test in ((index[:half], index[half:]), (index[half:], index[:half])):
            t = best_threshold([supports[i] for i in fit], [right[i] for i in fit], wrong_cost)
            s, r = [supports[i] for i in test], [right[i] for i in test]
            wins += utility(s, r, t, wrong_cost) > utility(s, r, default, wrong_cost)
    return wins / (2 * splits)


def choose_threshold(
    supports: Sequence[float],
    right: Sequence[bool],
    wrong_cost: float,
    default: float,
    min_drafts: int = 20,
    adopt_share: float = 0.8,
    what: str = "grounding threshold",
) -> Calibration:
    """The utility-maximising threshold when it generalises, else the default (see the module docstring)."""
    n_right = sum(right)
    n_wrong = len(right) - n_right
    measured: dict[str, Any] = dict(drafts=len(supports), right=n_right, wrong=n_wrong, auroc=auroc(supports, right),
                                    at_default=kept(supports, right, default))
    if len(supports) < min_drafts:
        reason = f"only {len(supports)} drafts to calibrate on (at least {min_drafts} needed)"
        return Calibration.default_kept(default, wrong_cost, reason, what=what, **measured)
    if n_right == 0 or n_wrong == 0:
        reason = f"all {len(supports)} drafts were {'right' if n_wrong == 0 else 'wrong'}: nothing to separate"
        return Calibration.default_kept(default, wrong_cost, reason, what=what, **measured)
    fitted = best_threshold(supports, right, wrong_cost)
    wins = held_out_wins(supports, right, wrong_cost, default)
    gain = f"right - {wrong_cost:g} x wrong kept: {utility(supports, right, fitted, wrong_cost):+g} at {fitted:.3f}, " \
           f"{utility(supports, right, default, wrong_cost):+g} at the default"
    if wins < adopt_share:
        reason = (f"the fitted threshold {fitted:.3f} does not generalise: fitted on half the drafts it beat the default "
                  f"on the other half in {wins:.0%} of splits (needs {adopt_share:.0%}); {gain}")
        return Calibration.default_kept(default, wrong_cost, reason, fitted=fitted, held_out_wins=wins, what=what, **measured)
    return Calibration(
        threshold=float(fitted), default=default, calibrated=True, wrong_cost=wrong_cost, what=what,
        reason=f"{gain}; beat the default on held-out halves in {wins:.0%} of splits",
        at_threshold=kept(supports, right, fitted), fitted=fitted, held_out_wins=wins, **measured,
    )


def choose_quote_floor(similarities: Sequence[float], right: Sequence[bool], wrong_cost: float, default: float) -> Calibration:
    """The quote floor, chosen like the grounding threshold (`choose_threshold`); and when no fitted floor
    generalises but quoting at the default pays nothing or less on these drafts (as many wrong quotes as
    right ones, or more), a floor above every quote seen: on this corpus, quoting does not pay."""
    c = choose_threshold(similarities, right, wrong_cost, default, min_drafts=QUOTE_MIN_DRAFTS, what="quote floor")
    if c.calibrated or len(similarities) < QUOTE_MIN_DRAFTS:
        return c
    at_default = utility(similarities, right, default, wrong_cost)
    if at_default > 0:
        return c
    never = max(similarities) + ABOVE
    return replace(c, threshold=never, calibrated=True, at_threshold=kept(similarities, right, never),
                   reason=f"quoting at the default {default:g} pays {at_default:+g} (right - {wrong_cost:g} x wrong quotes) "
                   f"and no fitted floor generalised ({c.reason}): quote nothing")  # fmt: skip


def draft_labels(results: Sequence[QuestionResult], rules: ScoringRules = ScoringRules()) -> tuple[list[float], list[bool]]:
    """(support, right) of every draft the validator judged: answered with a support score.

    Pass results of an answerer that withholds nothing on support (`min_support=0`), so every
    draft the model wrote is here; abstentions of the model itself and of retrieval are left out, and
    so are quotes (`retrieval.fallback`): a quoted source sentence is not a draft.
    """
    supports, right = [], []
    for r in results:
        if r.abstained or r.support is None or r.quoted:
            continue
        supports.append(float(r.support))
        right.append(r.answerable and is_correct(r, rules))
    return supports, right


def quote_labels(
    results: Sequence[QuestionResult], threshold: float, rules: ScoringRules = ScoringRules()
) -> tuple[list[float], list[bool]]:
    """(similarity, right) of the quote each draft withheld at `threshold` would get instead.

    Pass results of an answerer that withholds nothing on support and probes quotes (`QuoteRule.probe`):
    a draft is withheld when its support is below `threshold` or the model abstained itself; its quote
    (`QuestionResult.quote`) is right when it would count as correct, and wrong for an unanswerable question.
    """
    similarities, right = [], []
    for r in results:
        if r.quote is None or r.quoted:
            continue
        if not (r.abstained or (r.support is not None and r.support < threshold)):
            continue  # kept as written: no quote would be given
        as_answer = replace(r, answer=str(r.quote["text"]), abstained=False)
        similarities.append(float(r.quote["similarity"]))
        right.append(r.answerable and is_correct(as_answer, rules))
    return similarities, right


def calibration_key(parts: dict[str, Any]) -> str:
    """What a calibration depends on (generator, adapter, retrieval and grounding settings, the rows)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_calibration(path: Path) -> Calibration | None:
    """The stored calibration, or None when there is none (or it cannot be read: recalibrate)."""
    if not path.is_file():
        return None
    try:
        return Calibration.from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError, AttributeError):
        return None


def load_calibration(path: Path, key: str) -> Calibration | None:
    """The stored calibration when it was made for `key` (same generator, settings and rows), else None."""
    found = read_calibration(path)
    return found if found is not None and found.key == key else None


def answer_scope(settings: "Settings", table: str | None = None) -> dict[str, Any]:
    """What answers outside an evaluation must share with it to use its threshold: the index, the
    embedder, the grounding default and the generation settings."""
    return {"table": table or settings.store.table, "embedder": settings.embedder.model,
            "default": settings.retrieval.min_support, "generation": settings.generator.model_dump(mode="json")}


def stored_calibration(path: Path, generator: str, scope: dict[str, Any]) -> Calibration | None:
    """The last evaluation's calibration when it was made for this generator and scope (for answering outside evaluations)."""
    found = read_calibration(path)
    if found is None or found.generator != generator or found.scope != scope:
        return None
    return found



def save_calibration(
    calibration: Calibration, path: Path, key: str, generator: str = "", scope: dict[str, Any] | None = None
) -> Calibration:
    calibration.key, calibration.generator, calibration.scope = key, generator, dict(scope or {})
    calibration.created_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(path, json.dumps(asdict(calibration), indent=2) + "\n")
    return calibration


def calibrate_grounding(
    settings: "Settings",
    evaluated: "EvalSet",
    table: str | None,
    table_version: int | None,
    limit: int | None = None,
) -> Calibration:
    """The grounding threshold for an evaluation of `evaluated`: fitted on the base generator's drafts
    to the `evaluation.calibration_split` rows of the same file, or the default with the reason.

    The base generator drafts for every retrieval arm: the adapters were trained on that split, so
    their drafts there would look better than on unseen questions. A stored calibration is reused
    while the generator, the grounding scorer (a trained one by its file's content), the retrieval and
    generation settings, the rows and the index are unchanged.

    `limit` (a limited run): a stored calibration of the full rows is still reused; otherwise only the
    first `limit` rows are drafted, and the result serves this run only: it is not saved, so full runs
    and `ask` never pick up a threshold fitted on a few rows.
    """
    from tasks.arena import ArmSpec, run_arm
    from tasks.evalset import EvalSetError, first, load_eval_set, spread
    from tasks.ground import DEFAULT_WEIGHTS
    from tasks.ground_model import grounding_scorer_identity
    from tasks.models import generator_fingerprint
    from tasks.progress import progress_bar
    from tasks.resources import make_answerer, search_filters

    e, default = settings.evaluation, settings.retrieval.min_support
    if not e.calibrate_grounding:
        return Calibration.default_kept(default, e.calibration_wrong_cost, "evaluation.calibrate_grounding is off")
    if e.calibration_split == evaluated.split:
        reason = f"calibration split {e.calibration_split!r} is the evaluated split: name a held-out split"
        return Calibration.default_kept(default, e.calibration_wrong_cost, reason)
    try:
        rows = spread(load_eval_set(evaluated.path, e.calibration_split, strict=True), e.calibration_limit)
    except EvalSetError:
        reason = f"no rows with split {e.calibration_split!r} in {evaluated.path}"
        return Calibration.default_kept(default, e.calibration_wrong_cost, reason)
    shared = {r["id"] for r in rows.rows} & {r["id"] for r in evaluated.rows}
    if shared:  # e.g. evaluation.split = null evaluates every row, the calibration rows included
        reason = f"{len(shared)} calibration rows are also evaluated (e.g. {sorted(shared)[0]!r}): evaluate a split without them"
        return Calibration.default_kept(default, e.calibration_wrong_cost, reason)
    generator = generator_fingerprint(settings.generator.model, settings.models_dir)
    parts = {
        "generator": generator, "generation": settings.generator.model_dump(mode="json"),
        # The fallback is left out: the quotes are probed whichever is configured (`QuoteRule.probe`).
        "retrieval": settings.retrieval.model_dump(mode="json", exclude={"min_support", "calibrated_support", "fallback"}),
        "quotes": "probed",
        "embedder": settings.embedder.model, "weights": DEFAULT_WEIGHTS, "rows": rows.hash,
        "scorer": grounding_scorer_identity(settings.retrieval.grounding_scorer),
        "table": table or settings.store.table, "table_version": table_version,
        "wrong_cost": e.calibration_wrong_cost, "default": default,
    }  # fmt: skip
    key = calibration_key(parts)
    stored = load_calibration(settings.calibration_file, key)
    if stored is not None:
        return stored
    drafted = first(rows, limit)
    # Withhold nothing and quote nothing: every draft is judged as written, and the quote it would get is recorded.
    r = settings.retrieval
    answerer = make_answerer(settings, table, retrieval=True, min_support=0.0, quote="probe")
    with progress_bar(f"{'calibration':>16}", len(drafted.rows), unit="q") as advance:
        run = run_arm(ArmSpec("calibration", "rag", True), drafted.rows, answerer, search_filters(settings),
                      settings.generator.batch_size, on_batch=advance)  # fmt: skip
    rules = ScoringRules(k=r.k)
    supports, right = draft_labels(run.results, rules)
    calibration = choose_threshold(supports, right, e.calibration_wrong_cost, default)
    similarities, quoted_right = quote_labels(run.results, calibration.threshold, rules)
    calibration.quote = choose_quote_floor(similarities, quoted_right, e.calibration_wrong_cost, r.quote_min_similarity)
    calibration.rows = len(drafted.rows)
    if len(drafted.rows) < len(rows.rows):
        calibration.limited = True
        calibration.key, calibration.generator = calibration_key({**parts, "rows": drafted.hash}), generator
        calibration.created_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        return calibration
    return save_calibration(calibration, settings.calibration_file, key, generator, scope=answer_scope(settings, table))
