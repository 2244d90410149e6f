"""Emit the events `tasks/events.py` builds; the flows call these last, after their artifacts.

Emission never fails a run: without a Prefect API (or when the events client is unavailable) Prefect
drops the event and the run's result stands.
"""

from __future__ import annotations

from prefect.events import emit_event
from prefect.logging import get_run_logger

from tasks.events import RagtuneEvent


def emit(events: list[RagtuneEvent | None]) -> list[RagtuneEvent]:
    """Emit each event (None entries are skipped); returns those handed to Prefect."""
    sent = []
    for e in events:
        if e is None:
            continue
        emit_event(event=e.name, resource=e.resource, payload=e.payload)
        sent.append(e)
    if sent:
        try:
            get_run_logger().info("events: %s", ", ".join(e.name for e in sent))
        except Exception:  # noqa: BLE001 - outside a run there is no run logger; the events still went out
            pass
    return sent


def events_markdown(events: list[RagtuneEvent]) -> str:
    """A short "Events" section for a flow's artifact."""
    return "\n".join(["", "## Events", ""] + [e.summary() for e in events]) if events else ""
