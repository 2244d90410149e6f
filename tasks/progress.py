"""Progress bars on stderr for long work (parsing, embedding), silent when not wanted.

Bars are shown only when enabled and stderr is a terminal, so `--json` output, CI logs and
Prefect workers stay clean.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Callable, Iterator

Advance = Callable[[int], None]


def _enabled() -> bool:
    return os.environ.get("RAGTUNE_PROGRESS", "1") not in {"0", "false", "False"} and sys.stderr.isatty()


@contextmanager
def progress_bar(description: str, total: int, unit: str = "items") -> Iterator[Advance]:
    """Yield `advance(n)`; shows a rich bar with a rate in `unit`/s when stderr is a terminal."""
    if total <= 0 or not _enabled():
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task: object) -> Text:
            speed = getattr(task, "speed", None)
            return Text(f"{speed:6.1f} {unit}/s" if speed else f"     - {unit}/s")

    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), Rate(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=False) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)
