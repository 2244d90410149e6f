"""Training data for the LoRA recipe: built from two sources, checked by a contract, saved by content hash.

Sources
1. Instruction data: JSONL files in a folder, each line either `{"messages": [...]}` (chat turns) or
   `{"prompt": ..., "response": ..., "system"?: ...}`. Teaches format, tone and workflows.
2. Retrieval-aware (RAFT) examples from question -> answer pairs: the prompt is exactly what
   `ragtune ask` sends (same packing, same system prompt), the sources are the oracle chunk (the
   retrieved chunk that holds the answer) among distractors from ragtune's own retriever (hard
   negatives), and the target states the answer citing the oracle's number. A configurable share of
   examples leaves the oracle out and targets the abstention. Optionally each pair is also added
   closed-book (no sources), the format the `lora` arm answers in.

Contract: every row gets derived columns (token count, roles, PII, similarity to evaluation
questions, duplicates, oracle support) and the GX suites in `data_contracts/suites.py` run on them.
Rows that break a per-row expectation go to `rejects.jsonl` with the expectation names; the build
fails closed, saving nothing, when the whole-set contract breaks (duplicate rate) or too many rows
were rejected.

Saved under `<home>/datasets/<hash12>/` (HF `datasets` Arrow files, one split each) with
`dataset.json` (hash, counts, sources, table version) and `rejects.jsonl`; the hash covers the kept
rows' messages and splits, so an unchanged build has the same hash and retraining can be skipped.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pyarrow as pa

from data_contracts.schemas import PUBLIC_GROUP, ROLES, TRAINING_COLUMNS, training_schema
from data_contracts.suites import training_row_suite, training_set_suite
from tasks import atomic, pii
from tasks.config import DatasetSettings
from tasks.metrics import contains_gold
from tasks.jsonl import jsonl_rows
from tasks.generate import ABSTAIN, base_messages, guard_for, pack_sources, rag_messages
from tasks.retrieve import Hit, Retriever, SearchFilters
from tasks.validate import ContractViolation, ValidationReport, validate

Messages = list[dict[str, str]]
RAFT_DEPTH = 50  # retrieved candidates searched for the oracle and the distractors
DUPLICATE_COSINE = 0.95  # a distractor this close to the oracle is a copy of it, not a distractor


class DatasetError(Exception):
    """The dataset cannot be built; the message names the input and what to fix."""


@dataclass
class Reject:
    origin: str
    reasons: list[str]
    row: dict[str, Any] = field(default_factory=dict)


@dataclass
class QAPair:
    question: str
    answers: list[str]  # empty: the documents do not answer it
    gold_docs: list[str]
    group: str  # paraphrases of one question share a group (and a split)
    origin: str


# --- reading inputs ------------------------------------------------------------------------------


def _as_messages(row: dict[str, Any]) -> Messages | None:
    if isinstance(row.get("messages"), list):
        out = []
        for m in row["messages"]:
            if not isinstance(m, dict):
                return None
            out.append({"role": str(m.get("role", "")), "content": "" if m.get("content") is None else str(m["content"])})
        return out
    if "prompt" in row and "response" in row:
        out = [{"role": "system", "content": str(row["system"])}] if row.get("system") else []
        return out + [{"role": "user", "content": str(row["prompt"])}, {"role": "assistant", "content": str(row["response"])}]
    return None


def instruction_examples(folder: Path) -> tuple[list[dict[str, Any]], list[Reject]]:
    """Rows from every `*.jsonl` under `folder` (sorted, so the order is stable)."""
    if not folder.is_dir():
        raise DatasetError(f"instructions folder {folder} does not exist: fix dataset.instructions_dir")
    rows, rejects = [], []
    for path in sorted(folder.rglob("*.jsonl")):
        for origin, raw, error in jsonl_rows(path):
            messages = _as_messages(raw) if raw is not None else None
            if messages is None:
                reason = error or "unknown_format: expected `messages` or `prompt`/`response`"
                rejects.append(Reject(origin, [reason], raw or {}))
                continue
            question = next((m["content"] for m in reversed(messages[:-1]) if m["role"] == "user"), "")
            rows.append(_row("instruction", origin, messages, question, group_key=f"instruction:{origin}"))
    return rows, rejects


def qa_pairs(path: Path, split: str | None) -> tuple[list[QAPair], list[Reject]]:
    """Question -> answer pairs (`question` plus `answers` list or `answer`), of `split` when rows have one.

    A row with `answerable: false` or no answers becomes an abstention example.
    """
    if not path.is_file():
        raise DatasetError(f"QA pairs file {path} does not exist: fix dataset.qa_pairs")
    pairs, rejects = [], []
    for origin, row, error in jsonl_rows(path):
        if row is None:
            rejects.append(Reject(origin, [error or "invalid_json"]))
            continue
        if split is not None and row.get("split", split) != split:
            continue
        question = str(row.get("question") or "").strip()
        answers = row.get("answers", [row["answer"]] if row.get("answer") else [])
        if not question or not isinstance(answers, list):
            rejects.append(Reject(origin, ["invalid_qa: needs a non-empty `question` and `answers` list or `answer`"], row))
            continue
        answers = [str(a).strip() for a in answers if str(a).strip()] if row.get("answerable", True) else []
        group = str(row.get("paraphrase_group") or _norm(question))
        pairs.append(QAPair(question, answers, [str(d) for d in row.get("gold_docs") or []], group, origin))
    return pairs, rejects


def evaluation_questions(paths: Iterable[Path], split: str | None) -> list[str]:
    """Questions of the evaluation sets (rows of `split` when rows carry one) for the leakage check."""
    out = []
    for path in paths:
        if not Path(path).is_file():
            raise DatasetError(f"evaluation set {path} does not exist: fix dataset.eval_sets / evaluation.path")
        for _, row, _ in jsonl_rows(Path(path)):
            if row and row.get("question") and (split is None or row.get("split", split) == split):
                out.append(str(row["question"]))
    return out


# --- RAFT ----------------------------------------------------------------------------------------


def _norm(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.lower()))


def mentions(text: str, answer: str) -> bool:
    """`answer` appears in `text` as whole words: the evaluation's `contains` rule, so training and scoring agree."""
    return contains_gold(text, [answer]) > 0


