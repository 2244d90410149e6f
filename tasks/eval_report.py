"""The evaluation report: one run's measurements as a document people read.

`write_report` writes `report.md`, a self-contained `report.html` (inline CSS, charts embedded as
base64 PNGs) and `charts/*.png`. Both files carry the same content because both are rendered from
one list of blocks (`_report_blocks`); the pieces the CLI and Prefect artifacts show on their own
(`decision_markdown`, `gate_markdown`, `arms_markdown`, `summary_markdown`) come from the same blocks.

The core is the decision table: the "RAG vs fine-tuning" comparison articles draw by hand, with
every cell a number measured in this run. An arm is marked best on a row only when its confidence
interval does not overlap the runner-up's; otherwise the row says "within noise".

Everything a model wrote (answers, questions) is escaped in both formats.
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence, Union

from data_contracts.evaluation import ArmResult, Estimate, EvalRun, QuestionRecord
from tasks.metrics import LOWER_IS_BETTER, NO_DIRECTION

MAX_DIFF_ROWS = 30
ANSWER_CHARS = 160  # answers longer than this are cut in the per-question table
CHART_METRICS = ("f1", "accuracy", "hallucination_rate", "draft_groundedness", "format_adherence", "paraphrase_agreement")
TREND_METRICS = ("f1", "hallucination_rate")
TREND_RUNS = 30  # the newest runs the trend chart shows (nightly: about a month)
NO_FRESH = "n/a: no document changed since training"


@dataclass
class ReportFiles:
    markdown: Path
    html: Path
    charts: list[Path] = field(default_factory=list)


# --- document blocks, rendered to Markdown and HTML ----------------------------------------------

# Inline text: a plain string, or (style, text) with style "b" (bold) or "code".
Inline = Union[str, tuple[str, str]]
Text = Union[str, list[Inline]]


@dataclass
class _Heading:
    level: int
    text: Text


@dataclass
class _Para:
    text: Text


@dataclass
class _Bullets:
    items: list[Text]


@dataclass
class _Table:
    header: list[str]
    rows: list[list[Text]]
    align: str = ""  # one "l"/"r" per column; missing columns are left-aligned


@dataclass
class _Image:
    alt: str
    path: Path  # the PNG on disk
    rel: str  # its path relative to the report


_Block = Union[_Heading, _Para, _Bullets, _Table, _Image]


def _inlines(text: Text) -> list[Inline]:
    return [text] if isinstance(text, str) else text


def _md_escape(text: str) -> str:
    """Plain text safe in Markdown and inside a table cell (no HTML, links, emphasis or cell breaks)."""
    for ch in "\\`*|<>":
        text = text.replace(ch, "\\" + ch)
    return " ".join(text.replace("](", "]\\(").splitlines())


def _md_inline(text: Text) -> str:
    out = []
    for part in _inlines(text):
        if isinstance(part, str):
            out.append(_md_escape(part))
        elif part[0] == "b":
            out.append(f"**{_md_escape(part[1])}**")
        else:  # code spans show their content literally; only cell breaks and backticks need care
            out.append("`" + " ".join(part[1].replace("`", "'").replace("|", "\\|").splitlines()) + "`")
    return "".join(out)


def _to_markdown(blocks: Iterable[_Block]) -> str:
    chunks = []
    for b in blocks:
        if isinstance(b, _Heading):
            chunks.append("#" * b.level + " " + _md_inline(b.text))
        elif isinstance(b, _Para):
            chunks.append(_md_inline(b.text))
        elif isinstance(b, _Bullets):
            chunks.append("\n".join("- " + _md_inline(item) for item in b.items))
        elif isinstance(b, _Table):
            align = [("---:" if b.align[i : i + 1] == "r" else "---") for i in range(len(b.header))]
            lines = ["| " + " | ".join(_md_escape(h) for h in b.header) + " |", "|" + "|".join(align) + "|"]
            lines += ["| " + " | ".join(_md_inline(c) for c in row) + " |" for row in b.rows]
            chunks.append("\n".join(lines))
        else:
            chunks.append(f"![{_md_escape(b.alt)}]({b.rel})")
    return "\n\n".join(chunks) + "\n"


def _html_inline(text: Text) -> str:
    out = []
    for part in _inlines(text):
        if isinstance(part, str):
            out.append(html.escape(part))
        else:
            tag = "strong" if part[0] == "b" else "code"
            out.append(f"<{tag}>{html.escape(part[1])}</{tag}>")
    return "".join(out)


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #1d1d1f; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.88em; }
th, td { border: 1px solid #d0d0d0; padding: 0.3em 0.55em; vertical-align: top; text-align: left; }
th { background: #f2f2f2; }
td.r { text-align: right; white-space: nowrap; }
tr:nth-child(even) td { background: #fafafa; }
code { background: #f2f2f2; padding: 0 0.2em; border-radius: 3px; }
img { max-width: 100%; border: 1px solid #eee; }
"""


