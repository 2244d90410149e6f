"""The evaluation report: decision table verdicts, per-question diffs, files written, summary."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import pytest

from data_contracts.evaluation import ArmResult, Estimate, EvalRun, GateResult, QuestionRecord
from tasks.eval_report import (
    NO_FRESH,
    arms_markdown,
    decision_markdown,
    decision_table,
    gate_markdown,
    question_diffs,
    summary_markdown,
    write_report,
)

T0 = datetime(2025, 3, 1, 2, 0, tzinfo=timezone.utc)


def est(value: float | None, half: float = 0.05, n: int = 40) -> Estimate:
    if value is None:
        return Estimate(value=None, low=None, high=None, n=0)
    return Estimate(value=value, low=value - half, high=value + half, n=n)


def metrics(**over: Estimate) -> dict[str, Estimate]:
    base = {
        "f1": est(0.5), "accuracy": est(0.5), "hallucination_rate": est(0.3), "groundedness": est(None),
        "abstention_recall": est(0.5, n=8), "format_adherence": est(None), "paraphrase_agreement": est(0.6, 0.2, 5),
        "cost_cpu_s": est(1.0, 0.1), "latency_p50.total": est(1.0, 0.1), "latency_p95.total": est(2.0, 0.3),
        "fresh_accuracy": est(None),
    }  # fmt: skip
    return {**base, **over}


def arm(name: str, kind: str, m: dict[str, Estimate], train_wall_s: float | None = None) -> ArmResult:
    adapter = "adapter-1" if kind in ("lora", "hybrid") else None
    return ArmResult(
        name=name, kind=kind, adapter=adapter, adapter_role="champion" if adapter else None,
        retrieval=kind in ("rag", "hybrid"), metrics=m, questions=40, wall_s=30.0, questions_per_min=80.0,
        train_wall_s=train_wall_s,
    )  # fmt: skip


def make_run(
    run_id: str = "r2", eval_hash: str = "h1", created_at: datetime = T0, gate: GateResult | None = None
) -> EvalRun:
    arms = [
        arm("base", "base", metrics(f1=est(0.20), hallucination_rate=est(0.60))),
        arm("rag", "rag", metrics(f1=est(0.70), hallucination_rate=est(0.10), groundedness=est(0.8), draft_groundedness=est(0.6))),
        arm("lora", "lora", metrics(f1=est(0.40), hallucination_rate=est(0.45)), train_wall_s=754.0),
        # hybrid's F1 overlaps rag's interval: answer quality has no clear winner
        arm("hybrid", "hybrid", metrics(f1=est(0.72), hallucination_rate=est(0.25), groundedness=est(0.78), draft_groundedness=est(0.5)),
            train_wall_s=754.0),
    ]  # fmt: skip
    return EvalRun(
        run_id=run_id, created_at=created_at, eval_path="demo/eval.jsonl", eval_split="test", eval_hash=eval_hash,
        questions=40, table="chunks", table_version=7, generator="qwen-0.5b", arms=arms, gate=gate,
        canary={"base": {"contains": est(0.8, n=20)}, "lora@champion": {"contains": est(0.75, n=20)}},
    )  # fmt: skip


def row(run: EvalRun, aspect: str) -> dict:
    return next(r for r in decision_table(run) if r["aspect"] == aspect)


# --- decision table ------------------------------------------------------------------------------


def test_decision_table_has_every_aspect_and_a_cell_per_arm():
    rows = decision_table(make_run())
    assert [r["aspect"] for r in rows] == [
        "Answer quality", "Knowledge freshness", "Hallucination", "Groundedness", "Honest abstention",
        "Cost", "Latency", "Behaviour",
    ]  # fmt: skip
    for r in rows:
        assert set(r["cells"]) == {"base", "rag", "lora", "hybrid"}
    assert row(make_run(), "Answer quality")["cells"]["rag"].startswith("F1 0.70 [0.65–0.75]")


def test_hallucination_winner_is_the_lowest_rate():
    r = row(make_run(), "Hallucination")
    assert r["best"] == "rag"  # 0.10 [0.05–0.15] is clear of hybrid's 0.25 [0.20–0.30]
    assert "**0.10 [0.05–0.15]**" in decision_markdown(make_run())


def test_overlapping_intervals_give_no_winner():
    r = row(make_run(), "Answer quality")  # hybrid 0.72 vs rag 0.70, intervals overlap
    assert r["best"] is None and r["verdict"] == "within noise"
    run = make_run()
    run.arms[3].metrics["f1"] = est(0.90)  # now clear of rag's interval
    assert row(run, "Answer quality")["best"] == "hybrid"


def test_freshness_is_na_when_nothing_changed_and_measured_otherwise():
    run = make_run()
    assert set(row(run, "Knowledge freshness")["cells"].values()) == {NO_FRESH}
    assert row(run, "Knowledge freshness")["best"] is None
    run.arms[1].metrics["fresh_accuracy"] = est(0.9, n=6)
    run.arms[2].metrics["fresh_accuracy"] = est(0.1, n=6)
    r = row(run, "Knowledge freshness")
    assert r["cells"]["rag"] == "0.90 [0.85–0.95] (n=6)" and r["cells"]["base"] == NO_FRESH
    assert r["best"] == "rag"


def test_groundedness_is_na_without_retrieval():
    cells = row(make_run(), "Groundedness")["cells"]
    assert cells["base"] == cells["lora"] == "n/a: no retrieval"
    assert cells["rag"].startswith("drafts 0.60") and "answers 0.80" in cells["rag"]


def test_cost_shows_training_wall_time_for_adapter_arms_only():
    cells = row(make_run(), "Cost")["cells"]
    assert "training 12.6 min" in cells["lora"] and "training 12.6 min" in cells["hybrid"]
    assert "training" not in cells["base"] and "training" not in cells["rag"]


# --- per-question diffs --------------------------------------------------------------------------


def rec(run_id: str, arm_name: str, qid: str, correct: bool | None, answer: str = "x", answerable: bool = True,
        abstained: bool = False) -> QuestionRecord:  # fmt: skip
    return QuestionRecord(run_id=run_id, arm=arm_name, id=qid, question=f"question {qid}?", answer=answer,
                          abstained=abstained, answerable=answerable, golds=["g"], correct=correct)  # fmt: skip


def test_question_diffs_order_failing_then_passing_then_new():
    before = [
        rec("r1", "rag", "q1", True), rec("r1", "rag", "q2", False), rec("r1", "rag", "q3", True),
        rec("r1", "hybrid", "q1", True), rec("r1", "rag", "u1", None, answerable=False, abstained=True),
    ]  # fmt: skip
    after = [
        rec("r2", "rag", "q2", True, "fixed"), rec("r2", "rag", "q1", False, "broke"), rec("r2", "rag", "q3", True),
        rec("r2", "hybrid", "q1", True), rec("r2", "rag", "q9", True),
        rec("r2", "rag", "u1", None, answerable=False, abstained=False),
    ]  # fmt: skip
    diffs = question_diffs(after, before)
    assert [(d["status"], d["arm"], d["id"]) for d in diffs] == [
        ("newly_failing", "rag", "q1"),
        ("newly_failing", "rag", "u1"),  # stopped abstaining on an unanswerable question
        ("newly_passing", "rag", "q2"),
        ("new", "rag", "q9"),
    ]
    assert diffs[0]["answer_before"] == "x" and diffs[0]["answer_after"] == "broke"
    assert diffs[0]["correct_before"] is True and diffs[0]["correct_after"] is False
    assert diffs[3]["answer_before"] is None


def test_question_diffs_without_previous_run_are_empty():
    assert question_diffs([rec("r2", "rag", "q1", True)], None) == []
    assert question_diffs([rec("r2", "rag", "q1", True)], []) == []


# --- the report ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """One report with a previous run on the same set (trend) and one alone; charts are the slow part."""
    gate = GateResult(candidate="adapter-2", incumbent="adapter-1", promote=False, applied=False,
                      reasons=["reject: failed f1", "f1 +0.010 [-0.02, +0.04]: not a win beyond the CI"],
                      numbers={"checks": {"f1": {"passed": False}}})  # fmt: skip
    run = make_run(gate=gate)
    older = make_run("r1", created_at=T0 - timedelta(days=1))
    other_set = make_run("r0", eval_hash="other", created_at=T0 - timedelta(days=2))
    evil = "<script>alert(1)</script>"
    records = [rec("r2", "rag", "q1", False, evil), rec("r2", "rag", "q2", True)]
    previous = [rec("r1", "rag", "q1", True), rec("r1", "rag", "q2", True)]
    with_trend = write_report(run, records, tmp_path_factory.mktemp("trend"), [other_set, older], previous)
    alone = write_report(run, records, tmp_path_factory.mktemp("alone"), [other_set])
    return with_trend, alone


def test_write_report_writes_markdown_html_and_charts(reports):
    files, _ = reports
    assert files.markdown.is_file() and files.html.is_file()
    assert {p.name for p in files.charts} == {"metrics.png", "latency.png", "trend.png"}
    for p in files.charts:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = files.markdown.read_text()
    for section in ("decision table", "Promotion gate", "Every metric per arm", "Canary", "Per-question changes",
                    "tasks/metrics.py"):  # fmt: skip
        assert section in md
    assert "![" in md and "charts/metrics.png" in md
    assert "newly failing" in md and "1 newly failing, 0 newly passing" in md


def test_html_is_self_contained_and_escapes_model_answers(reports):
    files, _ = reports
    page = files.html.read_text()
    assert page.count("data:image/png;base64,") == 3
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script>" not in files.markdown.read_text()  # escaped for Markdown renderers too


def test_trend_chart_needs_two_runs_on_the_same_eval_set(reports):
    _, alone = reports  # the only other run was on a different eval_hash
    assert "trend.png" not in {p.name for p in alone.charts}
    assert not (alone.markdown.parent / "charts" / "trend.png").exists()
    md = alone.markdown.read_text()
    assert "No trend yet: 1 run" in md
    assert "No previous run" in md


def test_summary_has_decision_table_and_gate_verdict(reports):
    files, _ = reports
    run = make_run(gate=GateResult(candidate="adapter-2", incumbent="base", promote=True, applied=True,
                                   reasons=["promote: beats the incumbent"], numbers={}))  # fmt: skip
    summary = summary_markdown(run, files)
    assert decision_markdown(run).strip() in summary
    assert "Gate: PROMOTE" in summary and "promote: beats the incumbent" in summary
    assert str(files.html) in summary
    assert "No candidate adapter" in summary_markdown(make_run())


def test_gate_marks_failed_checks_and_arms_table_has_every_metric():
    gate = GateResult(candidate="c", incumbent="i", promote=False, applied=False,
                      reasons=["reject: failed f1", "f1 worse"], numbers={"checks": {"f1": {"passed": False}}})
    assert "**FAIL:** f1 worse" in gate_markdown(make_run(gate=gate))
    table = arms_markdown(make_run())
    assert "`hallucination_rate ↓`" in table and "`latency_p95.total ↓`" in table
    assert "**0.700 [0.650–0.750]**" not in table  # rag's F1 overlaps hybrid's: not bold
    assert "**0.100 [0.050–0.150]**" in table  # rag's hallucination rate is clear of the rest


def test_rank_agreement_counts_pairs_of_arms_in_the_same_order():
    from data_contracts.evaluation import ArmResult, Estimate
    from tasks.eval_report import rank_agreement

    def arms(f1s):
        return [ArmResult(name=n, kind="rag", retrieval=True, questions=10, wall_s=1, questions_per_min=1,
                          metrics={"f1": Estimate(value=v, low=None, high=None, n=10)}) for n, v in f1s.items()]

    labelled = arms({"base": 0.1, "rag": 0.3, "lora": 0.2})
    assert rank_agreement(labelled, arms({"base": 0.0, "rag": 0.5, "lora": 0.4})) == (3, 3)
    assert rank_agreement(labelled, arms({"base": 0.6, "rag": 0.5, "lora": 0.4})) == (1, 3)
    assert rank_agreement(labelled, arms({"base": 0.1, "rag": 0.1})) == (0, 0)  # a tie is not compared
