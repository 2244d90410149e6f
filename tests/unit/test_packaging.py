"""A non-editable install (`pip install .`) carries every file the code reads at run time."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_wheel_holds_the_package_data(tmp_path):
    # Every non-Python file inside the packages the wheel ships (tasks/canary.jsonl, ...).
    wanted = {
        p.relative_to(REPO).as_posix()
        for package in ("tasks", "flows", "data_contracts")
        for p in (REPO / package).rglob("*")
        if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts
    }
    assert "tasks/canary.jsonl" in wanted
    # Built from a copy: setuptools leaves build/ and *.egg-info next to the sources it builds.
    src = tmp_path / "src"
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for package in ("tasks", "flows", "data_contracts"):
        shutil.copytree(REPO / package, src / package, ignore=skip)
    for name in ("pyproject.toml", "README.md", "ragtune_cli.py"):
        shutil.copy2(REPO / name, src / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"), str(src)],
        check=True, capture_output=True, timeout=300,
    )
    (wheel,) = (tmp_path / "dist").glob("ragtune-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert wanted <= names, f"missing from the wheel: {sorted(wanted - names)}"
    assert "ragtune_cli.py" in names and "tasks/access.py" in names
