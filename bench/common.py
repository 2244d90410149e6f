"""What every benchmark shares: a private ragtune home, a quiet Prefect engine, and where results go."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "bench" / "data"
RESULTS = REPO / "bench" / "results"


def bench_home(home: Path, threads: int | str = 2) -> Path:
    """Point ragtune and Prefect at `home` (before Prefect is imported); no progress bars."""
    os.environ["RAGTUNE_HOME"] = str(home)
    os.environ.setdefault("RAGTUNE_TORCH_THREADS", str(threads))
    os.environ["RAGTUNE_PROGRESS"] = "0"
    os.environ.setdefault("PREFECT_HOME", str(home / "prefect"))
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    return home


def commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout.strip() or None
    except OSError:
        return None


def write_results(name: str, result: dict[str, Any], markdown: str, folder: Path = RESULTS) -> Path:
    """`<folder>/<name>-latest.json` and `.md`; returns the JSON path."""
    folder.mkdir(parents=True, exist_ok=True)
    result.setdefault("commit", commit())
    path = folder / f"{name}-latest.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    (folder / f"{name}-latest.md").write_text(markdown)
    return path