def _to_html(blocks: Iterable[_Block], title: str) -> str:
    body = []
    for b in blocks:
        if isinstance(b, _Heading):
            body.append(f"<h{b.level}>{_html_inline(b.text)}</h{b.level}>")
        elif isinstance(b, _Para):
            body.append(f"<p>{_html_inline(b.text)}</p>")
        elif isinstance(b, _Bullets):
            body.append("<ul>" + "".join(f"<li>{_html_inline(i)}</li>" for i in b.items) + "</ul>")
        elif isinstance(b, _Table):
            cls = [' class="r"' if b.align[i : i + 1] == "r" else "" for i in range(len(b.header))]
            head = "".join(f"<th>{html.escape(h)}</th>" for h in b.header)
            rows = "".join(
                "<tr>" + "".join(f"<td{cls[i]}>{_html_inline(c)}</td>" for i, c in enumerate(row)) + "</tr>"
                for row in b.rows
            )
            body.append(f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>')
        else:
            data = base64.b64encode(b.path.read_bytes()).decode("ascii")
            body.append(f'<p><img alt="{html.escape(b.alt)}" src="data:image/png;base64,{data}"></p>')
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


# --- numbers -------------------------------------------------------------------------------------


def _lower_is_better(metric: str) -> bool:
    return metric in LOWER_IS_BETTER or metric.startswith("latency_")


def _is_seconds(metric: str) -> bool:
    return metric.startswith("latency_") or metric == "cost_cpu_s"


def _has_value(e: Estimate | None) -> bool:
    return e is not None and e.value is not None


def _num(x: float, seconds: bool, digits: int = 2) -> str:
    if not seconds:
        return f"{x:.{digits}f}"
    size = abs(x)
    if size >= 100:
        return f"{x:.0f}"
    if size >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}" if size >= 0.01 or size == 0 else f"{x:.2g}"


def _est(e: Estimate | None, seconds: bool = False, digits: int = 2) -> str:
    """`0.62 [0.51–0.72]`; "–" when there is nothing to show."""
    if not _has_value(e):
        return "–"
    if e.low is None or e.high is None:
        return _num(e.value, seconds, digits)
    return f"{_num(e.value, seconds, digits)} [{_num(e.low, seconds, digits)}–{_num(e.high, seconds, digits)}]"


def _n(e: Estimate | None, arm_questions: int) -> str:
    """The sample size, shown only where it differs from the arm's question count."""
    if e is None or e.value is None:
        return " (n=0)" if e is not None else ""
    return "" if e.n == arm_questions else f" (n={e.n})"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _clear_winner(estimates: Mapping[str, Estimate | None], lower_better: bool) -> tuple[str | None, int]:
    """The arm whose interval is entirely better than the runner-up's, and how many arms were compared."""
    have = [(name, e) for name, e in estimates.items() if _has_value(e)]
    if len(have) < 2:
        return None, len(have)
    ranked = sorted(have, key=lambda item: item[1].value, reverse=not lower_better)
    (best, b), (_, r) = ranked[0], ranked[1]
    if b.value == r.value or None in (b.low, b.high, r.low, r.high):
        return None, len(have)
    separated = b.high < r.low if lower_better else b.low > r.high
    return (best if separated else None), len(have)


# --- the decision table --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Aspect:
    aspect: str
    measured_as: str
    judged_by: tuple[str, ...]  # the best arm must win every one of these beyond the CIs
    cell: Callable[[ArmResult], str]
    applies: Callable[[ArmResult], bool] = lambda arm: True


def _m(arm: ArmResult, metric: str) -> Estimate | None:
    return arm.metrics.get(metric)


def _quality_cell(arm: ArmResult) -> str:
    f1 = _m(arm, "f1")
    return f"F1 {_est(f1)}; acc {_est(_m(arm, 'accuracy'))}{_n(f1, arm.questions)}"


def _fresh_cell(arm: ArmResult) -> str:
    e = _m(arm, "fresh_accuracy")
    if e is None:
        return "n/a: not measured"
    if e.n == 0:
        return NO_FRESH
    return f"{_est(e)} (n={e.n})"


