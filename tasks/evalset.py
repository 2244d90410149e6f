"""Evaluation sets: read a JSONL file, check it against its contract, select the evaluated split.

The contract (`data_contracts.suites.eval_set_suite`) runs on every row of the file before anything
is scored, and fails closed naming the rows by id.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from data_contracts.evaluation import EVAL_COLUMNS
from data_contracts.suites import eval_set_suite
from tasks.jsonl import JsonlError, read_objects
from tasks.validate import require_valid

CANARY = Path(__file__).with_name("canary.jsonl")


class EvalSetError(Exception):
    """The evaluation set cannot be read; the message names the line."""


@dataclass
class EvalSet:
    path: Path
    split: str | None
    rows: list[dict[str, Any]]

    @property
    def hash(self) -> str:
        return hashlib.sha256(json.dumps(self.rows, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def _rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise EvalSetError(f"evaluation set {path} does not exist: set evaluation.path (or --eval-set)")
    rows = []
    try:
        objects = read_objects(path)
    except JsonlError as e:
        raise EvalSetError(str(e)) from e
    for _, row in objects:
        rows.append({c.name: row.get(c.name, [] if isinstance(c.type, pa.ListType) else None) for c in EVAL_COLUMNS})
        if rows[-1]["answerable"] is None:
            rows[-1]["answerable"] = bool(rows[-1]["answers"])
    return rows


def load_eval_set(path: Path, split: str | None = None, limit: int | None = None, strict: bool = False) -> EvalSet:
    """Every row validated, then the rows of `split` (rows without a split always count, unless
    `strict`: then only rows labelled `split`), first `limit`."""
    rows = _rows(Path(path))
    table = pa.Table.from_pylist(rows, schema=pa.schema([c.field() for c in EVAL_COLUMNS]))
    answers_ok = [not r["answerable"] or any(str(a).strip() for a in r["answers"]) for r in rows]
    require_valid(table.append_column("answers_ok", pa.array(answers_ok)), eval_set_suite(), key="id")
    chosen = [r for r in rows if split is None or r["split"] == split or (r["split"] is None and not strict)]
    if not chosen:
        raise EvalSetError(f"{path} has no rows with split {split!r}: set evaluation.split (null = all rows)")
    return EvalSet(Path(path), split, chosen[:limit] if limit else chosen)


def first(evalset: EvalSet, limit: int | None) -> EvalSet:
    """The first `limit` rows of `evalset` (all of them without a limit)."""
    return EvalSet(evalset.path, evalset.split, evalset.rows[:limit]) if limit else evalset


def spread(evalset: EvalSet, limit: int | None) -> EvalSet:
    """`limit` rows spread evenly over `evalset`, answerable and unanswerable ones in the set's proportions
    (each kind that is present keeps at least one row), in file order; all of them without a limit.

    For samples that must look like the whole set: a file's first rows are often of one kind (the demo's
    first 24 training rows hold none of its 13 unanswerable ones).
    """
    rows = evalset.rows
    if not limit or limit >= len(rows):
        return evalset
    kinds = [[i for i, r in enumerate(rows) if r["answerable"]], [i for i, r in enumerate(rows) if not r["answerable"]]]
    few = min(kinds, key=len)
    take_few = min(len(few), max(1 if few and limit > 1 else 0, round(limit * len(few) / len(rows))))
    counts = [take_few if kind is few else limit - take_few for kind in kinds]
    chosen = sorted(i for kind, n in zip(kinds, counts) for i in (kind[int(j * len(kind) / n)] for j in range(n)))
    return EvalSet(evalset.path, evalset.split, [rows[i] for i in chosen])


def load_canary(path: Path | None = None, limit: int | None = None) -> EvalSet:
    """The general-ability canary questions (the shipped set unless configured), first `limit`."""
    return load_eval_set(path or CANARY, limit=limit)


def limit_note(limit: int, questions: int, calibration: str, canary_questions: int, gate_applied: bool | None) -> str:
    """What a limited run (`--limit N`) bounded and what it left alone, for its notes and summary.

    The rule: the same N bounds the evaluated questions, the calibration rows drafted and the canary
    questions; the run is report-only unless the gate was explicitly asked for.
    """
    if gate_applied is None:
        gate = "no gate this run"
    elif gate_applied:
        gate = "the gate's verdict was applied to the registry because it was explicitly asked for"
    else:
        gate = "the gate's verdict is reported, not applied (pass apply_gate=True / --gate to apply it)"
    return (f"limited run (limit {limit}): {questions} questions, {canary_questions} canary questions, grounding "
            f"threshold {calibration}; not comparable with a full run; {gate}")


def notes_markdown(notes: list[str]) -> str:
    """A run's notes (arms that could not run, a limited run), to append to its summary."""
    return "".join(f"\n\nNote: {n}" for n in notes)
