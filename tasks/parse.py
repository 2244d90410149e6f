"""Turn one source document (PDF, HTML, Markdown, plain text, DOCX) into titled, heading-scoped sections.

Parser choices (speed, faithfulness, licence):

* PDF: pypdfium2 (Apache-2.0 / BSD-3-Clause). PDFium is Chrome's PDF engine: its text layer is
  fast (C++, no Python per glyph) and faithful on real-world files, and it opens encrypted PDFs.
  PyMuPDF would be as good but is AGPL; pdfminer.six is pure Python and an order of magnitude slower.
* HTML: lxml.html (BSD). libxml2's HTML parser is fast and tolerant of tag soup, and the tree lets
  us cut boilerplate (nav, cookie banners, footers) before extracting text.
* Markdown: markdown-it-py (MIT). CommonMark-exact, and its tokens carry source line maps, so
  section bodies can be the original Markdown lines (lists, tables and code stay faithful) while
  headings inside fenced code are correctly not headings.
* DOCX: python-docx (MIT). Pure Python over lxml; gives paragraph styles ("Heading 2") and tables.
* Text: the standard library.

Every parser raises :class:`QuarantineError` for input it cannot or should not ingest, with a short
reason code and a sentence telling the operator what to do.  Parsing untrusted files is still done
in worker subprocesses with time and memory caps (see ``tasks/sandbox.py``): this module refuses
what it can check cheaply (size, magic bytes, zip bombs) and leaves hangs, native crashes and
runaway memory to the sandbox.
"""

from __future__ import annotations

import codecs
import re
import unicodedata
import zipfile
from dataclasses import dataclass
from pathlib import Path

import docx
import lxml.html
import pypdfium2
from docx.table import Table
from docx.text.paragraph import Paragraph
from lxml import etree
from markdown_it import MarkdownIt

FORMATS: dict[str, str] = {
    ".pdf": "pdf",
    ".html": "html",
    ".htm": "html",
    ".xhtml": "html",
    ".md": "markdown",
    ".markdown": "markdown",
    ".txt": "text",
    ".text": "text",
    # reStructuredText reads well as plain text; its markup is light and rarely hides content.
    ".rst": "text",
    ".docx": "docx",
}

DEFAULT_MAX_BYTES = 100 * 2**20

# Bump whenever a change here alters parse output, so ingestion re-parses files it has already seen.
PARSER_VERSION = "1"


@dataclass(frozen=True)
class Section:
    """A run of body text under one heading path (one page for PDFs)."""

    text: str
    heading_path: tuple[str, ...]
    page: int | None


@dataclass(frozen=True)
class ParsedDocument:
    """The parsed form of one file: its format, a title and its non-empty sections in reading order."""

    format: str
    title: str
    sections: list[Section]


