"""Tests for tasks.parse: real files built in the tests (reportlab, python-docx) plus real problem PDFs."""

from __future__ import annotations

import io
import unicodedata
import zipfile
from pathlib import Path

import docx
import pytest
from reportlab.lib.pagesizes import A4
from reportlab.pdfgen import canvas

from tasks.parse import FORMATS, ParsedDocument, QuarantineError, Section, parse_document

PDF_FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "pdf"


def _write(path: Path, data: bytes | str, encoding: str = "utf-8") -> Path:
    path.write_bytes(data if isinstance(data, bytes) else data.encode(encoding))
    return path


def _quarantine(path: Path, **kwargs) -> QuarantineError:
    with pytest.raises(QuarantineError) as info:
        parse_document(path, **kwargs)
    return info.value


def _assert_clean(doc: ParsedDocument) -> None:
    """Invariants every parsed document must hold."""
    assert doc.sections, "a parsed document has at least one section"
    for section in doc.sections:
        assert section.text.strip(), "no empty sections"
        # Leading spaces may be real indentation (code); blank edges and trailing spaces are not.
        assert section.text == section.text.rstrip() and not section.text.startswith("\n")
        assert "\n\n\n" not in section.text
        assert unicodedata.is_normalized("NFC", section.text)
        assert isinstance(section.heading_path, tuple)


def test_formats_cover_the_supported_extensions():
    assert FORMATS[".pdf"] == "pdf"
    assert FORMATS[".html"] == FORMATS[".htm"] == "html"
    assert FORMATS[".md"] == FORMATS[".markdown"] == "markdown"
    assert FORMATS[".txt"] == "text"
    assert FORMATS[".docx"] == "docx"
    assert all(ext == ext.lower() and ext.startswith(".") for ext in FORMATS)


# --------------------------------------------------------------------------- Markdown

MARKDOWN = """\
---
title: "Employee handbook"
owner: hr
---
Read this first.

# Travel policy
Book through the portal.

## Per diems
- Breakfast: 10 EUR
- Dinner:    25 EUR

```python
# not a heading
def rate():
    return 25
```

### Exceptions
Ask your manager.

> # Quoted heading
> stays inside its quote

Hotels
------

| city | cap |
|------|-----|
| Oslo | 200 |

# Expenses
Submit within 30 days.
"""


def test_markdown_headings_build_paths_and_bodies_keep_source(tmp_path):
    doc = parse_document(_write(tmp_path / "handbook.md", MARKDOWN))
    _assert_clean(doc)
    assert doc.format == "markdown"
    assert doc.title == "Employee handbook"  # front matter wins over the first H1
    by_path = {s.heading_path: s.text for s in doc.sections}
    assert list(by_path) == [
        (),
        ("Travel policy",),
        ("Travel policy", "Per diems"),
        ("Travel policy", "Per diems", "Exceptions"),
        ("Travel policy", "Hotels"),  # setext h2 pops the h3
        ("Expenses",),
    ]
    assert by_path[()] == "Read this first."
    assert "owner: hr" not in "\n".join(by_path.values())  # front matter is stripped
    per_diems = by_path[("Travel policy", "Per diems")]
    assert "- Dinner:    25 EUR" in per_diems  # original source lines, spacing kept
    assert "```python\n# not a heading\ndef rate():\n    return 25\n```" in per_diems
    assert by_path[("Travel policy", "Hotels")] == "| city | cap |\n|------|-----|\n| Oslo | 200 |"
    assert by_path[("Travel policy", "Per diems", "Exceptions")] == (
        "Ask your manager.\n\n> # Quoted heading\n> stays inside its quote"
    )
    headings = {h for s in doc.sections for h in s.heading_path}
    assert "not a heading" not in headings and "Quoted heading" not in headings


def test_markdown_title_falls_back_to_first_h1_then_stem(tmp_path):
    doc = parse_document(_write(tmp_path / "notes.md", "intro\n\n# The *real* title\n\nbody\n"))
    assert doc.title == "The real title"
    assert doc.sections[1].heading_path == ("The real title",)
    assert parse_document(_write(tmp_path / "plain-notes.md", "just text\n")).title == "plain-notes"


