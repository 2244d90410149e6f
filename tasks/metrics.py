"""Evaluation metrics, defined once: every benchmark, the nightly arena and the promotion gate use these.

Retrieval functions take a ranking (ids, best first; duplicates ignored after their first occurrence)
and `relevant` gold ids, and return a value in [0, 1]. Answer metrics take `QuestionResult`s, one per
question and arm, filled by the arena from the evaluation set and the `Answer` each arm returned.

Every metric below is a mean of per-question values (`question_scores`), except paraphrase agreement
(a mean over paraphrase groups) and the latency percentiles. A per-question value of None means "this
question does not count for this metric" (e.g. F1 of an unanswerable question); aggregates are taken
over the values that are not None, and `Estimate.n` says how many that was.

| metric | per question (aggregate = mean unless stated) | range | arms |
|---|---|---|---|
| `hit@k` | 1 if a gold doc is in the top k retrieved docs (k = `ScoringRules.k`, default 5) | [0, 1] | rag, hybrid; answerable only |
| `mrr` | 1 / rank of the first gold doc in the retrieved docs, 0 when absent | [0, 1] | rag, hybrid; answerable only |
| `ndcg@10` | binary-relevance nDCG@10 of the retrieved docs against the gold docs | [0, 1] | rag, hybrid; answerable only |
| `em` | 1 if the normalised answer equals a normalised gold (max over golds) | {0, 1} | all; answerable only |
| `f1` | SQuAD token F1 between normalised answer and gold, max over golds | [0, 1] | all; answerable only |
| `contains` | 1 if a normalised gold occurs in the normalised answer as whole tokens; a bare yes/no gold must be the answer's first word (otherwise "no more than 3" would count as "No") | {0, 1} | all; answerable only |
| `semantic_similarity` | cosine between the answer's embedding and the closest gold's (needs `embed` or vectors on the results; None otherwise) | [-1, 1] | all; answerable only |
| `accuracy` | 1 if correct: `contains`, or `f1` >= `ScoringRules.correct_f1` (0.5) | {0, 1} | all; answerable only |
| `groundedness` | supported sentences / sentences of the answer, per answer (each answer weighs the same, however long) | [0, 1] | rag, hybrid; answered (not abstained) with >= 1 sentence |
| `draft_groundedness` | the same for every draft the validator judged, also those it then withheld as unsupported: how grounded the generator writes, before the validator filters (`groundedness` of what passes it is high by construction) | [0, 1] | rag, hybrid; drafts with >= 1 sentence |
| `hallucination_rate` | 1 if an answerable question was answered wrongly (not `accuracy`) AND unsupported (support None or < `ScoringRules.support_threshold`), or an unanswerable question was answered instead of abstained; else 0 | {0, 1} | all; all questions |
| `abstention_rate` | 1 if abstained | {0, 1} | all; all questions |
| `abstention_precision` | over abstentions: 1 if the question is unanswerable | {0, 1} | all; abstained questions |
| `abstention_recall` | over unanswerable questions: 1 if abstained | {0, 1} | all; unanswerable questions |
| `format_adherence` | 1 if the answer matches `ScoringRules.format_pattern` (default: ends with a `[n]` citation) | {0, 1} | all (pass a pattern that fits the arm); answered only |
| `paraphrase_agreement` | per group of >= 2 paraphrases: mean over its pairs of `answers_agree`; aggregate = mean over groups | [0, 1] | all; questions with a paraphrase group |
| `latency_s` | total seconds for the question (`timings["total"]`, else the sum of its stages) | >= 0 | all; questions with timings |
| `latency_p50.<stage>`, `latency_p95.<stage>` | aggregate only: median / 95th percentile of the stage's seconds (`total` as above) | >= 0 | all |
| `cost_cpu_s` | CPU-seconds spent on the question (mean = cost per answer) | >= 0 | all; questions with `cpu_seconds` |

Scoring details:
- Normalisation (SQuAD, extended to Unicode punctuation): `[n]` citation markers removed, lowercase,
  punctuation removed ("1,000" -> "1000", "£" is a symbol and stays), articles a/an/the dropped,
  whitespace collapsed. Answer-quality metrics cover answerable questions only; an abstention on an
  answerable question scores 0 on each of them. Unanswerable questions are judged by
  `hallucination_rate` and the abstention metrics instead.
- "Unsupported": the grounding score (`support`) is None or below the threshold. Arms without
  retrieval have no sources, so their answers are always unsupported: every wrong closed-book answer
  counts as a hallucination. A wrong answer that the sources do support (e.g. a stale document) is
  not a hallucination; it shows in `f1` and `accuracy`.
- Abstention precision is strict: an abstention on an answerable question counts against it even
  if the model would have answered wrongly, because the evaluation set says the documents answer it.
  All-abstain arm: precision = share of unanswerable questions, recall = 1. Never-abstain arm:
  precision undefined (None, n = 0), recall = 0.
- `answers_agree`: both abstained; or both answered and either both correct, or (for unanswerable
  questions, or both wrong) the token F1 between the two answers >= `ScoringRules.agree_f1` (0.5).
  One abstaining and one answering, or one correct and one wrong, disagree.

Confidence intervals: `bootstrap` is a percentile bootstrap over questions (paraphrase agreement: over
groups), seeded and so deterministic, 1000 resamples and 95 % by default. `paired_difference`
resamples question ids jointly for two arms and gives (candidate - incumbent) with its interval. An
empty set gives `Estimate(None, None, None, 0)` (None, never NaN, so estimates are JSON-safe);
constant values and a single question give a zero-width interval (read `n` before trusting it).
"""