class QuarantineError(Exception):
    """The file cannot or should not be ingested; ``reason`` is a short code, ``detail`` says what to do."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail

    def __reduce__(self):  # keep both fields when pickled across a process boundary
        return (type(self), (self.reason, self.detail))


def parse_document(
    path: Path, *, pdf_password: str | None = None, max_bytes: int = DEFAULT_MAX_BYTES
) -> ParsedDocument:
    """Parse one file by its extension, verified by content; raise QuarantineError for bad input.

    Checks run cheapest first: extension, size (``stat``, before reading anything), emptiness,
    then the format's magic bytes, then the format parser.  An unexpected exception raised inside a
    parser library is reported as ``unreadable`` (the library choked on the file); one raised by this
    module's own code is ``parser_error`` (a bug here, not evidence against the file).
    ``MemoryError`` is left to propagate so the sandbox can report it as ``memory_limit``.
    """
    path = Path(path)
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        known = ", ".join(sorted(FORMATS))
        hint = " Save it as .docx first." if path.suffix.lower() in {".doc", ".rtf", ".odt"} else ""
        raise QuarantineError(
            "unsupported_format",
            f"extension {path.suffix or '(none)'!r} is not a supported document type ({known}).{hint}",
        )
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise QuarantineError("unreadable", f"cannot access the file ({exc.strerror}); check it exists and is readable") from exc
    if size > max_bytes:
        raise QuarantineError(
            "too_large",
            f"file is {_human_size(size)}, over the {_human_size(max_bytes)} limit; "
            "split it, or raise ingest.max_file_mb if it is legitimate",
        )
    if size == 0:
        raise QuarantineError("empty", "file is empty (0 bytes); remove it or replace it with the real document")

    try:
        if fmt == "pdf":
            return _parse_pdf(path, pdf_password)
        if fmt == "docx":
            return _parse_docx(path, max_bytes)
        raw = _read_bytes(path, size)
        if fmt == "html":
            return _parse_html(raw, path)
        if fmt == "markdown":
            return _parse_markdown(raw, path)
        return _parse_text(raw, path)
    except (QuarantineError, MemoryError):
        raise
    except RecursionError as exc:
        raise QuarantineError("unreadable", f"{fmt} structure is nested too deeply to parse; simplify or re-export the file") from exc
    except Exception as exc:
        where = _raised_here(exc)
        if where:
            raise QuarantineError(
                "parser_error",
                f"ragtune's {fmt} parser failed ({type(exc).__name__}: {exc}, at {where}); this is a bug in ragtune, "
                "not necessarily in the file: report it with the file. It is parsed again when the parser changes "
                "(PARSER_VERSION) or with ingest --force",
            ) from exc
        # A parser library choked on malformed input.
        raise QuarantineError(
            "unreadable",
            f"the {fmt} parser failed ({type(exc).__name__}: {exc}); the file is probably corrupt: "
            "re-export it from the source application or remove it",
        ) from exc


# --------------------------------------------------------------------------- shared helpers


def _raised_here(exc: BaseException) -> str | None:
    """``parse.py:<line> in <function>`` when the innermost frame of `exc` is this module's code."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None or tb.tb_frame.f_code.co_filename != __file__:
        return None
    return f"parse.py:{tb.tb_lineno} in {tb.tb_frame.f_code.co_name}"


# Control characters other than tab/newline carry no text and make lxml refuse input; U+FFFE/FFFF
# are non-characters PDFium emits for unmapped glyphs; soft hyphens and zero-width spaces are invisible.
_CONTROL = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f\ufffe\uffff\u00ad\u200b]")
_HSPACE = re.compile("[ \t\x0c\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]+")
_ANY_SPACE = re.compile(r"\s+")
_BLANK_RUNS = re.compile(r"\n{3,}")


def _normalise(text: str) -> str:
    """NFC, unify newlines, collapse horizontal whitespace, strip lines, keep one blank line between paragraphs."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n").replace("\x0c", "\n\n")
    text = _CONTROL.sub("", text)
    lines = [_HSPACE.sub(" ", line).strip() for line in text.split("\n")]
    return _BLANK_RUNS.sub("\n\n", "\n".join(lines)).strip()


def _normalise_verbatim(text: str) -> str:
    """Like :func:`_normalise` but keeps indentation and inner spacing (code, Markdown source)."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    lines = [line.rstrip() for line in text.split("\n")]
    return _BLANK_RUNS.sub("\n\n", "\n".join(lines)).strip("\n")


def _one_line(text: str) -> str:
    return _ANY_SPACE.sub(" ", _CONTROL.sub("", unicodedata.normalize("NFC", text))).strip()


def _read_bytes(path: Path, size: int) -> bytes:
    # Ask for exactly the stat() size plus one byte: read(n) allocates n bytes up front, so
    # reading "up to max_bytes" would cost 100 MiB of address space for every small file.
    with path.open("rb") as fh:
        raw = fh.read(size + 1)
    if len(raw) != size:
        raise QuarantineError("unreadable", "file changed size while being read (still being written?); retry once it is complete")
    return raw


def _human_size(n: int) -> str:
    if n >= 2**20:
        return f"{n / 2**20:.1f} MiB"
    if n >= 2**10:
        return f"{n / 2**10:.1f} KiB"
    return f"{n} bytes"


def _title_from_line(text: str) -> str | None:
    """First non-empty line, if it is short enough to plausibly be a title."""
    for line in text.split("\n"):
        line = line.strip()
        if line:
            return line if len(line) <= 120 else None
    return None


def _looks_like(head: bytes) -> str:
    """A human description of what a file's first bytes suggest, for error messages."""
    probes = [
        (b"%PDF", "a PDF"),
        (b"PK\x03\x04", "a ZIP archive"),
        (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "a legacy Office (OLE2) file"),
        (b"\x89PNG", "a PNG image"),
        (b"\xff\xd8\xff", "a JPEG image"),
        (b"GIF8", "a GIF image"),
        (b"\x7fELF", "an executable"),
        (b"MZ", "a Windows executable"),
        (b"\x1f\x8b", "a gzip archive"),
        (b"{\\rtf", "an RTF document"),
    ]
    for magic, name in probes:
        if head.startswith(magic):
            return name
    stripped = head.lstrip().lower()
    if stripped.startswith((b"<!doctype html", b"<html")):
        return "an HTML page"
    if b"\x00" in head[:1024]:
        return "binary data"
    return "text"