def _grounded_cell(arm: ArmResult) -> str:
    if not arm.retrieval:
        return "n/a: no retrieval"
    drafts, answers = _m(arm, "draft_groundedness"), _m(arm, "groundedness")
    return f"drafts {_est(drafts)}{_n(drafts, arm.questions)}; answers {_est(answers)}{_n(answers, arm.questions)}"


def _abstention_cell(arm: ArmResult) -> str:
    e = _m(arm, "abstention_recall")
    if e is not None and e.n == 0:
        return "n/a: no unanswerable question"
    return _est(e) + _n(e, arm.questions)


def _cost_cell(arm: ArmResult) -> str:
    e = _m(arm, "cost_cpu_s")
    out = f"{_est(e, seconds=True)} CPU-s/answer" if _has_value(e) else "–"
    if arm.adapter is not None:
        out += "; training " + (_duration(arm.train_wall_s) if arm.train_wall_s is not None else "time unknown")
    return out


def _latency_cell(arm: ArmResult) -> str:
    p50, p95 = _m(arm, "latency_p50.total"), _m(arm, "latency_p95.total")
    return f"p50 {_est(p50, seconds=True)} s; p95 {_est(p95, seconds=True)} s"


def _behaviour_cell(arm: ArmResult) -> str:
    fmt, para = _m(arm, "format_adherence"), _m(arm, "paraphrase_agreement")
    fmt_text = _est(fmt) + _n(fmt, arm.questions) if _has_value(fmt) else "n/a"
    para_text = f"{_est(para)} (n={para.n} groups)" if _has_value(para) else "n/a"
    return f"format {fmt_text}; paraphrase {para_text}"


def _has_fresh(arm: ArmResult) -> bool:
    e = _m(arm, "fresh_accuracy")
    return e is not None and e.n > 0


_ASPECTS = (
    _Aspect("Answer quality", "token F1 (and accuracy) on answerable questions", ("f1",), _quality_cell),
    _Aspect("Knowledge freshness", "accuracy on questions whose gold documents changed after the adapter was trained",
            ("fresh_accuracy",), _fresh_cell, _has_fresh),
    _Aspect("Hallucination", "hallucination rate, all questions (lower is better)", ("hallucination_rate",),
            lambda arm: _est(_m(arm, "hallucination_rate")) + _n(_m(arm, "hallucination_rate"), arm.questions)),
    _Aspect("Groundedness", "share of sentences supported by the retrieved sources: of every draft the generator "
            "wrote (judged on this) and of the answers the validator let through", ("draft_groundedness",),
            _grounded_cell, lambda arm: arm.retrieval),
    _Aspect("Honest abstention", "abstention recall on unanswerable questions", ("abstention_recall",),
            _abstention_cell),
    _Aspect("Cost", "CPU-seconds per answer (judged on this); adapter training wall time", ("cost_cpu_s",),
            _cost_cell),
    _Aspect("Latency", "p50 / p95 total seconds per question (judged on p50)", ("latency_p50.total",), _latency_cell),
    _Aspect("Behaviour", "format adherence (cites its sources) and paraphrase agreement",
            ("format_adherence", "paraphrase_agreement"), _behaviour_cell),
)  # fmt: skip


def _row_best(run: EvalRun, aspect: _Aspect) -> tuple[str | None, str]:
    """The best arm (or None) and the text of the table's "best" column."""
    arms = [a for a in run.arms if aspect.applies(a)]
    winners, compared = [], 0
    for metric in aspect.judged_by:
        winner, n = _clear_winner({a.name: _m(a, metric) for a in arms}, _lower_is_better(metric))
        if n < 2:
            continue  # nothing to judge on this metric (e.g. no paraphrase groups)
        compared += 1
        winners.append(winner)
    if compared == 0:
        return None, "–"
    if winners[0] is not None and all(w == winners[0] for w in winners):
        return winners[0], winners[0]
    return None, "within noise"


def decision_table(run: EvalRun) -> list[dict]:
    """The RAG-vs-fine-tuning comparison, every cell measured in this run.

    Rows: {"aspect", "measured_as", "cells": {arm name: text}, "best": arm name or None, "verdict": what
    the best column says ("within noise" when the intervals overlap, "–" when under two arms compare),
    "judged_by": the metrics the best arm must win beyond the CIs}.
    """
    rows = []
    for aspect in _ASPECTS:
        best, verdict = _row_best(run, aspect)
        rows.append(
            {
                "aspect": aspect.aspect,
                "measured_as": aspect.measured_as,
                "cells": {arm.name: aspect.cell(arm) for arm in run.arms},
                "best": best,
                "verdict": verdict,
                "judged_by": list(aspect.judged_by),
            }
        )
    return rows


