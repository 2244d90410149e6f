"""`tasks.parse.parse_document` with its peak memory measured, for the hostile-files drill.

Runs inside the sandbox's parse workers (`parse_many(..., parse_fn="bench.drills_parse:measured_parse")`),
which stay alive across files: before each file the worker's peak RSS (VmHWM) is reset through
`/proc/self/clear_refs` (to the RSS the worker already holds, which glibc may keep from an earlier
file), after it the peak is read back; both travel with the result (an attribute on the document, or a
suffix on a quarantine detail), so the growth during the file is peak - start.
"""

from __future__ import annotations

from pathlib import Path

from tasks.parse import ParsedDocument, QuarantineError, parse_document

MARK = " [drill rss_kb="


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # "5" resets the peak RSS counter to the current RSS
    except OSError:
        pass


def measured_parse(path: Path, **kwargs) -> ParsedDocument:
    _reset_peak()
    start = _status_kb("VmRSS")
    try:
        document = parse_document(path, **kwargs)
    except QuarantineError as e:
        raise QuarantineError(e.reason, f"{e.detail}{MARK}{start}:{_status_kb('VmHWM')}]") from None
    # A frozen dataclass: the extra attribute is pickled with its __dict__.
    object.__setattr__(document, "drill_rss_kb", (start, _status_kb("VmHWM")))
    return document


def split_detail(detail: str | None) -> tuple[str | None, tuple[int, int] | None]:
    """(detail without the mark, (RSS at start, peak RSS) in KiB) of a quarantine detail written by `measured_parse`."""
    if not detail or MARK not in detail:
        return detail, None
    text, _, rest = detail.rpartition(MARK)
    try:
        start, peak = rest.rstrip("]").split(":")
        return text, (int(start), int(peak))
    except ValueError:
        return text, None
