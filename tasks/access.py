"""Who may read a document: its access groups, decided by the document itself.

A document's groups come from its *real* path (symlinks resolved), matched against
`ingest.access_groups` globs anchored at `ingest.access_root`, never at whatever folder was passed to
`ragtune ingest`. So `ingest share/`, `ingest share/hr` and `ingest /` give an HR file the same
groups, and `public/x.pdf -> ../hr/x.pdf` keeps the target's restriction. A document reachable under
two names (the link and its target) takes the most restrictive groups of the two; when the names'
groups have no reader in common the document is refused (quarantined), not guessed.

Groups are an allow-list: a caller reads a chunk when it shares one of its groups, or when the chunk
is public (`PUBLIC_GROUP`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Mapping, Sequence

from data_contracts.schemas import PUBLIC_GROUP
from tasks.sources import matches_any

POLICY_VERSION = "v3"  # part of the ingest pipeline fingerprint: a change re-derives every document's groups


class AccessError(ValueError):
    """The access settings cannot be applied safely; the message says what to set."""


class AccessConflict(Exception):
    """A document's names carry groups with no reader in common."""


def most_restrictive(a: Sequence[str], b: Sequence[str]) -> list[str]:
    """The readers allowed under both `a` and `b`: public yields to the other; else the common groups."""
    if PUBLIC_GROUP in a:
        return sorted(set(b))
    if PUBLIC_GROUP in b:
        return sorted(set(a))
    common = sorted(set(a) & set(b))
    if not common:
        raise AccessConflict(f"groups {sorted(a)} and {sorted(b)} share no reader")
    return common


@dataclass(frozen=True)
class AccessPolicy:
    """`rules`: glob -> groups; relative globs are anchored at `root` (resolved)."""

    rules: Mapping[str, Sequence[str]]
    root: Path | None = None

    @classmethod
    def from_settings(cls, rules: Mapping[str, Sequence[str]], root: Path | None) -> "AccessPolicy":
        relative = [p for p in rules if not p.startswith("/")]
        if relative and root is None:
            raise AccessError(
                f"ingest.access_groups has relative globs ({', '.join(sorted(relative))}) but no ingest.access_root: "
                "set access_root to the folder they are relative to (e.g. the share's top folder), "
                "so a document's groups do not depend on the folder passed to `ingest`"
            )
        if root is not None:
            root = Path(root).expanduser().resolve()
            if not root.is_dir():
                raise AccessError(f"ingest.access_root {root} is not a directory: check the path")
        return cls(dict(rules), root)

    def fingerprint(self) -> str:
        return f"{POLICY_VERSION}:{self.root}:{sorted((k, sorted(v)) for k, v in self.rules.items())}"

    def _groups_of_name(self, path: Path) -> list[str]:
        absolute = PurePosixPath(path.as_posix())
        names = [str(absolute)]
        if self.root is not None and absolute.is_relative_to(self.root.as_posix()):
            names.append(absolute.relative_to(self.root.as_posix()).as_posix())
        groups: set[str] = set()
        for pattern, allowed in self.rules.items():
            candidates = names[:1] if pattern.startswith("/") else names[1:]
            if any(matches_any(n, [pattern]) for n in candidates):
                groups.update(allowed)
        return sorted(groups) or [PUBLIC_GROUP]

    def groups_for(self, path: Path) -> list[str]:
        """Groups of the document at `path` (absolute, as reached): the most restrictive of the name it
        was reached by and its real path. Raises `AccessConflict` when those share no reader."""
        path = Path(path).absolute()
        real = path.resolve()
        groups = self._groups_of_name(real)
        if real != path:
            try:
                groups = most_restrictive(groups, self._groups_of_name(path))
            except AccessConflict as e:
                raise AccessConflict(f"reachable as {path} and as {real}: {e}; fix ingest.access_groups") from None
        return groups
