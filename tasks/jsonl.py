"""Reading JSONL input files, one place: every reader names the file and line of a bad row."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator


class JsonlError(ValueError):
    """A JSONL line is not a JSON object; the message names the file and line."""


def jsonl_rows(path: Path) -> Iterator[tuple[str, dict[str, Any] | None, str | None]]:
    """(origin `file:line`, the object or None, the error or None) per non-blank line; never raises on a bad line."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise JsonlError(f"cannot read {path}: {e}") from e
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        origin = f"{path}:{n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            yield origin, None, f"invalid_json: {e.msg}"
            continue
        if not isinstance(row, dict):
            yield origin, None, "invalid_json: not an object"
            continue
        yield origin, row, None


def read_objects(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """Every object with its origin; the first bad line raises `JsonlError` naming it."""
    out = []
    for origin, row, error in jsonl_rows(path):
        if row is None:
            raise JsonlError(f"{origin} is not a JSON object ({error})")
        out.append((origin, row))
    return out