def readers(groups: Sequence[str]) -> str:
    """A chunk's reader list as one string ("finance,hr"; "*" = everyone)."""
    return ",".join(sorted(set(groups) or {PUBLIC_GROUP}))


def _rank_key(seed: int, *parts: str) -> str:
    return hashlib.sha256("\x1f".join([str(seed), *parts]).encode()).hexdigest()


def without_oracle(pairs: Sequence[QAPair], share: float, seed: int) -> set[str]:
    """Questions of answerable pairs whose RAFT example leaves the oracle out, so that abstention targets
    (these plus the unanswerable pairs) make up round(share × all pairs), or just the unanswerable ones
    when those already exceed it: too many abstention targets teach the model to abstain."""
    answerable = sorted((p for p in pairs if p.answers), key=lambda p: _rank_key(seed, "no-oracle", p.question))
    wanted = max(0, round(share * len(pairs)) - (len(pairs) - len(answerable)))
    return {p.question for p in answerable[:wanted]}


def oracle_and_distractors(pair: QAPair, hits: Sequence[Hit], distractors: int) -> tuple[Hit | None, list[Hit]]:
    """The best-ranked hit holding a gold answer (from a gold document when given), and the best-ranked
    hits that hold none of the answers and are not copies of the oracle."""
    def holds(h: Hit) -> bool:
        return any(mentions(h.text, a) for a in pair.answers) and (not pair.gold_docs or h.doc_id in pair.gold_docs)

    oracle = next((h for h in hits if holds(h)), None)
    negatives = [
        h for h in hits
        if h is not oracle
        and not any(mentions(h.text, a) for a in pair.answers)
        and (oracle is None or float(h.vector @ oracle.vector) < DUPLICATE_COSINE)
    ]
    return oracle, negatives[:distractors]