def _decision_blocks(run: EvalRun) -> list[_Block]:
    arm_names = [a.name for a in run.arms]
    table_rows: list[list[Text]] = []
    for row in decision_table(run):
        cells: list[Text] = [[("b", row["aspect"])], row["measured_as"]]
        cells += [[("b", row["cells"][n])] if n == row["best"] else row["cells"][n] for n in arm_names]
        cells.append([("b", row["verdict"])] if row["best"] else row["verdict"])
        table_rows.append(cells)
    return [
        _Table(["Aspect", "Measured as"] + arm_names + ["Best"], table_rows),
        _Para("Cells: value [bootstrap CI]; n where it is not every question. Bold marks the best arm only "
              "when its interval does not overlap the runner-up's; otherwise the row is within noise."),
    ]  # fmt: skip


def rank_agreement(a: Sequence[ArmResult], b: Sequence[ArmResult], metric: str = "f1") -> tuple[int, int]:
    """(concordant, compared) pairs of arms ordered the same way by `metric` on two sets: does the
    set nobody labelled rank the customisations as the labelled one does? Ties and gaps are not compared."""
    va = {x.name: x.metrics.get(metric) for x in a}
    vb = {x.name: x.metrics.get(metric) for x in b}
    names = [n for n in va if n in vb and va[n] and vb[n] and va[n].value is not None and vb[n].value is not None]
    concordant = compared = 0
    for i, x in enumerate(names):
        for y in names[i + 1 :]:
            da, db = va[x].value - va[y].value, vb[x].value - vb[y].value  # type: ignore[union-attr,operator]
            if da and db:
                compared += 1
                concordant += (da > 0) == (db > 0)
    return concordant, compared


def _alongside_blocks(run: EvalRun) -> list[_Block]:
    blocks: list[_Block] = []
    for other in run.alongside:
        view = run.model_copy(update={"arms": other.arms, "questions": other.questions})
        same, pairs = rank_agreement(run.arms, other.arms)
        blocks += [
            _Heading(2, f"On the {other.name} evaluation set (not gated)"),
            _Para([f"{other.questions} questions from ", ("code", other.path), f" (split {other.split}): generated from documents "
                   "that fed no training, answered by the same arms with the same threshold in this run."]),
            *_decision_blocks(view),
            _Para(f"Ranking agreement with the labelled set (token F1): {same} of {pairs} pairs of arms in the same order."
                  if pairs else "Ranking agreement: too few arms with F1 on both sets to compare."),
        ]
    return blocks


def decision_markdown(run: EvalRun) -> str:
    """The decision table as Markdown (CLI output, Prefect artifacts)."""
    return _to_markdown(_decision_blocks(run))


# --- per-arm metrics -----------------------------------------------------------------------------


def _metric_names(metric_dicts: Iterable[Mapping[str, Estimate]]) -> list[str]:
    names: dict[str, None] = {}
    for d in metric_dicts:
        names.update(dict.fromkeys(d))
    return list(names)


def _metrics_table(
    columns: Mapping[str, Mapping[str, Estimate]], metrics: Sequence[str], questions: Mapping[str, int]
) -> _Table:
    """Metric rows x column (arm) estimates, the clear winner of each row in bold."""
    rows: list[list[Text]] = []
    for metric in metrics:
        seconds, lower = _is_seconds(metric), _lower_is_better(metric)
        estimates = {name: m.get(metric) for name, m in columns.items()}
        winner = None if metric in NO_DIRECTION else _clear_winner(estimates, lower)[0]
        label = metric + (" ↓" if lower else "")
        cells: list[Text] = [[("code", label)]]
        for name, e in estimates.items():
            text = _est(e, seconds, digits=3) + _n(e, questions.get(name, -1))
            cells.append([("b", text)] if name == winner else text)
        rows.append(cells)
    return _Table(["Metric"] + list(columns), rows, "l" + "r" * len(columns))


def _arms_blocks(run: EvalRun, metrics: Sequence[str] | None = None) -> list[_Block]:
    names = list(metrics) if metrics is not None else _metric_names(a.metrics for a in run.arms)
    columns = {a.name: a.metrics for a in run.arms}
    return [
        _metrics_table(columns, names, {a.name: a.questions for a in run.arms}),
        _Para("value [bootstrap CI] (n where it is not every question); ↓ lower is better; – not applicable "
              "to the arm; bold: best beyond the CIs."),
    ]  # fmt: skip


