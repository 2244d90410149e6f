#!/usr/bin/env python3
"""Build the PDF and DOCX documents of the ragtune demo corpus.

The source text of every generated document lives in ``demo/sources/`` as a
``<corpus path>.src`` file (for example ``sources/hr/employee-handbook-2026.pdf.src``
builds ``corpus/hr/employee-handbook-2026.pdf``). Markdown, HTML and plain-text
documents are written by hand directly under ``demo/corpus/`` and are not touched
by this script.

Source format (a small Markdown subset)::

    title: Document title          <- header, ends at the line "---"
    author: ...
    subject: ...
    ---
    # Heading 1 / ## Heading 2 / ### Heading 3
    Paragraph text; consecutive lines are joined. **bold** is supported.
    - bullet item
    1. numbered item
    | cell | cell |                 <- table; the first row is the header
    ===PAGE===                     <- page break

For PDFs every ``===PAGE===`` starts a new page and the build fails if a page's
content overflows onto an extra page, so facts stay on the page they were
written for. The build is deterministic: reportlab runs with ``invariant=1`` and
DOCX files are re-zipped with fixed timestamps.

One file is broken on purpose: ``finance/q3-board-pack.pdf`` is a valid PDF cut
to its first 300 bytes, so that ingestion has to quarantine it.

Usage: python demo/make_corpus.py
Needs: reportlab==5.1.0, python-docx==1.2.0
"""
from __future__ import annotations

import datetime as dt
import io
import re
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

DEMO = Path(__file__).resolve().parent
SOURCES = DEMO / "sources"
CORPUS = DEMO / "corpus"

BROKEN = {"finance/q3-board-pack.pdf": 300}  # corpus path -> bytes kept
FIXED_TIME = dt.datetime(2026, 1, 1, 0, 0, 0)
PAGE_BREAK = "===PAGE==="


# --------------------------------------------------------------------------- #
# Source parsing
# --------------------------------------------------------------------------- #
@dataclass
class Block:
    kind: str  # h1 h2 h3 para bullets numbers table pagebreak
    text: str = ""
    items: list = field(default_factory=list)


@dataclass
class Source:
    meta: dict
    blocks: list


def parse_source(path: Path) -> Source:
    raw = path.read_text(encoding="utf-8")
    header, sep, body = raw.partition("\n---\n")
    if not sep:
        raise ValueError(f"{path}: missing '---' header separator")
    meta = {}
    for line in header.splitlines():
        key, _, value = line.partition(":")
        meta[key.strip()] = value.strip()
    if "title" not in meta:
        raise ValueError(f"{path}: header needs a title")

    blocks: list[Block] = []
    para: list[str] = []

    def flush_para():
        if para:
            blocks.append(Block("para", " ".join(para)))
            para.clear()

    for line in body.splitlines():
        s = line.strip()
        if not s:
            flush_para()
            continue
        if s == PAGE_BREAK:
            flush_para()
            blocks.append(Block("pagebreak"))
            continue
        m = re.match(r"^(#{1,3}) (.+)$", s)
        if m:
            flush_para()
            blocks.append(Block(f"h{len(m.group(1))}", m.group(2)))
            continue
        if s.startswith("|"):
            flush_para()
            cells = [c.strip() for c in s.strip("|").split("|")]
            if all(re.fullmatch(r":?-{3,}:?", c) for c in cells):
                continue  # markdown separator row
            if not blocks or blocks[-1].kind != "table":
                blocks.append(Block("table"))
            blocks[-1].items.append(cells)
            continue
        m = re.match(r"^- (.+)$", s)
        if m:
            flush_para()
            if not blocks or blocks[-1].kind != "bullets":
                blocks.append(Block("bullets"))
            blocks[-1].items.append(m.group(1))
            continue
        m = re.match(r"^\d+\. (.+)$", s)
        if m:
            flush_para()
            if not blocks or blocks[-1].kind != "numbers":
                blocks.append(Block("numbers"))
            blocks[-1].items.append(m.group(1))
            continue
        para.append(s)
    flush_para()

    for b in blocks:
        if b.kind == "table":
            widths = {len(r) for r in b.items}
            if len(widths) != 1:
                raise ValueError(f"{path}: ragged table starting {b.items[0]}")
    return Source(meta, blocks)


