"""Hostile inputs made from real files: byte flips, truncations, zip bombs, deep nesting, huge lines,
NUL-filled files, wrong extensions, garbage. Seeded; each file's kind and origin are returned.

Bases: the PDFs of tests/fixtures/pdf (broken, encrypted, image-only ones from public suites) and of
the demo corpus plus gnuplot's 300-page manual; the demo DOCX files plus two written here with
python-docx; demo and Debian HTML pages.
"""

from __future__ import annotations

import io
import random
import zipfile
from dataclasses import dataclass
from pathlib import Path

from bench.common import DATA, REPO

FIXTURE_PDFS = REPO / "tests" / "fixtures" / "pdf"
DEMO = REPO / "demo" / "corpus"


@dataclass(frozen=True)
class Hostile:
    name: str  # file name inside the hostile directory (the doc_id)
    kind: str  # byte_flip, truncated, zip_bomb, nested, huge_line, nul_filled, wrong_extension, garbage
    origin: str  # what it was made from
    size: int


def _bases() -> dict[str, list[Path]]:
    gnuplot = DATA / "packages" / "gnuplot-doc" / "usr" / "share" / "doc" / "gnuplot" / "gnuplot.pdf"
    pdfs = sorted(FIXTURE_PDFS.glob("*.pdf")) + sorted(DEMO.rglob("*.pdf")) + ([gnuplot] if gnuplot.is_file() else [])
    html = sorted(DEMO.rglob("*.html"))
    debian = DATA / "packages" / "python3.11-doc" / "usr" / "share" / "doc" / "python3.11" / "html" / "library"
    if debian.is_dir():
        pages = sorted(p for p in debian.glob("*.html") if 8_000 < p.stat().st_size < 200_000)
        html += pages[:: max(1, len(pages) // 10)][:10]
    return {"pdf": pdfs, "docx": sorted(DEMO.rglob("*.docx")), "html": html}


def _docx(paragraphs: int, seed: int) -> bytes:
    """A real DOCX written by python-docx: headings, paragraphs and a table."""
    import docx

    rng = random.Random(seed)
    words = "policy device probe network release customer invoice hotel travel audit backup".split()
    d = docx.Document()
    d.add_heading("Drill document", level=1)
    for i in range(paragraphs):
        if i % 10 == 0:
            d.add_heading(f"Section {i // 10}", level=2)
        d.add_paragraph(" ".join(rng.choice(words) for _ in range(40)))
    table = d.add_table(rows=4, cols=3)
    for r, row in enumerate(table.rows):
        for c, cell in enumerate(row.cells):
            cell.text = f"r{r}c{c} {rng.choice(words)}"
    out = io.BytesIO()
    d.save(out)
    return out.getvalue()


def _flip(raw: bytes, count: int, rng: random.Random) -> bytes:
    b = bytearray(raw)
    for _ in range(count):
        i = rng.randrange(len(b))
        b[i] ^= 1 << rng.randrange(8)
    return bytes(b)


def _rezip(raw: bytes, replace: dict[str, bytes | None], add: dict[str, bytes | None] | None = None) -> bytes:
    """A copy of the zip `raw` with some entries replaced and others added (None: a streamed deflate bomb)."""
    src = zipfile.ZipFile(io.BytesIO(raw))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for info in src.infolist():
            if info.filename not in replace:
                z.writestr(info, src.read(info.filename))
        for name, data in {**replace, **(add or {})}.items():
            if data is None:
                _stream_bomb(z, name)
            else:
                z.writestr(name, data)
    return out.getvalue()


def _stream_bomb(z: zipfile.ZipFile, name: str, gib: float = 1.0, chunk: bytes = b" " * 2**20) -> None:
    """An entry that inflates to `gib` GiB of spaces (~1 MB compressed), written without holding it in memory."""
    info = zipfile.ZipInfo(name)
    info.compress_type = zipfile.ZIP_DEFLATED  # ZipInfo defaults to stored, whatever the archive's default
    with z.open(info, "w", force_zip64=True) as f:
        for _ in range(int(gib * 1024)):
            f.write(chunk)


def _lying_sizes(raw: bytes, name: str, claimed: int = 100) -> bytes:
    """The zip with entry `name`'s uncompressed size understated in its local and central headers."""
    b = bytearray(raw)
    local = zipfile.ZipFile(io.BytesIO(raw)).getinfo(name).header_offset
    b[local + 22 : local + 26] = claimed.to_bytes(4, "little")
    cd = b.find(b"PK\x01\x02")
    while cd >= 0:
        n = int.from_bytes(b[cd + 28 : cd + 30], "little")
        if bytes(b[cd + 46 : cd + 46 + n]) == name.encode():
            b[cd + 24 : cd + 28] = claimed.to_bytes(4, "little")
            break
        cd = b.find(b"PK\x01\x02", cd + 4)
    return bytes(b)


BILLION_LAUGHS = (
    '<?xml version="1.0"?>\n<!DOCTYPE lolz [<!ENTITY lol "lol">'
    + "".join(f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">' for i in range(1, 10))
    + ']>\n<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"><w:body><w:p><w:r><w:t>&lol9;</w:t></w:r></w:p></w:body></w:document>'
)


def make_hostile(out: Path, seed: int, quick: bool = False) -> list[Hostile]:
    """Write the hostile files under `out`; returns what each one is."""
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    made: list[Hostile] = []

    def write(name: str, kind: str, origin: str, data: bytes) -> None:
        (out / name).write_bytes(data)
        made.append(Hostile(name, kind, origin, len(data)))

    bases = _bases()
    docx_bases = [(p.name, p.read_bytes()) for p in bases["docx"]] + [(f"python-docx-{n}.docx", _docx(n, seed + n)) for n in (30, 300)]
    per_pdf, per_docx, per_html = (2, 2, 1) if quick else (4, 3, 1)

    # Byte flips and truncations of every base file.
    for kind, files in (("pdf", [(p.name, p.read_bytes()) for p in bases["pdf"]]), ("docx", docx_bases), ("html", [(p.name, p.read_bytes()) for p in bases["html"]])):
        per = {"pdf": per_pdf, "docx": per_docx, "html": per_html}[kind]
        for i, (origin, raw) in enumerate(files):
            stem = f"{kind}{i:02d}"
            for j, count in enumerate([1, 16, 256, max(1, len(raw) // 100)][:per]):
                write(f"{stem}-flip{j}-{count}b.{kind}", "byte_flip", origin, _flip(raw, count, rng))
            cuts = [rng.randrange(1, min(len(raw), 1024)), rng.randrange(len(raw) // 4, 3 * len(raw) // 4 + 1), len(raw) - rng.randrange(1, 200), len(raw) - 1]
            for j, cut in enumerate(cuts[:per]):
                write(f"{stem}-cut{j}-at{max(1, cut)}.{kind}", "truncated", origin, raw[: max(1, cut)])

    # Zip bombs: DOCX is a zip.
    name, raw = docx_bases[0]
    bombs = {
        "bomb-document-xml-1gib.docx": _rezip(raw, {"word/document.xml": None}),
        "bomb-media-1gib.docx": _rezip(raw, {}, {"word/media/huge.bin": None}),
        "bomb-billion-laughs.docx": _rezip(raw, {"word/document.xml": BILLION_LAUGHS.encode()}),
        "bomb-20k-entries.docx": _rezip(raw, {}, {f"word/junk/{i}.xml": b"<x/>" for i in range(20_000)}),
        "bomb-200k-paragraphs.docx": _rezip(raw, {"word/document.xml": (
            '<?xml version="1.0"?><w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"><w:body>'
            + "<w:p><w:r><w:t>All work and no play makes a dull document.</w:t></w:r></w:p>" * 200_000
            + "</w:body></w:document>").encode()}),
    }
    bombs["bomb-lying-size.docx"] = _lying_sizes(bombs["bomb-200k-paragraphs.docx"], "word/document.xml")
    for fname, data in bombs.items():
        write(fname, "zip_bomb", name, data)

    # Deep nesting.
    depth = 20_000 if quick else 100_000
    write(f"nested-{depth}-divs.html", "nested", "generated", (b"<html><body>" + b"<div>" * depth + b"deep text" + b"</div>" * depth + b"</body></html>"))
    write(f"nested-{depth}-unclosed-b.html", "nested", "generated", b"<html><body>" + b"<b>x " * depth + b"</body></html>")
    write("nested-20k-tables.html", "nested", "generated", b"<html><body>" + b"<table><tr><td>" * 20_000 + b"cell" + b"</td></tr></table>" * 20_000 + b"</body></html>")
    write("nested-1m-paragraphs.html", "nested", "generated", b"<html><body>" + b"<p>short paragraph text</p>" * (200_000 if quick else 1_000_000) + b"</body></html>")
    write(f"nested-{depth}-blockquotes.md", "nested", "generated", b"> " * depth + b"quoted\n")
    write(f"nested-{depth // 10}-lists.md", "nested", "generated", b"".join(b"  " * i + b"- item\n" for i in range(depth // 10)))

    # Huge single lines.
    mb = 2**20
    word_line = b" ".join(rng.choice([b"alpha", b"beta", b"gamma", b"delta"]) for _ in range(mb // 6))
    write("huge-line-50mb-words.txt", "huge_line", "generated", (word_line * (10 if quick else 50))[: (10 if quick else 50) * mb])
    write("huge-line-9mb-words.txt", "huge_line", "generated (just under ingest.max_text_chars)", (word_line * 10)[: 9 * mb])
    write("huge-line-20mb-one-word.md", "huge_line", "generated", b"x" * ((5 if quick else 20) * mb))
    write("huge-line-9mb-one-word.txt", "huge_line", "generated (one word, under ingest.max_text_chars)", b"x" * (9 * mb))
    write("huge-line-8mb-in-p.html", "huge_line", "generated", b"<html><body><p>" + (word_line * 8)[: 8 * mb] + b"</p></body></html>")
    write("huge-line-zalgo.html", "huge_line", "generated", ("<html><body><p>Z" + "\u0301" * 2_000_000 + "</p></body></html>").encode())

    # NUL-filled, one per format, and one over ingest.max_file_mb (sparse on disk).
    for ext in ("pdf", "docx", "html", "txt", "md"):
        write(f"nul-1mb.{ext}", "nul_filled", "generated", b"\0" * mb)
    write("nul-30mb.txt", "nul_filled", "generated", b"\0" * (30 * mb))
    big = out / "nul-120mb-sparse.txt"
    with open(big, "wb") as f:
        f.truncate(120 * mb)
    made.append(Hostile(big.name, "nul_filled", "generated (over ingest.max_file_mb)", 120 * mb))

    # Wrong extensions.
    pdf = bases["pdf"][-1].read_bytes() if bases["pdf"] else b"%PDF-1.4"
    html = bases["html"][0].read_bytes()
    docx_raw = docx_bases[0][1]
    for fname, data, origin in [
        ("pdf-named.html", pdf, "pdf"), ("pdf-named.docx", pdf, "pdf"), ("pdf-named.txt", pdf, "pdf"), ("pdf-named.md", pdf, "pdf"),
        ("docx-named.pdf", docx_raw, "docx"), ("docx-named.html", docx_raw, "docx"), ("docx-named.txt", docx_raw, "docx"),
        ("html-named.pdf", html, "html"), ("html-named.docx", html, "html"), ("gzip-named.txt", _gzip(html), "gzip"),
    ]:
        write(fname, "wrong_extension", origin, data)

    # Garbage.
    for ext in ("pdf", "docx", "html", "txt", "md"):
        write(f"garbage-64kb.{ext}", "garbage", "random bytes", rng.randbytes(64 * 1024))
    write("garbage-pdf-header.pdf", "garbage", "random bytes after %PDF-", b"%PDF-1.7\n" + rng.randbytes(256 * 1024))
    write("garbage-zip-header.docx", "garbage", "random bytes after PK", b"PK\x03\x04" + rng.randbytes(256 * 1024))
    write("invalid-utf8.txt", "garbage", "generated", b"valid start " + bytes(rng.randrange(0x80, 0x100) for _ in range(100_000)))
    write("utf16-no-bom.txt", "garbage", "generated", ("UTF-16 text without a byte order mark. " * 2000).encode("utf-16-le"))
    return made


def _gzip(data: bytes) -> bytes:
    import gzip

    return gzip.compress(data)
