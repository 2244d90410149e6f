#!/usr/bin/env python3
"""Check the demo corpus and its evaluation set (demo/eval.jsonl).

Checks
  corpus  every PDF opens with pypdfium2 and every page has extractable text,
          except the deliberately broken file, which must fail to open;
          every DOCX re-opens with python-docx.
  eval    every row has exactly the expected fields and valid values; ids are
          unique; every gold doc exists and is not the broken file; for every
          answerable row the first answer occurs (case-insensitive, whitespace-
          normalised, not inside a longer word or number) in the text of at
          least one gold doc; yes/no rows also have an evidence phrase (see
          YES_NO_EVIDENCE) that must occur in a gold doc; paraphrase groups have
          2-3 members sharing one split and one first answer.

Text extraction: md/txt read directly (Markdown emphasis and backticks removed),
HTML only from <main>/<article> after dropping nav/header/footer/aside/script/
cookie banners (lxml), PDF with pypdfium2, DOCX paragraphs and tables with
python-docx.

Usage:
  python demo/check_eval.py            run all checks, exit 1 on any failure
  python demo/check_eval.py --stats    print document and eval-set statistics
"""
from __future__ import annotations

import collections
import json
import re
import sys
from pathlib import Path

DEMO = Path(__file__).resolve().parent
CORPUS = DEMO / "corpus"
# Documents `make demo` ingests after training (the freshness probe): gold docs of "fresh" rows live here.
UPDATES = DEMO / "updates"
EVAL = DEMO / "eval.jsonl"
BROKEN = {"finance/q3-board-pack.pdf"}

FIELDS = ["id", "question", "answers", "gold_docs", "answerable", "category",
          "paraphrase_group", "split"]
CATEGORIES = {"numeric", "date", "procedure", "policy", "entity", "yes_no", "multi_doc", "fresh"}
FORMATS = {".md": "Markdown", ".html": "HTML", ".txt": "Plain text", ".pdf": "PDF",
           ".docx": "DOCX"}

# For yes/no questions the answer word itself proves nothing, so each one names
# the phrase in a gold doc that settles it.
YES_NO_EVIDENCE = {
    "q067": "mileage rates are unchanged",
    "q068": "first class may be booked for a single journey with a scheduled duration longer than 3 hours",
    "q069": "first class is not permitted under this policy",
    "q070": "essentials does not include sms alerts",
    "q071": "s3 family probes are not compatible with the older tw-hub g4 gateway",
    "q072": "no production deployments on fridays",
    "q073": "sms codes are not accepted for these systems",
    "q074": "saml 2.0 single sign-on is now available on the professional plan",
    "q075": "s3 probes can be used on the same hub as tw-probe s2 probes",
    "q076": "the cellular plan is included in all tidewell subscriptions at no extra cost",
}


# --------------------------------------------------------------------------- #
# Text extraction
# --------------------------------------------------------------------------- #
def text_md(path: Path) -> str:
    t = path.read_text(encoding="utf-8")
    return re.sub(r"[*`]", "", t)