# --------------------------------------------------------------------------- #
# PDF (reportlab platypus)
# --------------------------------------------------------------------------- #
def _pdf_inline(text: str) -> str:
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)


def build_pdf(src: Source, rel: str) -> bytes:
    from reportlab.lib import colors
    from reportlab.lib.enums import TA_LEFT
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
    from reportlab.lib.units import cm
    from reportlab.platypus import (ListFlowable, ListItem, PageBreak,
                                    Paragraph, SimpleDocTemplate, Spacer,
                                    Table, TableStyle)

    # Standard PDF fonts only cover cp1252; fail loudly rather than emit boxes.
    for b in src.blocks:
        for t in [b.text, *[c for r in b.items for c in (r if isinstance(r, list) else [r])]]:
            try:
                t.encode("cp1252")
            except UnicodeEncodeError as e:
                raise ValueError(f"{rel}: character not in cp1252: {t!r}") from e

    ss = getSampleStyleSheet()
    body = ParagraphStyle("Body", parent=ss["Normal"], fontName="Helvetica",
                          fontSize=9.5, leading=12.5, spaceAfter=5, alignment=TA_LEFT)
    cell = ParagraphStyle("Cell", parent=body, fontSize=8.5, leading=10.5, spaceAfter=0)
    cell_head = ParagraphStyle("CellHead", parent=cell, fontName="Helvetica-Bold")
    h = {
        1: ParagraphStyle("H1", parent=ss["Heading1"], fontSize=17, leading=21, spaceAfter=8),
        2: ParagraphStyle("H2", parent=ss["Heading2"], fontSize=13, leading=16, spaceBefore=8, spaceAfter=5),
        3: ParagraphStyle("H3", parent=ss["Heading3"], fontSize=11, leading=14, spaceBefore=6, spaceAfter=3),
    }

    story = []
    expected_pages = 1
    for b in src.blocks:
        if b.kind == "pagebreak":
            story.append(PageBreak())
            expected_pages += 1
        elif b.kind in ("h1", "h2", "h3"):
            story.append(Paragraph(_pdf_inline(b.text), h[int(b.kind[1])]))
        elif b.kind == "para":
            story.append(Paragraph(_pdf_inline(b.text), body))
        elif b.kind in ("bullets", "numbers"):
            items = [ListItem(Paragraph(_pdf_inline(t), body), leftIndent=14) for t in b.items]
            kw = {"bulletType": "bullet", "start": "\u2022"} if b.kind == "bullets" else {"bulletType": "1"}
            story.append(ListFlowable(items, leftIndent=14, bulletFontSize=8, **kw))
        elif b.kind == "table":
            data = [[Paragraph(_pdf_inline(c), cell_head if i == 0 else cell) for c in row]
                    for i, row in enumerate(b.items)]
            ncols = len(b.items[0])
            width = A4[0] - 4 * cm
            t = Table(data, colWidths=[width / ncols] * ncols, repeatRows=1, hAlign="LEFT")
            t.setStyle(TableStyle([
                ("GRID", (0, 0), (-1, -1), 0.5, colors.grey),
                ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#dde6ee")),
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
                ("TOPPADDING", (0, 0), (-1, -1), 3),
                ("BOTTOMPADDING", (0, 0), (-1, -1), 3),
            ]))
            story.append(t)
            story.append(Spacer(1, 6))
        else:
            raise AssertionError(b.kind)

    title = src.meta["title"]

    def footer(canvas, doc):
        canvas.saveState()
        canvas.setFont("Helvetica", 7.5)
        canvas.setFillColor(colors.grey)
        canvas.drawString(2 * cm, 1.2 * cm, f"Velmora Systems Ltd | {title}")
        canvas.drawRightString(A4[0] - 2 * cm, 1.2 * cm, f"Page {doc.page}")
        canvas.restoreState()

    buf = io.BytesIO()
    doc = SimpleDocTemplate(
        buf, pagesize=A4, leftMargin=2 * cm, rightMargin=2 * cm,
        topMargin=1.8 * cm, bottomMargin=2 * cm,
        title=title, author=src.meta.get("author", ""),
        subject=src.meta.get("subject", ""), creator="ragtune demo/make_corpus.py",
        producer="ReportLab", invariant=1,
    )
    doc.build(story, onFirstPage=footer, onLaterPages=footer)
    if doc.page != expected_pages:
        raise RuntimeError(
            f"{rel}: {doc.page} pages rendered but {expected_pages} expected; "
            "a page overflowed - shorten its text so facts stay on their page")
    return buf.getvalue()