def arms_markdown(run: EvalRun, metrics: Sequence[str] | None = None) -> str:
    """Every metric (or those named) x arm, each with its CI."""
    return _to_markdown(_arms_blocks(run, metrics))


def _overview_blocks(run: EvalRun) -> list[_Block]:
    rows: list[list[Text]] = []
    for a in run.arms:
        adapter: Text = "–"
        training = "–"
        if a.adapter is not None:
            adapter = [("code", a.adapter), f" ({a.adapter_role})" if a.adapter_role else ""]
            training = _duration(a.train_wall_s) if a.train_wall_s is not None else "unknown"
        rows.append([[("b", a.name)], a.kind, adapter, "yes" if a.retrieval else "no", str(a.questions),
                     _duration(a.wall_s), f"{a.questions_per_min:.1f}", training, a.served_to or "–"])  # fmt: skip
    header = ["Arm", "Kind", "Adapter", "Retrieval", "Questions", "Wall time", "Questions/min", "Adapter training", "Adapter served to"]
    return [_Table(header, rows, "llllrrrrl")]


# --- the gate ------------------------------------------------------------------------------------


def _gate_blocks(run: EvalRun) -> list[_Block]:
    g = run.gate
    if g is None:
        return [_Para("No candidate adapter this run: no promotion decision.")]
    verdict = "PROMOTE" if g.promote else "REJECT"
    if g.applied:
        applied = "registry updated"
    else:
        applied = "dry run: registry unchanged" if g.promote else "registry unchanged"
    head: list[Inline] = [("b", f"Gate: {verdict}"), " candidate ", ("code", g.candidate), " vs incumbent ",
                          ("code", g.incumbent), f" ({applied})."]  # fmt: skip
    blocks: list[_Block] = [_Para(head)]
    if g.reasons:
        blocks.append(_Para(g.reasons[0]))
        checks = g.numbers.get("checks") if isinstance(g.numbers, dict) else None
        checks = checks if isinstance(checks, dict) else {}
        passed = [c.get("passed") if isinstance(c, dict) else None for c in checks.values()]
        if len(passed) != len(g.reasons) - 1:  # the gate lists one reason per check; otherwise don't guess
            passed = [None] * (len(g.reasons) - 1)
        items: list[Text] = []
        for ok, reason in zip(passed, g.reasons[1:]):
            items.append([("b", "pass:" if ok else "FAIL:"), " " + reason] if ok is not None else reason)
        if items:
            blocks.append(_Bullets(items))
    return blocks


def gate_markdown(run: EvalRun) -> str:
    """The promotion decision with one line per check, or a note that there was no candidate."""
    return _to_markdown(_gate_blocks(run))


# --- per-question diffs --------------------------------------------------------------------------


def _passed(r: QuestionRecord) -> bool | None:
    """Correct; for an unanswerable question without a verdict, an honest abstention counts as passing."""
    if r.correct is not None:
        return r.correct
    return r.abstained if not r.answerable else None


_STATUS_ORDER = {"newly_failing": 0, "newly_passing": 1, "new": 2}


def question_diffs(
    records: Sequence[QuestionRecord], previous_records: Sequence[QuestionRecord] | None
) -> list[dict]:
    """Per (arm, question id) whose outcome changed since the previous run: newly failing first, then
    newly passing, then questions the previous run did not have ("new"); unchanged ones are left out.

    Each: {"arm", "id", "question", "status", "correct_before", "correct_after", "answer_before",
    "answer_after"}. No previous records: an empty list.
    """
    if not previous_records:
        return []
    before = {(r.arm, r.id): r for r in previous_records}
    arm_order = {arm: i for i, arm in enumerate(dict.fromkeys(r.arm for r in records))}
    out = []
    for r in records:
        prev = before.get((r.arm, r.id))
        after_ok = _passed(r)
        if prev is None:
            status, before_ok = "new", None
        else:
            before_ok = _passed(prev)
            if before_ok is True and after_ok is False:
                status = "newly_failing"
            elif before_ok is False and after_ok is True:
                status = "newly_passing"
            else:
                continue
        out.append({"arm": r.arm, "id": r.id, "question": r.question, "status": status,
                    "correct_before": before_ok, "correct_after": after_ok,
                    "answer_before": None if prev is None else prev.answer, "answer_after": r.answer})  # fmt: skip
    return sorted(out, key=lambda d: (_STATUS_ORDER[d["status"]], arm_order[d["arm"]], d["id"]))


