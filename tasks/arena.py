"""The arena: the same questions through every arm, scored the same way.

Arms (one generator configuration, batched, deterministic):
    base    the generator alone, no retrieval
    rag     base + retrieval (the grounded answerer)
    lora    a LoRA adapter, no retrieval
    hybrid  the adapter + retrieval
    full, full+rag  the same for a fully fine-tuned model (`training.method = "full"`)
Each tuned kind runs the registered models of its method: with both a champion and a candidate,
for each (`hybrid@candidate`).
Every model answers the general-ability canary closed-book too, for the forgetting check.

Freshness: a question is *fresh* for an adapter when one of its gold documents was (re)ingested
after the adapter was trained; `fresh_accuracy` is accuracy on those questions, the cell that shows
what retrieval knows and weights do not.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Sequence

from tasks.metrics import (
    Estimate,
    QuestionResult,
    ScoringRules,
    arm_metrics,
    bootstrap,
    question_scores,
)
from data_contracts.evaluation import RETRIEVAL_KINDS, TUNED_METHOD
from tasks.registry import Adapter, Registry


@dataclass
class ArmSpec:
    name: str
    kind: str  # base, rag, lora, hybrid, full, full+rag
    retrieval: bool
    adapter: Adapter | None = None
    role: str | None = None  # champion / candidate / latest (no champion or candidate: the newest, not gated)

    @property
    def model(self) -> str:
        """Which weights answer: `base` or the adapter's method and role (canary results are per model)."""
        return f"{self.adapter.method}@{self.role}" if self.adapter else "base"


def newest_candidate(registry: Registry) -> Adapter | None:
    """The newest adapter still waiting for the gate."""
    return next((a for a in reversed(registry.adapters()) if a.status == "candidate"), None)


def tuned_models(registry: Registry, method: str) -> list[tuple[Adapter, str]]:
    """(model, role) pairs of one training method for the arena: its champion and newest candidate,
    else (every one rejected) its newest, so the arena still compares it."""
    champion = registry.champion()
    champion = champion if champion is not None and champion.method == method else None
    of_method = [a for a in registry.adapters() if a.method == method]
    candidate = next((a for a in reversed(of_method) if a.status == "candidate"), None)
    found = [(a, role) for a, role in ((champion, "champion"), (candidate, "candidate")) if a is not None]
    return found or ([(of_method[-1], "latest")] if of_method else [])


def arm_specs(kinds: Sequence[str], registry: Registry) -> tuple[list[ArmSpec], list[str]]:
    """The arms to run, and notes on requested arms that cannot run (nothing of their method trained yet)."""
    specs: list[ArmSpec] = []
    notes: list[str] = []
    by_method = {m: tuned_models(registry, m) for m in {TUNED_METHOD[k] for k in kinds if k in TUNED_METHOD}}
    for kind in kinds:
        if kind in ("base", "rag"):
            specs.append(ArmSpec(kind, kind, retrieval=kind == "rag"))
            continue
        method = TUNED_METHOD[kind]
        models = by_method[method]
        if not models:
            hint = "`ragtune train`" if method == "lora" else '`ragtune train` with training.method = "full"'
            notes.append(f"{kind}: no {'adapter' if method == 'lora' else 'fully fine-tuned model'} in the registry yet (run {hint})")
        for adapter, role in models:
            name = f"{kind}@{role}" if len(models) > 1 else kind
            specs.append(ArmSpec(name, kind, retrieval=kind in RETRIEVAL_KINDS, adapter=adapter, role=role))
    return specs, notes


def gated_arms(runs: Sequence["ArmRun"], registry_candidate: Adapter | None) -> tuple["ArmRun | None", "ArmRun | None"]:
    """(candidate, incumbent) for the gate: the retrieval arm of the registry's newest candidate, against
    the champion's retrieval arm, or the base model's `rag` when there is no champion."""
    tuned = [r for r in runs if r.spec.adapter is not None and r.spec.retrieval]
    candidate = next((r for r in tuned if r.spec.role == "candidate" and registry_candidate is not None
                      and r.spec.adapter.name == registry_candidate.name), None)  # type: ignore[union-attr]
    champion = next((r for r in tuned if r.spec.role == "champion"), None)
    return candidate, champion or next((r for r in runs if r.spec.kind == "rag"), None)