def raft_examples(
    pairs: Sequence[QAPair],
    retriever: Retriever,
    count_tokens: Callable[[str], int],
    context_tokens: int,
    settings: DatasetSettings,
    k: int,
    filters: SearchFilters | None = None,
    table_version: int | None = None,
) -> tuple[list[dict[str, Any]], list[Reject]]:
    """One RAFT row per pair (+ a closed-book row when configured); pairs whose answer no chunk holds are rejected."""
    n_distractors = settings.distractors if settings.distractors is not None else max(0, k - 1)
    skip_oracle = without_oracle(pairs, settings.no_oracle_share, settings.seed)
    results = retriever.search_many([p.question for p in pairs], RAFT_DEPTH, filters)
    rows, rejects = [], []
    for pair, result in zip(pairs, results):
        oracle, negatives = oracle_and_distractors(pair, result.hits, n_distractors + 1)
        if pair.answers and oracle is None:
            rejects.append(Reject(pair.origin, ["no_oracle: no retrieved chunk holds a gold answer; check the answer or the index"],
                                  {"question": pair.question, "answers": pair.answers}))
            continue
        has_oracle = oracle is not None and pair.question not in skip_oracle
        chosen = negatives[:n_distractors] + ([oracle] if has_oracle else negatives[n_distractors:])
        random.Random(_rank_key(settings.seed, "order", pair.question)).shuffle(chosen)
        sources = pack_sources(chosen, count_tokens, context_tokens)
        oracle_n = next((s.n for s in sources if oracle is not None and s.hit.chunk_id == oracle.chunk_id), None)
        if has_oracle and oracle_n is None:  # packing left it out: it goes first
            sources = pack_sources([oracle] + [h for h in chosen if h is not oracle], count_tokens, context_tokens)
            oracle_n = 1
        # The answer as the oracle words it (a pair may list "£185" and "185 pounds").
        gold = next((a for a in pair.answers if oracle is not None and mentions(oracle.text, a)), pair.answers[0] if pair.answers else None)
        target = settings.answer_template.format(answer=gold, source=oracle_n) if has_oracle else ABSTAIN
        raft = _row("raft", pair.origin, rag_messages(pair.question, sources) + [{"role": "assistant", "content": target}],
                    pair.question, group_key=pair.group)
        raft.update(
            gold_answer=gold,
            has_oracle=has_oracle,
            oracle_chunk_id=oracle.chunk_id if has_oracle and oracle else None,
            oracle_text=oracle.text if has_oracle and oracle else None,
            distractor_chunk_ids=[s.hit.chunk_id for s in sources if oracle is None or s.hit.chunk_id != oracle.chunk_id],
            # The oracle counts even when packing left it out: its text is kept in the row.
            source_readers=sorted({readers(s.hit.groups) for s in sources} | ({readers(oracle.groups)} if oracle else set())),
            table_version=table_version,
        )
        rows.append(raft)
        if settings.closed_book and gold:
            answer = gold if gold.endswith((".", "!", "?")) else gold + "."
            book = base_messages(pair.question) + [{"role": "assistant", "content": answer}]
            rows.append(_row("closed_book", pair.origin, book, pair.question, group_key=pair.group))
    return rows, rejects


# --- replay against forgetting ---------------------------------------------------------------------

REPLAY = Path(__file__).with_name("replay.jsonl")


def replay_count(share: float, others: int, available: int) -> int:
    """Replay rows that make up `share` of the final set (at most the prompts there are)."""
    return min(available, round(share * others / (1 - share))) if share > 0 else 0


def replay_examples(prompts: Sequence[str], answer: Callable[[list[str]], list[str]], count: int, seed: int) -> list[dict[str, Any]]:
    """`count` general prompts (seeded order) in the closed-book format, each target the base
    generator's own answer (`answer`): self-distillation, so training on the organisation's data does
    not move what the model says to everything else. Empty answers are left out."""
    chosen = sorted(prompts, key=lambda p: _rank_key(seed, "replay", p))[:count]
    rows = []
    for prompt, reply in zip(chosen, answer(chosen) if chosen else []):
        if reply.strip():
            rows.append(_row("replay", f"replay:{prompt}", base_messages(prompt) + [{"role": "assistant", "content": reply.strip()}],
                             prompt, group_key=f"replay:{prompt}"))
    return rows