def test_markdown_leading_thematic_break_is_not_front_matter(tmp_path):
    doc = parse_document(_write(tmp_path / "rules.md", "---\nKeep this paragraph.\n\n---\n\n# Rules\n\nBe kind.\n"))
    assert doc.sections[0] == Section("---\nKeep this paragraph.\n\n---", (), None)
    assert doc.title == "Rules"


def test_markdown_with_only_headings_has_no_text(tmp_path):
    assert _quarantine(_write(tmp_path / "toc.md", "# A\n## B\n")).reason == "no_text"


# --------------------------------------------------------------------------- HTML

HTML = """\
<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="windows-1252">
  <title>Travel policy \u2013 ACME intranet</title>
  <script>window.TRACKING = "script-text";</script>
  <style>body { color: red } /* style-text */</style>
</head>
<body class="has-sidebar">
  <a class="skip-link" href="#main">Skip to content</a>
  <header class="site-header"><div>ACME site header</div></header>
  <nav><ul><li>Home nav-link</li><li>About</li></ul></nav>
  <div id="cookie-banner">We use cookies. <button>Accept all</button></div>
  <div class="breadcrumb">Home &gt; Policies</div>
  <main id="main">
    <h1>Travel policy</h1>
    <p>All   travel is booked
       through the portal. Caf\u00e9 receipts count.</p>
    <h2>Per diems</h2>
    <p>Daily allowance applies.<br>Second line.</p>
    <ul><li>Breakfast<ul><li>before 9</li></ul></li><li>Dinner</li></ul>
    <table><tr><th>a</th><th>b</th></tr><tr><td>1</td><td>2</td></tr></table>
    <h3>Exceptions</h3>
    <pre>  indented   code
    stays</pre>
    <aside class="share">Share this page</aside>
    <h2>Hotels</h2>
    <div>Loose text in a div <em>with emphasis</em></div>
    <noscript>Enable JavaScript</noscript>
  </main>
  <aside>Sidebar related links</aside>
  <footer>Footer copyright text</footer>
</body>
</html>
"""


def test_html_drops_boilerplate_and_keeps_structure(tmp_path):
    doc = parse_document(_write(tmp_path / "travel.html", HTML, encoding="cp1252"))
    _assert_clean(doc)
    assert doc.format == "html"
    assert doc.title == "Travel policy \u2013 ACME intranet"  # declared cp1252 decoded correctly
    everything = "\n".join(s.text for s in doc.sections)
    for chrome in ("script-text", "style-text", "Skip to content", "site header", "nav-link", "cookies",
                   "Accept all", "Policies", "Share this page", "Enable JavaScript", "Sidebar", "Footer"):
        assert chrome not in everything, chrome
    by_path = {s.heading_path: s.text for s in doc.sections}
    assert list(by_path) == [
        ("Travel policy",),
        ("Travel policy", "Per diems"),
        ("Travel policy", "Per diems", "Exceptions"),
        ("Travel policy", "Hotels"),
    ]
    assert by_path[("Travel policy",)] == "All travel is booked through the portal. Caf\u00e9 receipts count."
    assert by_path[("Travel policy", "Per diems")] == (
        "Daily allowance applies.\nSecond line.\n\n- Breakfast\n  - before 9\n- Dinner\n\na | b\n1 | 2"
    )
    assert by_path[("Travel policy", "Per diems", "Exceptions")] == "  indented   code\n    stays"
    assert by_path[("Travel policy", "Hotels")] == "Loose text in a div with emphasis"


def test_html_without_main_uses_body_and_h1_title(tmp_path):
    page = """<html><body><div class="navbar">Menu items</div>
    <h1>Release notes</h1><p>Version 2 is out.</p>
    <ol><li>faster</li><li>smaller</li></ol>
    <div class="footer-links">Contact us</div></body></html>"""
    doc = parse_document(_write(tmp_path / "notes.htm", page))
    assert doc.title == "Release notes"
    assert [(s.heading_path, s.text) for s in doc.sections] == [
        (("Release notes",), "Version 2 is out.\n\n1. faster\n2. smaller"),
    ]


