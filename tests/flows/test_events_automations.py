"""Events the flows emit and the automations as code, against the real Prefect test server
(`prefect_test_harness`: its ephemeral server runs the event persister, the reactive triggers and
the actions services, so an emitted event really fires an automation here)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.events import emit_event
from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter
from prefect.events.worker import EventsWorker

from deployments import automations
from flows.ingest import ingest

DEPLOYMENT = "retrain/retrain-demo"


def _wait(check: Any, timeout: float = 60.0, every: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(every)
    return check()


def _events(name: str, resource_id: str) -> list[Any]:
    EventsWorker.drain_all(timeout=10)
    with get_client(sync_client=True) as client:
        f = EventFilter(event=EventNameFilter(name=[name]), resource=EventResourceFilter(id=[resource_id]))
        return client.read_events(filter=f, limit=50).events


@pytest.fixture(scope="module")
def retrain_deployment():
    """A `retrain/retrain-demo` deployment on the test server (no pool or worker: its runs stay scheduled)."""
    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name("retrain")
        deployment_id = client.create_deployment(flow_id=flow_id, name="retrain-demo", entrypoint="flows/retrain.py:retrain",
                                                 parameters={"force": False, "max_steps": 40})  # fmt: skip
    yield deployment_id
    with get_client(sync_client=True) as client:
        for name in (automations.RETRAIN_ON_CHANGE, automations.NOTIFY_ON_REGRESSION):
            for a in client.read_automations_by_name(name):
                client.delete_automation(a.id)
        client.delete_deployment(deployment_id)


def _by_name(name: str) -> list[Any]:
    with get_client(sync_client=True) as client:
        return client.read_automations_by_name(name)


def test_apply_automations_is_idempotent_and_shaped(retrain_deployment, monkeypatch):
    monkeypatch.delenv("RAGTUNE_EVENTS__NOTIFY_URL", raising=False)
    first = automations.apply_automations()
    assert first == [automations.RETRAIN_ON_CHANGE, automations.NOTIFY_ON_REGRESSION]
    ids = {n: _by_name(n)[0].id for n in first}
    assert automations.apply_automations() == first  # re-applied: replaced, not duplicated
    for name in first:
        assert [a.id for a in _by_name(name)] == [ids[name]]

    retrain = _by_name(automations.RETRAIN_ON_CHANGE)[0]
    assert retrain.enabled and retrain.trigger.expect == {"ragtune.ingest.completed"}
    assert retrain.trigger.match.root == {"prefect.resource.id": "ragtune.table.*", "ragtune.retrain-suggested": "true"}
    (action,) = retrain.actions
    assert action.type == "run-deployment" and action.deployment_id == retrain_deployment
    assert action.parameters["table"]["__prefect_kind"] == "jinja"

    notify = _by_name(automations.NOTIFY_ON_REGRESSION)[0]  # no block configured: visible, but disabled
    assert not notify.enabled and notify.trigger.expect == {"ragtune.evaluation.regressed"}
    assert [a.type for a in notify.actions] == ["do-nothing"]

    monkeypatch.setenv("RAGTUNE_EVENTS__NOTIFY_URL", "http://127.0.0.1:9/hook")  # a webhook: saved as a block and used
    automations.apply_automations()
    notify = _by_name(automations.NOTIFY_ON_REGRESSION)
    assert len(notify) == 1 and notify[0].id == ids[automations.NOTIFY_ON_REGRESSION] and notify[0].enabled
    (send,) = notify[0].actions
    with get_client(sync_client=True) as client:
        block = client.read_block_document_by_name(name="ragtune-notify", block_type_slug="custom-webhook")
    assert send.type == "send-notification" and send.block_document_id == block.id
    monkeypatch.setenv("RAGTUNE_EVENTS__NOTIFY_BLOCK", "custom-webhook/ragtune-notify")  # named block: same one
    automations.apply_automations()
    assert _by_name(automations.NOTIFY_ON_REGRESSION)[0].actions[0].block_document_id == block.id
    monkeypatch.setenv("RAGTUNE_EVENTS__NOTIFY_BLOCK", "custom-webhook/missing")
    with pytest.raises(ValueError, match="not found"):
        automations.apply_automations()


@pytest.fixture
def webhook():
    """A local HTTP server standing in for the webhook: records (path, JSON body) of each POST."""
    got: list[tuple[str, Any]] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            got.append((self.path, json.loads(body or b"null")))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", got
    server.shutdown()
    server.server_close()


def test_notify_url_is_kept_secret_and_still_notifies(retrain_deployment, monkeypatch, webhook):
    base, got = webhook
    token = f"s3cret-{uuid.uuid4().hex}"
    monkeypatch.delenv("RAGTUNE_EVENTS__NOTIFY_BLOCK", raising=False)
    monkeypatch.setenv("RAGTUNE_EVENTS__NOTIFY_URL", f"{base}/hook/{token}?key={token}")
    automations.apply_automations()
    with get_client(sync_client=True) as client:
        shown = client.read_block_document_by_name(name="ragtune-notify", block_type_slug="custom-webhook", include_secrets=False)
        stored = client.read_block_document_by_name(name="ragtune-notify", block_type_slug="custom-webhook")
    assert token not in json.dumps(shown.data, default=str)  # what the UI and API show
    assert token not in stored.data["url"] and stored.data["url"] == "{{notify_url}}"  # a plain field, even with secrets
    (notify,) = _by_name(automations.NOTIFY_ON_REGRESSION)
    assert notify.enabled and notify.actions[0].block_document_id == stored.id

    run_id = f"20260102T{uuid.uuid4().hex[:6]}"
    emit_event(event="ragtune.evaluation.regressed", resource={"prefect.resource.id": f"ragtune.evaluation.{run_id}"},
               payload={"run_id": run_id, "previous_run_id": "p", "serving_arm": "hybrid", "adapter": "a1", "eval_path": "/e.jsonl",
                        "regressions": [{"metric": "f1", "now": {"value": 0.4, "low": 0.35, "high": 0.45}, "previous": {"value": 0.5}}],
                        "report": "/r.html"})  # fmt: skip
    EventsWorker.drain_all(timeout=10)
    sent = _wait(lambda: [g for g in got if run_id in json.dumps(g[1])], timeout=90)
    assert sent, "the regression notification did not reach the webhook within 90 s"
    path, body = sent[0]
    assert path == f"/hook/{token}?key={token}"  # the real URL, filled from the block's secrets
    assert body["subject"] == f"ragtune: evaluation {run_id} regressed" and "f1: 0.4" in body["text"]


def test_a_big_ingest_event_starts_a_retrain_run(retrain_deployment, monkeypatch):
    monkeypatch.delenv("RAGTUNE_EVENTS__NOTIFY_URL", raising=False)
    automations.apply_automations()
    quiet, busy = f"quiet_{uuid.uuid4().hex[:6]}", f"busy_{uuid.uuid4().hex[:6]}"
    for table, suggested in ((quiet, "false"), (busy, "true")):
        emit_event(event="ragtune.ingest.completed", payload={"changed_share": 0.5 if suggested == "true" else 0.0},
                   resource={"prefect.resource.id": f"ragtune.table.{table}", "ragtune.table": table,
                             "ragtune.retrain-suggested": suggested})  # fmt: skip
    EventsWorker.drain_all(timeout=10)

    def runs() -> list[Any]:
        from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

        with get_client(sync_client=True) as client:
            return client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[retrain_deployment])))

    started = _wait(lambda: [r for r in runs() if r.parameters.get("table") == busy], timeout=90)
    assert len(started) == 1, "the retrain-on-change automation did not start a retrain run within 90 s"
    assert started[0].parameters["max_steps"] == 40  # the deployment's own parameters stand
    time.sleep(2)
    assert not [r for r in runs() if r.parameters.get("table") == quiet]


def _docs(tmp_path):
    """Three small Markdown documents, a fresh folder each call."""
    corpus = tmp_path / "docs"
    corpus.mkdir()
    for i in range(3):
        (corpus / f"d{i}.md").write_text(f"# Doc {i}\n\nParagraph {i} about the travel policy and hotel caps.\n")
    return corpus


def test_ingest_emits_its_numbers(home, tmp_path):
    corpus, table = _docs(tmp_path), f"evt_{uuid.uuid4().hex[:6]}"
    first = ingest(source=str(corpus), table=table)
    second = ingest(source=str(corpus), table=table)  # nothing changed
    got = _wait(lambda: (lambda e: e if len(e) >= 2 else None)(_events("ragtune.ingest.completed", f"ragtune.table.{table}")), timeout=30)
    assert got and len(got) == 2
    by_run = {e.payload["run_id"]: e for e in got}
    a, b = by_run[first["run_id"]], by_run[second["run_id"]]
    assert a.resource["ragtune.retrain-suggested"] == "true" and a.payload["changed_share"] == 1.0
    assert a.payload["counts"]["chunks_total"] == first["counts"]["chunks_total"] > 0
    assert b.resource["ragtune.retrain-suggested"] == "false" and b.payload["changed_share"] == 0.0
    assert b.payload["chunks_before"] == first["counts"]["chunks_total"] == second["counts"]["chunks_before"]
    assert a.payload["chunks_before"] == 0
    assert any(r.role == "flow-run" for r in a.related)  # Prefect links it to the ingest flow run


def test_ingest_event_counts_the_table_not_the_local_manifests(home, tmp_path):
    """chunks_before is the table's row count before the write: right with no (or another host's) run manifests."""
    corpus, table = _docs(tmp_path), f"evt_{uuid.uuid4().hex[:6]}"
    first = ingest(source=str(corpus), table=table)
    for m in (home / "runs").glob("ingest-*.json"):  # as if the next run were on another host
        m.unlink()
    second = ingest(source=str(corpus), table=table, force=True, suggest_retrain=False)  # every chunk rewritten
    got = _wait(lambda: [e for e in _events("ragtune.ingest.completed", f"ragtune.table.{table}") if e.payload["run_id"] == second["run_id"]], timeout=30)
    assert got, "no ingest event for the second run"
    (b,) = got
    assert first["counts"]["chunks_total"] > 0 and b.payload["chunks_before"] == first["counts"]["chunks_total"]
    assert b.payload["changed_share"] == 1.0  # every row replaced ...
    assert b.resource["ragtune.retrain-suggested"] == "false" and b.payload["retrain_suggested"] is False  # ... but not suggested
    assert "suggest_retrain=false" in b.payload["retrain_reason"]