def base_answers(settings: Any, prompts: list[str]) -> list[str]:
    """The base generator's closed-book answers to `prompts`, cached per generator under the datasets folder."""
    from tasks.generate import Generator
    from tasks.models import generator_fingerprint, load_generator

    g = settings.generator
    fingerprint = generator_fingerprint(g.model, settings.models_dir)
    cache_file = settings.datasets_dir / f"replay-{hashlib.sha256((fingerprint + str(g.max_new_tokens)).encode()).hexdigest()[:12]}.json"
    cache: dict[str, str] = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    missing = [p for p in prompts if p not in cache]
    if missing:
        model, tokenizer = load_generator(g.model, settings.models_dir, threads=settings.threads, dtype=g.dtype)
        generator = Generator(model, tokenizer, max_new_tokens=g.max_new_tokens, batch_size=g.batch_size)
        cache.update({p: out.text for p, out in zip(missing, generator.generate([base_messages(p) for p in missing]))})
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_text(cache_file, json.dumps(cache, indent=1, ensure_ascii=False))
    return [cache[p] for p in prompts]


# --- rows and their contract columns --------------------------------------------------------------


def _row(kind: str, origin: str, messages: Messages, question: str, group_key: str) -> dict[str, Any]:
    row: dict[str, Any] = {c.name: None for c in TRAINING_COLUMNS}
    row.update(kind=kind, origin=origin, messages=messages, question=question, group_key=group_key,
               answer=messages[-1]["content"] if messages else "")
    return row


def example_id(messages: Messages) -> str:
    return hashlib.sha256(json.dumps(messages, ensure_ascii=False, sort_keys=True).encode()).hexdigest()


def roles_ok(messages: Messages) -> bool:
    return (
        len(messages) >= 2
        and all(m["role"] in ROLES and m["content"].strip() for m in messages)
        and messages[-1]["role"] == "assistant"
        and any(m["role"] == "user" for m in messages)
    )


# Text columns besides the turns: they are saved too, so they are counted and redacted like them.
PII_COLUMNS = ("question", "answer", "gold_answer", "oracle_text")


def apply_pii_policy(row: dict[str, Any], policy: str, allow: Sequence[str] = ()) -> None:
    """Count personal data in the row's turns; with `redact`, replace it in every turn and every other
    text column; `pii_remaining` counts what is left anywhere in the row (the contract rejects it)."""
    found = 0
    redacted = []
    for m in row["messages"]:
        text, kinds = pii.redact(m["content"], allow)
        found += sum(kinds.values())
        redacted.append({"role": m["role"], "content": text})
    row["pii_found"] = found
    if policy == "redact":
        row["messages"] = redacted
        for column in PII_COLUMNS:
            if row.get(column):
                row[column] = pii.redact(row[column], allow)[0]
    texts = [m["content"] for m in row["messages"]] + [row[c] for c in PII_COLUMNS if row.get(c)]
    row["pii_remaining"] = sum(pii.count(t, allow) for t in texts)


def add_contract_columns(
    rows: list[dict[str, Any]],
    count_chat_tokens: Callable[[Messages], int],
    embed: Callable[[list[str]], np.ndarray],
    eval_questions: Sequence[str],
    pii_policy: str,
    pii_allow: Sequence[str] = (),
) -> None:
    """Fill the derived columns the training contract checks (in place)."""
    for row in rows:
        apply_pii_policy(row, pii_policy, pii_allow)
        row["example_id"] = example_id(row["messages"])
        row["roles_ok"] = roles_ok(row["messages"])
        row["n_tokens"] = count_chat_tokens(row["messages"]) if row["roles_ok"] else 0
        if row["kind"] == "raft" and row["has_oracle"]:
            row["oracle_supported"] = mentions(row["oracle_text"] or "", row["gold_answer"] or "")
    first: dict[str, str] = {}
    for row in rows:
        row["duplicate_of"] = row["example_id"] if row["example_id"] in first else None
        first.setdefault(row["example_id"], row["origin"])
    similarity = np.zeros(len(rows), dtype=np.float32)
    if rows and eval_questions:
        q = embed([r["question"] or r["answer"] for r in rows])
        e = embed(list(eval_questions))
        similarity = (q @ e.T).max(axis=1).astype(np.float32)
    for row, s in zip(rows, similarity):
        row["eval_similarity"] = float(s)