def text_txt(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def text_html(path: Path) -> str:
    import lxml.html

    root = lxml.html.fromstring(path.read_bytes())
    drop = root.xpath(
        "//script|//style|//noscript|//nav|//header|//footer|//aside"
        "|//*[contains(@class,'cookie') or contains(@id,'cookie')"
        " or contains(@id,'consent') or contains(@data-component,'cookie')]")
    for el in drop:
        if el.getparent() is not None:
            el.drop_tree()
    content = root.xpath("//main") or root.xpath("//article")
    if not content:
        raise ValueError(f"{path}: no <main> or <article>")
    # itertext + spaces: text_content() would glue adjacent table cells together
    return "\n".join(" ".join(c.itertext()) for c in content)


def pdf_pages(path: Path) -> list[str]:
    import pypdfium2 as pdfium

    pdf = pdfium.PdfDocument(str(path))
    try:
        return [pdf[i].get_textpage().get_text_range() for i in range(len(pdf))]
    finally:
        pdf.close()


def text_pdf(path: Path) -> str:
    return "\n".join(pdf_pages(path))


def text_docx(path: Path) -> str:
    import docx

    d = docx.Document(str(path))
    parts = [p.text for p in d.paragraphs]
    for table in d.tables:
        for row in table.rows:
            parts.append(" | ".join(c.text for c in row.cells))
    return "\n".join(parts)


EXTRACT = {".md": text_md, ".txt": text_txt, ".html": text_html, ".pdf": text_pdf,
           ".docx": text_docx}


def norm(s: str) -> str:
    s = s.replace("\u00a0", " ").replace("\u2019", "'").replace("\u2018", "'")
    return re.sub(r"\s+", " ", s).strip().lower()


def occurs(needle: str, haystack_norm: str) -> bool:
    n = norm(needle)
    pat = r"(?<![a-z0-9])" + re.escape(n) + r"(?![a-z0-9])"
    return re.search(pat, haystack_norm) is not None


def corpus_files() -> list[Path]:
    return sorted(p for p in CORPUS.rglob("*") if p.is_file())


_cache: dict[str, str] = {}


def doc_path(rel: str) -> Path:
    return CORPUS / rel if (CORPUS / rel).is_file() else UPDATES / rel


def doc_text(rel: str) -> str:
    if rel not in _cache:
        p = doc_path(rel)
        _cache[rel] = norm(EXTRACT[p.suffix](p))
    return _cache[rel]


# --------------------------------------------------------------------------- #
# Checks
# --------------------------------------------------------------------------- #
def check_corpus(errors: list[str]) -> None:
    import docx

    for p in corpus_files():
        rel = p.relative_to(CORPUS).as_posix()
        if p.suffix not in FORMATS:
            errors.append(f"corpus: unexpected file type {rel}")
            continue
        if p.suffix == ".pdf":
            if rel in BROKEN:
                try:
                    pdf_pages(p)
                except Exception:
                    print(f"  ok   {rel}: fails to open, as intended")
                else:
                    errors.append(f"corpus: {rel} should be broken but opened")
                continue
            try:
                pages = pdf_pages(p)
            except Exception as e:  # noqa: BLE001
                errors.append(f"corpus: {rel} does not open: {e}")
                continue
            empty = [i + 1 for i, t in enumerate(pages) if len(t.split()) < 20]
            if empty:
                errors.append(f"corpus: {rel} pages without text: {empty}")
            if not 2 <= len(pages) <= 6:
                errors.append(f"corpus: {rel} has {len(pages)} pages (want 2-6)")
            print(f"  ok   {rel}: {len(pages)} pages, all with text")
        elif p.suffix == ".docx":
            try:
                d = docx.Document(str(p))
            except Exception as e:  # noqa: BLE001
                errors.append(f"corpus: {rel} does not re-open: {e}")
                continue
            styles = {para.style.name for para in d.paragraphs}
            if not {"Heading 1", "Heading 2"} <= styles or not d.tables:
                errors.append(f"corpus: {rel} lacks Heading 1/Heading 2 or a table")
            print(f"  ok   {rel}: re-opens, {len(d.tables)} table(s)")
        else:
            try:
                doc_text(rel)
            except Exception as e:  # noqa: BLE001
                errors.append(f"corpus: {rel} text extraction failed: {e}")


def load_eval(errors: list[str]) -> list[dict]:
    rows = []
    for n, line in enumerate(EVAL.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            errors.append(f"eval line {n}: invalid JSON: {e}")
    return rows


def check_eval(rows: list[dict], errors: list[str]) -> None:
    ids = collections.Counter(r.get("id") for r in rows)
    for i, c in ids.items():
        if c > 1:
            errors.append(f"eval: duplicate id {i}")
    groups: dict[str, list[dict]] = collections.defaultdict(list)

    for r in rows:
        rid = r.get("id", "?")
        if list(r.keys()) != FIELDS:
            errors.append(f"{rid}: fields {list(r.keys())} != {FIELDS}")
            continue
        if not re.fullmatch(r"[qf]\d{3}", rid):
            errors.append(f"{rid}: bad id")
        if r["category"] not in CATEGORIES:
            errors.append(f"{rid}: bad category {r['category']}")
        if r["split"] not in ("train", "test"):
            errors.append(f"{rid}: bad split {r['split']}")
        if not isinstance(r["answerable"], bool):
            errors.append(f"{rid}: answerable must be a bool")
        pg = r["paraphrase_group"]
        if pg is not None:
            if not re.fullmatch(r"pg\d{2}", pg):
                errors.append(f"{rid}: bad paraphrase_group {pg}")
            groups[pg].append(r)
        if not r["answerable"]:
            if r["answers"] or r["gold_docs"]:
                errors.append(f"{rid}: unanswerable rows need answers [] and gold_docs []")
            continue
        if not r["answers"] or not all(isinstance(a, str) and a.strip() for a in r["answers"]):
            errors.append(f"{rid}: answerable row needs non-empty answers")
            continue
        if not r["gold_docs"]:
            errors.append(f"{rid}: answerable row needs gold_docs")
            continue
        texts = {}
        for g in r["gold_docs"]:
            if g in BROKEN:
                errors.append(f"{rid}: gold doc {g} is the broken file")
            elif not doc_path(g).is_file():
                errors.append(f"{rid}: gold doc {g} does not exist")
            else:
                texts[g] = doc_text(g)
        if not texts:
            continue
        first = r["answers"][0]
        if r["category"] == "yes_no":
            if first not in ("Yes", "No"):
                errors.append(f"{rid}: yes_no answer must start with Yes or No")
            ev = YES_NO_EVIDENCE.get(rid)
            if ev is None:
                errors.append(f"{rid}: yes_no row without YES_NO_EVIDENCE entry")
            elif not any(occurs(ev, t) for t in texts.values()):
                errors.append(f"{rid}: evidence {ev!r} not found in {list(texts)}")
        elif not any(occurs(first, t) for t in texts.values()):
            errors.append(f"{rid}: answer {first!r} not found in {list(texts)}")
        if len(first.split()) > 6:
            errors.append(f"{rid}: first answer longer than 6 words")

    for pg, members in groups.items():
        if not 2 <= len(members) <= 3:
            errors.append(f"{pg}: {len(members)} members (want 2-3)")
        if len({m['split'] for m in members}) != 1:
            errors.append(f"{pg}: members in different splits")
        if len({(m['answers'][:1] or [None])[0] for m in members}) != 1:
            errors.append(f"{pg}: members have different first answers")
        if len({m['answerable'] for m in members}) != 1:
            errors.append(f"{pg}: members differ in answerable")

    for rid in YES_NO_EVIDENCE:
        if rid not in ids:
            errors.append(f"YES_NO_EVIDENCE names unknown id {rid}")


# --------------------------------------------------------------------------- #
# Statistics (used to write demo/README.md)
# --------------------------------------------------------------------------- #
def stats(rows: list[dict]) -> None:
    print("## Documents\n")
    print("| path | format | bytes | words | pages |")
    print("|---|---|---|---|---|")
    tot_w = tot_b = 0
    fmt_count = collections.Counter()
    for p in corpus_files():
        rel = p.relative_to(CORPUS).as_posix()
        size = p.stat().st_size
        tot_b += size
        fmt_count[FORMATS[p.suffix]] += 1
        if rel in BROKEN:
            print(f"| {rel} | {FORMATS[p.suffix]} | {size} | (broken) | - |")
            continue
        words = len(doc_text(rel).split())
        tot_w += words
        pages = len(pdf_pages(p)) if p.suffix == ".pdf" else "-"
        print(f"| {rel} | {FORMATS[p.suffix]} | {size} | {words} | {pages} |")
    print(f"\nfiles: {sum(fmt_count.values())}  by format: {dict(fmt_count)}")
    print(f"extracted words: {tot_w}  bytes on disk: {tot_b}")

    print("\n## Eval set\n")
    ans = sum(r["answerable"] for r in rows)
    print(f"total {len(rows)}, answerable {ans}, unanswerable {len(rows) - ans} "
          f"({(len(rows) - ans) / len(rows):.1%})")
    sp = collections.Counter(r["split"] for r in rows)
    print(f"split: train {sp['train']} ({sp['train'] / len(rows):.1%}), test {sp['test']}")
    pgs = collections.Counter(r["paraphrase_group"] for r in rows if r["paraphrase_group"])
    print(f"paraphrase groups: {len(pgs)} covering {sum(pgs.values())} questions")
    print("\n| category | total | answerable | unanswerable | train | test |")
    print("|---|---|---|---|---|---|")
    for c in sorted(CATEGORIES):
        rs = [r for r in rows if r["category"] == c]
        a = sum(r["answerable"] for r in rs)
        tr = sum(r["split"] == "train" for r in rs)
        print(f"| {c} | {len(rs)} | {a} | {len(rs) - a} | {tr} | {len(rs) - tr} |")
    for split in ("train", "test"):
        rs = [r for r in rows if r["split"] == split]
        a = sum(r["answerable"] for r in rs)
        print(f"{split}: answerable {a}, unanswerable {len(rs) - a}")
    gold = collections.Counter(Path(g).suffix for r in rows for g in r["gold_docs"])
    print(f"gold doc references by format: {dict(gold)}")
    docs_used = {g for r in rows for g in r["gold_docs"]}
    print(f"distinct gold docs: {len(docs_used)}")


def main() -> int:
    errors: list[str] = []
    rows = load_eval(errors)
    if "--stats" in sys.argv:
        stats(rows)
        return 0
    print("corpus:")
    check_corpus(errors)
    print("eval set:")
    check_eval(rows, errors)
    if errors:
        print(f"\nFAILED: {len(errors)} problem(s)")
        for e in errors:
            print("  -", e)
        return 1
    ans = sum(r["answerable"] for r in rows)
    print(f"  ok   {len(rows)} rows ({ans} answerable, {len(rows) - ans} unanswerable); "
          f"all gold docs exist and contain the first answer")
    print("\nPASSED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