def _finish(fmt: str, title: str | None, path: Path, sections: list[Section]) -> ParsedDocument:
    sections = [s for s in sections if s.text]
    if not sections:
        raise QuarantineError("no_text", f"the {fmt} file contains no extractable text; check it is the intended document")
    return ParsedDocument(format=fmt, title=_one_line(title or "") or path.stem, sections=sections)


# --------------------------------------------------------------------------- PDF

_PDF_ERR_PASSWORD = 4  # FPDF_ERR_PASSWORD
_PDF_ERR_SECURITY = 5  # FPDF_ERR_SECURITY: encryption handler PDFium does not support
_PDF_ERR_SUCCESS = 0  # "loaded" but zero pages
_JUNK_PDF_TITLES = {"untitled", "untitled document", "title", "document"}


def _parse_pdf(path: Path, password: str | None) -> ParsedDocument:
    with path.open("rb") as fh:
        head = fh.read(1024)
    if b"%PDF" not in head:
        raise QuarantineError("unreadable", f"not a PDF (no %PDF header in the first 1 KiB; it looks like {_looks_like(head)}); fix the extension or re-export it")

    pdf = _open_pdf(path, password)
    try:
        bookmarks = _pdf_bookmarks(pdf)
        sections: list[Section] = []
        for index in range(len(pdf)):
            page = pdf[index]
            try:
                textpage = page.get_textpage()
                try:
                    # get_text_bounded, unlike get_text_range, returns characters outside the BMP.
                    text = _normalise(textpage.get_text_bounded())
                finally:
                    textpage.close()
            finally:
                page.close()
            if text:
                sections.append(Section(text=text, heading_path=_covering_bookmark(bookmarks, index), page=index + 1))
        if not sections:
            raise QuarantineError(
                "no_text",
                f"no text layer on any of its {len(pdf)} page(s) (image-only or no content); OCR is not configured, "
                "so run it through OCR (e.g. ocrmypdf) first or remove it",
            )
        title = (pdf.get_metadata_value("Title") or "").strip()
        if title.lower() in _JUNK_PDF_TITLES:
            title = ""
        return _finish("pdf", title or _title_from_line(sections[0].text), path, sections)
    finally:
        pdf.close()


def _open_pdf(path: Path, password: str | None) -> pypdfium2.PdfDocument:
    # The empty password (None) opens files that only have an owner password (copy/print restrictions).
    attempts: list[str | None] = [password, None] if password else [None]
    last: pypdfium2.PdfiumError | None = None
    for attempt in attempts:
        try:
            return pypdfium2.PdfDocument(path, password=attempt)
        except pypdfium2.PdfiumError as exc:
            last = exc
            if getattr(exc, "err_code", None) != _PDF_ERR_PASSWORD:
                break
    code = getattr(last, "err_code", None)
    if code == _PDF_ERR_PASSWORD:
        if password:
            detail = "encrypted PDF: the configured password (ingest.pdf_password) does not open it; set the right one or remove the file"
        else:
            detail = "encrypted PDF needs a password: set ingest.pdf_password (env RAGTUNE_INGEST__PDF_PASSWORD) or remove the file"
        raise QuarantineError("encrypted", detail) from last
    if code == _PDF_ERR_SECURITY:
        raise QuarantineError("encrypted", "PDF uses an unsupported encryption scheme; save an unencrypted copy or remove the file") from last
    if code == _PDF_ERR_SUCCESS:
        raise QuarantineError("empty", "PDF has no pages; remove it or replace it with the real document") from last
    raise QuarantineError(
        "unreadable",
        f"PDF is damaged or truncated ({last}); re-download or re-export it, or remove the file",
    ) from last


