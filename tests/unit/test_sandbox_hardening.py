"""The sandbox keeps secrets from parsers, bounds the text a document may yield, and names our own bugs honestly."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import psutil
import pytest

from tasks import parse
from tasks.parse import QuarantineError, parse_document
from tasks.sandbox import ParseLimits, parse_many, sandbox_env

# Misbehaves by file-name prefix; ``limits*`` reports the worker's pid. See tests/fixtures/sandbox_helpers.py.
HOSTILE = "tests.fixtures.sandbox_helpers:misbehaving_parse"
FAST = ParseLimits(timeout_s=10.0, memory_mb=512)
SECRETS = {
    "RAGTUNE_INGEST__PDF_PASSWORD": "hunter2-pdf",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-value",
    "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
    "AWS_SESSION_TOKEN": "aws-session-token",
    "GOOGLE_APPLICATION_CREDENTIALS": "/secrets/gcp.json",
    "AZURE_STORAGE_KEY": "azure-key",
    "HF_TOKEN": "hf-token",
}


@pytest.fixture
def no_leftover_workers():
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    yield
    left = {p.pid for p in psutil.Process().children(recursive=True)} - before
    assert not left, f"worker processes left behind: {left}"


def test_sandbox_env_keeps_only_what_parsing_needs():
    parent = {**SECRETS, "PATH": "/usr/bin", "HOME": "/home/u", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
              "TMPDIR": "/tmp/x", "OMP_NUM_THREADS": "1", "RAGTUNE_HOME": "/data", "PREFECT_API_URL": "http://x"}
    env = sandbox_env(parent)
    assert env == {"PATH": "/usr/bin", "HOME": "/home/u", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
                   "TMPDIR": "/tmp/x", "OMP_NUM_THREADS": "1"}


def test_a_real_worker_starts_without_the_parents_secrets(tmp_path, monkeypatch, no_leftover_workers):
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    path = tmp_path / "limits.txt"
    path.write_text("limits\n\nSome text.")
    batch = parse_many([path], FAST, parse_fn=HOSTILE)
    try:
        outcome = next(batch)  # the worker stays alive (idle) until the batch is closed
        pid = int(outcome.document.sections[0].text)
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    finally:
        batch.close()
    child = dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)
    assert not set(SECRETS) & set(child), f"secrets reached the parse worker: {sorted(set(SECRETS) & set(child))}"
    assert not any(value in raw.decode() for value in SECRETS.values())
    assert child.get("PATH") == os.environ["PATH"]


def test_the_pdf_password_still_reaches_the_parser_over_the_pipe(no_leftover_workers):
    fixture = Path(__file__).resolve().parent.parent / "fixtures" / "pdf" / "r4-aes-user-password.pdf"
    (outcome,) = parse_many([fixture], ParseLimits(timeout_s=10.0, memory_mb=512, pdf_password="asdfzxcv"))
    assert outcome.document is not None


def test_a_document_with_too_much_text_is_quarantined_and_the_batch_goes_on(tmp_path, no_leftover_workers):
    big, small = tmp_path / "dump.txt", tmp_path / "note.txt"
    big.write_text("word " * 2_000)  # 10,000 characters in one paragraph
    small.write_text("A short note.")
    outcomes = list(parse_many([big, small], ParseLimits(timeout_s=10.0, memory_mb=512, max_chars=5_000)))
    assert [(o.path.name, o.reason) for o in outcomes] == [("dump.txt", "too_much_text"), ("note.txt", None)]
    assert "9,999 characters" in outcomes[0].detail and "5,000" in outcomes[0].detail


def test_an_exception_from_a_parse_function_is_a_parser_error_not_a_crash(tmp_path, no_leftover_workers):
    path = tmp_path / "raise.txt"
    path.write_text("text")
    (outcome,) = parse_many([path], FAST, parse_fn=HOSTILE)
    assert outcome.reason == "parser_error"
    assert "KeyError" in outcome.detail and "boom" in outcome.detail and "corrupt" not in outcome.detail


def test_a_bug_in_our_parser_code_is_not_blamed_on_the_file(tmp_path, monkeypatch):
    # Simulate a bug in tasks/parse.py itself: its own helper fails on a perfectly good file.
    monkeypatch.setattr(parse, "_HSPACE", None)
    path = tmp_path / "fine.txt"
    path.write_text("A perfectly good file.\n")
    with pytest.raises(QuarantineError) as caught:
        parse_document(path)
    err = caught.value
    assert err.reason == "parser_error"
    assert "AttributeError" in err.detail and "parse.py:" in err.detail
    assert "corrupt" not in err.detail and "bug in ragtune" in err.detail


def test_a_library_choking_on_the_file_is_still_unreadable(tmp_path):
    # A ZIP with a document part but no package relationships: python-docx raises inside its own code.
    path = tmp_path / "broken.docx"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("[Content_Types].xml", '<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"/>')
        archive.writestr("word/document.xml", "<w:document><unclosed>")
    with pytest.raises(QuarantineError) as caught:
        parse_document(path)
    assert caught.value.reason == "unreadable" and "probably corrupt" in caught.value.detail
