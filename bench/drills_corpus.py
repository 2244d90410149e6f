"""Two versions of a real corpus for the drills: v1, then v2 = v1 with files edited, added, deleted, renamed
and one turned corrupt, so that "the old state or the new one" means something.

The documents are the Debian subset of `bench/corpus.py` (HTML, text, the 261-page PDF) plus the demo
corpus (PDF, DOCX, Markdown, HTML, text, one broken PDF). Every change is drawn from a seeded RNG. Both
versions are kept as separate trees and copied into one source directory with their modification times
(`shutil.copy2`), because chunk ids and the ledger depend on the source path and on size + mtime.
"""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import DATA, REPO
from bench.corpus import HTML_SOURCES, MAX_HTML_BYTES, _documents, fetch_packages, select

DEMO = REPO / "demo" / "corpus"

EDIT = (
    "<p>Drill edit {n}: this paragraph was added between the two versions of the corpus, so the "
    "chunks of this page change and must be replaced in one commit, never duplicated.</p>\n"
)


@dataclass
class Versions:
    v1: Path
    v2: Path
    changes: dict[str, list[str]] = field(default_factory=dict)  # kind -> doc ids

    def describe(self) -> dict:
        files = [p for p in self.v1.rglob("*") if p.is_file()]
        return {
            "v1_files": len(files),
            "v1_bytes": sum(p.stat().st_size for p in files),
            "v1_by_format": _by_suffix(files),
            "v2_files": sum(1 for p in self.v2.rglob("*") if p.is_file()),
            "changes": {k: len(v) for k, v in self.changes.items()},
        }


def _by_suffix(files: list[Path]) -> dict[str, int]:
    out: dict[str, int] = {}
    for p in files:
        out[p.suffix.lstrip(".") or "(none)"] = out.get(p.suffix.lstrip(".") or "(none)", 0) + 1
    return dict(sorted(out.items()))


def build_versions(work: Path, max_files: int, seed: int) -> Versions:
    """v1: `max_files` Debian documents + the demo corpus; v2: ~8 % edited, ~4 % added, ~4 % deleted,
    one renamed, one PDF truncated to garbage (it is quarantined and keeps its last good chunks)."""
    rng = random.Random(seed)
    trees = fetch_packages(DATA)
    v1, v2 = work / "corpus-v1", work / "corpus-v2"
    for d in (v1, v2):
        shutil.rmtree(d, ignore_errors=True)
    picked = select(trees, max_files, with_pdf=True)
    for package, base, path in picked:
        target = v1 / package / path.relative_to(base)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    shutil.copytree(DEMO, v1 / "demo", copy_function=shutil.copy2)
    shutil.copytree(v1, v2, copy_function=shutil.copy2)

    chosen = {path for _, _, path in picked}
    spare = [
        (package, trees[package] / rel, p)
        for package, rel in HTML_SOURCES.items()
        for p in _documents(trees[package] / rel, ".html")
        if p.stat().st_size <= MAX_HTML_BYTES and p not in chosen
    ]
    files = sorted(p for p in v2.rglob("*") if p.is_file())
    editable = [p for p in files if p.suffix in (".html", ".txt", ".md")]
    n = max(2, len(files) * 8 // 100)
    edited = rng.sample(editable, n)
    rest = [p for p in files if p not in edited]
    deleted = rng.sample([p for p in rest if p.suffix != ".pdf"], max(1, len(files) * 4 // 100))
    rest = [p for p in rest if p not in deleted]
    renamed = rng.choice([p for p in rest if p.suffix in (".html", ".md")])
    # A good demo PDF (not the deliberately broken 300-byte one), so it has chunks to keep.
    corrupted = next(p for p in rest if p.suffix == ".pdf" and "demo" in p.parts and p.stat().st_size > 5000)
    changes: dict[str, list[str]] = {"edited": [], "added": [], "deleted": [], "renamed": [], "corrupted": []}

    for i, p in enumerate(edited):
        _edit(p, i, rng)
        changes["edited"].append(str(p.relative_to(v2)))
    for p in deleted:
        p.unlink()
        changes["deleted"].append(str(p.relative_to(v2)))
    target = renamed.with_name("renamed-" + renamed.name)
    renamed.rename(target)
    changes["renamed"].append(f"{renamed.relative_to(v2)} -> {target.relative_to(v2)}")
    raw = corrupted.read_bytes()
    corrupted.write_bytes(raw[: len(raw) // 3] + bytes(rng.getrandbits(8) for _ in range(512)))
    changes["corrupted"].append(str(corrupted.relative_to(v2)))
    for package, base, path in rng.sample(spare, min(len(spare), max(1, len(files) * 4 // 100))):
        target = v2 / package / path.relative_to(base)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
        changes["added"].append(str(target.relative_to(v2)))
    return Versions(v1, v2, changes)


def _edit(path: Path, n: int, rng: random.Random) -> None:
    """Change one document's text: a paragraph added in the middle and one word replaced."""
    text = path.read_text(encoding="utf-8", errors="surrogateescape")
    if path.suffix == ".html":
        end = text.lower().rfind("</body>")
        at = text.lower().find("<p", len(text) // 2)
        at = at if 0 <= at < end else end if end >= 0 else len(text)
        text = text[:at] + EDIT.format(n=n) + text[at:]
    else:
        lines = text.split("\n")
        at = rng.randrange(len(lines) + 1)
        lines.insert(at, f"\nDrill edit {n}: a paragraph added between the two corpus versions.\n")
        text = "\n".join(lines)
    words = [w for w in set(text.split()) if w.isalpha() and len(w) > 6]
    if words:
        word = rng.choice(sorted(words))
        text = text.replace(word, word.upper(), 1)
    path.write_text(text, encoding="utf-8", errors="surrogateescape")


def materialise(version: Path, source: Path) -> Path:
    """Make `source` an exact copy of `version` (contents and modification times)."""
    shutil.rmtree(source, ignore_errors=True)
    shutil.copytree(version, source, copy_function=shutil.copy2)
    return source


def copy_home(reference: Path, target: Path) -> Path:
    """A ragtune home in the reference's state (tables, runs, Prefect database), under a new path."""
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(reference, target, symlinks=True)
    return target