def _short(text: str, limit: int = ANSWER_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _mark(ok: bool | None) -> str:
    return {True: "✓", False: "✗", None: "–"}[ok]


def _diff_blocks(records: Sequence[QuestionRecord], previous_records: Sequence[QuestionRecord] | None) -> list[_Block]:
    if not previous_records:
        return [_Para("No previous run's answers to compare with.")]
    previous = previous_records[0].run_id
    diffs = question_diffs(records, previous_records)
    changed = [d for d in diffs if d["status"] != "new"]
    new = len(diffs) - len(changed)
    failing = sum(d["status"] == "newly_failing" for d in changed)
    intro: list[Inline] = ["Against run ", ("code", previous), f": {failing} newly failing, "
                           f"{len(changed) - failing} newly passing (arm, question) pairs"]  # fmt: skip
    intro.append(f"; {new} not in the previous run." if new else ".")
    blocks: list[_Block] = [_Para(intro)]
    if changed:
        rows: list[list[Text]] = []
        for d in changed[:MAX_DIFF_ROWS]:
            status = [("b", "newly failing")] if d["status"] == "newly_failing" else "newly passing"
            rows.append([status, d["arm"], [("code", d["id"])], _short(d["question"]),
                         f"{_mark(d['correct_before'])} {_short(d['answer_before'] or '')}",
                         f"{_mark(d['correct_after'])} {_short(d['answer_after'])}"])  # fmt: skip
        blocks.append(_Table(["Change", "Arm", "Question id", "Question", "Before", "After"], rows))
        if len(changed) > MAX_DIFF_ROWS:
            rest = len(changed) - MAX_DIFF_ROWS
            blocks.append(_Para(f"… and {rest} more (questions.jsonl of both runs has them all)."))
    return blocks


# --- charts (matplotlib's object API on Agg: no pyplot, so no global backend or figure registry) -


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _colors(names: Sequence[str]) -> dict[str, str]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {name: cmap(i % 10) for i, name in enumerate(names)}


def _errors(estimates: Sequence[Estimate | None]) -> tuple[list[float], list[list[float]]]:
    """Bar heights and asymmetric error bars (0 where there is no value)."""
    values, low, high = [], [], []
    for e in estimates:
        ok = _has_value(e)
        v = e.value if ok else 0.0
        values.append(v)
        low.append(max(v - e.low, 0.0) if ok and e.low is not None else 0.0)
        high.append(max(e.high - v, 0.0) if ok and e.high is not None else 0.0)
    return values, [low, high]


def _grouped_bars(
    ax, groups: Sequence[str], series: Mapping[str, Sequence[Estimate | None]], colors: Mapping[str, str]
) -> None:
    width = 0.8 / max(len(series), 1)
    for i, (name, estimates) in enumerate(series.items()):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        present = [j for j, e in enumerate(estimates) if _has_value(e)]
        values, err = _errors([estimates[j] for j in present])
        ax.bar([xs[j] for j in present], values, width, yerr=err, capsize=2, label=name, color=colors[name])
    ax.set_xticks(range(len(groups)), groups, rotation=20, ha="right")
    ax.grid(axis="y", alpha=0.3)


def _metrics_chart(run: EvalRun, path: Path) -> Path | None:
    metrics = [m for m in CHART_METRICS if any(_has_value(a.metrics.get(m)) for a in run.arms)]
    if not metrics:
        return None
    fig = _figure(max(6.0, 1.2 * len(metrics) + 2), 3.6)
    ax = fig.add_subplot()
    series = {a.name: [a.metrics.get(m) for m in metrics] for a in run.arms}
    _grouped_bars(ax, [m + (" ↓" if _lower_is_better(m) else "") for m in metrics], series, _colors(list(series)))
    ax.set_ylim(0, 1.05)
    ax.set_title("Metrics per arm (bars: value, whiskers: bootstrap CI)", fontsize=10)
    fig.legend(loc="outside right upper", fontsize=8)
    fig.savefig(path, dpi=100)
    return path


def _latency_chart(run: EvalRun, path: Path) -> Path | None:
    keys = ("latency_p50.total", "latency_p95.total")
    if not any(_has_value(a.metrics.get(k)) for a in run.arms for k in keys):
        return None
    fig = _figure(max(5.0, 1.1 * len(run.arms) + 2), 3.4)
    ax = fig.add_subplot()
    series = {"p50": [a.metrics.get(keys[0]) for a in run.arms], "p95": [a.metrics.get(keys[1]) for a in run.arms]}
    _grouped_bars(ax, [a.name for a in run.arms], series, {"p50": "#4c72b0", "p95": "#dd8452"})
    ax.set_ylabel("seconds per question")
    ax.set_title("Latency per arm (total, bootstrap CI)", fontsize=10)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=100)
    return path