from __future__ import annotations

import math
import re
import string
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from tasks.ground import DEFAULT_THRESHOLD

# --- retrieval -----------------------------------------------------------------------------------


def _dedupe(ranking: Sequence[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for r in ranking:
        if r not in seen:
            seen.add(r)
            out.append(r)
    return out


def recall_at(ranking: Sequence[str], relevant: Iterable[str], k: int) -> float:
    """Share of the relevant ids found in the top k (with one gold id: hit@k)."""
    gold = set(relevant)
    if not gold:
        return 0.0
    return len(set(_dedupe(ranking)[:k]) & gold) / len(gold)


def hit_at(ranking: Sequence[str], relevant: Iterable[str], k: int) -> float:
    """1 if any relevant id is in the top k."""
    return float(bool(set(_dedupe(ranking)[:k]) & set(relevant)))


def reciprocal_rank(ranking: Sequence[str], relevant: Iterable[str], k: int | None = None) -> float:
    """1 / rank of the first relevant id (0 when absent from the top k)."""
    gold = set(relevant)
    for rank, r in enumerate(_dedupe(ranking)[:k], start=1):
        if r in gold:
            return 1.0 / rank
    return 0.0


def ndcg_at(ranking: Sequence[str], relevant: Iterable[str], k: int = 10) -> float:
    """Binary-relevance nDCG@k: DCG of the ranking over DCG of an ideal one."""
    gold = set(relevant)
    if not gold:
        return 0.0
    dcg = sum(1.0 / math.log2(rank + 1) for rank, r in enumerate(_dedupe(ranking)[:k], start=1) if r in gold)
    ideal = sum(1.0 / math.log2(rank + 1) for rank in range(1, min(len(gold), k) + 1))
    return dcg / ideal


# --- per-question records ------------------------------------------------------------------------


@dataclass
class QuestionResult:
    """One arm's answer to one evaluation question, with what the metrics need to judge it.

    `retrieved_docs` is None for arms without retrieval (base, lora) and the ranked doc ids otherwise
    (possibly empty). `support` is the answer's grounding score (None when abstained or not scored);
    `sentences_supported` / `sentences` count the grounding validator's per-sentence verdicts on the
    answer; `withheld_supported` / `withheld_sentences` the same on a draft it withheld as unsupported.
    `answer_vector` / `gold_vectors` are optional embeddings (one row per gold) for semantic
    similarity; `question_scores(..., embed=...)` computes whatever is missing.
    """

    id: str
    question: str
    arm: str
    answerable: bool
    golds: list[str]
    answer: str
    abstained: bool
    gold_docs: list[str] = field(default_factory=list)
    category: str | None = None
    paraphrase_group: str | None = None
    support: float | None = None
    sentences_supported: int = 0
    sentences: int = 0
    withheld_supported: int = 0
    withheld_sentences: int = 0
    quoted: bool = False  # a source sentence quoted for a withheld draft (`retrieval.fallback = "quote"`)
    quote: dict[str, Any] | None = None  # the quote taken or, in calibration, the one that would be ({"text", "similarity"})
    retrieved_docs: list[str] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    cpu_seconds: float | None = None
    answer_vector: np.ndarray | None = field(default=None, repr=False, compare=False)
    gold_vectors: np.ndarray | None = field(default=None, repr=False, compare=False)

    @classmethod
    def of(
        cls,
        item: Mapping[str, Any],
        arm: str,
        answer: Any,
        retrieved_docs: Sequence[str] | None = None,
        cpu_seconds: float | None = None,
    ) -> "QuestionResult":
        """From an evaluation-set row (`demo/eval.jsonl` shape) and a `tasks.answer.Answer`."""
        grounding = [] if answer.abstained else list(answer.grounding)
        withheld = list(answer.grounding) if answer.abstained else []  # a draft the validator withheld
        return cls(
            id=str(item["id"]),
            question=str(item["question"]),
            arm=arm,
            answerable=bool(item["answerable"]),
            golds=list(item.get("answers") or []),
            answer=answer.answer,
            abstained=bool(answer.abstained),
            gold_docs=list(item.get("gold_docs") or []),
            category=item.get("category"),
            paraphrase_group=item.get("paraphrase_group"),
            support=None if answer.abstained else answer.support,
            sentences_supported=sum(1 for g in grounding if g.get("supported")),
            sentences=len(grounding),
            withheld_supported=sum(1 for g in withheld if g.get("supported")),
            withheld_sentences=len(withheld),
            quoted=bool(getattr(answer, "quoted", False)),
            quote=getattr(answer, "quote", None),
            retrieved_docs=None if retrieved_docs is None else list(retrieved_docs),
            timings=dict(answer.timings),
            cpu_seconds=cpu_seconds,
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe record (embeddings left out)."""
        out = {k: v for k, v in self.__dict__.items() if k not in ("answer_vector", "gold_vectors")}
        out["timings"] = {k: round(float(v), 4) for k, v in self.timings.items()}
        return out


@dataclass(frozen=True)
class ScoringRules:
    """The thresholds behind the per-question definitions (see the module docstring)."""

    k: int = 5  # hit@k
    # Below it an answer is unsupported; pass the answerer's `min_support` so both agree.
    support_threshold: float = DEFAULT_THRESHOLD
    correct_f1: float = 0.5  # token F1 at which an answer counts as correct even without `contains`
    agree_f1: float = 0.5  # token F1 between two paraphrases' answers at which they agree
    format_pattern: str | None = r"\[\d+(?:\s*[,;\-–]\s*\d+)*\]\s*[.!?]?\s*$"  # None: format adherence not scored


# --- answer quality ------------------------------------------------------------------------------

_CITATION_MARKER = re.compile(r"\s*\[\d+(?:\s*[,;\-–]\s*\d+)*\]")
_ARTICLES = re.compile(r"\b(?:a|an|the)\b")
_POLAR = frozenset({"yes", "no"})


def _is_punctuation(ch: str) -> bool:
    return ch in string.punctuation or unicodedata.category(ch).startswith("P")


def normalise_answer(text: str) -> str:
    """SQuAD normalisation after removing `[n]` citation markers: lowercase, no punctuation or articles."""
    text = _CITATION_MARKER.sub(" ", text).lower()
    text = "".join(ch for ch in text if not _is_punctuation(ch))
    return " ".join(_ARTICLES.sub(" ", text).split())


def _tokens(text: str) -> list[str]:
    return normalise_answer(text).split()


def _f1(prediction: list[str], gold: list[str]) -> float:
    if not prediction or not gold:
        return float(prediction == gold)
    common = sum((Counter(prediction) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(prediction), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def exact_match(answer: str, golds: Sequence[str]) -> float:
    """1 if the normalised answer equals any normalised gold."""
    a = normalise_answer(answer)
    return float(any(a == normalise_answer(g) for g in golds))


def token_f1(answer: str, golds: Sequence[str]) -> float:
    """SQuAD token F1, the best over golds (0 with no golds)."""
    a = _tokens(answer)
    return max((_f1(a, _tokens(g)) for g in golds), default=0.0)


def contains_gold(answer: str, golds: Sequence[str]) -> float:
    """1 if a normalised gold occurs in the normalised answer as a run of whole tokens.

    A bare "yes"/"no" gold must be the answer's first word: elsewhere "no" is mostly a quantifier.
    """
    a = _tokens(answer)
    for gold in golds:
        g = _tokens(gold)
        if not g:
            continue
        if len(g) == 1 and g[0] in _POLAR:
            if a[:1] == g:
                return 1.0
            continue
        if any(a[i : i + len(g)] == g for i in range(len(a) - len(g) + 1)):
            return 1.0
    return 0.0


def semantic_similarity(answer_vector: np.ndarray, gold_vectors: np.ndarray) -> float:
    """Cosine between the answer's vector and the closest gold vector (rows); vectors need not be normalised."""
    a = np.asarray(answer_vector, dtype=np.float64).ravel()
    g = np.atleast_2d(np.asarray(gold_vectors, dtype=np.float64))
    if g.size == 0 or not np.any(a):
        return 0.0
    norms = np.linalg.norm(g, axis=1) * np.linalg.norm(a)
    cosines = np.divide(g @ a, norms, out=np.zeros(len(g)), where=norms > 0)
    return float(cosines.max())


def is_correct(result: QuestionResult, rules: ScoringRules = ScoringRules()) -> bool:
    """An answered, answerable question whose answer contains a gold or reaches `correct_f1`."""
    if result.abstained or not result.answerable:
        return False
    return bool(contains_gold(result.answer, result.golds)) or token_f1(result.answer, result.golds) >= rules.correct_f1


# --- behaviour -----------------------------------------------------------------------------------


def is_hallucination(result: QuestionResult, rules: ScoringRules = ScoringRules()) -> bool:
    """An unanswerable question answered, or an answerable one answered wrongly without support."""
    if result.abstained:
        return False
    if not result.answerable:
        return True
    unsupported = result.support is None or result.support < rules.support_threshold
    return unsupported and not is_correct(result, rules)


def follows_format(answer: str, pattern: str | re.Pattern[str]) -> bool:
    """Whether the answer matches the pattern (searched, so anchor it with `$`/`^` as needed)."""
    return re.search(pattern, answer.strip()) is not None


def answers_agree(a: QuestionResult, b: QuestionResult, rules: ScoringRules = ScoringRules()) -> bool:
    """Whether two paraphrases got the same behaviour (see the module docstring)."""
    if a.abstained or b.abstained:
        return a.abstained and b.abstained
    if a.answerable and b.answerable:
        ca, cb = is_correct(a, rules), is_correct(b, rules)
        if ca != cb:
            return False
        if ca:
            return True
    return _f1(_tokens(a.answer), _tokens(b.answer)) >= rules.agree_f1


def _paraphrase_groups(results: Sequence[QuestionResult]) -> dict[str, list[QuestionResult]]:
    groups: dict[str, list[QuestionResult]] = {}
    for r in results:
        if r.paraphrase_group is not None:
            groups.setdefault(r.paraphrase_group, []).append(r)
    return {g: rs for g, rs in groups.items() if len(rs) >= 2}


def paraphrase_agreement(results: Sequence[QuestionResult], rules: ScoringRules = ScoringRules()) -> dict[str, float]:
    """Per paraphrase group with >= 2 questions: the share of its pairs whose answers agree."""
    out = {}
    for group, members in _paraphrase_groups(results).items():
        pairs = [(a, b) for i, a in enumerate(members) for b in members[i + 1 :]]
        out[group] = sum(answers_agree(a, b, rules) for a, b in pairs) / len(pairs)
    return out


def total_seconds(timings: Mapping[str, float]) -> float | None:
    """`timings["total"]` when present, else the sum of the stages (None without timings)."""
    if not timings:
        return None
    return float(timings["total"]) if "total" in timings else float(sum(timings.values()))


# --- per-question values -------------------------------------------------------------------------

LOWER_IS_BETTER = frozenset({"hallucination_rate", "latency_s", "cost_cpu_s"})
# Neither direction is better for these: a gate cannot "improve" them.
NO_DIRECTION = frozenset({"abstention_rate"})


def question_scores(
    results: Sequence[QuestionResult],
    rules: ScoringRules = ScoringRules(),
    embed: Callable[[Sequence[str]], np.ndarray] | None = None,
) -> dict[str, list[float | None]]:
    """Every per-question metric value, aligned with `results` (None: the question doesn't count).

    `embed` (e.g. `Embedder.embed`) fills missing answer/gold vectors for semantic similarity in one
    batch; without it, semantic similarity is scored only where the results carry vectors.
    """
    vectors = _semantic_vectors(results, embed)
    groups = _paraphrase_groups(results)
    pattern = re.compile(rules.format_pattern) if rules.format_pattern else None
    names = [f"hit@{rules.k}", "mrr", "ndcg@10", "em", "f1", "contains", "semantic_similarity", "accuracy",
             "groundedness", "draft_groundedness", "hallucination_rate", "abstention_rate", "abstention_precision", "abstention_recall",
             "format_adherence", "paraphrase_agreement", "latency_s", "cost_cpu_s"]  # fmt: skip
    out: dict[str, list[float | None]] = {name: [] for name in names}

    for i, r in enumerate(results):
        v: dict[str, float | None] = dict.fromkeys(names)
        if r.answerable and r.retrieved_docs is not None:
            v[f"hit@{rules.k}"] = hit_at(r.retrieved_docs, r.gold_docs, rules.k)
            v["mrr"] = reciprocal_rank(r.retrieved_docs, r.gold_docs)
            v["ndcg@10"] = ndcg_at(r.retrieved_docs, r.gold_docs, 10)
        if r.answerable:
            answered = not r.abstained
            v["em"] = exact_match(r.answer, r.golds) if answered else 0.0
            v["f1"] = token_f1(r.answer, r.golds) if answered else 0.0
            v["contains"] = contains_gold(r.answer, r.golds) if answered else 0.0
            v["accuracy"] = float(is_correct(r, rules))
            if not answered:
                v["semantic_similarity"] = 0.0
            elif vectors[i] is not None:
                v["semantic_similarity"] = semantic_similarity(*vectors[i])
        if not r.abstained and r.sentences > 0:
            v["groundedness"] = r.sentences_supported / r.sentences
        judged = r.withheld_sentences + (0 if r.abstained else r.sentences)  # the draft is the answer when shown
        if judged > 0:
            v["draft_groundedness"] = (r.withheld_supported + (0 if r.abstained else r.sentences_supported)) / judged
        v["hallucination_rate"] = float(is_hallucination(r, rules))
        v["abstention_rate"] = float(r.abstained)
        if r.abstained:
            v["abstention_precision"] = float(not r.answerable)
        if not r.answerable:
            v["abstention_recall"] = float(r.abstained)
        if pattern is not None and not r.abstained:
            v["format_adherence"] = float(follows_format(r.answer, pattern))
        if r.paraphrase_group in groups:
            others = [o for o in groups[r.paraphrase_group] if o is not r]
            v["paraphrase_agreement"] = sum(answers_agree(r, o, rules) for o in others) / len(others)
        v["latency_s"] = total_seconds(r.timings)
        v["cost_cpu_s"] = None if r.cpu_seconds is None else float(r.cpu_seconds)
        for name in names:
            out[name].append(v[name])
    return out


def _semantic_vectors(
    results: Sequence[QuestionResult], embed: Callable[[Sequence[str]], np.ndarray] | None
) -> list[tuple[np.ndarray, np.ndarray] | None]:
    """(answer vector, gold vectors) per answered answerable question, embedding what's missing in one call."""
    needed = [r.answerable and not r.abstained and bool(r.golds) for r in results]
    texts: list[str] = []
    wanted: list[tuple[int, str]] = []  # (result index, "answer" | "golds")
    if embed is not None:
        for i, r in enumerate(results):
            if needed[i] and r.answer_vector is None:
                wanted.append((i, "answer"))
                texts.append(_CITATION_MARKER.sub("", r.answer).strip())
            if needed[i] and r.gold_vectors is None:
                wanted.append((i, "golds"))
                texts.extend(r.golds)
    embedded = np.asarray(embed(texts)) if texts and embed is not None else np.zeros((0, 0))
    fresh: dict[tuple[int, str], np.ndarray] = {}
    row = 0
    for i, kind in wanted:
        count = 1 if kind == "answer" else len(results[i].golds)
        fresh[(i, kind)] = embedded[row] if kind == "answer" else embedded[row : row + count]
        row += count
    out: list[tuple[np.ndarray, np.ndarray] | None] = []
    for i, r in enumerate(results):
        a = r.answer_vector if r.answer_vector is not None else fresh.get((i, "answer"))
        g = r.gold_vectors if r.gold_vectors is not None else fresh.get((i, "golds"))
        out.append((a, g) if needed[i] and a is not None and g is not None else None)
    return out


# --- estimates and confidence intervals ---------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its bootstrap interval; all None (never NaN) when n == 0."""

    value: float | None
    low: float | None
    high: float | None
    n: int

    def as_dict(self, digits: int = 4) -> dict[str, Any]:
        def r(x: float | None) -> float | None:
            return None if x is None else round(x, digits)

        return {"value": r(self.value), "low": r(self.low), "high": r(self.high), "n": self.n}

    def __str__(self) -> str:
        if self.value is None:
            return "– (n=0)"
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}] (n={self.n})"


EMPTY = Estimate(None, None, None, 0)


def _mean_rows(x: np.ndarray) -> np.ndarray:
    return x.mean(axis=1)


def percentile_statistic(q: float) -> Callable[[np.ndarray], np.ndarray]:
    """A statistic for `bootstrap`: the q-th percentile of each row."""
    return lambda x: np.percentile(x, q, axis=1)


def _interval(replicates: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(replicates, [alpha, 1.0 - alpha])
    return float(low), float(high)


def _check_bootstrap(resamples: int, confidence: float) -> None:
    if resamples < 1 or not 0.0 < confidence < 1.0:
        raise ValueError(f"bootstrap needs resamples >= 1 and 0 < confidence < 1, got {resamples} and {confidence}")


def bootstrap(
    values: Sequence[float | None],
    statistic: Callable[[np.ndarray], np.ndarray] = _mean_rows,
    *,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Estimate:
    """Percentile-bootstrap interval of `statistic` over the non-None values.

    `statistic` maps a 2-D array to one value per row (default the row mean; `percentile_statistic`
    for quantiles).
    """
    _check_bootstrap(resamples, confidence)
    x = np.array([v for v in values if v is not None], dtype=np.float64)
    if len(x) == 0:
        return EMPTY
    point = float(statistic(x[None, :])[0])
    idx = np.random.default_rng(seed).integers(0, len(x), size=(resamples, len(x)))
    low, high = _interval(statistic(x[idx]), confidence)
    return Estimate(point, low, high, len(x))


def _defined_mean_rows(x: np.ndarray) -> np.ndarray:
    """Row means over the non-NaN entries (NaN for a row with none), without warnings."""
    valid = ~np.isnan(x)
    counts = valid.sum(axis=1)
    sums = np.where(valid, x, 0.0).sum(axis=1)
    return np.divide(sums, counts, out=np.full(len(x), np.nan), where=counts > 0)


def paired_difference(
    a_values: Sequence[float | None],
    b_values: Sequence[float | None],
    *,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Estimate:
    """Mean(a) - mean(b) over the same questions (aligned lists), with a paired bootstrap interval.

    Question ids are resampled jointly; each side's mean is taken over its non-None values, so the
    point estimate is exactly the difference of the two arms' aggregates. `n` counts the questions
    where either side has a value; resamples where one side has none are dropped.
    """
    _check_bootstrap(resamples, confidence)
    if len(a_values) != len(b_values):
        raise ValueError(f"paired_difference needs aligned lists, got {len(a_values)} and {len(b_values)} values")
    pairs = [(a, b) for a, b in zip(a_values, b_values) if a is not None or b is not None]
    a = np.array([np.nan if p[0] is None else p[0] for p in pairs], dtype=np.float64)
    b = np.array([np.nan if p[1] is None else p[1] for p in pairs], dtype=np.float64)
    if np.isnan(a).all() or np.isnan(b).all():
        return Estimate(None, None, None, len(pairs))
    point = float(_defined_mean_rows(a[None, :])[0] - _defined_mean_rows(b[None, :])[0])
    idx = np.random.default_rng(seed).integers(0, len(pairs), size=(resamples, len(pairs)))
    diffs = _defined_mean_rows(a[idx]) - _defined_mean_rows(b[idx])
    diffs = diffs[~np.isnan(diffs)]
    low, high = _interval(diffs, confidence) if len(diffs) else (point, point)
    return Estimate(point, low, high, len(pairs))


# --- one arm -------------------------------------------------------------------------------------


def check_results(results: Sequence[QuestionResult], what: str = "results") -> None:
    """One arm, each question once: anything else would be averaged into nonsense."""
    arms = sorted({r.arm for r in results})
    if len(arms) > 1:
        raise ValueError(f"{what} mix arms {arms}: pass one arm's results at a time")
    dupes = sorted(i for i, c in Counter(r.id for r in results).items() if c > 1)
    if dupes:
        raise ValueError(f"{what} contain question ids more than once: {dupes[:5]}; pass one result per question")


def latency_percentiles(
    results: Sequence[QuestionResult], *, resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> dict[str, Estimate]:
    """`latency_p50.<stage>` and `latency_p95.<stage>` for every stage seen, and for `total`."""
    stages = sorted({s for r in results for s in r.timings if s != "total"})
    per_stage = {s: [r.timings.get(s) for r in results] for s in stages}
    per_stage["total"] = [total_seconds(r.timings) for r in results]
    out = {}
    for q in (50, 95):
        for stage, values in per_stage.items():
            out[f"latency_p{q}.{stage}"] = bootstrap(
                values, percentile_statistic(q), resamples=resamples, confidence=confidence, seed=seed
            )
    return out


def arm_metrics(
    results: Sequence[QuestionResult],
    rules: ScoringRules = ScoringRules(),
    embed: Callable[[Sequence[str]], np.ndarray] | None = None,
    *,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Estimate]:
    """Every metric of the module table for one arm's results, each with its bootstrap interval."""
    check_results(results)
    ci = {"resamples": resamples, "confidence": confidence, "seed": seed}
    scores = question_scores(results, rules, embed)
    out = {name: bootstrap(values, **ci) for name, values in scores.items()}
    out["paraphrase_agreement"] = bootstrap(list(paraphrase_agreement(results, rules).values()), **ci)
    out.update(latency_percentiles(results, **ci))
    return out