def assign_splits(rows: list[dict[str, Any]], validation_share: float, seed: int) -> None:
    """Whole groups go to validation (hash order) until the share is reached; the rest train."""
    groups = sorted({r["group_key"] for r in rows}, key=lambda g: _rank_key(seed, "split", g))
    n_val = round(validation_share * len(groups))
    if validation_share > 0 and len(groups) >= 2:
        n_val = max(1, n_val)
    validation = set(groups[:n_val])
    for r in rows:
        r["split"] = "validation" if r["group_key"] in validation else "train"


# --- the build -----------------------------------------------------------------------------------


@dataclass
class DatasetBuild:
    rows: list[dict[str, Any]]  # kept rows
    rejects: list[Reject]
    report: ValidationReport
    sources: dict[str, Any]
    table_version: int | None = None

    @property
    def hash(self) -> str:
        h = hashlib.sha256()
        for r in sorted(self.rows, key=lambda r: (r["split"], r["example_id"])):
            h.update(f"{r['split']}\x1f{r['example_id']}\n".encode())
        return h.hexdigest()

    def access(self) -> dict[str, list[Any]]:
        """Who may read what the rows were built from: `readers`, the distinct reader lists of the
        chunks (a caller must share one group of each, or it is public), and `groups`, the audit list
        of every group seen. Instruction rows are the operator's own files and add nothing."""
        lists = sorted({entry for r in self.rows for entry in (r.get("source_readers") or [])})
        return {"readers": [entry.split(",") for entry in lists], "groups": sorted({g for e in lists for g in e.split(",")})}

    def counts(self) -> dict[str, Any]:
        return {
            "train": sum(r["split"] == "train" for r in self.rows),
            "validation": sum(r["split"] == "validation" for r in self.rows),
            "rejected": len(self.rejects),
            "by_kind": dict(Counter(r["kind"] for r in self.rows)),
            "raft_without_oracle": sum(r["kind"] == "raft" and not r["has_oracle"] for r in self.rows),
            "pii_found": sum(r["pii_found"] for r in self.rows) + sum(int(x.row.get("pii_found") or 0) for x in self.rejects),
            "pii_redacted_rows": sum(r["pii_found"] > 0 for r in self.rows),
            "rejects_by_reason": dict(Counter(reason.split(":")[0] for x in self.rejects for reason in x.reasons)),
            "tokens": {
                "total": sum(r["n_tokens"] for r in self.rows),
                "max": max((r["n_tokens"] for r in self.rows), default=0),
            },
        }


# The rule each checked column stands for, as rejects and counts name it.
RULES = {
    "eval_similarity": "leakage",
    "n_tokens": "too_long",
    "duplicate_of": "duplicate",
    "pii_remaining": "pii",
    "roles_ok": "bad_roles",
    "answer": "empty_answer",
    "oracle_supported": "oracle_unsupported",
    "kind": "bad_kind",
    "split": "bad_split",
}


def contract(
    rows: list[dict[str, Any]], rejects: list[Reject], settings: DatasetSettings, max_tokens: int
) -> tuple[list[dict[str, Any]], ValidationReport]:
    """Run the row suite on every row: failing rows move to `rejects` (named by expectation); then the
    set suite on the kept rows. Fails closed on a set failure, an unattributable failure or too many rejects."""
    if not rows:
        raise DatasetError("no training examples: configure dataset.instructions_dir and/or dataset.qa_pairs")
    table = pa.Table.from_pylist(rows, schema=training_schema())
    report = validate(table, training_row_suite(max_tokens, settings.leakage_cosine), key="origin")
    reasons: dict[int, list[str]] = {}
    for f in report.failures:
        if not f.indexes:
            raise ContractViolation(report)
        for i in f.indexes:
            reasons.setdefault(i, []).append(f"{RULES.get(f.column or '', 'contract')}: {f.expectation} on {f.column}")
    for i in sorted(reasons):
        rejects.append(Reject(rows[i]["origin"], reasons[i], _reject_view(rows[i])))
    kept = [r for i, r in enumerate(rows) if i not in reasons]
    if len(reasons) > settings.max_reject_rate * len(rows):
        raise DatasetError(
            f"{len(reasons)} of {len(rows)} training rows broke the contract (limit {settings.max_reject_rate:.0%}); "
            f"nothing was saved. Most common: {Counter(x for r in reasons.values() for x in r).most_common(3)}"
        )
    # On every row, before rejection: the bound is on how duplicated the input was.
    set_report = validate(table, training_set_suite(settings.max_duplicate_rate), key="origin")
    if not set_report.success:
        raise ContractViolation(set_report)
    return kept, report


