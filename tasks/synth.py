"""Synthetic questions from the documents alone: answer span -> question -> filters -> document split.

An organisation pointing ragtune at its file share has no labelled questions. This stage makes
question -> answer -> source-chunk triples from the chunk table, keeps only those that survive
quality filters, and splits them *by document* into a training pool and an evaluation set written in
the evaluation-set format (`data_contracts/evaluation.py`), so the arena, gate and report take it
like a labelled set, and no evaluated question's document fed training.

1. `sample_chunks`: chunks the caller may read (`synth.groups`), round-robin over documents in a
   seeded order, so a corpus of 100k chunks is sampled evenly and within `synth.max_chunks`.
2. `draft_batch`: for each chunk, answer spans (money, percentages, numbers with their unit, dates,
   years, names, defined terms / acronyms), then questions for each span by rules (the sentence as
   a cloze, the span replaced by its wh-phrase: Lewis et al. 2019) and by the configured generator
   (asked for a question whose answer is the span), and the generator rewords each rule question
   (`paraphrase`). The questions of one span are paraphrases of each other (one `paraphrase_group`). Then the **round trip** (Alberti et al. 2019): ragtune's own
   retriever must return the source chunk in its top k for the question, and the generator, given
   that chunk, must answer with the span.
3. `finish`: near-duplicate questions removed (embedding cosine), **unanswerable** questions made
   from kept ones by changing a detail (a name, year or number) to one that no chunk contains, the
   contract (`data_contracts.suites.synthetic_row_suite`: every filter is one expectation, counted),
   then the document split and the saved set.

Drafting is checkpointed per batch under `<home>/synth/.work/<key>/`, so a run stopped by its time
budget (`synth.max_minutes`) or killed resumes where it stopped, also after a nightly ingest: the
key covers the models, the recipe and the retrieval settings the round trip uses, not the table
version; each batch records its chunks' text hashes, and a chunk that changed or left the sample is
drafted again (its old questions dropped).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pyarrow as pa

from data_contracts.synthetic import FILTERS, SYNTH_COLUMNS, synthetic_schema
from data_contracts.suites import synthetic_row_suite
from tasks import atomic, pii
from tasks.dataset import mentions  # the evaluation's whole-word rule, as RAFT uses it
from tasks.generate import pack_sources, rag_messages
from tasks.ground import split_sentences
from tasks.retrieve import Hit, SearchFilters
from tasks.validate import ValidationReport, validate


class SynthError(Exception):
    """Synthetic questions cannot be made; the message says what to fix."""


def _words(text: str) -> str:
    """Lower-case words only: two questions that differ in case and punctuation alone are the same text."""
    return " ".join(re.findall(r"\w+", text.lower()))


def _key(*parts: object) -> str:
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()


# --- 1. sampling ---------------------------------------------------------------------------------


def round_robin(rows: Sequence[dict[str, Any]], limit: int, seed: int) -> list[dict[str, Any]]:
    """At most `limit` rows, one per document per round: documents and the chunks within each in a
    seeded hash order, so every document is represented before any gets a second chunk."""
    by_doc: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_doc.setdefault(r["doc_id"], []).append(r)
    docs = sorted(by_doc, key=lambda d: _key(seed, "doc", d))
    queues = [sorted(by_doc[d], key=lambda r: _key(seed, "chunk", r["chunk_id"])) for d in docs]
    out: list[dict[str, Any]] = []
    depth = 0
    while len(out) < limit and any(depth < len(q) for q in queues):
        for q in queues:
            if depth < len(q) and len(out) < limit:
                out.append(q[depth])
        depth += 1
    return out


def sample_chunks(table: Any, filters: SearchFilters, limit: int, seed: int) -> list[dict[str, Any]]:
    """Sampled chunks (id, doc, title, text, text hash) the caller in `filters.groups` may read."""
    ids = table.search().where(filters.where()).select(["chunk_id", "doc_id"]).limit(None).to_list()
    chosen = round_robin(ids, limit, seed)
    wanted = {r["chunk_id"] for r in chosen}
    out: dict[str, dict[str, Any]] = {}
    listed = sorted(wanted)
    for start in range(0, len(listed), 500):
        part = ", ".join("'" + c.replace("'", "''") + "'" for c in listed[start : start + 500])
        for r in table.search().where(f"chunk_id IN ({part})").select(["chunk_id", "doc_id", "title", "text", "text_hash"]).limit(None).to_list():
            out[r["chunk_id"]] = r
    return [out[r["chunk_id"]] for r in chosen if r["chunk_id"] in out]


# --- 2a. answer spans ----------------------------------------------------------------------------

_MONTH = r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|Sept?(?:ember)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)"
_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("date", re.compile(
        rf"\b(?:\d{{1,2}}(?:st|nd|rd|th)?\s+{_MONTH}\.?,?\s+\d{{4}}|{_MONTH}\.?\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{4}}"
        rf"|{_MONTH}\s+\d{{4}}|\d{{4}}-\d{{2}}-\d{{2}})\b")),
    ("money", re.compile(r"[£$€¥]\s?\d[\d,]*(?:\.\d+)?(?:\s?(?:million|billion|thousand|bn|m|k)\b)?"
                         r"|\b\d[\d,]*(?:\.\d+)?\s?(?:USD|EUR|GBP|dollars|euros|pounds)\b")),
    ("percent", re.compile(r"\b\d+(?:\.\d+)?\s?(?:%|percent\b|per cent\b)")),
    ("time", re.compile(r"\b\d{1,2}[:.]\d{2}\b(?:\s?(?:am|pm|UTC|GMT|CET))?", re.IGNORECASE)),
    ("year", re.compile(r"\b(?:1[6-9]|20)\d\d\b(?![.,]?\d)")),
    ("number", re.compile(r"\b\d[\d,]*(?:\.\d+)?\b(?![.,]\d)"
                          r"(?:\s+(?P<unit>(?:business |working |calendar )?[a-z][a-z-]{1,20})(?:\s+per\s+[a-z]{2,12})?)?")),
)
_CAP = r"[A-Z][\w'&-]*"
_NAME = re.compile(rf"\b{_CAP}(?:(?:\s+(?:of|the|and|for|de|von|van|du|la))?\s+(?:{_CAP}|\d[\w.]*))*")
_ACRONYM = re.compile(r"\(([A-Z][A-Z0-9&]{1,7})\)")
_QUOTED = re.compile(r"[\"“]([^\"”]{2,60})[\"”]")
# Words that are not a unit after a number ("3 and", "5 of") nor a name on their own.
_FUNCTION = frozenset(
    "a an and are as at be by for from has have in is it its of on or our per the their this that these those to "
    "was were will with we you your they he she i if than then there when where which who why how what all any "
    "each every no not new more most also may must can should would could".split()
)


@dataclass(frozen=True)
class Span:
    text: str
    kind: str
    start: int
    end: int


def _overlaps(a: Span, spans: Iterable[Span]) -> bool:
    return any(a.start < b.end and b.start < a.end for b in spans)


_UNITS = frozenset(
    "seconds second minutes minute hours hour days day weeks week months month years year nights night people users "
    "customers employees sites probes devices requests readings percent points times".split()
)
_UNIT_FOLLOWERS = frozenset("of per a an in for to and or on at from".split())
_DETERMINER_BEFORE = re.compile(r"\b(?:the|a|an|its|their|our|this|that)\s*$", re.IGNORECASE)


def _attributive(sentence: str, span_start: int, span_end: int) -> bool:
    """"the London hotel cap", "the 2026 policy": a span used as a modifier makes no question."""
    after = sentence[span_end:].split(maxsplit=1)
    nxt = after[0] if after else ""
    return bool(_DETERMINER_BEFORE.search(sentence[:span_start])) and nxt[:1].islower() and nxt.lower() not in _FUNCTION


def _unit_ok(sentence: str, m: re.Match[str]) -> bool:
    """A word after a number is its unit when a unit-like word follows it ("25 days of", "1,000
    requests per minute") or it ends the clause; "4.2 allows 1,000" is a verb, not a unit."""
    rest = sentence[m.end("unit") :].lstrip()
    nxt = rest.split(maxsplit=1)[0].lower() if rest else ""
    unit = m.group("unit").split()[-1]
    if unit in _FUNCTION or nxt[:1].isdigit():
        return False
    return unit in _UNITS or not rest or rest[0] in ",.;:)'" or nxt in _UNIT_FOLLOWERS or " per " in m.group(0)


def _names(sentence: str) -> list[Span]:
    out = []
    for m in _NAME.finditer(sentence):
        words = m.group(0).split()
        while words and words[0].lower() in _FUNCTION:
            words = words[1:]
        if not words or words[0][0].isdigit():
            continue
        text = " ".join(words)
        start = m.start() + m.group(0).index(words[0])
        end = start + len(text)
        opens = sentence[:start].strip() == "" or sentence[:start].rstrip().endswith((":", "-", "•"))
        distinctive = len(words) > 1 or any(c.isdigit() for c in text) or (text.isupper() and len(text) > 1) or any(c.isupper() for c in text[1:])
        if opens and not distinctive:  # a capital that only opens the sentence says nothing
            continue
        if _ACRONYM.match(sentence[end:].lstrip()) or (sentence[:start].rstrip().endswith("(") and _ACRONYM.fullmatch(f"({text})")):
            continue  # an acronym and its expansion: `acronym_question` asks about those
        out.append(Span(text, "name", start, end))
    return out


def answer_spans(sentence: str) -> list[Span]:
    """Candidate answers in one sentence, most specific first, none overlapping another: dates,
    money and percentages, then names (which keep their version numbers: "Tidewell 4.2"), then
    years and numbers with their unit. Spans used as modifiers ("the 2026 policy") are left out."""
    spans: list[Span] = []
    blocked: list[Span] = []  # claimed but unusable: a span alone in brackets makes "( when )"

    def add(span: Span) -> None:
        if not span.text or _overlaps(span, spans + blocked):
            return
        bracketed = sentence[: span.start].rstrip().endswith("(") and sentence[span.end :].lstrip().startswith(")")
        if bracketed or (span.kind != "term" and _attributive(sentence, span.start, span.end)):
            blocked.append(span)
        else:
            spans.append(span)

    for kind, pattern in _PATTERNS[:4]:
        for m in pattern.finditer(sentence):
            add(Span(m.group(0).strip(), kind, m.start(), m.start() + len(m.group(0).strip())))
    for span in _names(sentence):
        add(span)
    for kind, pattern in _PATTERNS[4:]:
        for m in pattern.finditer(sentence):
            text = m.group(0)
            if kind == "number" and _PATTERNS[4][1].fullmatch(text.split()[0]):
                continue  # a year (perhaps left out as a modifier) is not a count
            if m.groupdict().get("unit") and not _unit_ok(sentence, m):
                text = text[: m.start("unit") - m.start()].rstrip()
            add(Span(text.strip(), kind, m.start(), m.start() + len(text.strip())))
    for m in _QUOTED.finditer(sentence):
        if len(m.group(1).split()) <= 6:
            add(Span(m.group(1).strip(), "term", m.start(1), m.end(1)))
    return sorted(spans, key=lambda s: s.start)


def acronym_question(sentence: str) -> tuple[str, str] | None:
    """"... Service Level Agreement (SLA) ..." -> ("What does SLA stand for?", "Service Level Agreement")."""
    m = _ACRONYM.search(sentence)
    if not m:
        return None
    acronym = m.group(1)
    words = sentence[: m.start()].split()[-len(acronym) :]
    initials = "".join(w[0] for w in words if w[:1].isalpha()).upper()
    if len(words) != len(acronym) or initials != acronym.replace("&", ""):
        return None
    return f"What does {acronym} stand for?", " ".join(words).strip(",;:")


# --- 2b. questions -------------------------------------------------------------------------------

_TIME_PREPOSITION = re.compile(r"\b(?:on|in|at|during)\s*$", re.IGNORECASE)
_LINE_MARKUP = re.compile(r"^\s*(?:[#>*\-•]+|\d+[.)])\s*")
_EMPHASIS = re.compile(r"\*\*|__|`")


def clean_sentences(text: str) -> list[str]:
    """The chunk's sentences without list/heading/emphasis markup, one line each; table rows are
    left out (a cell out of its table makes no question)."""
    out = []
    for line in text.splitlines():
        line = _EMPHASIS.sub("", _LINE_MARKUP.sub("", line)).strip()
        if line and line.count("|") < 2:
            out += [" ".join(s.split()) for s in split_sentences(line)]
    return [s for s in out if s]


def wh_phrase(span: Span, sentence: str) -> str:
    if span.kind == "money":
        return "how much"
    if span.kind == "percent":
        return "what percentage"
    if span.kind == "date":
        return "when"
    if span.kind == "time":
        return "what time"
    if span.kind == "year":
        return "in what year" if _TIME_PREPOSITION.search(sentence[: span.start]) else "what year"
    if span.kind == "number":
        unit = span.text.split(maxsplit=1)[1] if " " in span.text else ""
        return f"how many {unit}" if unit else "what number"
    return "what"


def cloze_question(sentence: str, span: Span) -> str:
    """The sentence with the span replaced by its wh-phrase, as a question ("wh in situ"); a
    preposition of time before a date goes into the wh-phrase ("in 2024" -> "in what year")."""
    before, after = sentence[: span.start], sentence[span.end :]
    if span.kind in ("date", "year"):
        before = _TIME_PREPOSITION.sub("", before)
    text = (before.rstrip() + " " + wh_phrase(span, sentence) + " " + after.lstrip()).strip()
    text = re.sub(r"\s+([,;:)])", r"\1", re.sub(r"\(\s+", "(", text))
    text = re.sub(r"[\s.!?;:,]+$", "", text)
    return text[:1].upper() + text[1:] + "?"


_TITLE_PREFIX = re.compile(r"^In [^,]{1,120}, ")


def with_title(question: str, title: str | None) -> str:
    """Name the document when the question shares no word with its title: "In <title>, ..."
    keeps a question about "the policy" answerable when the corpus holds several policies."""
    title = re.split(r"\s+[|–—-]\s+", (title or "").strip())[0]
    if not title:
        return question
    words = {w.lower() for w in re.findall(r"\w+", title) if w.lower() not in _FUNCTION}
    if not words or words & {w.lower() for w in re.findall(r"\w+", question)}:
        return question
    first = question.split(maxsplit=1)[0]
    lowered = question[:1].lower() + question[1:] if first.lower() in _FUNCTION else question
    return f"In {title}, {lowered}"


GENERATOR_SYSTEM = (
    "You write one question about a text. The question must be answerable from the text and its answer "
    "must be exactly the given answer. Do not put the answer in the question. Reply with the question only."
)


def question_prompt(context: str, answer: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": GENERATOR_SYSTEM},
        {"role": "user", "content": f"Text: {context}\nAnswer: {answer}\nQuestion:"},
    ]


PARAPHRASE_SYSTEM = (
    "You reword a question. Keep its meaning and every name, number and date in it; use other words and another "
    "word order. Reply with the reworded question only."
)


def paraphrase_prompt(question: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": PARAPHRASE_SYSTEM},
        {"role": "user", "content": f"Question: {question}\nReworded question:"},
    ]


def parse_question(text: str) -> str | None:
    """The first question in a generation, or None when there is none."""
    text = re.sub(r"^\s*(?:question\s*:?\s*)", "", text.strip(), flags=re.IGNORECASE)
    line = text.splitlines()[0] if text else ""
    if "?" not in line:
        return None
    q = line[: line.index("?") + 1].strip(" \"'“”")
    return q if len(q.split()) >= 2 else None


@dataclass
class Candidate:
    question: str
    answer: str | None
    answer_kind: str
    strategy: str
    chunk_id: str
    doc_id: str
    paraphrase_group: str
    derived: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return "syn-" + _key(self.chunk_id, self.strategy, self.question, self.answer)[:12]

    def row(self) -> dict[str, Any]:
        base = {c.name: None for c in SYNTH_COLUMNS}
        base.update(id=self.id, question=self.question, answer=self.answer, answer_kind=self.answer_kind, strategy=self.strategy,
                    chunk_id=self.chunk_id, doc_id=self.doc_id, paraphrase_group=self.paraphrase_group)
        base.update(self.derived)
        return base

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "Candidate":
        names = {"question", "answer", "answer_kind", "strategy", "chunk_id", "doc_id", "paraphrase_group"}
        return cls(**{k: row[k] for k in names}, derived={k: v for k, v in row.items() if k not in names | {"id"}})


def span_targets(chunk: dict[str, Any], per_chunk: int, seed: int) -> list[tuple[str, Span | None, str, str | None]]:
    """(sentence, span, answer, rule question) for up to `per_chunk` spans of a chunk, spread over its
    sentences; an acronym definition gives its own rule question (span None)."""
    found: list[tuple[str, Span | None, str, str | None]] = []
    for sentence in clean_sentences(chunk["text"]):
        if not 5 <= len(sentence.split()) <= 60:
            continue
        acr = acronym_question(sentence)
        if acr:
            found.append((sentence, None, acr[1], acr[0]))
        for span in answer_spans(sentence):
            found.append((sentence, span, span.text, None))
    # Most specific kinds first (numbers and dates make checkable answers), then a seeded order.
    rank = {"money": 0, "percent": 0, "date": 0, "number": 1, "year": 1, "term": 2, "name": 3}
    found.sort(key=lambda t: (rank.get(t[1].kind if t[1] else "term", 3), _key(seed, chunk["chunk_id"], t[2])))
    chosen, seen = [], set()
    for t in found:
        if t[2].lower() in seen:
            continue
        seen.add(t[2].lower())
        chosen.append(t)
        if len(chosen) == per_chunk:
            break
    return chosen


def context_around(text: str, sentence: str, words: int = 90) -> str:
    """The sentence with its neighbours, at most about `words` words: the generator's prompt."""
    sentences = clean_sentences(text)
    i = sentences.index(sentence) if sentence in sentences else 0
    out = [sentences[i]] if sentences else [sentence]
    lo, hi = i - 1, i + 1
    while lo >= 0 or hi < len(sentences):
        for j in (lo, hi):
            if 0 <= j < len(sentences) and sum(len(s.split()) for s in out) + len(sentences[j].split()) <= words:
                out.insert(0, sentences[j]) if j < i else out.append(sentences[j])
        lo, hi = lo - 1, hi + 1
    return " ".join(out)


@dataclass(frozen=True)
class Limits:
    min_words: int = 4
    max_words: int = 40
    max_answer_words: int = 8

    @classmethod
    def of(cls, s: Any) -> "Limits":
        return cls(s.min_question_words, s.max_question_words, s.max_answer_words)


# --- 2c. drafting a batch: questions and their round trip ----------------------------------------


@dataclass
class Drafter:
    """What drafting needs: the retriever (round trip), the generator (questions, reader), settings."""

    retriever: Any
    generate: Callable[[list[list[dict[str, str]]], int], list[str]] | None  # (conversations, max_new_tokens) -> texts
    count_tokens: Callable[[str], int]
    filters: SearchFilters
    strategies: Sequence[str]
    spans_per_chunk: int = 2
    k: int = 5
    reader_check: bool = True
    context_tokens: int = 1024
    limits: Limits = Limits()
    seed: int = 0

    def questions(self, chunks: Sequence[dict[str, Any]]) -> list[Candidate]:
        """Rule and generator questions for every chosen span of every chunk, with the cheap checks."""
        out: list[Candidate] = []
        asks: list[tuple[dict[str, Any], str, str, str]] = []  # chunk, context, answer, kind for the generator
        for chunk in chunks:
            for sentence, span, answer, rule_q in span_targets(chunk, self.spans_per_chunk, self.seed):
                kind = span.kind if span else "term"
                group = "syn-" + _key(chunk["chunk_id"], answer)[:12]
                if "rules" in self.strategies:
                    q = rule_q or cloze_question(sentence, span)  # type: ignore[arg-type]
                    out.append(Candidate(with_title(q, chunk.get("title")), answer, kind, "rules", chunk["chunk_id"], chunk["doc_id"], group))
                if "generator" in self.strategies and self.generate is not None:
                    asks.append((chunk, context_around(chunk["text"], sentence), answer, kind))
        if asks:
            texts = self.generate([question_prompt(ctx, answer) for _, ctx, answer, _ in asks], 40)
            for (chunk, _, answer, kind), text in zip(asks, texts):
                q = parse_question(text)
                group = "syn-" + _key(chunk["chunk_id"], answer)[:12]
                cand = Candidate(q or "", answer, kind, "generator", chunk["chunk_id"], chunk["doc_id"], group)
                out.append(cand)
        texts_by_chunk = {c["chunk_id"]: c["text"] for c in chunks}
        for c in out:
            cheap_checks(c, texts_by_chunk[c.chunk_id])
        if "paraphrase" in self.strategies and self.generate is not None:
            out += self.paraphrases([c for c in out if c.strategy == "rules" and passes_cheap(c, self.limits)], texts_by_chunk)
        return out

    def paraphrases(self, originals: Sequence[Candidate], texts_by_chunk: dict[str, str]) -> list[Candidate]:
        """The generator's rewording of each question (same answer, same group); one that only repeats its
        original (or is no question) is left empty, so the length filter counts it."""
        assert self.generate is not None
        out = []
        for c, text in zip(originals, self.generate([paraphrase_prompt(c.question) for c in originals], 40) if originals else []):
            q = parse_question(text) or ""
            if _words(q) == _words(c.question):
                q = ""
            p = Candidate(q, c.answer, c.answer_kind, "paraphrase", c.chunk_id, c.doc_id, c.paraphrase_group)
            cheap_checks(p, texts_by_chunk[c.chunk_id])
            out.append(p)
        return out

    def round_trip(self, candidates: Sequence[Candidate]) -> None:
        """Search each candidate that passed the cheap checks; the source chunk's rank goes in
        `retrieval_rank` (0: not in the top k); those found are read back by the generator."""
        live = [c for c in candidates if passes_cheap(c, self.limits)]
        if not live:
            return
        results = self.retriever.search_many([c.question for c in live], self.k, self.filters)
        readable: list[tuple[Candidate, Hit]] = []
        for c, result in zip(live, results):
            rank = next((i for i, h in enumerate(result.hits, start=1) if h.chunk_id == c.chunk_id), 0)
            c.derived["retrieval_rank"] = rank
            if rank:
                readable.append((c, result.hits[rank - 1]))
        if self.reader_check and self.generate is not None and readable:
            prompts = [
                rag_messages(c.question, pack_sources([replace(hit, text=reader_window(hit.text, c.answer or ""))], self.count_tokens,
                                                      self.context_tokens))
                for c, hit in readable
            ]
            for (c, _), text in zip(readable, self.generate(prompts, 24)):
                c.derived["reader_ok"] = bool(c.answer) and mentions(text, c.answer or "")

    def draft(self, chunks: Sequence[dict[str, Any]]) -> list[Candidate]:
        found = self.questions(chunks)
        self.round_trip(found)
        return found


def reader_window(text: str, answer: str, words: int = 80) -> str:
    """The part of the source chunk around the answer's first occurrence, about `words` words: the
    reader's context in the round trip (a shorter prompt costs a fraction of the whole chunk's)."""
    tokens = text.split()
    if len(tokens) <= words:
        return text
    first = answer.split()[0] if answer.split() else ""
    at = next((i for i, t in enumerate(tokens) if first and first in t), 0)
    start = max(0, min(at - words // 2, len(tokens) - words))
    return " ".join(tokens[start : start + words])


def cheap_checks(c: Candidate, source_text: str) -> None:
    d = c.derived
    d["question_words"] = len(c.question.split())
    d["pii_found"] = pii.count(c.question) + pii.count(c.answer or "")
    if c.answer is not None:
        d["answer_words"] = len(c.answer.split())
        d["answer_in_source"] = mentions(source_text, c.answer)
        d["answer_in_question"] = mentions(c.question, c.answer)


def passes_cheap(c: Candidate, limits: Limits) -> bool:
    """Whether the cheap checks passed, so the expensive round trip is worth running."""
    d = c.derived
    return bool(
        c.question
        and limits.min_words <= d.get("question_words", 0) <= limits.max_words
        and d.get("pii_found", 0) == 0
        and (c.answer is None or (d.get("answer_in_source") and not d.get("answer_in_question")
                                  and d.get("answer_words", 99) <= limits.max_answer_words))
    )


# --- 2d. checkpoints: a stopped run resumes ------------------------------------------------------


class Checkpoint:
    """Drafted batches of one run key, appended one JSON line per batch (a torn last line is redone).

    Each line holds the batch's chunk ids, their text hashes and the candidates drafted from them."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.path = directory / "drafts.jsonl"

    def current(self, chunks: Sequence[dict[str, Any]]) -> tuple[set[str], list[Candidate]]:
        """The sampled chunks drafted with their present text, and those drafts' candidates: a chunk whose
        text changed since (or that left the sample) counts as not drafted, and its old questions are dropped."""
        now = {c["chunk_id"]: c.get("text_hash") for c in chunks}
        done: set[str] = set()
        found: list[Candidate] = []
        if not self.path.is_file():
            return done, found
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                batch = json.loads(line)
            except json.JSONDecodeError:
                continue
            fresh = {c for c, h in zip(batch["chunks"], batch.get("hashes") or []) if c in now and now[c] == h}
            done |= fresh
            found += [Candidate.from_row(r) for r in batch["candidates"] if r["chunk_id"] in fresh]
        return done, found

    def append(self, chunks: Sequence[dict[str, Any]], candidates: Sequence[Candidate]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"chunks": [c["chunk_id"] for c in chunks], "hashes": [c.get("text_hash") for c in chunks],
                           "candidates": [c.row() for c in candidates]}, ensure_ascii=False)
        # A kill mid-write leaves a line without its newline: end it, or this batch would be joined to it and lost.
        torn = False
        if self.path.is_file() and self.path.stat().st_size > 0:
            with open(self.path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                torn = f.read(1) != b"\n"
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(("\n" if torn else "") + line + "\n")
            f.flush()
            os.fsync(f.fileno())


# --- 3. finishing: duplicates, unanswerable questions, contract, split ---------------------------


def mark_near_duplicates(
    candidates: Sequence[Candidate], embed: Callable[[list[str]], np.ndarray], cosine: float, limits: Limits = Limits()
) -> None:
    """`duplicate_of` = the first earlier question (of another paraphrase group) this close, or the
    same text in the same group. Only candidates still alive are compared."""
    live = [c for c in candidates if passes_cheap(c, limits) and c.derived.get("retrieval_rank", 1) != 0 and c.derived.get("reader_ok", True)]
    if not live:
        return
    vectors = np.asarray(embed([c.question for c in live]), dtype=np.float32)
    kept: list[int] = []
    kept_vectors = np.empty_like(vectors)  # filled in order: no copy of the kept rows per question
    seen_text: dict[tuple[str, str], str] = {}
    for i, c in enumerate(live):
        norm = (c.paraphrase_group, _words(c.question))
        if norm in seen_text:
            c.derived["duplicate_of"] = seen_text[norm]
            continue
        if kept:
            sims = kept_vectors[: len(kept)] @ vectors[i]
            j = int(np.argmax(sims))
            other = live[kept[j]]
            if sims[j] >= cosine and other.paraphrase_group != c.paraphrase_group:
                c.derived["duplicate_of"] = other.id
                continue
        seen_text[norm] = c.id
        kept_vectors[len(kept)] = vectors[i]
        kept.append(i)


INVENTED_NAMES = (
    "Quorvane", "Pellastra", "Ondrixa", "Maravelle", "Tessarine", "Vostrel", "Calderix", "Brennock", "Ysolde", "Zephrin",
    "Marrowind", "Kestavia", "Orlumbe", "Thessaly-Ro", "Virelda", "Gannomir", "Sollentar", "Ibrevant", "Corvisk", "Halvane",
)


def changed_detail(question: str, answer: str | None, seed: int, index: int) -> list[tuple[str, str, str]]:
    """Ways to change one detail of a question: (new question, the new detail, kind). The answer span
    is never the changed detail; names are swapped for invented ones, years and numbers shifted."""
    options: list[tuple[str, str, str]] = []
    prefix = _TITLE_PREFIX.match(question)
    for span in answer_spans(question):
        if (answer and mentions(span.text, answer)) or (prefix and span.start < prefix.end()):
            continue  # the answer, or the document's name: changing it asks about a document, not a detail
        if span.kind == "name" and len(span.text) > 2:
            new = INVENTED_NAMES[int(_key(seed, question, index)[:8], 16) % len(INVENTED_NAMES)]
        elif span.kind == "year":
            new = str(int(span.text) + 3 + int(_key(seed, question)[:4], 16) % 17)
        elif span.kind == "number" and span.text.split()[0].replace(",", "").isdigit():
            words = span.text.split()
            n = int(words[0].replace(",", ""))
            words[0] = str(n * 7 + 3)
            new = " ".join(words)
        else:
            continue
        options.append((question[: span.start] + new + question[span.end :], new, span.kind))
    return options


def unanswerable(
    kept: Sequence[Candidate], wanted: int, in_corpus: Callable[[str], bool], seed: int
) -> list[Candidate]:
    """Up to `wanted` questions about details no chunk holds, each made from a kept question."""
    out: list[Candidate] = []
    order = sorted(kept, key=lambda c: _key(seed, "unanswerable", c.id))
    for i, c in enumerate(order):
        if len(out) >= wanted:
            break
        for question, detail, kind in changed_detail(c.question, c.answer, seed, i):
            absent = not in_corpus(detail)
            cand = Candidate(question, None, kind, "unanswerable", c.chunk_id, c.doc_id, "syn-" + _key("u", c.id)[:12])
            cheap_checks(cand, "")
            cand.derived["absent_from_corpus"] = absent
            out.append(cand)
            if absent:
                break
    return out


def document_split(doc_ids: Iterable[str], eval_share: float, seed: int) -> set[str]:
    """The documents whose questions form the evaluation set (seeded hash order; at least one when
    there are two or more documents and the share is positive)."""
    docs = sorted(set(doc_ids), key=lambda d: _key(seed, "split", d))
    n = round(eval_share * len(docs))
    if eval_share > 0 and len(docs) >= 2:
        n = max(1, min(n, len(docs) - 1))
    return set(docs[:n])


@dataclass
class SynthSet:
    rows: list[dict[str, Any]]  # evaluation-set rows, split train/test
    rejects: list[dict[str, Any]]
    report: ValidationReport
    funnel: dict[str, Any]

    @property
    def hash(self) -> str:
        return _key(*sorted(json.dumps(r, sort_keys=True, ensure_ascii=False) for r in self.rows))


def contract(candidates: Sequence[Candidate], suite: dict[str, Any]) -> tuple[list[Candidate], list[dict[str, Any]], ValidationReport]:
    """The quality filters as one GX run: failing rows are dropped with the filters they broke."""
    table = pa.Table.from_pylist([c.row() for c in candidates], schema=synthetic_schema())
    report = validate(table, suite, key="id")
    reasons: dict[int, list[str]] = {}
    for f in report.failures:
        for i in f.indexes:
            reasons.setdefault(i, []).append(FILTERS.get(f.column or "", "contract"))
    kept = [c for i, c in enumerate(candidates) if i not in reasons]
    rejects = [
        {"id": c.id, "strategy": c.strategy, "filters": sorted(set(reasons[i])),
         # personal data is not copied into the rejects file
         **({"question": c.question, "answer": c.answer} if not c.derived.get("pii_found") else {})}
        for i, c in enumerate(candidates) if i in reasons
    ]
    return kept, rejects, report


def eval_rows(kept: Sequence[Candidate], test_docs: set[str]) -> list[dict[str, Any]]:
    """The kept questions in the evaluation-set format (`data_contracts/evaluation.py`), plus where
    each came from (`source_chunk_id`, `strategy`; readers of the format ignore extra keys)."""
    rows = []
    for c in kept:
        rows.append({
            "id": c.id, "question": c.question, "answers": [c.answer] if c.answer else [], "answerable": c.answer is not None,
            "gold_docs": [c.doc_id] if c.answer is not None else [], "category": f"synthetic-{c.strategy}-{c.answer_kind}",
            "paraphrase_group": c.paraphrase_group, "split": "test" if c.doc_id in test_docs else "train",
            "source_chunk_id": c.chunk_id, "strategy": c.strategy,
        })
    return sorted(rows, key=lambda r: (r["split"], r["id"]))


def finish(
    candidates: list[Candidate],
    embed: Callable[[list[str]], np.ndarray],
    in_corpus: Callable[[str], bool],
    settings: Any,
    k: int,
) -> SynthSet:
    s = settings
    limits = Limits.of(s)
    mark_near_duplicates(candidates, embed, s.duplicate_cosine, limits)
    suite = synthetic_row_suite(s.min_question_words, s.max_question_words, s.max_answer_words, k)
    kept, rejects, report = contract(candidates, suite)
    made: list[Candidate] = []
    if "unanswerable" in s.strategies and kept and s.unanswerable_share > 0:
        wanted = round(s.unanswerable_share * len(kept) / (1 - s.unanswerable_share))
        made = unanswerable(kept, wanted, in_corpus, s.seed)
        mark_near_duplicates(made, embed, 1.01, limits)  # exact repeats only: they are variations of kept questions
        more_kept, more_rejects, _ = contract(made, suite)
        kept, rejects = kept + more_kept, rejects + more_rejects
    test_docs = document_split((c.doc_id for c in kept), s.eval_share, s.seed)
    rows = eval_rows(kept, test_docs)
    generated = Counter(c.strategy for c in candidates) + Counter(c.strategy for c in made)
    funnel = {
        "generated": dict(generated),
        "kept": dict(Counter(c.strategy for c in kept)),
        "dropped_by_filter": dict(Counter(f for r in rejects for f in r["filters"])),
        "kept_by_kind": dict(Counter(c.answer_kind for c in kept)),
        "splits": dict(Counter(r["split"] for r in rows)),
        "documents": {"train": len({c.doc_id for c in kept} - test_docs), "test": len(test_docs)},
        "survival": {st: round(Counter(c.strategy for c in kept)[st] / n, 3) for st, n in generated.items() if n},
    }
    return SynthSet(rows, rejects, report, funnel)


def save(result: SynthSet, synth_dir: Path, manifest: dict[str, Any]) -> Path:
    """`<synth_dir>/<hash12>/questions.jsonl` (evaluation-set format), `rejects.jsonl`, `synth.json`; LATEST."""
    target = synth_dir / result.hash[:12]
    target.mkdir(parents=True, exist_ok=True)
    atomic.write_text(target / "rejects.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in result.rejects))
    atomic.write_text(target / "questions.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in result.rows))
    body = {"hash": result.hash, "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "funnel": result.funnel, "contract": result.report.as_dict(), **manifest}
    atomic.write_text(target / "synth.json", json.dumps(body, indent=2, default=str))
    atomic.write_text(synth_dir / "LATEST", target.name + "\n")
    return target


def latest(synth_dir: Path) -> Path | None:
    """The questions file of the most recent synthetic set, if any."""
    pointer = synth_dir / "LATEST"
    if not pointer.is_file():
        return None
    path = synth_dir / pointer.read_text().strip() / "questions.jsonl"
    return path if path.is_file() else None


# --- wiring: what the flow calls ---------------------------------------------------------------


# The retrieval settings the round trip's search depends on (answer-time ones such as the fallback do not count).
ROUND_TRIP_RETRIEVAL = ("k", "candidates", "fusion", "rrf_k", "dense_weight")


def run_key(settings: Any, table: str, models: Sequence[str]) -> str:
    """Checkpoints are reused for the same table name, models, recipe (not the time budget or sample size) and round-trip
    retrieval; not tied to the table version, so a nightly ingest resumes (changed chunks are redrafted)."""
    # Not the sample size either: `Checkpoint.current` keeps what the new sample shares with the old one.
    recipe = settings.synth.model_dump(exclude={"max_minutes", "batch_chunks", "max_chunks"})
    retrieval = settings.retrieval.model_dump(include=set(ROUND_TRIP_RETRIEVAL))
    return _key(table, *models, json.dumps(recipe, sort_keys=True), json.dumps(retrieval, sort_keys=True))[:16]



@dataclass
class Session:
    """One synthesis run's open resources (models are cached per process by `tasks/models.py`)."""

    drafter: Drafter
    table: Any
    key: str
    checkpoint: Checkpoint

    def in_corpus(self, term: str) -> bool:
        """Whether any chunk (of any group: an invented detail must not exist anywhere) mentions `term`."""
        hits = self.table.search(term, query_type="fts", fts_columns="text").select(["text"]).limit(20).to_list()
        return any(mentions(h["text"], term) for h in hits)


def open_session(settings: Any, table: str | None = None) -> Session:
    from tasks.generate import Generator
    from tasks.models import generator_fingerprint, load_generator
    from tasks.resources import open_retriever, search_filters

    s = settings.synth
    retriever = open_retriever(settings, table)
    name = table or settings.store.table
    generate: Callable[[list[list[dict[str, str]]], int], list[str]] | None = None
    needs_generator = bool({"generator", "paraphrase"} & set(s.strategies)) or s.reader_check
    count_tokens: Callable[[str], int] = lambda text: len(text.split())  # noqa: E731 - replaced below when a generator loads
    if needs_generator:
        g = settings.generator
        model, tokenizer = load_generator(g.model, settings.models_dir, threads=settings.threads, dtype=g.dtype)
        gen = Generator(model, tokenizer, max_new_tokens=40, batch_size=g.batch_size)
        count_tokens = gen.count_tokens

        def run(conversations: list[list[dict[str, str]]], max_new_tokens: int) -> list[str]:
            gen.max_new_tokens = max_new_tokens
            return [x.text for x in gen.generate(conversations)]

        generate = run

    models = [retriever.embedder.fingerprint, generator_fingerprint(settings.generator.model, settings.models_dir) if needs_generator else "-"]
    key = run_key(settings, name, models)
    drafter = Drafter(
        retriever, generate, count_tokens, search_filters(settings, s.groups), s.strategies, s.spans_per_chunk,
        s.round_trip_k or settings.retrieval.k, s.reader_check, settings.generator.context_tokens, Limits.of(s), s.seed,
    )
    return Session(drafter, retriever.table, key, Checkpoint(settings.synth_dir / ".work" / key))


def batches(chunks: Sequence[dict[str, Any]], done: set[str], size: int) -> list[list[dict[str, Any]]]:
    """The chunks not yet drafted (`done`: see `current`), in batches of `size`."""
    todo = [c for c in chunks if c["chunk_id"] not in done]
    return [todo[i : i + size] for i in range(0, len(todo), size)]
