"""A trained grounding scorer: does a draft look like one of the generator's right answers?

`LexicalSemanticScorer` asks "is every sentence supported by the sources?". On a small generator's
own drafts that barely separates right from wrong (AUROC 0.57 on SmolLM2's HaluEval drafts), because
most wrong drafts copy or recombine passage words too. `TrainedGroundingScorer` keeps that support and
adds span features of the whole answer (below), combined by a logistic regression fitted on the
generator's own drafts labelled by whether they contain the gold answer: not on HaluEval's
hallucinated answers, whose length alone gives them away (../shared/STACK.md).

Features per (answer, sources, question), on the answer without citation markers, refusal sentences
and answer boilerplate ("The answer is:"):
- `support`, `lexical`, `semantic`: the lexical-semantic scorer's answer support and its weakest
  sentence's components;
- `verbatim`, `verbatim_rank`, `verbatim_cited`: the answer appears whole (word boundaries, case
  aside) in a source; 1/(1 + rank) of the first such source; in a source it cites;
- `top_share`: share of its content tokens found in the first (best-ranked) source;
- `copied_run`: the longest run of its words found verbatim in a source, as a share of its words;
  `copies_sentence`: it contains a whole source sentence of 5 words or more;
- `novel_share`, `novel_found`, `log_novel`: its content tokens that the question does not already
  contain (a draft that restates the question answers nothing), the share of those found in the
  sources, and their number;
- `novel_in_question_sentence`: share of those new tokens found in the source sentence that overlaps
  the question most (where the answer usually is);
- `question_share`: share of the question's content tokens the answer repeats;
  `question_similarity`: cosine of the answer and the question (restating it answers nothing);
  `question_sentence_similarity`: cosine of the answer and the source sentence closest to the question;
- `type_match`: the new tokens hold what the question asks for (a number for "how many"/"when", a
  name for "who"/"where"/"which city", anything for other questions); `yes_no`: a yes/no question
  answered yes or no; `choice`, `options_named`: an "A or B?" question, and the share of its two
  options the answer names (naming both says nothing about which it chose);
- `log_words`, `unfinished`: answer length, and whether it stops mid-sentence.

The output stays a `SentenceSupport` per sentence so the answerer, the evaluation and the reports need
no change: every checkable sentence carries the answer's probability of being right (the model judges
the answer, not each sentence), untrusted contact details still score 0, and refusals and content-free
sentences stay as the lexical scorer left them. Select it with `retrieval.grounding_scorer =
"trained:<path>"`; `bench/grounding.py` fits, saves and measures it.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from tasks.ground import (
    LexicalSemanticScorer,
    SentenceSupport,
    answer_support,
    content_tokens,
    is_refusal,
    source_windows,
    split_sentences,
    strip_citations,
    vocabulary,
)

if TYPE_CHECKING:
    from tasks.embed import Embedder

FORMAT = "ragtune-grounding-logistic/1"
FEATURES = (
    "support",
    "lexical",
    "semantic",
    "verbatim",
    "verbatim_rank",
    "verbatim_cited",
    "top_share",
    "copied_run",
    "copies_sentence",
    "novel_share",
    "novel_found",
    "log_novel",
    "novel_in_question_sentence",
    "question_share",
    "question_similarity",
    "question_sentence_similarity",
    "type_match",
    "yes_no",
    "choice",
    "options_named",
    "log_words",
    "unfinished",
)
L2_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)

_BOILERPLATE = re.compile(
    r"^(?:(?:according to|based on|from) the (?:passages?|context|text|sources?|documents?),?\s*"
    r"|(?:the )?(?:correct |final |short )?answer(?: to (?:this|the|your) question)? is:?\s*"
    r"|(?:yes|no)\s*[,.!]\s*)",
    re.IGNORECASE,
)
_WORD = re.compile(r"\w+(?:[.,'’]\w+)*")
_YES_NO_QUESTION = re.compile(
    r"^\s*(?:is|are|was|were|do|does|did|can|could|has|have|had|will|would|should)\b", re.IGNORECASE
)
_ASKS_NUMBER = re.compile(
    r"\b(?:how (?:many|much|old|long|tall|far|big|large|high|often)|when|what (?:year|date|decade|century|age)"
    r"|which (?:year|decade|century)|in what year|population|number of)\b",
    re.IGNORECASE,
)
_ASKS_NAME = re.compile(
    r"^\s*(?:who|whom|whose|where)\b|\b(?:what|which) (?:city|country|state|town|county|company|band|team"
    r"|actor|actress|person|man|woman|author|writer|director|singer|player|university|school|network"
    r"|magazine|film|movie|album|song|group|organization|party|river|island|region|province|language)\b",
    re.IGNORECASE,
)
_NAME_JOINERS = frozenset("of the and de da van von del la le du y for on in at & 's".split())
_MONTHS = frozenset("january february march april may june july august september october november december".split())


# --- features ----------------------------------------------------------------------------------


def answer_core(answer: str, sources: int = 999) -> tuple[str, tuple[int, ...]]:
    """(the answer's claim text, the 0-based sources it cites): citation markers, refusal sentences
    and boilerplate ("The answer is:", "According to the passage,") removed."""
    kept, cited = [], []
    for sentence in split_sentences(answer):
        text, c = strip_citations(sentence, sources)
        cited += [i for i in c if i not in cited]
        if text and not is_refusal(text):
            previous = None
            while previous != text:  # "The answer is: Yes, ..." strips twice
                previous, text = text, _BOILERPLATE.sub("", text, count=1).strip()
            if text:
                kept.append(text)
    return " ".join(kept), tuple(cited)


def _flat(text: str) -> str:
    return " ".join(_WORD.findall(text.lower().replace("’", "'")))


def _contains(haystack_flat: str, needle_flat: str) -> bool:
    """Whole-word containment on texts flattened by `_flat` (words joined by single spaces)."""
    return bool(needle_flat) and f" {needle_flat} " in f" {haystack_flat} "


def _longest_copied_run(words: Sequence[str], sources_flat: Sequence[str]) -> int:
    """The most consecutive answer words found verbatim in one source."""
    best = 0
    for i in range(len(words)):
        # A run can only beat `best` if it is longer, so start each search there.
        j = i + best + 1
        while j <= len(words) and any(_contains(s, " ".join(words[i:j])) for s in sources_flat):
            best = j - i
            j += 1
    return best


def _best_question_sentence(question_vocab: frozenset[str], sources: Sequence[str]) -> frozenset[str]:
    """The vocabulary of the source sentence sharing the most content tokens with the question."""
    best: frozenset[str] = frozenset()
    best_overlap = 0
    for s in sources:
        for window in source_windows(s):
            v = vocabulary(window)
            overlap = len(question_vocab & v)
            if overlap > best_overlap:
                best, best_overlap = v, overlap
    return best


def choice_options(question: str) -> tuple[str, str] | None:
    """The two options of an "A or B?" question ("Which magazine was started first, Arthur's Magazine
    or First for Women?" -> ("Arthur's Magazine", "First for Women")), or None.

    The second option runs from the last " or " to the question mark; the first is the run of
    capitalised words (names) before it, or as many words as the second has when there is none.
    """
    between = re.search(r"\b(?i:between)\s+(?:the\s+)?(?:two\s+[a-z]+\s+(?:[a-z]+\s+)?)?(.+?)\s+and\s+(.+?)\s*(?:[,?]|$)", question)
    if between:  # "Between two tennis players Kim Clijsters and Mary Pierce, who is older?"
        return between.group(1).strip(" \"'"), between.group(2).strip(" \"'")
    m = re.search(r"^(.*)\s+or\s+([^?]+?)\s*\?*\s*$", question.strip(), re.IGNORECASE)
    if m is None:
        return None
    before = m.group(1).rstrip(" ,").split()
    second = m.group(2).strip(" ,\"'")
    first: list[str] = []
    for word in reversed(before):
        bare = word.strip(",\"'()")
        if bare[:1].isupper() or bare[:1].isdigit() or (first and bare.lower() in _NAME_JOINERS):
            first.insert(0, bare)
        else:
            break
    while first and first[0].lower() in _NAME_JOINERS:
        first.pop(0)
    if not first:
        first = [w.strip(",\"'()") for w in before[-max(1, len(second.split())) :]]
    return (" ".join(first), second) if first and second else None


def _names(option: str, answer_vocab: frozenset[str]) -> bool:
    keys = [t.key for t in content_tokens(option, 1.0, 1.0)] or [k for k in vocabulary(option)]
    return bool(keys) and sum(k in answer_vocab for k in keys) * 2 > len(keys)


def draft_features(
    answer: str,
    sources: Sequence[str],
    question: str,
    supports: Sequence[SentenceSupport],
    vectors: Callable[[list[str]], dict[str, np.ndarray]] | None = None,
) -> dict[str, float]:
    """The features of one draft (see the module docstring), from its text, ranked sources, question
    and the lexical-semantic scorer's `supports` for it; `vectors` (texts -> unit vectors) gives the
    embedding features, 0 without it."""
    core, cited = answer_core(answer, len(sources))
    words = _flat(core).split()
    tokens = content_tokens(core)
    keys = [t.key for t in tokens]
    sources_flat = [_flat(s) for s in sources]
    vocabs = [vocabulary(s) for s in sources]
    every = frozenset().union(*vocabs) if vocabs else frozenset()
    core_flat = " ".join(words)
    where = [j for j, s in enumerate(sources_flat) if _contains(s, core_flat)] if keys else []
    run = _longest_copied_run(words, sources_flat) if words else 0
    sentences_flat = [_flat(w) for s in sources for w in source_windows(s)]
    question_vocab = frozenset(t.key for t in content_tokens(question))
    novel = [k for k in keys if k not in question_vocab]
    q_sentence = _best_question_sentence(question_vocab, sources) if novel and question_vocab else frozenset()
    checkable = [s for s in supports if s.checkable]
    asks_number, asks_name = bool(_ASKS_NUMBER.search(question)), bool(_ASKS_NAME.search(question))
    novel_tokens = [t for t in tokens if t.key not in question_vocab]
    has_number = any(any(c.isdigit() for c in t.key) or t.key in _MONTHS for t in novel_tokens)
    has_name = any(t.weight > 1.0 and not any(c.isdigit() for c in t.key) for t in novel_tokens)
    if asks_number:
        type_match = float(has_number)
    elif asks_name:
        type_match = float(has_name)
    else:
        type_match = float(bool(novel_tokens))
    first_word = (_WORD.findall(answer.lower()) or [""])[0]
    q_sim = q_sentence_sim = 0.0
    if vectors is not None and core and question.strip():
        windows = [w for s in sources for w in source_windows(s)]
        found = vectors([core, question, *windows])
        a, q = found[core], found[question]
        q_sim = float(a @ q)
        if windows:
            closest = max(windows, key=lambda w: float(found[w] @ q))
            q_sentence_sim = float(a @ found[closest])
    options = choice_options(question)
    core_vocab = vocabulary(core)
    return {
        "support": answer_support(supports),
        "lexical": min((s.lexical for s in checkable), default=1.0),
        "semantic": min((s.semantic for s in checkable), default=1.0),
        "verbatim": float(bool(where)),
        "verbatim_rank": 1.0 / (1 + where[0]) if where else 0.0,
        "verbatim_cited": float(any(j in cited for j in where)),
        "top_share": (sum(k in vocabs[0] for k in keys) / len(keys)) if keys and vocabs else 0.0,
        "copied_run": run / len(words) if words else 0.0,
        "copies_sentence": float(any(len(s.split()) >= 5 and _contains(core_flat, s) for s in sentences_flat)),
        "novel_share": len(novel) / len(keys) if keys else 0.0,
        "novel_found": sum(k in every for k in novel) / len(novel) if novel else 0.0,
        "log_novel": math.log1p(len(novel)),
        "novel_in_question_sentence": sum(k in q_sentence for k in novel) / len(novel) if novel else 0.0,
        "question_share": sum(k in core_vocab for k in question_vocab) / len(question_vocab) if question_vocab else 0.0,
        "question_similarity": q_sim,
        "question_sentence_similarity": q_sentence_sim,
        "type_match": type_match,
        "yes_no": float(bool(_YES_NO_QUESTION.match(question)) and first_word in ("yes", "no")),
        "choice": float(options is not None),
        "options_named": sum(_names(o, core_vocab) for o in options) / 2 if options else 0.0,
        "log_words": math.log1p(len(words)),
        "unfinished": float(bool(words) and not re.search(r"[.!?][\"'”’)\]]*\s*$", answer.strip())),
    }


# --- the model ---------------------------------------------------------------------------------


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """P(a positive scores above a negative), ties counting half (Mann–Whitney); NaN without both classes."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = scores.argsort(kind="mergesort")
    _, first, counts = np.unique(scores[order], return_index=True, return_counts=True)
    ranks = np.empty(len(scores))
    ranks[order] = np.repeat(first + (counts + 1) / 2.0, counts)  # average 1-based rank of each tie group
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _newton(X: np.ndarray, y: np.ndarray, l2: float, steps: int = 100) -> np.ndarray:
    """L2-regularised logistic regression (mean log-loss + l2/2 |w|^2, bias free) by Newton's method."""
    X1 = np.hstack([np.ones((len(X), 1)), X])
    beta = np.zeros(X1.shape[1])
    reg = l2 * np.eye(X1.shape[1])
    reg[0, 0] = 1e-8  # keeps the Hessian invertible when one class is missing, barely touches the bias
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-np.clip(X1 @ beta, -30, 30)))
        grad = X1.T @ (p - y) / len(y) + reg @ beta
        hess = (X1 * (p * (1 - p))[:, None]).T @ X1 / len(y) + reg
        step = np.linalg.solve(hess, grad)
        beta -= step
        if np.abs(step).max() < 1e-10:
            break
    return beta