def _trend_runs(run: EvalRun, history: Sequence[EvalRun]) -> list[EvalRun]:
    """Earlier runs on the same evaluation set (the newest `TREND_RUNS` - 1), oldest first, then this one."""
    earlier = [h for h in history if h.eval_hash == run.eval_hash and h.run_id != run.run_id]
    return sorted(earlier, key=lambda h: h.created_at)[-(TREND_RUNS - 1) :] + [run]


def _series(arm: ArmResult) -> str:
    """A trend line per kind and adapter role: `lora` alone and `lora@champion` later are the same line."""
    return f"{arm.kind}@{arm.adapter_role}" if arm.adapter_role else arm.kind


def _trend_chart(runs: Sequence[EvalRun], path: Path) -> Path:
    fig = _figure(10.0, 3.6)
    names = list(dict.fromkeys(_series(a) for r in runs for a in r.arms))
    colors = _colors(names)
    labels = [r.created_at.strftime("%m-%d %H:%M") for r in runs]
    handles: dict[str, object] = {}
    for k, metric in enumerate(TREND_METRICS):
        ax = fig.add_subplot(1, len(TREND_METRICS), k + 1)
        for name in names:
            points = [(i, a.metrics.get(metric)) for i, r in enumerate(runs) for a in r.arms if _series(a) == name]
            points = [(i, e) for i, e in points if _has_value(e)]
            if not points:
                continue
            values, err = _errors([e for _, e in points])
            xs = [i for i, _ in points]
            line = ax.errorbar(xs, values, yerr=err, marker="o", ms=4, capsize=2, color=colors[name])
            handles.setdefault(name, line)
        ax.set_xticks(range(len(runs)), labels, rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_title(metric + (" (lower is better)" if _lower_is_better(metric) else ""), fontsize=10)
        ax.grid(alpha=0.3)
    fig.legend(list(handles.values()), list(handles), loc="outside right upper", fontsize=8)
    fig.savefig(path, dpi=100)
    return path


# --- the report ----------------------------------------------------------------------------------


def _calibration_blocks(run: EvalRun) -> list[_Block]:
    """Which grounding threshold the retrieval arms were held to, and how it was chosen."""
    if not run.calibration:
        return []
    from tasks.calibrate import Calibration

    c = Calibration.from_dict(run.calibration)
    text = c.summary()
    return [_Para([text[0].upper() + text[1:], ". How it is chosen: ", ("code", "tasks/calibrate.py"), "."])]


def _title(run: EvalRun) -> str:
    return f"Evaluation report: run {run.run_id}"


def _facts(run: EvalRun) -> list[_Block]:
    split = run.eval_split or "all rows"
    items: list[Text] = [
        f"Run {run.run_id}, {run.created_at.strftime('%Y-%m-%d %H:%M %Z').strip()}",
        ["Evaluation set ", ("code", run.eval_path), f", split {split}, {run.questions} questions "
         f"(sha256 {run.eval_hash[:12]})"],
        ["Chunk table ", ("code", run.table), "" if run.table_version is None else f" version {run.table_version}"],
        ["Generator ", ("code", run.generator)],
        f"Fresh questions (gold documents changed after the evaluated adapter was trained): {run.fresh_questions}",
    ]  # fmt: skip
    if run.settings:
        settings = ", ".join(f"{k}={json.dumps(v, default=str)}" for k, v in run.settings.items())
        items.append(["Settings: ", ("code", settings)])
    return [_Heading(1, _title(run)), _Bullets(items)]


def _how_to_read() -> list[_Block]:
    return [
        _Heading(2, "How to read this"),
        _Para(["Every number is a mean over questions with a percentile-bootstrap confidence interval over "
               "questions (paraphrase agreement: over paraphrase groups); n says how many counted. Two arms "
               "differ only when their intervals do not overlap; overlapping intervals mean the difference is "
               "within noise for this evaluation set. Metric definitions, ranges and which arms each applies "
               "to are in the docstring of ", ("code", "tasks/metrics.py"), "; the promotion rules are in ",
               ("code", "tasks/gate.py"), "."]),
    ]  # fmt: skip


def _report_blocks(
    run: EvalRun,
    charts: Mapping[str, Path | None],
    trend_runs: int,
    records: Sequence[QuestionRecord],
    previous_records: Sequence[QuestionRecord] | None,
    out_dir: Path,
) -> list[_Block]:
    def image(key: str, alt: str) -> list[_Block]:
        path = charts.get(key)
        return [_Image(alt, path, path.relative_to(out_dir).as_posix())] if path is not None else []

    blocks: list[_Block] = _facts(run)
    blocks += [_Heading(2, "RAG vs fine-tuning: the decision table")] + _decision_blocks(run)
    blocks += _alongside_blocks(run)
    blocks += [_Heading(2, "Promotion gate")] + _gate_blocks(run)
    blocks += [_Heading(2, "Grounding threshold")] + (_calibration_blocks(run) or [_Para("No retrieval arm ran.")])
    blocks += [_Heading(2, "Arms")] + _overview_blocks(run)
    blocks += [_Heading(2, "Every metric per arm")] + _arms_blocks(run)
    blocks += [_Heading(2, "Charts")]
    blocks += image("metrics", "Key metrics per arm with bootstrap CIs") or [_Para("No key metric has values.")]
    blocks += image("latency", "Latency p50/p95 per arm") or [_Para("No latency was recorded.")]
    if charts.get("trend") is not None:
        blocks += [_Para(f"Trend over {trend_runs} runs on this evaluation set (one line per arm kind and "
                          "adapter role; the champion line follows whichever adapter was champion then):")]
        blocks += image("trend", "F1 and hallucination rate per arm over runs on this evaluation set")
    else:
        blocks.append(_Para(f"No trend yet: {trend_runs} run on this evaluation set (sha256 {run.eval_hash[:12]}); "
                            "the trend chart needs at least 2."))  # fmt: skip
    if run.canary:
        canary_metrics = _metric_names(run.canary.values())
        questions = {name: max((e.n for e in m.values()), default=0) for name, m in run.canary.items()}
        blocks += [_Heading(2, "Canary (general ability, closed book)"),
                   _metrics_table(run.canary, canary_metrics, questions)]  # fmt: skip
    blocks += [_Heading(2, "Per-question changes since the previous run")] + _diff_blocks(records, previous_records)
    return blocks + _how_to_read()


def write_report(
    run: EvalRun,
    records: Sequence[QuestionRecord],
    out_dir: Path,
    history: Sequence[EvalRun] = (),
    previous_records: Sequence[QuestionRecord] | None = None,
) -> ReportFiles:
    """Write `report.md`, a self-contained `report.html` and `charts/*.png` under `out_dir`.

    `history`: earlier runs, oldest first; the trend uses those with this run's `eval_hash`.
    `previous_records`: the previous run's per-question records, for the per-question diffs.
    """
    out_dir = Path(out_dir)
    chart_dir = out_dir / "charts"
    chart_dir.mkdir(parents=True, exist_ok=True)
    runs = _trend_runs(run, history)
    charts = {
        "metrics": _metrics_chart(run, chart_dir / "metrics.png"),
        "latency": _latency_chart(run, chart_dir / "latency.png"),
        "trend": _trend_chart(runs, chart_dir / "trend.png") if len(runs) >= 2 else None,
    }
    for name, path in charts.items():  # a rerun into the same directory must not leave an old chart behind
        if path is None:
            (chart_dir / f"{name}.png").unlink(missing_ok=True)
    blocks = _report_blocks(run, charts, len(runs), records, previous_records, out_dir)
    md_path, html_path = out_dir / "report.md", out_dir / "report.html"
    md_path.write_text(_to_markdown(blocks), encoding="utf-8")
    html_path.write_text(_to_html(blocks, _title(run)), encoding="utf-8")
    return ReportFiles(md_path, html_path, [p for p in charts.values() if p is not None])


def summary_markdown(run: EvalRun, report: ReportFiles | None = None) -> str:
    """Short: the decision table, the gate and where the full report is (Prefect artifacts, CLI)."""
    blocks: list[_Block] = [
        _Heading(3, [f"Evaluation {run.run_id}: {run.questions} questions from ", ("code", run.eval_path)]),
        *_decision_blocks(run),
        *_alongside_blocks(run),
        *_gate_blocks(run),
        *_calibration_blocks(run),
    ]
    if report is not None:
        blocks.append(_Para(["Full report: ", ("code", str(report.html)),
                             " (Markdown: ", ("code", str(report.markdown)), ")"]))  # fmt: skip
    return _to_markdown(blocks)
