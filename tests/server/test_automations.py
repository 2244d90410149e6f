"""Events driving the stack: an ingest that changes enough of a table starts a retrain flow run
through the `ragtune-retrain-on-change` automation, and a regression event reaches the webhook the
notification automation points at. Both through the real server's trigger service."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime, timezone

import pytest

from tasks.events import EVALUATION_REGRESSED, RETRAIN_SUGGESTED


def test_an_ingest_that_changes_enough_starts_a_retrain_run(api):
    automations = {a["name"]: a for a in api.post("/automations/filter")}
    assert automations["ragtune-retrain-on-change"]["enabled"] is True
    retrain = api.deployment("retrain-demo")
    before = {r["id"] for r in api.flow_runs(retrain["id"])}
    # The training pool stays paused (conftest): this test proves the trigger, not training.
    try:
        ingest = api.deployment("ingest-demo")
        run = api.post(f"/deployments/{ingest['id']}/create_flow_run", {"parameters": {**ingest["parameters"], "table": "auto_chunks"}})
        assert api.wait_for_run(run["id"])["state_type"] == "COMPLETED"
        deadline, started = time.monotonic() + 90, []
        while time.monotonic() < deadline and not started:
            started = [r for r in api.flow_runs(retrain["id"]) if r["id"] not in before]
            time.sleep(1)
        assert len(started) == 1, "the automation did not start exactly one retrain run"
        triggered = started[0]
        assert triggered["parameters"]["table"] == "auto_chunks"
        # the ingest's settings file is passed on (absolute), so the retrain reads the same [dataset] and [training]
        assert triggered["parameters"]["config_file"].endswith("/demo/ragtune.toml")
        assert triggered["created_by"]["type"] == "AUTOMATION"
        assert triggered["created_by"]["id"] == automations["ragtune-retrain-on-change"]["id"]
        # The event the automation fired on, as the server stored it: a first ingest changes every chunk.
        # (events are persisted in batches, after the trigger service has seen them)
        deadline, events = time.monotonic() + 60, []
        while time.monotonic() < deadline and not events:
            events = api.post("/events/filter", {"filter": {"event": {"name": ["ragtune.ingest.completed"]}, "resource": {"id": ["ragtune.table.auto_chunks"]}}})["events"]
            time.sleep(1)
        [event] = events
        assert event["resource"][RETRAIN_SUGGESTED] == "true" and event["payload"]["changed_share"] == 1.0
        # An unchanged rerun suggests nothing, and no second retrain run appears.
        again = api.post(f"/deployments/{ingest['id']}/create_flow_run", {"parameters": {**ingest["parameters"], "table": "auto_chunks"}})
        assert api.wait_for_run(again["id"])["state_type"] == "COMPLETED"
        time.sleep(8)
        assert [r["id"] for r in api.flow_runs(retrain["id"]) if r["id"] not in before] == [triggered["id"]]
    finally:
        for r in api.flow_runs(retrain["id"]):
            if r["id"] not in before:
                api.http.delete(f"/flow_runs/{r['id']}")


def test_a_regression_event_notifies_the_configured_webhook(api, server_stack, webhook):
    from prefect.events import Event
    from prefect.events.clients import PrefectEventsClient

    automation = {a["name"]: a for a in api.post("/automations/filter")}["ragtune-notify-on-regression"]
    assert automation["enabled"] is True and automation["actions"][0]["type"] == "send-notification"
    payload = {
        "run_id": "probe-run", "previous_run_id": "probe-previous", "serving_arm": "hybrid", "adapter": "a1",
        "eval_path": "demo/eval.jsonl", "report": "/reports/probe-run/report.md",
        "regressions": [{"metric": "f1", "now": {"value": 0.1, "low": 0.05, "high": 0.15}, "previous": {"value": 0.3}}],
    }
    event = Event(
        occurred=datetime.now(timezone.utc), event=EVALUATION_REGRESSED,
        resource={"prefect.resource.id": "ragtune.evaluation.probe-run"}, payload=payload,
    )  # fmt: skip

    async def send():
        async with PrefectEventsClient(api_url=server_stack.api_url) as client:
            await client.emit(event)

    asyncio.run(send())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not webhook.received:
        time.sleep(0.5)
    assert webhook.received, "no notification reached the webhook"
    body = json.loads(webhook.received[0])
    assert "probe-run regressed" in body["subject"]
    assert "f1: 0.1 [0.05, 0.15] (was 0.3)" in body["text"] and "probe-previous" in body["text"]


@pytest.mark.extended
def test_nightly_on_the_server_runs_each_step_as_its_own_run_on_its_pool(api):
    """The chain triggered like the UI does: ingest on the ingest pool, synthesize (demo/ragtune.toml uses
    synthetic questions), retrain and evaluate on the training pool, each a child flow run of the nightly
    run (tiny llama, hashing embedder)."""
    for name in ("retrain-demo", "evaluate-demo"):  # runs the automation queued while the pool was paused
        for r in api.flow_runs(api.deployment(name)["id"]):
            if r["state_type"] == "SCHEDULED":
                api.http.delete(f"/flow_runs/{r['id']}")
    retrain_before = {r["id"] for r in api.flow_runs(api.deployment("retrain-demo")["id"])}
    nightly = api.deployment("nightly")
    params = {**nightly["parameters"], "max_steps": 2, "limit": 2, "arms": ["base", "rag", "hybrid"], "table": "nightly_chunks"}
    api.patch("/work_pools/ragtune-train", {"is_paused": False})
    try:
        run = api.post(f"/deployments/{nightly['id']}/create_flow_run", {"parameters": params})
        done = api.wait_for_run(run["id"], timeout_s=600)
    finally:
        api.patch("/work_pools/ragtune-train", {"is_paused": True})
    children = api.post("/flow_runs/filter", {"flow_runs": {"parent_flow_run_id": {"any_": [run["id"]]}}, "sort": "START_TIME_ASC"})
    by_deployment = {api.get(f"/deployments/{c['deployment_id']}")["name"]: c for c in children if c.get("deployment_id")}
    assert done["state_type"] == "COMPLETED", (done["state"].get("message"), {n: (c["state"] or {}).get("message") for n, c in by_deployment.items()})
    assert len(children) == 4 and set(by_deployment) == {"ingest-demo", "synthesize-demo", "retrain-demo", "evaluate-demo"}
    assert children[1]["id"] == by_deployment["synthesize-demo"]["id"]  # after the ingest, before the retrain
    # The chain retrains itself: its ingest does not also fire the retrain-on-change automation.
    time.sleep(5)
    new_retrains = [r["id"] for r in api.flow_runs(api.deployment("retrain-demo")["id"]) if r["id"] not in retrain_before]
    assert new_retrains == [by_deployment["retrain-demo"]["id"]]
    assert by_deployment["ingest-demo"]["work_pool_name"] == "ragtune-ingest"
    assert {by_deployment[d]["work_pool_name"] for d in ("synthesize-demo", "retrain-demo", "evaluate-demo")} == {"ragtune-train"}
    assert by_deployment["synthesize-demo"]["parameters"]["table"] == "nightly_chunks"
    assert all(c["state_type"] == "COMPLETED" for c in by_deployment.values())
    assert by_deployment["ingest-demo"]["parameters"]["table"] == "nightly_chunks"
    assert by_deployment["evaluate-demo"]["parameters"]["limit"] == 2
    summary = {a["key"]: a for a in api.artifacts(run["id"])}["nightly"]["data"]
    assert summary.count("| completed |") == 4
