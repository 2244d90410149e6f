"""Tests for tasks.sandbox: real worker processes, real files, deliberately hostile parsers."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import docx
import psutil
import pytest

from tasks.sandbox import ParseLimits, ParseOutcome, WorkerStartError, parse_many

PDF_FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "pdf"
# Misbehaves by file-name prefix (hang*, hog*, segv*, ...); see tests/fixtures/sandbox_helpers.py.
HOSTILE = "tests.fixtures.sandbox_helpers:misbehaving_parse"
FAST = ParseLimits(timeout_s=10.0, memory_mb=512)


def _children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


@pytest.fixture
def no_leftover_workers():
    """Fail the test if it leaves worker processes (running or zombie) behind."""
    before = _children()
    yield
    left = _children() - before
    assert not left, f"worker processes left behind: {left}"


def _files(tmp_path: Path, names: list[str], text: str = "Some text.") -> list[Path]:
    paths = []
    for name in names:
        path = tmp_path / name
        path.write_text(f"{name}\n\n{text}")
        paths.append(path)
    return paths


def _summary(outcomes: list[ParseOutcome]) -> list[tuple[str, str | None]]:
    return [(o.path.name, o.reason) for o in outcomes]


def test_batch_of_good_and_bad_files(tmp_path, no_leftover_workers):
    good_md = tmp_path / "guide.md"
    good_md.write_text("# Guide\n\nHello.\n")
    good_html = tmp_path / "page.html"
    good_html.write_text("<html><body><nav>menu</nav><main><h1>Page</h1><p>Body.</p></main></body></html>")
    good_docx = tmp_path / "memo.docx"
    document = docx.Document()
    document.add_heading("Memo", level=1)
    document.add_paragraph("Read me.")
    document.save(good_docx)
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    binary = tmp_path / "program.txt"
    binary.write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(100))
    unsupported = tmp_path / "sheet.xlsx"
    unsupported.write_bytes(b"PK\x03\x04")
    invalid = tmp_path / "invalid.pdf"
    shutil.copy(PDF_FIXTURES / "invalid.pdf", invalid)
    paths = [good_md, invalid, good_html, PDF_FIXTURES / "encrypted-file.pdf", empty, good_docx, binary,
             unsupported, PDF_FIXTURES / "cardinal.pdf"]

    outcomes = list(parse_many(paths, FAST, workers=2))

    assert [o.path for o in outcomes] == paths  # one outcome per input, in input order
    assert all(o.path is p for o, p in zip(outcomes, paths))  # the caller's objects, usable as keys
    assert _summary(outcomes) == [
        ("guide.md", None),
        ("invalid.pdf", "unreadable"),
        ("page.html", None),
        ("encrypted-file.pdf", "encrypted"),
        ("empty.txt", "empty"),
        ("memo.docx", None),
        ("program.txt", "binary"),
        ("sheet.xlsx", "unsupported_format"),
        ("cardinal.pdf", "no_text"),
    ]
    for outcome in outcomes:
        assert outcome.seconds >= 0
        if outcome.reason is None:
            assert outcome.document is not None and outcome.detail is None
        else:
            assert outcome.document is None and outcome.detail
    assert outcomes[0].document.sections[0].heading_path == ("Guide",)
    assert outcomes[2].document.sections[0].text == "Body."
    assert outcomes[5].document.sections[0].text == "Read me."


def test_limits_reach_the_worker(tmp_path, no_leftover_workers):
    big = tmp_path / "big.txt"
    big.write_text("x" * 50_000)
    limits = ParseLimits(timeout_s=10.0, memory_mb=512, max_bytes=20_000, pdf_password="asdfzxcv")
    outcomes = list(parse_many([big, PDF_FIXTURES / "r4-aes-user-password.pdf"], limits))
    assert outcomes[0].reason == "too_large"
    assert outcomes[1].document is not None
    assert "pdf encryption test" in outcomes[1].document.sections[0].text


def test_worker_caps_its_address_space(tmp_path, no_leftover_workers):
    (outcome,) = parse_many(_files(tmp_path, ["limits.txt"]), ParseLimits(memory_mb=300), parse_fn=HOSTILE)
    assert outcome.document.title == str(300 * 2**20)


def test_one_persistent_worker_serves_the_whole_batch(tmp_path, no_leftover_workers):
    paths = _files(tmp_path, [f"limits-{i:02d}.txt" for i in range(50)])
    started = time.monotonic()
    outcomes = list(parse_many(paths, FAST, workers=1, parse_fn=HOSTILE))
    elapsed = time.monotonic() - started
    pids = {o.document.sections[0].text for o in outcomes}
    assert len(pids) == 1, "one worker start for the batch, not one per file"
    assert elapsed < 3.0, f"50 trivial files took {elapsed:.2f} s"


def test_pool_start_is_cheap(tmp_path, no_leftover_workers):
    paths = _files(tmp_path, ["one.txt"])
    started = time.monotonic()
    (outcome,) = parse_many(paths, FAST)
    assert outcome.document is not None
    assert time.monotonic() - started < 1.0


def test_hanging_file_times_out_and_the_batch_goes_on(tmp_path, no_leftover_workers):
    paths = _files(tmp_path, ["limits-before.txt", "hang.txt", "limits-after.txt", "plain.txt"])
    limits = ParseLimits(timeout_s=0.5, memory_mb=512)
    started = time.monotonic()
    outcomes = list(parse_many(paths, limits, workers=1, parse_fn=HOSTILE))
    assert _summary(outcomes) == [
        ("limits-before.txt", None),
        ("hang.txt", "timeout"),
        ("limits-after.txt", None),
        ("plain.txt", None),
    ]
    assert 0.5 <= outcomes[1].seconds < 2.0
    assert "0.5 s" in outcomes[1].detail
    # The hung worker was killed and replaced.
    assert outcomes[0].document.sections[0].text != outcomes[2].document.sections[0].text
    assert not psutil.pid_exists(int(outcomes[0].document.sections[0].text))
    assert time.monotonic() - started < 3.0


def test_slow_consumer_does_not_turn_finished_work_into_timeouts(tmp_path, no_leftover_workers):
    paths = _files(tmp_path, ["a.txt", "b.txt", "c.txt"])
    batch = parse_many(paths, ParseLimits(timeout_s=0.3, memory_mb=512))
    outcomes = [next(batch)]
    time.sleep(0.6)  # longer than the timeout, while the worker already finished b.txt
    outcomes.extend(batch)
    assert _summary(outcomes) == [("a.txt", None), ("b.txt", None), ("c.txt", None)]


def test_memory_hog_hits_the_cap_and_the_batch_goes_on(tmp_path, no_leftover_workers):
    paths = _files(tmp_path, ["hog.txt", "plain.txt"])
    outcomes = list(parse_many(paths, ParseLimits(timeout_s=10.0, memory_mb=300), parse_fn=HOSTILE))
    assert _summary(outcomes) == [("hog.txt", "memory_limit"), ("plain.txt", None)]
    assert "300 MB" in outcomes[0].detail


@pytest.mark.parametrize(
    ("name", "reason"),
    [("segv.txt", "crashed"), ("oomkill.txt", "memory_limit"), ("raise.txt", "parser_error")],
)
def test_dying_or_failing_worker_is_replaced(tmp_path, no_leftover_workers, name, reason):
    paths = _files(tmp_path, [name, "limits.txt", "plain.txt"])
    outcomes = list(parse_many(paths, FAST, parse_fn=HOSTILE))
    assert _summary(outcomes) == [(name, reason), ("limits.txt", None), ("plain.txt", None)]
    assert outcomes[0].detail


def test_results_come_back_in_input_order_with_several_workers(tmp_path, no_leftover_workers):
    paths = _files(tmp_path, ["slow-1.txt", "fast-2.txt", "fast-3.txt", "slow-4.txt", "fast-5.txt"])
    outcomes = list(parse_many(paths, FAST, workers=3, parse_fn=HOSTILE))
    assert [o.path for o in outcomes] == paths
    assert all(o.document is not None for o in outcomes)


def test_consumer_stopping_early_shuts_workers_down(tmp_path, no_leftover_workers):
    paths = _files(tmp_path, ["a.txt", "hang-b.txt", "hang-c.txt", "d.txt"])
    batch = parse_many(paths, FAST, workers=3, parse_fn=HOSTILE)
    first = next(batch)
    assert first.document is not None
    assert len(_children()) >= 3  # workers are running, two of them hung
    started = time.monotonic()
    batch.close()
    assert time.monotonic() - started < 3.0


def test_consumer_raising_shuts_workers_down(tmp_path, no_leftover_workers):
    paths = _files(tmp_path, ["a.txt", "b.txt", "c.txt"])
    with pytest.raises(RuntimeError, match="consumer failed"):
        for _ in parse_many(paths, FAST, workers=2):
            raise RuntimeError("consumer failed")


def test_bad_parse_fn_fails_fast_with_a_clear_error(tmp_path, no_leftover_workers):
    with pytest.raises(WorkerStartError, match="no_such_module"):
        list(parse_many(_files(tmp_path, ["a.txt"]), FAST, parse_fn="no_such_module:parse"))


def test_parser_modules_stay_light():
    # Workers import these; torch & co. would cost seconds and memory per worker start.
    code = (
        "import sys, tasks.parse, tasks.sandbox; "
        "print(sorted(m for m in ('torch', 'prefect', 'lancedb', 'transformers') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).resolve().parents[2])
    assert result.stdout.strip() == "[]"


def test_empty_batch_starts_nothing(no_leftover_workers):
    before = _children()
    assert list(parse_many([], FAST)) == []
    assert _children() == before