@dataclass
class ArmRun:
    spec: ArmSpec
    results: list[QuestionResult]
    answers: list[Any]
    wall_s: float
    metrics: dict[str, Estimate] = field(default_factory=dict)

    @property
    def questions_per_min(self) -> float:
        return 60.0 * len(self.results) / self.wall_s if self.wall_s > 0 else 0.0


def run_arm(
    spec: ArmSpec,
    rows: Sequence[dict[str, Any]],
    answerer: Any,
    filters: Any,
    batch_size: int,
    on_batch: Callable[[int], None] | None = None,
) -> ArmRun:
    """Answer every row with one answerer, `batch_size` questions per generation call.

    CPU-seconds are the process's CPU time over the batch shared equally (all threads counted).
    """
    results, answers = [], []
    started = time.perf_counter()
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        cpu = time.process_time()
        got = answerer.ask_many([r["question"] for r in batch], filters)
        cpu_each = (time.process_time() - cpu) / len(batch)
        for row, answer in zip(batch, got):
            answers.append(answer)
            results.append(
                QuestionResult.of(row, spec.name, answer, retrieved_docs=answer.retrieved if spec.retrieval else None, cpu_seconds=cpu_each)
            )
        if on_batch:
            on_batch(len(batch))
    return ArmRun(spec, results, answers, time.perf_counter() - started)


def format_rules(rules: ScoringRules, retrieval: bool) -> ScoringRules:
    """Answers with sources must cite them; closed-book answers have no format to check."""
    if retrieval:
        return rules
    return ScoringRules(rules.k, rules.support_threshold, rules.correct_f1, rules.agree_f1, format_pattern=None)


def fresh_docs(chunks_table: Any, since: datetime) -> set[str]:
    """Documents whose chunks were written after `since` (new or changed since then)."""
    stamp = since.strftime("%Y-%m-%d %H:%M:%S")
    rows = chunks_table.search().where(f"ingested_at > TIMESTAMP '{stamp}'").select(["doc_id"]).limit(None).to_arrow()
    return set(rows.column("doc_id").to_pylist())


def fresh_flags(results: Sequence[QuestionResult], docs: set[str]) -> list[bool]:
    return [r.answerable and bool(set(r.gold_docs) & docs) for r in results]


def freshness(runs: Sequence["ArmRun"], chunks_table: Any) -> dict[str, list[bool]]:
    """Per arm, which questions are fresh: gold documents written after the arm's adapter was trained.

    Arms without an adapter use the newest evaluated adapter, so every arm is scored on the same questions.
    """
    adapters = [r.spec.adapter for r in runs if r.spec.adapter is not None]
    newest = max(adapters, key=lambda a: a.metadata.get("created_at", ""), default=None)
    out = {}
    for run in runs:
        reference = run.spec.adapter or newest
        trained = adapter_trained_at(reference) if reference else None
        docs = fresh_docs(chunks_table, trained) if (trained and chunks_table is not None) else set()
        out[run.spec.name] = fresh_flags(run.results, docs)
    return out


def score_arm(
    run: ArmRun,
    rules: ScoringRules,
    embed: Callable[[Sequence[str]], Any] | None,
    fresh: Sequence[bool],
    resamples: int,
    confidence: float,
) -> tuple[dict[str, Estimate], dict[str, list[float | None]]]:
    """Every metric with its interval, `fresh_accuracy` included; and the per-question scores."""
    arm_rules = format_rules(rules, run.spec.retrieval)
    metrics = arm_metrics(run.results, arm_rules, embed, resamples=resamples, confidence=confidence)
    scores = question_scores(run.results, arm_rules, embed)
    accuracy = [v for v, f in zip(scores["accuracy"], fresh) if f and v is not None]
    metrics["fresh_accuracy"] = bootstrap(accuracy, resamples=resamples, confidence=confidence)
    run.metrics = metrics
    return metrics, scores


def adapter_trained_at(adapter: Adapter) -> datetime | None:
    created = adapter.metadata.get("created_at")
    return datetime.fromisoformat(created) if created else None


def cited_docs(answer: Any) -> list[str]:
    return [c.doc_id for c in getattr(answer, "citations", [])]


def table_version(chunks_table: Any) -> int | None:
    return int(chunks_table.version) if chunks_table is not None else None