@dataclass
class LogisticModel:
    """Standardised features -> P(right). JSON round trip keeps feature names and what it was fitted on."""

    features: list[str]
    mean: list[float]
    scale: list[float]
    coef: list[float]
    bias: float
    threshold: float = 0.5  # P(right) below this is withheld: c/(1+c) for a wrong-answer cost c
    l2: float = 1.0
    fitted_on: dict[str, Any] = field(default_factory=dict)

    def probability(self, x: np.ndarray) -> np.ndarray:
        """P(right) for feature rows `x` (n × len(features)), in the order of `features`."""
        z = (np.atleast_2d(x) - np.asarray(self.mean)) / np.asarray(self.scale)
        return 1.0 / (1.0 + np.exp(-np.clip(self.bias + z @ np.asarray(self.coef), -30, 30)))

    @classmethod
    def fit(
        cls,
        x: np.ndarray,
        y: np.ndarray,
        features: Sequence[str],
        l2: float | None = None,
        wrong_cost: float = 1.0,
        folds: int = 5,
        seed: int = 0,
        fitted_on: dict[str, Any] | None = None,
    ) -> "LogisticModel":
        """Fit on rows `x` with labels `y` (1 = right). `l2=None` picks it from `L2_GRID` by the mean
        AUROC of `folds`-fold cross-validation on these rows only."""
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(features) or len(x) != len(y):
            raise ValueError(f"fit: x is {x.shape}, y has {len(y)} labels, {len(features)} feature names: they must agree")
        if len(np.unique(y)) < 2:
            raise ValueError("fit: the drafts are all right or all wrong; a grounding model needs both")
        cv: dict[str, float] = {}
        if l2 is None:
            order = np.random.default_rng(seed).permutation(len(y))
            for candidate in L2_GRID:
                scores = []
                for k in range(folds):
                    test = order[k::folds]
                    train = np.setdiff1d(order, test)
                    m = cls._fit_once(x[train], y[train], features, candidate)
                    scores.append(auroc(m.probability(x[test]), y[test]))
                cv[str(candidate)] = float(np.nanmean(scores))
            l2 = float(max(L2_GRID, key=lambda c: cv[str(c)]))
        model = cls._fit_once(x, y, features, l2)
        model.threshold = wrong_cost / (1.0 + wrong_cost)
        model.fitted_on = {**(fitted_on or {}), "drafts": int(len(y)), "right": int(y.sum()),
                           "cross_validated_auroc_by_l2": cv, "wrong_cost": wrong_cost}  # fmt: skip
        return model

    @classmethod
    def _fit_once(cls, x: np.ndarray, y: np.ndarray, features: Sequence[str], l2: float) -> "LogisticModel":
        mean = x.mean(axis=0)
        scale = x.std(axis=0)
        scale[scale < 1e-9] = 1.0  # a constant feature (e.g. no citations in the fit data) gets weight 0
        beta = _newton((x - mean) / scale, y, l2)
        return cls(list(features), mean.tolist(), scale.tolist(), beta[1:].tolist(), float(beta[0]), l2=l2)

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "features": self.features, "mean": self.mean, "scale": self.scale,
                "coef": self.coef, "bias": self.bias, "threshold": self.threshold, "l2": self.l2,
                "fitted_on": self.fitted_on}  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str = "grounding model") -> "LogisticModel":
        if data.get("format") != FORMAT:
            raise ValueError(f"{where}: format {data.get('format')!r}, expected {FORMAT!r}: refit it with bench/grounding.py")
        fields = {k: data[k] for k in ("features", "mean", "scale", "coef", "bias", "threshold", "l2", "fitted_on")}
        model = cls(**fields)
        if not (len(model.features) == len(model.mean) == len(model.scale) == len(model.coef)):
            raise ValueError(f"{where}: features, mean, scale and coef differ in length: the file is damaged, refit it")
        return model