def test_html_article_header_is_content_not_chrome(tmp_path):
    page = """<html><body><header>Site chrome</header><article><header><h2>Incident report</h2>
    <p>Posted 3 May</p></header><p>The outage lasted 5 minutes.</p></article></body></html>"""
    doc = parse_document(_write(tmp_path / "incident.html", page))
    assert doc.sections == [Section("Posted 3 May\n\nThe outage lasted 5 minutes.", ("Incident report",), None)]


def test_html_chrome_looking_wrappers_around_content_are_kept(tmp_path):
    # ASP.NET wraps whole pages in a <form>; layouts put content in a "with-sidebar" wrapper.
    page = """<html><body><form id="aspnetForm"><div class="layout with-sidebar">
    <div class="sidebar">Related links</div>
    <h1>Leave policy</h1><p>25 days a year.</p></div></form></body></html>"""
    doc = parse_document(_write(tmp_path / "leave.aspx.html", page))
    assert doc.sections == [Section("25 days a year.", ("Leave policy",), None)]


def test_html_declared_charset_is_honoured(tmp_path):
    page = (
        '<html><head><meta http-equiv="Content-Type" content="text/html; charset=koi8-r">'
        "</head><body><p>\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440</p></body></html>"
    )
    doc = parse_document(_write(tmp_path / "ru.html", page, encoding="koi8-r"))
    assert doc.sections[0].text == "\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440"


def test_html_undeclared_non_utf8_falls_back_to_cp1252(tmp_path):
    page = "<html><body><p>Gr\u00fc\u00dfe aus K\u00f6ln \u2013 \u20ac5</p></body></html>"
    doc = parse_document(_write(tmp_path / "legacy.html", page, encoding="cp1252"))
    assert doc.sections[0].text == "Gr\u00fc\u00dfe aus K\u00f6ln \u2013 \u20ac5"


def test_html_deep_nesting(tmp_path):
    def nested(depth: int) -> str:
        return "<html><body>" + "<div><b>" * depth + "deep text" + "</b></div>" * depth + "<p>after</p></body></html>"

    # 600 levels: past libxml2's default limit of 256, which would silently drop the text.
    doc = parse_document(_write(tmp_path / "deep.html", nested(300)))
    assert doc.sections[0].text == "deep text\n\nafter"
    err = _quarantine(_write(tmp_path / "deeper.html", nested(2000)))
    assert err.reason == "unreadable" and "2048" in err.detail


def test_html_with_only_chrome_has_no_text(tmp_path):
    page = "<html><head><title>App</title><script>boot()</script></head><body><nav>Home</nav><div id='root'></div></body></html>"
    err = _quarantine(_write(tmp_path / "app.html", page))
    assert err.reason == "no_text"
    assert "navigation" in err.detail


# --------------------------------------------------------------------------- plain text

TEXT = "Expense rules\n\nFirst   paragraph\twith  spaces.\n\n\n\nSecond paragraph: caf\u00e9, na\u00efve, \u20ac 10.\n"
EXPECTED_TEXT = "Expense rules\n\nFirst paragraph with spaces.\n\nSecond paragraph: caf\u00e9, na\u00efve, \u20ac 10."


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "cp1252", "utf-16"])
def test_text_encodings_decode_to_the_same_text(tmp_path, encoding):
    doc = parse_document(_write(tmp_path / f"rules-{encoding}.txt", TEXT, encoding=encoding))
    assert doc.format == "text"
    assert doc.title == "Expense rules"
    assert doc.sections == [Section(EXPECTED_TEXT, (), None)]


def test_text_utf16_without_bom_is_recognised(tmp_path):
    doc = parse_document(_write(tmp_path / "rules.txt", TEXT, encoding="utf-16-le"))
    assert doc.sections[0].text == EXPECTED_TEXT