# --------------------------------------------------------------------------- #
# DOCX (python-docx)
# --------------------------------------------------------------------------- #
def _docx_runs(paragraph, text: str, bold_all: bool = False):
    for i, part in enumerate(re.split(r"\*\*(.+?)\*\*", text)):
        if part:
            run = paragraph.add_run(part)
            run.bold = bold_all or (i % 2 == 1)


def build_docx(src: Source, rel: str) -> bytes:
    import docx
    from docx.shared import Pt

    d = docx.Document()
    d.styles["Normal"].font.name = "Calibri"
    d.styles["Normal"].font.size = Pt(11)
    cp = d.core_properties
    cp.title = src.meta["title"]
    cp.author = src.meta.get("author", "")
    cp.subject = src.meta.get("subject", "")
    cp.last_modified_by = cp.author
    cp.created = FIXED_TIME
    cp.modified = FIXED_TIME
    cp.last_printed = FIXED_TIME
    cp.revision = 1
    cp.comments = "Generated by ragtune demo/make_corpus.py"

    first = True
    for b in src.blocks:
        if b.kind == "pagebreak":
            d.add_page_break()
        elif b.kind in ("h1", "h2", "h3"):
            level = int(b.kind[1])
            if first and level == 1:
                d.add_heading(b.text, level=0)  # document title ("Title" style)
            else:
                d.add_heading(b.text, level=level)
        elif b.kind == "para":
            _docx_runs(d.add_paragraph(), b.text)
        elif b.kind in ("bullets", "numbers"):
            style = "List Bullet" if b.kind == "bullets" else "List Number"
            for t in b.items:
                _docx_runs(d.add_paragraph(style=style), t)
        elif b.kind == "table":
            rows, ncols = len(b.items), len(b.items[0])
            table = d.add_table(rows=rows, cols=ncols)
            table.style = "Table Grid"
            for r, row in enumerate(b.items):
                for c, text in enumerate(row):
                    p = table.cell(r, c).paragraphs[0]
                    _docx_runs(p, text, bold_all=(r == 0))
            d.add_paragraph()
        first = False

    raw = io.BytesIO()
    d.save(raw)
    return _normalise_zip(raw.getvalue())


def _normalise_zip(data: bytes) -> bytes:
    """Rewrite a zip with fixed timestamps so rebuilding gives identical bytes."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as zin, \
            zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zi = zipfile.ZipInfo(info.filename, date_time=FIXED_TIME.timetuple()[:6])
            zi.compress_type = zipfile.ZIP_DEFLATED
            zi.external_attr = 0o644 << 16
            zi.create_system = 3
            zout.writestr(zi, zin.read(info.filename))
    return out.getvalue()


# --------------------------------------------------------------------------- #
def main() -> int:
    srcs = sorted(SOURCES.rglob("*.src"))
    if not srcs:
        print(f"no sources under {SOURCES}", file=sys.stderr)
        return 1
    for path in srcs:
        rel = path.relative_to(SOURCES).as_posix()[: -len(".src")]
        src = parse_source(path)
        if rel.endswith(".pdf"):
            data = build_pdf(src, rel)
        elif rel.endswith(".docx"):
            data = build_docx(src, rel)
        else:
            raise ValueError(f"{path}: only .pdf.src and .docx.src sources are supported")
        note = ""
        if rel in BROKEN:
            data = data[: BROKEN[rel]]
            note = "  (deliberately truncated)"
        out = CORPUS / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)
        print(f"wrote {out.relative_to(DEMO.parent)}  {len(data):>7} bytes{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