# --- the scorer --------------------------------------------------------------------------------


class TrainedGroundingScorer:
    """Grounding as P(the draft is right), from `FEATURES` and a fitted `LogisticModel`.

    Same interface as `LexicalSemanticScorer` (`score`, `score_many`, `threshold`), so the answerer
    takes either. It runs the lexical-semantic scorer first and reuses its per-sentence results.
    """

    def __init__(self, embedder: Embedder, model: LogisticModel, base: LexicalSemanticScorer | None = None):
        if list(model.features) != list(FEATURES):
            missing = sorted(set(FEATURES) - set(model.features))
            extra = sorted(set(model.features) - set(FEATURES))
            raise ValueError(f"grounding model features differ from this version's (missing {missing}, unknown {extra}): "
                             "refit it with bench/grounding.py")  # fmt: skip
        self.embedder = embedder
        self.model = model
        self.base = base if base is not None else LexicalSemanticScorer(embedder)
        self.threshold = model.threshold

    def features(
        self, items: Sequence[tuple[str, Sequence[str]]], questions: Sequence[str] | None = None
    ) -> tuple[np.ndarray, list[list[SentenceSupport]]]:
        """(one feature row per item, the lexical-semantic supports they were computed from)."""
        questions = list(questions) if questions is not None else [""] * len(items)
        supports = self.base.score_many(items, questions)
        # One embedding call for the answers and questions of the batch; the base scorer's bounded
        # vector cache already holds the source sentences it compared.
        vectors = self.base._vectors
        vectors(list(dict.fromkeys(t for (answer, _), q in zip(items, questions) if q.strip()
                                   for t in (answer_core(answer)[0], q) if t)))  # fmt: skip
        rows = [
            [draft_features(answer, list(sources), q, s, vectors)[name] for name in FEATURES]
            for (answer, sources), q, s in zip(items, questions, supports, strict=True)
        ]
        return np.array(rows, dtype=np.float64).reshape(len(items), len(FEATURES)), supports

    def score(self, answer: str, sources: Sequence[str], question: str = "") -> list[SentenceSupport]:
        return self.score_many([(answer, sources)], [question])[0]

    def score_many(
        self, items: Sequence[tuple[str, Sequence[str]]], questions: Sequence[str] | None = None
    ) -> list[list[SentenceSupport]]:
        """Per item, its sentences with the answer's P(right) on every checkable one (see the module docstring)."""
        if not items:
            return []
        x, supports = self.features(items, questions)
        probabilities = self.model.probability(x)
        out = []
        for p, sentences in zip(probabilities, supports):
            p = float(p)
            out.append([
                replace(s, score=p, supported=p >= self.threshold) if s.checkable and not s.untrusted else s
                for s in sentences
            ])  # fmt: skip
        return out

    @classmethod
    def fit(
        cls,
        embedder: Embedder,
        items: Sequence[tuple[str, Sequence[str]]],
        labels: Sequence[int],
        questions: Sequence[str] | None = None,
        fitted_on: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> "TrainedGroundingScorer":
        """Fit on drafts (answer, sources) with labels (1 = right); `kwargs` go to `LogisticModel.fit`."""
        base = LexicalSemanticScorer(embedder)
        x, _ = cls(embedder, LogisticModel(list(FEATURES), [0.0] * len(FEATURES), [1.0] * len(FEATURES),
                                           [0.0] * len(FEATURES), 0.0), base).features(items, questions)  # fmt: skip
        fitted_on = {"embedder": getattr(embedder, "fingerprint", ""), **(fitted_on or {})}
        return cls(embedder, LogisticModel.fit(x, np.asarray(labels), FEATURES, fitted_on=fitted_on, **kwargs), base)

    def save(self, path: Path) -> Path:
        """Write the model as JSON (weights, feature names, what it was fitted on)."""
        from tasks import atomic

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_text(path, json.dumps(self.model.to_json(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: Path, embedder: Embedder) -> "TrainedGroundingScorer":
        return cls(embedder, read_model(path))


def read_model(path: Path) -> LogisticModel:
    """The grounding model saved at `path`, with errors that say how to get a good one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"grounding model {path} not found: fit one with `bench/grounding.py` or set "
                                "retrieval.grounding_scorer = \"lexical\"")  # fmt: skip
    try:
        data = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"grounding model {path} is not JSON ({e}): refit it with bench/grounding.py") from e
    return LogisticModel.from_json(data, str(path))


def grounding_model_path(spec: str) -> Path | None:
    """The model file of a `retrieval.grounding_scorer` value: None for "lexical", the path of "trained:<path>"."""
    if spec == "lexical":
        return None
    if spec.startswith("trained:") and spec[len("trained:") :].strip():
        return Path(spec[len("trained:") :].strip()).expanduser()
    raise ValueError(f'retrieval.grounding_scorer = {spec!r}: use "lexical" or "trained:<path to a grounding model JSON>"')


def grounding_scorer_identity(spec: str) -> str:
    """What the scorer `spec` names, by content: a model refitted in place is another scorer (its
    calibrated threshold no longer holds)."""
    path = grounding_model_path(spec)
    if path is None:
        return spec
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else "missing"
    return f"trained:{digest}"


def make_grounding_scorer(spec: str, embedder: Embedder) -> LexicalSemanticScorer | TrainedGroundingScorer:
    """The scorer `retrieval.grounding_scorer` names."""
    path = grounding_model_path(spec)
    return LexicalSemanticScorer(embedder) if path is None else TrainedGroundingScorer.load(path, embedder)


# --- adoption ----------------------------------------------------------------------------------


@dataclass
class Adoption:
    """Whether a candidate scorer beats the current one on held-out drafts, with the numbers behind it."""

    adopted: bool
    current: float  # AUROC of each
    candidate: float
    current_interval: tuple[float, float]
    candidate_interval: tuple[float, float]
    difference: float  # candidate − current
    difference_interval: tuple[float, float]
    drafts: int
    resamples: int
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


def adoption(
    current: np.ndarray,
    candidate: np.ndarray,
    labels: np.ndarray,
    resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> Adoption:
    """The adoption rule: the candidate replaces the current scorer only if its AUROC on the same
    held-out drafts is higher beyond the paired bootstrap interval of the difference (the interval's
    lower end is above 0). Both AUROCs are recomputed on each resample of drafts, so the interval
    accounts for their correlation."""
    current, candidate, labels = (np.asarray(a, dtype=np.float64) for a in (current, candidate, labels))
    if not (len(current) == len(candidate) == len(labels)):
        raise ValueError("adoption: the two score arrays and the labels must cover the same drafts")
    rng = np.random.default_rng(seed)
    diffs, a_s, b_s = [], [], []
    for _ in range(resamples):
        i = rng.integers(0, len(labels), len(labels))
        a, b = auroc(current[i], labels[i]), auroc(candidate[i], labels[i])
        if not (math.isnan(a) or math.isnan(b)):
            a_s.append(a)
            b_s.append(b)
            diffs.append(b - a)
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100

    def interval(v: list[float]) -> tuple[float, float]:
        return (float(np.percentile(v, lo)), float(np.percentile(v, hi))) if v else (float("nan"), float("nan"))

    a, b = auroc(current, labels), auroc(candidate, labels)
    d_int = interval(diffs)
    adopted = bool(diffs) and d_int[0] > 0
    if adopted:
        reason = f"AUROC {b:.3f} vs {a:.3f}: +{b - a:.3f}, {level:.0%} interval of the difference [{d_int[0]:+.3f}, {d_int[1]:+.3f}] above 0"
    else:
        reason = (f"AUROC {b:.3f} vs {a:.3f}: difference {b - a:+.3f}, {level:.0%} interval "
                  f"[{d_int[0]:+.3f}, {d_int[1]:+.3f}] reaches 0: not better beyond noise")  # fmt: skip
    return Adoption(adopted, a, b, interval(a_s), interval(b_s), b - a, d_int, int(len(labels)), len(diffs), reason)