def test_text_is_nfc_normalised(tmp_path):
    decomposed = "cafe\u0301 cre\u0300me"
    doc = parse_document(_write(tmp_path / "nfc.txt", decomposed))
    assert doc.sections[0].text == "caf\u00e9 cr\u00e8me"


def test_binary_renamed_to_txt_is_quarantined(tmp_path):
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4
    err = _quarantine(_write(tmp_path / "photo.txt", png))
    assert err.reason == "binary"
    assert "PNG" in err.detail


def test_mostly_unprintable_text_is_quarantined(tmp_path):
    junk = bytes(b for b in range(1, 32) if b not in (9, 10, 13)) * 50 + b"ok"
    assert _quarantine(_write(tmp_path / "junk.txt", junk)).reason == "binary"


# --------------------------------------------------------------------------- DOCX


def _make_docx(path: Path, core_title: str = "Onboarding guide") -> Path:
    document = docx.Document()
    document.core_properties.title = core_title
    document.add_paragraph("Welcome aboard", style="Title")
    document.add_paragraph("Preface text.")
    document.add_heading("First week", level=1)
    document.add_paragraph("Meet   your buddy.")
    table = document.add_table(rows=2, cols=2)
    for r, row in enumerate([("Day", "Task"), ("Mon", "Laptop")]):
        for c, value in enumerate(row):
            table.cell(r, c).text = value
    merged = document.add_table(rows=2, cols=3)
    merged.cell(0, 0).merge(merged.cell(0, 1)).text = "Spans two"
    merged.cell(0, 2).text = "Third"
    for c, value in enumerate(("x", "y", "z")):
        merged.cell(1, c).text = value
    document.add_paragraph("After the table.")
    document.add_heading("Accounts", level=2)
    document.add_paragraph("Email", style="List Bullet")
    document.add_paragraph("Chat", style="List Bullet")
    document.add_heading("Second week", level=1)
    document.add_paragraph("Shadow a colleague.")
    document.save(path)
    return path


def test_docx_walks_paragraphs_and_tables_in_order(tmp_path):
    doc = parse_document(_make_docx(tmp_path / "guide.docx"))
    _assert_clean(doc)
    assert doc.format == "docx"
    assert doc.title == "Onboarding guide"
    assert [(s.heading_path, s.text) for s in doc.sections] == [
        (("Welcome aboard",), "Preface text."),
        (("Welcome aboard", "First week"), "Meet your buddy.\n\nDay | Task\nMon | Laptop\n\nSpans two | Third\nx | y | z\n\nAfter the table."),
        (("Welcome aboard", "First week", "Accounts"), "- Email\n- Chat"),
        (("Welcome aboard", "Second week"), "Shadow a colleague."),
    ]


def test_docx_title_falls_back_to_title_paragraph(tmp_path):
    assert parse_document(_make_docx(tmp_path / "guide.docx", core_title="")).title == "Welcome aboard"


def test_zip_without_word_document_is_unreadable(tmp_path):
    path = tmp_path / "fake.docx"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("hello.txt", "not a word document")
    err = _quarantine(path)
    assert err.reason == "unreadable"
    assert "word/document.xml" in err.detail


def test_non_zip_docx_is_unreadable(tmp_path):
    assert _quarantine(_write(tmp_path / "notes.docx", "plain text pretending")).reason == "unreadable"
    err = _quarantine(_write(tmp_path / "old.docx", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 600))
    assert err.reason == "unreadable" and "legacy" in err.detail


def test_docx_zip_bomb_is_refused(tmp_path):
    path = _make_docx(tmp_path / "bomb.docx")
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        archive.writestr("word/media/zeros.bin", bytes(50 * 2**20))
    assert path.stat().st_size < 1 * 2**20  # small on disk, 50 MiB inflated
    err = _quarantine(path)
    assert err.reason == "unreadable"
    assert "zip bomb" in err.detail