def _pdf_bookmarks(pdf: pypdfium2.PdfDocument) -> list[tuple[int, tuple[str, ...]]]:
    """(page index, heading path) for every outline entry that points at a page, sorted by page."""
    entries: list[tuple[int, tuple[str, ...]]] = []
    stack: list[str] = []
    for bookmark in pdf.get_toc(max_depth=8):
        title = _one_line(bookmark.get_title())
        del stack[bookmark.level :]
        stack.append(title)
        dest = bookmark.get_dest()
        index = dest.get_index() if dest is not None else None
        if index is not None and title:
            entries.append((index, tuple(t for t in stack if t)))
    # Stable sort: several bookmarks on one page keep outline order, so the last one wins below.
    entries.sort(key=lambda e: e[0])
    return entries


def _covering_bookmark(bookmarks: list[tuple[int, tuple[str, ...]]], page_index: int) -> tuple[str, ...]:
    """Path of the last bookmark starting on or before this page (the section the page is in)."""
    path: tuple[str, ...] = ()
    for index, bm_path in bookmarks:
        if index > page_index:
            break
        path = bm_path
    return path


# --------------------------------------------------------------------------- text decoding

_BOMS = [
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
]


def _bom_encoding(raw: bytes) -> str | None:
    # UTF-32-LE's BOM starts with UTF-16-LE's, so the longer BOMs are checked first.
    for bom, encoding in _BOMS:
        if raw.startswith(bom):
            return encoding
    return None


def _bomless_utf16(sample: bytes) -> str | None:
    """Spot UTF-16 without a BOM: mostly-ASCII text leaves every other byte NUL."""
    if len(sample) < 16:
        return None
    even, odd = sample[0::2], sample[1::2]
    if odd.count(0) > 0.9 * len(odd) and even.count(0) < 0.1 * len(even):
        return "utf-16-le"
    if even.count(0) > 0.9 * len(even) and odd.count(0) < 0.1 * len(odd):
        return "utf-16-be"
    return None


def _decode_text(raw: bytes, declared: str | None = None) -> str:
    """Decode text bytes: BOM, then a declared charset, then UTF-8, then cp1252/latin-1.

    Raises ``binary`` when the bytes are not text at all (a binary renamed to .txt).
    """
    encoding = _bom_encoding(raw)
    if encoding is None:
        sample = raw[:8192]
        encoding = _bomless_utf16(sample)
        if encoding is None and b"\x00" in sample:
            raise QuarantineError(
                "binary",
                f"file contains NUL bytes, so it is not text (it looks like {_looks_like(raw[:64])}); fix the extension or remove it",
            )
    if encoding is None and declared:
        encoding = declared
    if encoding is not None:
        text = raw.decode(encoding, errors="replace")
    else:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            # Undeclared non-UTF-8 text from Windows tools is almost always cp1252, whose few
            # undefined bytes latin-1 still maps, so decoding cannot fail.
            try:
                text = raw.decode("cp1252")
            except UnicodeDecodeError:
                text = raw.decode("latin-1")
    text = text.lstrip("\ufeff")
    sample_text = text[:8192]
    if sample_text:
        bad = sum(1 for ch in sample_text if ch == "\ufffd" or (unicodedata.category(ch) in ("Cc", "Cs", "Co", "Cn") and ch not in "\t\n\r\x0c"))
        if bad > 0.1 * len(sample_text):
            raise QuarantineError(
                "binary",
                f"{bad * 100 // len(sample_text)}% of the first characters are unprintable, so it is not text "
                "(a binary file or an unknown encoding); fix the extension or convert it to UTF-8",
            )
    return text


def _require_text(text: str) -> None:
    if not text.strip():
        raise QuarantineError("empty", "file contains only whitespace; remove it or replace it with the real document")


# --------------------------------------------------------------------------- plain text


def _parse_text(raw: bytes, path: Path) -> ParsedDocument:
    text = _decode_text(raw)
    _require_text(text)
    body = _normalise(text)
    return _finish("text", _title_from_line(body), path, [Section(text=body, heading_path=(), page=None)])


# --------------------------------------------------------------------------- Markdown

_FRONT_MATTER = re.compile(r"\A---[ \t]*\n(.*?)\n(?:---|\.\.\.)[ \t]*(?:\n|\Z)", re.DOTALL)
_FM_KEY = re.compile(r"[A-Za-z_][\w-]*[ \t]*:")
_FM_TITLE = re.compile(r"^title[ \t]*:[ \t]*(.+?)[ \t]*$", re.MULTILINE)


