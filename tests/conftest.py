"""Shared test set-up: a private Prefect home, no analytics, no progress bars, fast fixtures."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Before anything imports Prefect (it reads settings at import): a per-session home keeps test runs
# from sharing a SQLite database ("database is locked") or touching the user's.
_PREFECT_HOME = tempfile.mkdtemp(prefix="ragtune-prefect-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "120"
os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
os.environ["RAGTUNE_PROGRESS"] = "0"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Settings a developer's shell may hold are cleared; the CI switches that make a missing tier fail are not.
_KEEP = {"RAGTUNE_PROGRESS", "RAGTUNE_REQUIRE_SERVER_TIER", "RAGTUNE_REQUIRE_AZURITE"}
for key in [k for k in os.environ if k.startswith("RAGTUNE_") and k not in _KEEP]:
    del os.environ[key]

REPO = Path(__file__).resolve().parents[1]
DEMO_CORPUS = REPO / "demo" / "corpus"


@pytest.fixture(scope="session")
def tokenizer():
    """The packaged MiniLM tokenizer (no model weights): real word-piece counts for chunking."""
    from tasks.chunk import HFTokenizer
    from tasks.config import PACKAGED_EMBEDDER
    from tasks.models import load_tokenizer

    return HFTokenizer(load_tokenizer(PACKAGED_EMBEDDER))


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A fresh RAGTUNE_HOME with the deterministic hashing embedder."""
    h = tmp_path / "home"
    monkeypatch.setenv("RAGTUNE_HOME", str(h))
    monkeypatch.setenv("RAGTUNE_EMBEDDER__MODEL", "hashing:32")
    monkeypatch.chdir(tmp_path)
    return h


@pytest.fixture(scope="session")
def prefect_engine():
    """One real Prefect engine (temporary server + database) shared by every test that runs a flow."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    """A randomly initialised 2-layer llama (hidden 64) saved with the packaged SmolLM2 tokenizer and chat
    template (read from its GGUF): real tokenisation, millisecond forward passes, for plumbing tests."""
    from tests.fixtures.tiny_llama import NoPackagedTokenizer, build_tiny_llama

    try:
        return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))
    except NoPackagedTokenizer as e:
        pytest.skip(str(e))


@pytest.fixture
def no_faults(monkeypatch):
    """Fault injection off (tasks/faults.py) and its counters at zero, before and after the test."""
    from tasks import faults

    for name in (faults.RATE_ENV, faults.SEED_ENV, faults.TASKS_ENV):
        monkeypatch.delenv(name, raising=False)
    faults.reset()
    yield
    faults.reset()
