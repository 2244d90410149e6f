"""The `evaluate` flow: the RAG vs fine-tune vs hybrid arena, the promotion gate and the report.

    ragtune eval [--arms base,rag] [--limit N]        # the CLI runs this flow
    prefect deploy --all                               # and the nightly chain calls it

Reads top to bottom: load and validate the evaluation set → calibrate the grounding threshold on
the generator's drafts to the calibration split → run each arm (batched) → run the canary per
model → score every arm with bootstrap intervals → decide the gate → write results, per-question
records and the report under `<home>/reports/<run_id>/` → apply the gate's verdict to the registry.

A limited run (`limit`, or `evaluation.limit`) is a smoke run: the same N bounds the questions, the
calibration rows drafted and the canary questions; its calibration is not saved, its gate verdict is
reported but not applied unless `apply_gate=True` is passed, and its notes say it was limited.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from data_contracts.evaluation import AlongsideSet, ArmResult, EvalRun, GateResult, QuestionRecord
from flows.events import emit, events_markdown
from tasks import arena, atomic, events
from tasks.config import Settings, load_settings
from tasks.calibrate import Calibration, calibrate_grounding
from tasks.evalset import EvalSet, limit_note, load_canary, load_eval_set, notes_markdown
from tasks.jsonl import read_objects
from tasks.gate import decide
from tasks.metrics import ScoringRules
from tasks.progress import progress_bar
from tasks.registry import Adapter, Registry, served_to
from tasks.models import load_embedder_for
from tasks.resources import make_answerer, open_retriever, search_filters

_TASK = dict(cache_policy=NO_CACHE, persist_result=False)
SYNTHETIC = "synthetic"  # eval_set_path naming the latest synthetic set (`ragtune synth`)


@task(name="load-eval-set", **_TASK)
def eval_set(settings: Settings, path: str | None, limit: int | None) -> EvalSet:
    if path == SYNTHETIC:  # the latest synthetic set's held-out documents, never its training pool
        from tasks.synth import latest

        found = latest(settings.synth_dir)
        if found is None:
            raise ValueError(f"no synthetic set under {settings.synth_dir}: run `ragtune synth` first")
        return load_eval_set(found, "test", limit, strict=True)
    chosen = Path(path) if path else settings.evaluation.path
    if chosen is None:
        raise ValueError("no evaluation set: set evaluation.path in the config or pass --eval-set FILE.jsonl")
    return load_eval_set(chosen, settings.evaluation.split, limit)


@task(name="calibrate-grounding", **_TASK)
def grounding_calibration(
    settings: Settings, ev: EvalSet, table: str | None, table_version: int | None, limit: int | None
) -> Calibration:
    """The grounding threshold for this run (tasks/calibrate.py), reused while its inputs are unchanged."""
    return calibrate_grounding(settings, ev, table, table_version, limit)


@task(name="answer-arm", **_TASK)
def answer_arm(spec: arena.ArmSpec, rows: list[dict[str, Any]], settings: Settings, table: str | None) -> arena.ArmRun:
    answerer = make_answerer(settings, table, retrieval=spec.retrieval, adapter=spec.adapter.path if spec.adapter else None)
    with progress_bar(f"{spec.name:>16}", len(rows), unit="q") as advance:
        return arena.run_arm(spec, rows, answerer, search_filters(settings), settings.generator.batch_size, on_batch=advance)


@task(name="score-arms", **_TASK)
def score_arms(runs: list[arena.ArmRun], fresh: dict[str, list[bool]], settings: Settings) -> dict[str, dict[str, list[float | None]]]:
    """Metrics with intervals on every arm (kept on the runs); returns the per-question scores per arm."""
    rules = ScoringRules(k=settings.retrieval.k, support_threshold=settings.retrieval.min_support)
    embed = load_embedder_for(settings).embed
    ev = settings.evaluation
    return {
        run.spec.name: arena.score_arm(run, rules, embed, fresh.get(run.spec.name, [False] * len(run.results)), ev.resamples, ev.confidence)[1]
        for run in runs
    }


@task(name="promotion-gate", **_TASK)
def promotion_gate(
    runs: list[arena.ArmRun], canary: dict[str, arena.ArmRun], settings: Settings, registry_candidate: Adapter | None
) -> GateResult | None:
    """The verdict on the newest candidate's retrieval arm (hybrid or full+rag) against the champion's (or
    base rag); `apply_verdict` records it."""
    candidate, incumbent = arena.gated_arms(runs, registry_candidate)
    if candidate is None or incumbent is None:
        return None
    champion = incumbent if incumbent.spec.adapter is not None else None
    ev = settings.evaluation
    decision = decide(
        candidate.results,
        incumbent.results,
        canary[candidate.spec.model].results,
        canary[incumbent.spec.model].results,
        primary=ev.primary,
        tolerances={"groundedness": ev.guard_tolerance, "draft_groundedness": ev.guard_tolerance,
                    "hallucination_rate": ev.guard_tolerance, "canary": ev.canary_tolerance},
        rules=ScoringRules(k=settings.retrieval.k, support_threshold=settings.retrieval.min_support),
        resamples=ev.resamples,
        confidence=ev.confidence,
    )
    name = candidate.spec.adapter.name  # type: ignore[union-attr]
    against = champion.spec.adapter.name if champion else "base"  # type: ignore[union-attr]
    return GateResult(candidate=name, incumbent=against, promote=decision.promote, applied=ev.apply_gate,
                      reasons=decision.reasons, numbers=decision.numbers)


@task(name="apply-verdict", **_TASK)
def apply_verdict(gate: GateResult, registry: Registry, run_id: str) -> None:
    """Promote or reject the candidate in the registry, after its report is written (the report names the run)."""
    details = {"gate": {"promote": gate.promote, "reasons": gate.reasons, "numbers": gate.numbers}, "incumbent": gate.incumbent,
               "report": run_id}
    if gate.promote:
        registry.promote(gate.candidate, gate.reasons[0], details, compared_with=None if gate.incumbent == "base" else gate.incumbent)
    else:
        registry.reject(gate.candidate, gate.reasons[0], details)


def _records(run_id: str, runs: list[arena.ArmRun], scores: dict[str, dict[str, list[float | None]]], fresh: dict[str, list[bool]]) -> list[QuestionRecord]:
    out = []
    for run in runs:
        per = scores[run.spec.name]
        for i, (r, a) in enumerate(zip(run.results, run.answers)):
            values = {m: v[i] for m, v in per.items()}
            out.append(QuestionRecord(
                run_id=run_id, arm=run.spec.name, id=r.id, question=r.question, answer=r.answer, abstained=r.abstained,
                answerable=r.answerable, golds=r.golds, category=r.category, paraphrase_group=r.paraphrase_group,
                correct=None if values.get("accuracy") is None else bool(values["accuracy"]),
                fresh=fresh[run.spec.name][i], scores=values, citations=arena.cited_docs(a),
            ))
    return out


def _arm_result(run: arena.ArmRun) -> ArmResult:
    a = run.spec.adapter
    return ArmResult(
        name=run.spec.name, kind=run.spec.kind, adapter=a.name if a else None, adapter_role=run.spec.role,  # type: ignore[arg-type]
        retrieval=run.spec.retrieval, metrics={k: v.as_dict() for k, v in run.metrics.items()},  # type: ignore[misc]
        questions=len(run.results), wall_s=round(run.wall_s, 3), questions_per_min=round(run.questions_per_min, 2),
        train_wall_s=a.metadata.get("wall_s") if a else None, served_to=served_to(a.metadata.get("access")) if a else None,
    )


def previous_runs(reports_dir: Path, eval_path: str) -> list[tuple[EvalRun, Path]]:
    """Earlier runs on the same evaluation file, oldest first."""
    out = []
    for d in sorted(reports_dir.glob("*/results.json")):
        try:
            run = EvalRun.model_validate_json(d.read_text())
        except ValueError:
            continue  # a results file from an older schema: not comparable
        if run.eval_path == eval_path:
            out.append((run, d.parent))
    return out


def read_records(run_dir: Path) -> list[QuestionRecord]:
    f = run_dir / "questions.jsonl"
    return [QuestionRecord.model_validate_json(line) for line in f.read_text().splitlines() if line.strip()] if f.is_file() else []


@flow(name="evaluate", log_prints=False)
def evaluate(
    arms: list[str] | None = None,
    limit: int | None = None,
    eval_set_path: str | None = None,
    apply_gate: bool | None = None,
    table: str | None = None,
    config_file: str | None = None,
) -> dict[str, Any]:
    """Run the arena on the evaluation set, gate the candidate adapter, write the report.

    Args:
        arms: subset of base, rag, lora, hybrid, full, full+rag (default: `evaluation.arms`).
        limit: a smoke run: only the first N questions, N calibration rows and N canary questions,
            report-only unless `apply_gate` is True (default: `evaluation.limit`, none).
        eval_set_path: evaluation JSONL (default: `evaluation.path`), or "synthetic": the `test` rows
            (held-out documents) of the latest synthetic set.
        apply_gate: promote/reject the candidate in the registry (default: `evaluation.apply_gate`;
            False on a limited run).
        table: chunk table (default from settings).
        config_file: optional TOML settings file.
    """
    from tasks.eval_report import summary_markdown

    settings = load_settings(config_file)
    limit = limit or settings.evaluation.limit
    if limit and apply_gate is None:
        apply_gate = False  # a few questions must not promote or reject an adapter unless asked to
    if apply_gate is not None:
        settings = settings.model_copy(update={"evaluation": settings.evaluation.model_copy(update={"apply_gate": apply_gate})})
    ev = eval_set(settings, eval_set_path, limit)
    canary_set = load_canary(settings.evaluation.canary, limit)
    registry = Registry(settings.adapters_dir, settings.locks_dir)
    specs, notes = arena.arm_specs(arms or settings.evaluation.arms, registry)
    needs_index = any(s.retrieval for s in specs)
    chunks = open_retriever(settings, table).table if needs_index else None
    calibration = grounding_calibration(settings, ev, table, arena.table_version(chunks), limit) if needs_index else None
    settings = settings.with_support_threshold(
        calibration.threshold if calibration else settings.retrieval.min_support,
        calibration.quote.threshold if calibration and calibration.quote else None,
    )

    runs = [answer_arm(spec, ev.rows, settings, table) for spec in specs]
    canary = {
        s.model: answer_arm(arena.ArmSpec(f"canary:{s.model}", s.kind, False, s.adapter, s.role), canary_set.rows, settings, None)
        for s in {s.model: s for s in specs}.values()
    }
    fresh = arena.freshness(runs, chunks)
    scores = score_arms(runs, fresh, settings)
    alongside = []
    from tasks.synth import latest as latest_synthetic

    alongside_synthetic = settings.evaluation.synthetic and eval_set_path != SYNTHETIC
    found = latest_synthetic(settings.synth_dir) if alongside_synthetic else None
    if alongside_synthetic and found is None:
        notes.append(f"evaluation.synthetic is set but {settings.synth_dir} holds no synthetic set yet: run `ragtune synth`")
    elif found is not None and not any(r.get("split") == "test" for _, r in read_objects(found)):
        notes.append(f"evaluation.synthetic: the latest synthetic set ({found.parent.name}) kept no held-out question "
                     "(see its synth.json funnel): not scored")
    elif found is not None:  # the same arms on questions nobody labelled
        synthetic = eval_set(settings, SYNTHETIC, limit)
        synthetic_runs = [answer_arm(spec, synthetic.rows, settings, table) for spec in specs]
        score_arms(synthetic_runs, {}, settings)
        alongside.append(AlongsideSet(name="synthetic", path=str(synthetic.path), split=synthetic.split, eval_hash=synthetic.hash,
                                      questions=len(synthetic.rows), arms=[_arm_result(r) for r in synthetic_runs]))
    score_arms(list(canary.values()), {}, settings)
    gate = promotion_gate(runs, canary, settings, arena.newest_candidate(registry))
    if limit:
        threshold = calibration.origin() if calibration else "not needed (no retrieval arm)"
        notes.append(limit_note(limit, len(ev.rows), threshold, len(canary_set.rows), gate.applied if gate else None))

    # Microseconds and a random tail: two evaluations started in the same second get their own run.
    run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ") + "-" + uuid.uuid4().hex[:4]
    result = EvalRun(
        run_id=run_id, created_at=datetime.now(timezone.utc), eval_path=str(ev.path), eval_split=ev.split, eval_hash=ev.hash,
        questions=len(ev.rows), table=table or settings.store.table, table_version=arena.table_version(chunks),
        generator=settings.generator.model,
        settings={"generator": settings.generator.model_dump(mode="json"), "retrieval": settings.retrieval.model_dump(mode="json"),
                  "notes": notes, "limit": limit},
        arms=[_arm_result(r) for r in runs],
        canary={m: {k: v.as_dict() for k, v in c.metrics.items()} for m, c in canary.items()},  # type: ignore[misc]
        gate=gate,
        fresh_questions=max((sum(f) for f in fresh.values()), default=0),
        calibration=asdict(calibration) if calibration else None,
        alongside=alongside,
    )
    records = _records(run_id, runs, scores, fresh)
    out_dir = settings.reports_dir / run_id
    history = previous_runs(settings.reports_dir, str(ev.path))
    files = write_run(result, records, out_dir, history)
    if gate is not None and gate.applied:
        apply_verdict(gate, registry, run_id)
    summary = summary_markdown(result, files) + notes_markdown(notes)
    primary = settings.evaluation.primary
    news = [events.evaluation_completed(result, primary, str(files.html)),
            events.evaluation_regressed(result, events.previous_run([h for h, _ in history], result), primary, str(files.html))]
    limited = f", limited run (limit {limit})" if limit else ""
    create_markdown_artifact(key="evaluation", markdown=summary + events_markdown([e for e in news if e]),
                             description=f"arena on {ev.path} ({len(ev.rows)} questions{limited})")
    create_table_artifact(
        key="arena-metrics",
        table=[{"arm": a.name, **{k: v.value for k, v in a.metrics.items() if not k.startswith("latency_p")}} for a in result.arms],
        description="metric values per arm (intervals in the report)",
    )
    return {"run_id": run_id, "report": str(files.html), "markdown": str(files.markdown), "results": str(out_dir / "results.json"),
            "summary": summary, "gate": gate.model_dump() if gate else None, "notes": notes, "limit": limit,
            "events": [e.name for e in emit(news)]}


def write_run(result: EvalRun, records: list[QuestionRecord], out_dir: Path, history: list[tuple[EvalRun, Path]]) -> Any:
    """results.json + questions.jsonl + the report, written into a temporary directory and renamed."""
    from tasks.eval_report import write_report

    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "results.json").write_text(result.model_dump_json(indent=2))
    with open(tmp / "questions.jsonl", "w", encoding="utf-8") as f:
        for r in records:
            f.write(r.model_dump_json() + "\n")
    if not result.settings.get("limit"):  # a full run's per-question changes are against the last full run
        history = [(h, d) for h, d in history if not h.settings.get("limit")]
    previous = read_records(history[-1][1]) if history else None
    write_report(result, records, tmp, history=[h for h, _ in history], previous_records=previous)
    os.replace(tmp, out_dir)
    latest = out_dir.parent / "LATEST"
    atomic.write_text(latest, out_dir.name + "\n")
    from tasks.eval_report import ReportFiles

    return ReportFiles(markdown=out_dir / "report.md", html=out_dir / "report.html", charts=sorted((out_dir / "charts").glob("*.png")))