def _inline_plain(token) -> str:
    """Plain text of a markdown-it inline token (drops emphasis/link markup, keeps code spans)."""
    parts = []
    for child in token.children or []:
        if child.type in ("text", "code_inline", "html_inline"):
            parts.append(child.content)
        elif child.type in ("softbreak", "hardbreak"):
            parts.append(" ")
    return _one_line("".join(parts))


def _parse_markdown(raw: bytes, path: Path) -> ParsedDocument:
    # markdown-it's line maps count "\n"-separated lines, so unify newlines before parsing.
    text = _decode_text(raw).replace("\r\n", "\n").replace("\r", "\n")
    _require_text(text)

    title: str | None = None
    front = _FRONT_MATTER.match(text)
    # A document may also open with a thematic break (---); only a YAML-looking block is front matter.
    if front and _FM_KEY.match(front.group(1).lstrip("\n")):
        match = _FM_TITLE.search(front.group(1))
        if match:
            title = match.group(1).strip().strip("\"'").strip()
        text = text[front.end() :]

    lines = text.split("\n")
    tokens = MarkdownIt("commonmark").enable("table").parse(text)

    # Only top-level headings split sections: a heading inside a list or quote belongs to that block.
    headings: list[tuple[int, int, int, str]] = []  # (first line, line after heading, level, text)
    for i, token in enumerate(tokens):
        if token.type == "heading_open" and token.level == 0 and token.map:
            headings.append((token.map[0], token.map[1], int(token.tag[1]), _inline_plain(tokens[i + 1])))

    sections: list[Section] = []
    stack: list[tuple[int, str]] = []
    body_start = 0
    for start, after, level, heading in headings:
        sections.append(_md_section(lines[body_start:start], stack))
        while stack and stack[-1][0] >= level:
            stack.pop()
        if heading:
            stack.append((level, heading))
        if title is None and level == 1 and heading:
            title = heading
        body_start = after
    sections.append(_md_section(lines[body_start:], stack))
    return _finish("markdown", title, path, sections)


def _md_section(lines: list[str], stack: list[tuple[int, str]]) -> Section:
    return Section(text=_normalise_verbatim("\n".join(lines)), heading_path=tuple(h for _, h in stack), page=None)


# --------------------------------------------------------------------------- HTML