def test_docx_total_inflated_size_is_bounded_by_max_bytes(tmp_path):
    path = _make_docx(tmp_path / "guide.docx")
    inflated = sum(m.file_size for m in zipfile.ZipFile(path).infolist())
    max_bytes = inflated // 20 - 1  # file itself fits, but inflating it would exceed 20x the limit
    assert path.stat().st_size <= max_bytes
    err = _quarantine(path, max_bytes=max_bytes)
    assert err.reason == "unreadable" and "zip bomb" in err.detail


# --------------------------------------------------------------------------- PDF


def _make_pdf(path: Path, pages: list[list[str]], *, title: str | None = None, outline: list[tuple[str, int, int]] = ()) -> Path:
    """Write a PDF with one list of lines per page and outline entries (title, level, page index)."""
    buffer = io.BytesIO()
    pdf = canvas.Canvas(buffer, pagesize=A4)
    if title:
        pdf.setTitle(title)
    for index, lines in enumerate(pages):
        y = 780
        for line in lines:
            pdf.drawString(72, y, line)
            y -= 18
        for n, (name, level, page) in enumerate(outline):
            if page == index:
                key = f"bm{n}"
                pdf.bookmarkPage(key)
                pdf.addOutlineEntry(name, key, level=level)
        pdf.showPage()
    pdf.save()
    path.write_bytes(buffer.getvalue())
    return path


PAGES = [
    ["Travel policy", "Book through the portal."],
    ["Per diems are paid daily.", "Dinner cap: 25 EUR."],
    ["Hotels must be approved.", "Oslo cap: 200 EUR."],
]


def test_pdf_one_section_per_page_with_page_numbers(tmp_path):
    doc = parse_document(_make_pdf(tmp_path / "policy.pdf", PAGES, title="Travel policy 2025"))
    _assert_clean(doc)
    assert doc.format == "pdf"
    assert doc.title == "Travel policy 2025"
    assert [(s.page, s.heading_path, s.text) for s in doc.sections] == [
        (1, (), "Travel policy\nBook through the portal."),
        (2, (), "Per diems are paid daily.\nDinner cap: 25 EUR."),
        (3, (), "Hotels must be approved.\nOslo cap: 200 EUR."),
    ]


def test_pdf_outline_gives_heading_paths(tmp_path):
    outline = [("Travel", 0, 0), ("Per diems", 1, 1), ("Hotels", 1, 2)]
    doc = parse_document(_make_pdf(tmp_path / "policy.pdf", PAGES, outline=outline))
    assert [(s.page, s.heading_path) for s in doc.sections] == [
        (1, ("Travel",)),
        (2, ("Travel", "Per diems")),
        (3, ("Travel", "Hotels")),
    ]


def test_pdf_without_title_metadata_uses_first_line(tmp_path):
    # reportlab writes Title "untitled" by default: a placeholder, not a title.
    doc = parse_document(_make_pdf(tmp_path / "policy.pdf", PAGES))
    assert doc.title == "Travel policy"


def test_pdf_blank_pages_are_dropped_not_empty_sections(tmp_path):
    doc = parse_document(_make_pdf(tmp_path / "gap.pdf", [["one"], [], ["three"]]))
    assert [(s.page, s.text) for s in doc.sections] == [(1, "one"), (3, "three")]


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("invalid.pdf", "unreadable"),
        ("no_contents.pdf", "no_text"),
        ("c03-29.pdf", "no_text"),
        ("cardinal.pdf", "no_text"),
        ("encrypted-file.pdf", "encrypted"),
        ("r4-aes-user-password.pdf", "encrypted"),
        ("r6-user-password.pdf", "encrypted"),
        ("graph-encrypted.pdf", "encrypted"),
    ],
)
def test_problem_pdfs_are_quarantined(name, reason):
    err = _quarantine(PDF_FIXTURES / name)
    assert err.reason == reason
    if reason == "encrypted":
        assert "password" in err.detail
    if reason == "no_text":
        assert "OCR" in err.detail