def _reject_view(row: dict[str, Any]) -> dict[str, Any]:
    keep = ("kind", "question", "answer", "n_tokens", "pii_found", "eval_similarity", "duplicate_of", "oracle_supported")
    return {k: row.get(k) for k in keep}


def save(build: DatasetBuild, datasets_dir: Path, extra: dict[str, Any] | None = None) -> Path:
    """Write the build under `datasets_dir/<hash12>/` atomically; an identical build is reused as is."""
    import datasets
    from datasets import Dataset, DatasetDict

    datasets.disable_progress_bars()
    target = datasets_dir / build.hash[:12]
    if (target / "dataset.json").is_file():
        _set_latest(datasets_dir, target.name)
        return target
    datasets_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=datasets_dir))
    try:
        schema = training_schema()
        # Empty splits are left out: `datasets` cannot load a split saved with zero rows.
        splits = {
            s: Dataset(pa.Table.from_pylist(split_rows, schema=schema))
            for s in ("train", "validation")
            if (split_rows := [r for r in build.rows if r["split"] == s])
        }
        DatasetDict(splits).save_to_disk(str(tmp / "data"))
        write_rejects(build.rejects, tmp / "rejects.jsonl")
        manifest = {
            "hash": build.hash,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "counts": build.counts(),
            "sources": build.sources,
            "table_version": build.table_version,
            "contract": build.report.as_dict(),
            "access": build.access(),
            **(extra or {}),
        }
        (tmp / "dataset.json").write_text(json.dumps(manifest, indent=2, default=str))
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _set_latest(datasets_dir, target.name)
    return target


# What a reject keeps of its row: numbers and flags, never text (a row rejected for PII holds it).
REJECT_FIELDS = ("kind", "n_tokens", "pii_found", "eval_similarity", "duplicate_of", "oracle_supported")