_META_CHARSET = re.compile(rb"""<meta[^>]+?charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.IGNORECASE)
_XML_DECL = re.compile(r"\A\s*<\?xml[^>]*\?>")
_HEADINGS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}
# Never content, wherever they appear.
_DROP_TAGS = {
    "script", "style", "noscript", "template", "iframe", "svg", "math", "canvas", "nav", "aside",
    "button", "select", "option", "input", "textarea", "object", "embed", "video", "audio", "map", "head",
}
# Usually page chrome, but sometimes wrap the real content (ASP.NET wraps the whole page in a
# <form>; an article's <header> holds its <h1>), so these are kept when they contain content markers.
_SOFT_DROP_TAGS = {"header", "footer", "form"}
_DROP_ROLES = {"navigation", "banner", "contentinfo", "search", "complementary"}
_BOILERPLATE_TOKENS = {
    "cookie", "cookies", "consent", "gdpr", "banner", "breadcrumb", "breadcrumbs", "sidebar", "menu",
    "navbar", "nav", "footer", "skip", "skiplink", "share", "sharing", "social", "advert", "advertisement",
    "ad", "ads", "popup", "newsletter",
}
_BOILERPLATE_SUBSTRINGS = ("cookie", "consent", "breadcrumb", "sidebar", "navbar", "advert", "skip-link", "skiplink")
_TOKEN_SPLIT = re.compile(r"[^a-z0-9]+")
_BLOCK_TAGS = {
    "p", "div", "section", "article", "main", "blockquote", "figure", "figcaption", "dl", "dt", "dd",
    "address", "details", "summary", "fieldset", "center", "body", "html", "hr", "header", "footer",
    "form", "li", "td", "th", "tr", "tbody", "thead", "tfoot", "caption",
}
_WHATWG_ALIASES = {"iso-8859-1": "cp1252", "latin1": "cp1252", "latin-1": "cp1252", "us-ascii": "cp1252", "ascii": "cp1252"}


def _html_charset(raw: bytes) -> str | None:
    match = _META_CHARSET.search(raw[:4096])
    if not match:
        return None
    name = match.group(1).decode("ascii", "replace").lower()
    # Browsers read "latin-1"/"ascii" labels as windows-1252; so do the pages written for them.
    name = _WHATWG_ALIASES.get(name, name)
    try:
        return codecs.lookup(name).name
    except LookupError:
        return None


def _is_boilerplate(el) -> bool:
    role = (el.get("role") or "").strip().lower()
    if role in _DROP_ROLES:
        return True
    marker = f"{el.get('id') or ''} {el.get('class') or ''}".lower()
    if not marker.strip():
        return False
    if any(s in marker for s in _BOILERPLATE_SUBSTRINGS):
        return True
    return any(tok in _BOILERPLATE_TOKENS for tok in _TOKEN_SPLIT.split(marker))


def _holds_content(el) -> bool:
    """True when an element wraps main content and so must not be dropped as chrome."""
    if el.tag in ("main", "article", "body", "html") or (el.get("role") or "").lower() == "main":
        return True
    return bool(el.xpath(".//main|.//article|.//h1|.//*[@role='main']"))


def _strip_boilerplate(root) -> None:
    for el in list(root.iter()):
        if el is root or not isinstance(el.tag, str) or el.getparent() is None:
            continue
        tag = el.tag.lower()
        # Elements hidden with `hidden` or display:none are kept on purpose: tab panels and
        # accordions hide real content that way until clicked.
        if tag in _DROP_TAGS:
            el.drop_tree()
        elif tag == "header" and el.xpath("ancestor::article|ancestor::main"):
            continue  # a section's own header: its title and byline, not site chrome
        elif (tag in _SOFT_DROP_TAGS or _is_boilerplate(el)) and not _holds_content(el):
            el.drop_tree()


def _content_root(doc):
    for query in ("//main", "//*[@role='main']"):
        found = doc.xpath(query)
        if found:
            return found[0]
    articles = doc.xpath("//article[not(ancestor::article)]")
    if len(articles) == 1:
        return articles[0]
    body = doc.find("body")
    return body if body is not None else doc


class _HtmlWalker:
    """Walks the content tree in document order, cutting it into sections at h1-h6."""

    def __init__(self) -> None:
        self.sections: list[Section] = []
        self.stack: list[tuple[int, str]] = []
        self.blocks: list[str] = []
        self.inline: list[str] = []
        self.first_h1: str | None = None

    def flush_inline(self) -> None:
        text = "".join(self.inline)
        self.inline = []
        lines = [line.strip() for line in _normalise(text).split("\n")]
        text = "\n".join(line for line in lines if line)
        if text:
            self.blocks.append(text)

    def flush_section(self) -> None:
        self.flush_inline()
        if self.blocks:
            self.sections.append(Section(text="\n\n".join(self.blocks), heading_path=tuple(h for _, h in self.stack), page=None))
        self.blocks = []

    def add_block(self, text: str) -> None:
        self.flush_inline()
        if text:
            self.blocks.append(text)

    def walk(self, root) -> None:
        # Iterative, not recursive: huge_tree lets libxml2 nest 2048 levels deep, past Python's
        # recursion limit.  The stack holds ("enter", element), ("text", tail) and ("flush", None).
        stack: list[tuple[str, object]] = [("enter", root)]
        while stack:
            action, item = stack.pop()
            if action == "text":
                self.inline.append(item)
            elif action == "flush":
                self.flush_inline()
            else:
                self._enter(item, stack)

    def _enter(self, el, stack: list[tuple[str, object]]) -> None:
        if not isinstance(el.tag, str):  # comments, processing instructions
            return
        tag = el.tag.lower()
        if tag in _HEADINGS:
            heading = _html_inline_text(el)
            if heading:
                self.flush_section()
                level = _HEADINGS[tag]
                while self.stack and self.stack[-1][0] >= level:
                    self.stack.pop()
                self.stack.append((level, heading))
                if level == 1 and self.first_h1 is None:
                    self.first_h1 = heading
            return
        if tag == "pre":
            self.add_block(_normalise_verbatim(el.text_content()))
            return
        if tag in ("ul", "ol"):
            self.add_block("\n".join(_html_list_lines(el, 0)))
            return
        if tag == "table" and not el.xpath(".//table|.//h1|.//h2|.//h3|.//h4|.//h5|.//h6"):
            self.add_block(_html_table(el))
            return
        if tag == "br":
            self.inline.append("\n")
            return
        block = tag in _BLOCK_TAGS or tag == "table"  # a layout table is walked like any container
        if block:
            self.flush_inline()
            stack.append(("flush", None))
        self.inline.append(_ANY_SPACE.sub(" ", el.text or ""))
        for child in reversed(el):
            stack.append(("text", _ANY_SPACE.sub(" ", child.tail or "")))
            stack.append(("enter", child))


def _html_inline_text(el, skip: tuple[str, ...] = ()) -> str:
    """All text under ``el`` on one line, skipping subtrees whose tag is in ``skip``."""
    parts: list[str] = [el.text or ""]
    skipping = None  # the skipped element we are inside, if any
    for event, node in etree.iterwalk(el, events=("start", "end")):
        if node is el:
            continue
        tag = node.tag.lower() if isinstance(node.tag, str) else None
        if event == "start":
            if skipping is None and tag is not None:
                if tag in skip:
                    skipping = node
                else:
                    if tag in _BLOCK_TAGS or tag == "br":
                        parts.append(" ")
                    parts.append(node.text or "")
        else:
            if skipping is node:
                skipping = None
            if skipping is None:
                parts.append(node.tail or "")
    return _one_line("".join(parts))


def _html_list_lines(list_el, depth: int) -> list[str]:
    lines: list[str] = []
    ordered = list_el.tag.lower() == "ol"
    number = 0
    for item in list_el:
        if not isinstance(item.tag, str) or item.tag.lower() != "li":
            continue
        number += 1
        text = _html_inline_text(item, skip=("ul", "ol"))
        if text:
            marker = f"{number}. " if ordered else "- "
            lines.append("  " * depth + marker + text)
        for nested in item.xpath(".//ul|.//ol"):
            # Only lists whose nearest enclosing <li> is this item; deeper ones recurse from there.
            if nested.xpath("ancestor::li[1]")[0] is item:
                lines.extend(_html_list_lines(nested, depth + 1))
    return lines


def _html_table(table) -> str:
    rows: list[str] = []
    for row in table.iter("tr"):
        cells = [_html_inline_text(cell) for cell in row if isinstance(cell.tag, str) and cell.tag.lower() in ("td", "th")]
        if any(cells):
            rows.append(" | ".join(cells))
    caption = table.find("caption")
    if caption is not None and _html_inline_text(caption):
        rows.insert(0, _html_inline_text(caption))
    return "\n".join(rows)


def _parse_html(raw: bytes, path: Path) -> ParsedDocument:
    text = _decode_text(raw, declared=_html_charset(raw))
    _require_text(text)
    # lxml rejects str input that carries an XML encoding declaration; we have already decoded it.
    text = _CONTROL.sub("", _XML_DECL.sub("", text, count=1))
    try:
        # huge_tree: libxml2 otherwise silently drops everything nested deeper than 256 levels
        # (legacy pages with unclosed <font>/<b> tags get there); time and memory are the sandbox's job.
        parser = lxml.html.HTMLParser(huge_tree=True)
        doc = lxml.html.document_fromstring(text, parser=parser)
    except etree.ParserError as exc:  # "Document is empty": only comments or stray markup
        raise QuarantineError("no_text", f"the HTML file contains no parseable content ({exc}); check it is the intended page") from exc
    if any("Excessive depth" in error.message for error in parser.error_log):
        # libxml2 stopped building the tree there: whatever follows would be silently missing.
        raise QuarantineError("unreadable", "HTML nests elements deeper than the parser's 2048-level limit (unclosed tags?); fix or re-export the page")

    title_el = doc.find("head/title")  # not .//title: SVG icons carry <title> elements too
    title = _one_line(title_el.text_content()) if title_el is not None else ""

    root = _content_root(doc)
    _strip_boilerplate(root)
    walker = _HtmlWalker()
    walker.walk(root)
    walker.flush_section()
    if not walker.sections:
        raise QuarantineError(
            "no_text",
            "no text left after removing navigation, scripts and other page chrome; check it is a content page, not a redirect or app shell",
        )
    return _finish("html", title or walker.first_h1, path, walker.sections)


# --------------------------------------------------------------------------- DOCX

_W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
_ZIP_BOMB_RATIO = 200
_ZIP_BOMB_MIN_MEMBER = 2**20  # a tiny member cannot hurt, whatever its ratio
_HEADING_STYLE = re.compile(r"heading\s*([1-9])", re.IGNORECASE)


def _check_docx_container(path: Path, max_bytes: int) -> None:
    with path.open("rb") as fh:
        head = fh.read(8)
    if head.startswith(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"):
        # Word stores password-protected .docx files inside an OLE2 container ("EncryptedPackage").
        with path.open("rb") as fh:
            if "EncryptedPackage".encode("utf-16-le") in fh.read(1 << 20):
                raise QuarantineError("encrypted", "password-protected Word document; save a copy without the password or remove the file")
        raise QuarantineError("unreadable", "this is a legacy Word .doc (OLE2) file with a .docx extension; open it in Word and save it as .docx")
    if not zipfile.is_zipfile(path):
        raise QuarantineError("unreadable", f"not a .docx (not a ZIP container; it looks like {_looks_like(head)}); fix the extension or re-save it as .docx")
    with zipfile.ZipFile(path) as archive:
        members = archive.infolist()
        names = {m.filename for m in members}
        if "word/document.xml" not in names:
            raise QuarantineError("unreadable", "ZIP file without word/document.xml, so it is not a Word document; fix the extension or remove it")
        total = sum(m.file_size for m in members)
        worst = max(
            (m.file_size / max(m.compress_size, 1) for m in members if m.file_size >= _ZIP_BOMB_MIN_MEMBER),
            default=0.0,
        )
        if total > 20 * max_bytes or worst > _ZIP_BOMB_RATIO:
            raise QuarantineError(
                "unreadable",
                f"suspicious compression (zip bomb?): {_human_size(total)} uncompressed, worst member ratio {worst:.0f}:1; "
                "remove the file or re-save it from Word",
            )


def _parse_docx(path: Path, max_bytes: int) -> ParsedDocument:
    _check_docx_container(path, max_bytes)
    document = docx.Document(str(path))
    # Paragraph.style resolves each paragraph's style by scanning the whole style sheet (90% of
    # parse time on a 50-page document); resolve ids to names once instead.
    style_names = {style.style_id: style.name or "" for style in document.styles if style.style_id}
    sections: list[Section] = []
    stack: list[tuple[int, str]] = []
    blocks: list[str] = []
    list_lines: list[str] = []
    first_heading: str | None = None

    def end_list() -> None:
        if list_lines:
            blocks.append("\n".join(list_lines))
            list_lines.clear()

    def end_section() -> None:
        end_list()
        if blocks:
            sections.append(Section(text="\n\n".join(blocks), heading_path=tuple(h for _, h in stack), page=None))
            blocks.clear()

    def body_elements(parent):
        # Content controls (w:sdt) and custom XML wrap ordinary paragraphs and tables; look inside.
        for child in parent.iterchildren():
            if child.tag in (_W + "sdt", _W + "customXml"):
                content = child.find(_W + "sdtContent") if child.tag == _W + "sdt" else child
                if content is not None:
                    yield from body_elements(content)
            elif child.tag in (_W + "p", _W + "tbl"):
                yield child

    for element in body_elements(document.element.body):
        if element.tag == _W + "tbl":
            end_list()
            text = _docx_table(Table(element, document))
            if text:
                blocks.append(text)
            continue
        paragraph = Paragraph(element, document)
        text = _normalise(paragraph.text)
        if not text:
            continue
        style = style_names.get(element.style or "", "")
        match = _HEADING_STYLE.fullmatch(style)
        level = 0 if style == "Title" else int(match.group(1)) if match else None
        if level is not None:
            end_section()
            heading = _one_line(text)
            while stack and stack[-1][0] >= level:
                stack.pop()
            stack.append((level, heading))
            if first_heading is None and level <= 1:
                first_heading = heading
        elif style.startswith("List") or element.find(f"{_W}pPr/{_W}numPr") is not None:
            list_lines.append("- " + _one_line(text))
        else:
            end_list()
            blocks.append(text)
    end_section()

    title = (document.core_properties.title or "").strip()
    return _finish("docx", title or first_heading, path, sections)


def _docx_table(table) -> str:
    rows: list[str] = []
    for row in table.rows:
        cells: list[str] = []
        seen: set[int] = set()
        for cell in row.cells:
            # python-docx repeats a merged cell once per grid column it spans; keep it once.
            if id(cell._tc) in seen:
                continue
            seen.add(id(cell._tc))
            cells.append(_one_line(" ".join(p.text for p in cell.paragraphs)))
        if any(cells):
            rows.append(" | ".join(cells))
    return "\n".join(rows)