@pytest.mark.parametrize(
    ("name", "password", "text"),
    [
        ("r4-aes-user-password.pdf", "asdfzxcv", "pdf encryption test\npassword: asdfzxcv"),
        ("r6-user-password.pdf", "asdfzxcv", "pdf encryption test\npassword: asdfzxcv"),
        ("encrypted-file.pdf", "test", "Example"),
    ],
)
def test_encrypted_pdfs_open_with_the_right_password(name, password, text):
    doc = parse_document(PDF_FIXTURES / name, pdf_password=password)
    assert [(s.page, s.text) for s in doc.sections] == [(1, text)]


def test_graph_encrypted_opens_with_password_but_is_image_only():
    # Its user password ("user", per pikepdf's tests) opens it; the page is a single image.
    assert _quarantine(PDF_FIXTURES / "graph-encrypted.pdf", pdf_password="user").reason == "no_text"


def test_wrong_pdf_password_says_so():
    err = _quarantine(PDF_FIXTURES / "r6-user-password.pdf", pdf_password="wrong")
    assert err.reason == "encrypted"
    assert "configured password" in err.detail


def test_truncated_pdf_is_unreadable(tmp_path):
    whole = _make_pdf(tmp_path / "whole.pdf", PAGES).read_bytes()
    cut = _write(tmp_path / "cut.pdf", whole[: len(whole) * 2 // 3])
    assert _quarantine(cut).reason == "unreadable"


def test_non_pdf_with_pdf_extension_is_unreadable(tmp_path):
    err = _quarantine(_write(tmp_path / "download.pdf", "<!DOCTYPE html><html><body>Error 404</body></html>"))
    assert err.reason == "unreadable"
    assert "HTML" in err.detail


# --------------------------------------------------------------------------- checks common to all formats


@pytest.mark.parametrize("name", ["empty.pdf", "empty.docx", "empty.html", "empty.md", "empty.txt"])
def test_zero_byte_files_are_empty(tmp_path, name):
    assert _quarantine(_write(tmp_path / name, b"")).reason == "empty"


@pytest.mark.parametrize("name", ["blank.txt", "blank.md", "blank.html"])
def test_whitespace_only_files_are_empty(tmp_path, name):
    assert _quarantine(_write(tmp_path / name, " \n\t\r\n  \n")).reason == "empty"


def test_too_large_is_checked_before_reading(tmp_path):
    path = _write(tmp_path / "big.txt", "x" * 2000)
    err = _quarantine(path, max_bytes=1000)
    assert err.reason == "too_large"
    assert "limit" in err.detail

def test_too_large_does_not_read_the_file(tmp_path, monkeypatch):
    path = _write(tmp_path / "big.pdf", b"%PDF-1.7\n" + b"x" * 2000)

    def no_reading(*args, **kwargs):
        raise AssertionError("the file was opened although stat() already showed it is too large")

    monkeypatch.setattr(Path, "open", no_reading)
    monkeypatch.setattr(Path, "read_bytes", no_reading)
    assert _quarantine(path, max_bytes=1000).reason == "too_large"


@pytest.mark.parametrize("name", ["data.xyz", "legacy.doc", "noextension"])
def test_unsupported_extensions(tmp_path, name):
    err = _quarantine(_write(tmp_path / name, "some content"))
    assert err.reason == "unsupported_format"
    if name.endswith(".doc"):
        assert ".docx" in err.detail


def test_extension_is_case_insensitive(tmp_path):
    assert parse_document(_write(tmp_path / "README.TXT", "hello")).format == "text"


def test_missing_file_is_unreadable(tmp_path):
    assert _quarantine(tmp_path / "gone.txt").reason == "unreadable"


def test_quarantine_error_survives_pickling():
    import pickle

    err = pickle.loads(pickle.dumps(QuarantineError("encrypted", "needs a password")))
    assert (err.reason, err.detail) == ("encrypted", "needs a password")


def test_fixture_readme_travels_with_the_pdfs():
    readme = (PDF_FIXTURES / "README.md").read_text()
    assert "OCRmyPDF" in readme and "pypdf" in readme and "pikepdf" in readme
