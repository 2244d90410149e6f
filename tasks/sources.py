"""Find the files under a source root and decide, cheaply, which need work.

Cheap checks first: a file whose size and mtime match the ledger (and was processed with the same
pipeline fingerprint) is not even read. Only when they differ is the content hashed; an unchanged
hash means the file was merely touched, and it is still not parsed.

A quarantined file is parsed again only when it changed, or when its quarantine was transient (a
timeout, the memory cap, a dead worker: a busy host can cause those) and it has failed fewer than
`MAX_ATTEMPTS` times in a row; permanent reasons (encrypted, no_text, ...) would only fail again.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence


# Quarantine reasons the next run retries: they can come from the host (load, memory), not the file.
TRANSIENT_REASONS = frozenset({"timeout", "memory_limit", "crashed"})
MAX_ATTEMPTS = 3  # parses of unchanged content before a transient quarantine is kept


class SourceError(Exception):
    """The source root itself cannot be read: a real failure, not a quarantine."""


@dataclass(frozen=True)
class SourceFile:
    doc_id: str  # path relative to the root, forward slashes
    path: Path
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class Skipped:
    doc_id: str
    reason: str
    detail: str


def matches_any(rel: str, patterns: Sequence[str]) -> bool:
    # fnmatch's `*` crosses "/", so "*.md" matches at any depth; "**/x" also matches "x" at the top.
    return any(
        fnmatch.fnmatchcase(rel, p) or (p.startswith("**/") and fnmatch.fnmatchcase(rel, p[3:])) for p in patterns
    )


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def discover(root: Path, include: Sequence[str], exclude: Sequence[str]) -> tuple[list[SourceFile], list[Skipped]]:
    """Files under `root` selected by the globs, sorted by doc_id, plus what was skipped and why.

    Symlinks are followed only when they resolve inside the root; directories are walked without
    following links, so a link cannot make the walk loop or leave the root.
    """
    root = root.resolve()
    if not root.is_dir():
        raise SourceError(f"source {root} is not a readable directory: check the path")
    if not os.access(root, os.R_OK | os.X_OK):
        raise SourceError(f"source {root} is not readable: check its permissions")
    files: list[SourceFile] = []
    skipped: list[Skipped] = []

    def on_error(e: OSError) -> None:
        rel = Path(e.filename).relative_to(root).as_posix() if e.filename else "?"
        skipped.append(Skipped(rel, "unreadable", f"cannot list directory: {e.strerror}"))

    for dirpath, dirnames, filenames in os.walk(root, onerror=on_error):
        base = Path(dirpath)
        for d in list(dirnames):
            p = base / d
            if p.is_symlink():
                dirnames.remove(d)
                rel = p.relative_to(root).as_posix()
                if not _inside(p.resolve(), root) and matches_any(rel + "/x", include):
                    skipped.append(Skipped(rel, "symlink_outside_root", f"links to {p.resolve()}, outside the source"))
        dirnames.sort()
        for name in sorted(filenames):
            p = base / name
            rel = p.relative_to(root).as_posix()
            if not matches_any(rel, include) or matches_any(rel, exclude):
                continue
            if p.is_symlink():
                target = p.resolve()
                if not _inside(target, root):
                    skipped.append(Skipped(rel, "symlink_outside_root", f"links to {target}, outside the source"))
                    continue
            try:
                st = p.stat()
            except OSError as e:
                skipped.append(Skipped(rel, "unreadable", f"cannot stat: {e.strerror}"))
                continue
            if not p.is_file():
                continue
            files.append(SourceFile(rel, p, st.st_size, st.st_mtime_ns))
    return sorted(files, key=lambda f: f.doc_id), skipped


def content_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class Plan:
    """What a run must do for each file."""

    to_parse: list[tuple[SourceFile, str]] = field(default_factory=list)  # (file, content hash)
    touched: list[tuple[SourceFile, str]] = field(default_factory=list)  # content unchanged, mtime moved
    unchanged: list[SourceFile] = field(default_factory=list)
    still_quarantined: list[SourceFile] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)  # doc_ids
    unreadable: list[Skipped] = field(default_factory=list)


def failed_attempts(prev: dict[str, Any] | None, content_hash: str, pipeline: str) -> int:
    """Transient failures in a row the ledger row `prev` records for this content and pipeline.

    Rows written before the ledger had an ``attempts`` column count as one.
    """
    if not prev or prev["status"] != "quarantined" or prev.get("reason") not in TRANSIENT_REASONS:
        return 0
    if prev["content_hash"] != content_hash or prev["pipeline"] != pipeline:
        return 0
    return int(prev.get("attempts") or 1)


def retry_due(prev: dict[str, Any]) -> bool:
    """Whether an unchanged quarantined file is parsed again: a transient reason, attempts left."""
    return 0 < failed_attempts(prev, prev["content_hash"], prev["pipeline"]) < MAX_ATTEMPTS


def transient_attempts(reason: str | None, prev: dict[str, Any] | None, content_hash: str, pipeline: str) -> int | None:
    """Which transient failure in a row this parse is (1 for the first); None for any other outcome."""
    if reason not in TRANSIENT_REASONS:
        return None
    return failed_attempts(prev, content_hash, pipeline) + 1


def attempts_note(attempts: int) -> str:
    """What a transient quarantine's detail says about retries, in the ledger and the run report."""
    if attempts < MAX_ATTEMPTS:
        return f" (attempt {attempts} of {MAX_ATTEMPTS}: retried on the next run)"
    return (
        f" (failed {attempts} times in a row: no longer retried until the file, the limits or the pipeline "
        "change, or with ingest --force)"
    )


def plan(files: Sequence[SourceFile], ledger: dict[str, dict[str, Any]], pipeline: str, force: bool = False) -> Plan:
    """Compare the files on disk with the ledger of the previous runs."""
    out = Plan()
    on_disk = {f.doc_id for f in files}
    out.deleted = sorted(d for d in ledger if d not in on_disk)
    for f in files:
        prev = ledger.get(f.doc_id)
        same_pipeline = prev is not None and prev["pipeline"] == pipeline and not force
        if same_pipeline and prev["byte_size"] == f.size and prev["mtime_ns"] == f.mtime_ns:
            if retry_due(prev):
                out.to_parse.append((f, prev["content_hash"]))  # unchanged on disk: the hash still holds
            else:
                (out.still_quarantined if prev["status"] == "quarantined" else out.unchanged).append(f)
            continue
        try:
            digest = content_hash(f.path)
        except OSError as e:
            out.unreadable.append(Skipped(f.doc_id, "unreadable", f"cannot read: {e.strerror}"))
            continue
        if same_pipeline and prev["content_hash"] == digest and not retry_due(prev):
            # Only the ledger's mtime moves; a quarantined file stays quarantined without a re-parse.
            out.touched.append((f, digest))
        else:
            out.to_parse.append((f, digest))
    return out
