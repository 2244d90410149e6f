"""The benchmark corpus: Debian documentation packages, fetched with apt and subset deterministically.

Nothing here is committed: `.deb` files and their extracted trees live under `bench/data/` (gitignored).
The subset is a pure function of the package contents and the file budget, so two runs with the
same package versions and `--max-files` ingest exactly the same files.
"""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

# Package -> (directory of its documents inside the package, suffix) for each kind of file we take.
HTML_SOURCES = {
    "python3.11-doc": "usr/share/doc/python3.11/html",
    "git-doc": "usr/share/doc/git-doc",
    "gnuplot-doc": "usr/share/doc/gnuplot/htmldocs",
}
TEXT_SOURCE = ("git-doc", "usr/share/doc/git-doc")  # asciidoc sources without an HTML twin
PDF_SOURCE = ("debian-reference-en", "usr/share/debian-reference/debian-reference.en.pdf")  # 261 pages
PACKAGES = tuple(dict.fromkeys([*HTML_SOURCES, TEXT_SOURCE[0], PDF_SOURCE[0]]))

# Pages above this size are mostly long API references (a single python3.11-doc page reaches 2.5 MB,
# ~600 chunks); leaving them out keeps a few hundred pages within a few minutes of CPU embedding.
MAX_HTML_BYTES = 48 * 1024

# Appended to one page for the incremental run: plain prose, so it lands in that page's last section.
EDIT_PARAGRAPH = (
    "<p>Benchmark edit: this paragraph was appended by bench/run.py to measure an incremental "
    "ingest. Only the section it lands in should be chunked and embedded again; every other chunk "
    "of this page and of the rest of the corpus keeps its stored vector.</p>\n"
)


@dataclass
class Corpus:
    """The selected files, copied under `root` as `<package>/<path inside the package's doc dir>`."""

    root: Path
    packages: dict[str, str]  # package -> .deb file name (carries the version)
    files: list[Path] = field(default_factory=list)

    def describe(self) -> dict:
        formats = Counter(p.suffix.lstrip(".") for p in self.files)
        by_package = Counter(p.relative_to(self.root).parts[0] for p in self.files)
        return {
            "source_dir": str(self.root),
            "packages": self.packages,
            "files": len(self.files),
            "files_by_format": dict(sorted(formats.items())),
            "files_by_package": dict(sorted(by_package.items())),
            "bytes": sum(p.stat().st_size for p in self.files),
            "max_html_bytes": MAX_HTML_BYTES,
        }


def fetch_packages(data_dir: Path) -> dict[str, Path]:
    """Download (once) and extract each package with `apt-get download` + `dpkg -x`; returns the trees."""
    debs, trees = data_dir / "debs", data_dir / "packages"
    debs.mkdir(parents=True, exist_ok=True)
    trees.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    for package in PACKAGES:
        if not list(debs.glob(f"{package}_*.deb")):
            _apt_download(package, debs)
        tree = trees / package
        if not tree.is_dir():
            (deb,) = debs.glob(f"{package}_*.deb")
            tmp = tree.with_name(tree.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            subprocess.run(["dpkg", "-x", str(deb), str(tmp)], check=True)
            tmp.rename(tree)
        out[package] = tree
    return out


def _apt_download(package: str, dest: Path) -> None:
    """`apt-get download`, running `apt-get update` once first if the package lists are empty."""
    for attempt in (1, 2):
        done = subprocess.run(["apt-get", "download", package], cwd=dest, capture_output=True, text=True)
        if done.returncode == 0:
            return
        if attempt == 1:
            subprocess.run(["apt-get", "update"], check=True, capture_output=True)
    raise RuntimeError(f"apt-get download {package} failed: {done.stderr.strip()}")


def _spread(items: list[Path], n: int) -> list[Path]:
    """`n` items evenly spaced over the sorted list (all of them when there are fewer)."""
    if n >= len(items):
        return items
    return [items[i * len(items) // n] for i in range(n)]


def _documents(base: Path, suffix: str) -> list[Path]:
    return sorted(p for p in base.rglob(f"*{suffix}") if p.is_file() and not p.is_symlink())


def select(trees: dict[str, Path], max_files: int, with_pdf: bool) -> list[tuple[str, Path, Path]]:
    """(package, package doc dir, file) for the subset: the PDF, a tenth plain text, the rest HTML.

    HTML pages (at most MAX_HTML_BYTES each) are shared evenly between the HTML packages and spread
    evenly over each package's sorted page list, so every part of each manual is represented.
    """
    picked: list[tuple[str, Path, Path]] = []
    budget = max_files
    if with_pdf:
        package, rel = PDF_SOURCE
        pdf = trees[package] / rel
        picked.append((package, pdf.parent, pdf))
        budget -= 1
    package, rel = TEXT_SOURCE
    base = trees[package] / rel
    texts = [p for p in _documents(base, ".txt") if not p.with_suffix(".html").exists()]
    n_text = budget // 10
    picked += [(package, base, p) for p in _spread(texts, n_text)]
    budget -= n_text
    for i, (package, rel) in enumerate(HTML_SOURCES.items()):
        base = trees[package] / rel
        pages = [p for p in _documents(base, ".html") if p.stat().st_size <= MAX_HTML_BYTES]
        share = budget // len(HTML_SOURCES) + (1 if i < budget % len(HTML_SOURCES) else 0)
        picked += [(package, base, p) for p in _spread(pages, share)]
    return picked


def build(data_dir: Path, max_files: int, with_pdf: bool) -> Corpus:
    """Fetch the packages and copy a fresh copy of the subset to `data_dir/source-<n>[-nopdf]`.

    The copy is recreated on every run: the incremental step edits one file in it.
    """
    trees = fetch_packages(data_dir)
    root = data_dir / f"source-{max_files}{'' if with_pdf else '-nopdf'}"
    shutil.rmtree(root, ignore_errors=True)
    corpus = Corpus(root, {p: next((data_dir / "debs").glob(f"{p}_*.deb")).name for p in PACKAGES})
    for package, base, path in select(trees, max_files, with_pdf):
        target = root / package / path.relative_to(base)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        corpus.files.append(target)
    corpus.files.sort()
    return corpus


def edit_one_page(corpus: Corpus) -> Path:
    """Append EDIT_PARAGRAPH inside <body> of the first git-doc HTML page (asciidoc output: plain body)."""
    page = next(p for p in corpus.files if p.suffix == ".html" and p.relative_to(corpus.root).parts[0] == "git-doc")
    html = page.read_text(encoding="utf-8")
    end = html.lower().rfind("</body>")
    page.write_text(html[:end] + EDIT_PARAGRAPH + html[end:] if end >= 0 else html + EDIT_PARAGRAPH, encoding="utf-8")
    return page