def reject_record(r: Reject) -> dict[str, Any]:
    """A rejected row as saved: its origin, the rules it broke, a hash of its content, no text."""
    digest = hashlib.sha256(json.dumps(r.row, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()
    kept = {k: r.row[k] for k in REJECT_FIELDS if r.row.get(k) is not None}
    return {"origin": r.origin, "reasons": r.reasons, "row_sha256": digest, **kept}


def write_rejects(rejects: Sequence[Reject], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in rejects:
            f.write(json.dumps(reject_record(r), ensure_ascii=False, default=str) + "\n")


def _set_latest(datasets_dir: Path, name: str) -> None:
    atomic.write_text(datasets_dir / "LATEST", name + "\n")


def latest(datasets_dir: Path) -> Path | None:
    """The most recently built dataset directory, if any."""
    pointer = datasets_dir / "LATEST"
    if not pointer.is_file():
        return None
    path = datasets_dir / pointer.read_text().strip()
    return path if (path / "dataset.json").is_file() else None


@dataclass
class SavedDataset:
    path: Path
    manifest: dict[str, Any]
    train: list[Messages]
    validation: list[Messages]

    @property
    def hash(self) -> str:
        return str(self.manifest["hash"])


def load(path: Path) -> SavedDataset:
    """A saved dataset's conversations per split and its manifest."""
    from datasets import load_from_disk

    if not (path / "dataset.json").is_file():
        raise DatasetError(f"{path} is not a ragtune dataset (no dataset.json): run `ragtune dataset build`")
    data = load_from_disk(str(path / "data"))
    manifest = json.loads((path / "dataset.json").read_text())
    def messages(split: str) -> list[Messages]:
        return list(data[split]["messages"]) if split in data else []

    return SavedDataset(path, manifest, messages("train"), messages("validation"))


def chat_token_counter(tokenizer: Any) -> Callable[[Messages], int]:
    """Tokens of a conversation rendered with the generator's chat template (as the recipe tokenises it)."""

    guard = guard_for(tokenizer)  # untrusted text is neutralised before tokenising, as in training

    def count(messages: Messages) -> int:
        return len(guard.ids(messages, generation_prompt=False))

    return count


def synthetic_set(settings: Any) -> Path:
    """The latest synthetic set (`ragtune synth`), or a clear error when there is none."""
    from tasks.synth import latest

    path = latest(settings.synth_dir)
    if path is None:
        raise DatasetError(f"dataset.synthetic is set but {settings.synth_dir} holds no synthetic set: run `ragtune synth` first")
    return path


def build(settings: Any, table: str | None = None) -> DatasetBuild:
    """Read the configured sources, build RAFT rows over the index, run the contract. Saves nothing."""
    from tasks.models import load_embedder_for, load_generator_tokenizer
    from tasks.resources import open_retriever, search_filters

    d = settings.dataset
    if d.instructions_dir is None and d.qa_pairs is None and not d.synthetic:
        raise DatasetError("no training data configured: set dataset.instructions_dir, dataset.qa_pairs and/or dataset.synthetic")
    tokenizer = load_generator_tokenizer(settings.generator.model, settings.models_dir)
    rows: list[dict[str, Any]] = []
    rejects: list[Reject] = []
    sources: dict[str, Any] = {}
    version = None
    if d.instructions_dir is not None:
        found, bad = instruction_examples(Path(d.instructions_dir))
        rows += found
        rejects += bad
        sources["instructions_dir"] = str(d.instructions_dir)
    pair_files = [(Path(d.qa_pairs), d.qa_split)] if d.qa_pairs is not None else []
    synthetic = None
    if d.synthetic:
        try:
            synthetic = synthetic_set(settings)
        except DatasetError as e:  # an addition, not the only source: build without it and say so
            if d.qa_pairs is None and d.instructions_dir is None:
                raise
            sources["synthetic"] = f"skipped: {e}"
    if synthetic is not None:
        pair_files.append((synthetic, "train"))  # its training pool; its `test` rows are held-out documents
        sources["synthetic"] = str(synthetic)
    if pair_files:
        pairs: list[QAPair] = []
        for path, split in pair_files:
            found_pairs, bad = qa_pairs(path, split)
            pairs += found_pairs
            rejects += bad
        retriever = open_retriever(settings, table)
        version = int(retriever.table.version)
        found, bad = raft_examples(
            pairs,
            retriever,
            lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"]),
            settings.generator.context_tokens,
            d,
            k=settings.retrieval.k,
            # Only the groups the dataset is configured for (default: public chunks): an adapter must not
            # memorise restricted documents for callers who may not read them (see `DatasetBuild.access`).
            filters=search_filters(settings, d.groups),
            table_version=version,
        )
        rows += found
        rejects += bad
        sources.update(qa_pairs=str(d.qa_pairs) if d.qa_pairs else None, qa_split=d.qa_split,
                       table=table or settings.store.table, pairs=len(pairs))
    if d.replay_share > 0:
        path = Path(d.replay_prompts or REPLAY)
        prompts = [str(r["prompt"]) for _, r, _ in jsonl_rows(path) if r and r.get("prompt")]
        count = replay_count(d.replay_share, len(rows), len(prompts))
        rows += replay_examples(prompts, lambda chosen: base_answers(settings, chosen), count, d.seed)
        sources["replay"] = {"prompts": str(path), "rows": count}
    eval_questions = evaluation_questions(d.eval_sets, d.eval_split)
    if settings.evaluation.path is not None:  # the set the arena scores never leaks into training
        eval_questions += evaluation_questions([settings.evaluation.path], settings.evaluation.split)
    if synthetic is not None:  # nor does the synthetic evaluation set
        eval_questions += evaluation_questions([synthetic], "test")
    if d.replay_share > 0:  # nor the canary that measures forgetting (replay prompts must not be its questions)
        from tasks.evalset import CANARY

        eval_questions += evaluation_questions([settings.evaluation.canary or CANARY], None)
    embedder = load_embedder_for(settings)
    add_contract_columns(rows, chat_token_counter(tokenizer), embedder.embed, eval_questions, d.pii, d.pii_allow)
    assign_splits(rows, d.validation_share, d.seed)
    kept, report = contract(rows, rejects, d, settings.training.max_length)
    sources.update(eval_sets=[str(p) for p in d.eval_sets], eval_questions=len(eval_questions),
                   generator=settings.generator.model, embedder=embedder.fingerprint)
    return DatasetBuild(kept, rejects, report, sources, version)
