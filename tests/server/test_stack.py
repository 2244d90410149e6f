"""The stack as a team runs it: deployments with their forms and schedules, runs triggered the way the
UI triggers them, a run started from the UI in a real browser, a schedule that fires by itself, and
`make serve` again / `make serve-stop` (run last: it restarts the stack)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest
import yaml

from infra import stack
from tests.server.conftest import OUTPUT, REPO

SPEC = yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text())
DEMO_DOCS = sorted(str(p.relative_to(REPO / "demo" / "corpus")) for p in (REPO / "demo" / "corpus").rglob("*") if p.is_file())


def _table_doc_ids(cfg: stack.StackConfig, table: str) -> list[str]:
    from tasks.store import ChunkStore

    chunks = ChunkStore(cfg.home / "lancedb", table).chunks
    assert chunks is not None, f"table {table!r} was not written"
    return sorted(set(chunks.search().select(["doc_id"]).limit(None).to_arrow().column("doc_id").to_pylist()))


def test_the_database_refuses_tcp_logins_without_the_password(server_stack):
    psql = stack.postgres_bin("psql")
    cmd = [psql, "-h", "127.0.0.1", "-p", str(server_stack.postgres_port), "-U", "postgres", "-d", "prefect", "-tAc", "SELECT 1"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    refused = subprocess.run(cmd, capture_output=True, text=True, env={**env, "PGPASSWORD": "wrong"})
    assert refused.returncode != 0 and "password authentication failed" in refused.stderr
    password = server_stack.password_file.read_text().strip()
    assert oct(server_stack.password_file.stat().st_mode & 0o777) == "0o600"
    assert subprocess.run(cmd, capture_output=True, text=True, env={**env, "PGPASSWORD": password}).stdout.strip() == "1"


def test_every_deployment_has_its_typed_form_pool_and_schedule(api):
    pools = {p["name"]: p for p in api.post("/work_pools/filter")}
    assert set(stack.POOLS) <= set(pools)
    assert pools["ragtune-train"]["concurrency_limit"] == 1 and pools["ragtune-ingest"]["concurrency_limit"] is None
    for spec in SPEC["deployments"]:
        d = api.deployment(spec["name"])
        assert d["work_pool_name"] == spec["work_pool"]["name"]
        assert d["entrypoint"] == spec["entrypoint"]
        schema = d["parameter_openapi_schema"]
        # The form the UI shows: every flow parameter with its type and its docstring description.
        props = schema["properties"]
        for name, value in spec.get("parameters", {}).items():
            assert name in props, f"{spec['name']}: parameter {name!r} missing from the form"
            assert props[name].get("description"), f"{spec['name']}.{name} has no description in the form"
            if isinstance(value, bool):
                types = {props[name].get("type")} | {t.get("type") for t in props[name].get("anyOf", [])}
                assert "boolean" in types, f"{spec['name']}.{name} is not typed boolean in the form"
        assert d["parameters"] == spec.get("parameters", {})
    # The caller's groups are the deployment's identity, not a form field (issue 12).
    answer = api.deployment("answer-demo")
    assert "groups" not in answer["parameter_openapi_schema"]["properties"]
    assert answer["job_variables"]["env"]["RAGTUNE_RETRIEVAL__GROUPS"] == "[]"
    nightly = api.deployment("nightly")
    assert [(s["schedule"]["cron"], s["active"]) for s in nightly["schedules"]] == [("0 2 * * *", True)]
    # The cron really produces runs (the scheduler service works on this stack): the next ones at 02:00 UTC.
    deadline, upcoming = time.monotonic() + 60, []
    while time.monotonic() < deadline and not upcoming:
        upcoming = [r for r in api.flow_runs(nightly["id"]) if r["state_type"] == "SCHEDULED"]
        time.sleep(1)
    assert upcoming and all(r["auto_scheduled"] for r in upcoming)
    assert {datetime.fromisoformat(r["expected_start_time"]).astimezone(timezone.utc).strftime("%H:%M") for r in upcoming} == {"02:00"}
    hourly = api.deployment("ingest-hourly")
    assert [s["active"] for s in hourly["schedules"]] == [False]


def test_a_run_triggered_like_the_ui_completes_on_the_worker(api, server_stack):
    d = api.deployment("ingest-demo")
    # What the UI's "Custom run" posts: the deployment's parameters with one edited.
    run = api.post(f"/deployments/{d['id']}/create_flow_run", {"parameters": {**d["parameters"], "table": "api_chunks"}})
    done = api.wait_for_run(run["id"])
    assert done["state_type"] == "COMPLETED", done["state"]
    assert done["work_pool_name"] == "ragtune-ingest" and done["parameters"]["table"] == "api_chunks"
    artifacts = {a["key"]: a for a in api.artifacts(run["id"])}
    manifest = artifacts["ingest-api-chunks"]["data"]
    assert "→ `api_chunks`: completed" in manifest
    counts = [int(v) for v in manifest.split("| files seen |")[1].splitlines()[2].strip("| ").split(" | ")]
    files_seen, added, updated, unchanged, deleted, quarantined = counts[:6]
    assert files_seen == len(DEMO_DOCS) and added + quarantined == len(DEMO_DOCS) and updated == unchanged == deleted == 0
    # The run's manifest on disk names the same counts; every demo document is either indexed or quarantined.
    record = json.loads(next((server_stack.home / "runs").glob("latest-ingest-api_chunks.json")).read_text())
    m = json.loads((server_stack.home / "runs" / record["manifest"]).read_text())
    assert m["flow_run_id"] == run["id"] and m["status"] == "completed"
    indexed = set(_table_doc_ids(server_stack, "api_chunks"))
    assert indexed | {q["doc_id"] for q in m["quarantine"]} == set(DEMO_DOCS)


def test_a_run_started_from_the_ui_in_a_browser(api, server_stack):
    pytest.importorskip("playwright", reason="server tier: the playwright package is missing (pip install '.[server]')")
    chromium = shutil.which("chromium")
    if chromium is None:
        if os.environ.get("RAGTUNE_REQUIRE_SERVER_TIER") == "1":
            pytest.fail("server tier required but chromium is not installed (apt-get install -y chromium)")
        pytest.skip("browser test skipped: chromium is not installed (apt-get install -y chromium)")
    from playwright.sync_api import expect, sync_playwright

    d = api.deployment("ingest-demo")
    name = f"ui-run-{uuid.uuid4().hex[:6]}"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(f"{server_stack.ui_url}/deployments/deployment/{d['id']}")
            expect(page.get_by_text("ingest-demo").first).to_be_visible(timeout=60_000)
            page.get_by_role("button", name="Run", exact=True).click()
            page.get_by_text("Custom run").click()
            # The form: run name, then the parameters; change the table from its default.
            page.locator("input[type=text]").first.fill(name)
            table_field = page.locator("textarea").nth(1)
            expect(table_field).to_have_value("chunks")
            table_field.fill("ui_chunks")
            page.screenshot(path=str(OUTPUT / "ui-1-form.png"), full_page=True)
            page.get_by_role("button", name="Submit").click()
            # The UI either shows a toast linking to the new run or opens the run page itself,
            # whose breadcrumb can render twice while it loads: take the first link either way.
            link = page.get_by_role("link", name=name).first
            expect(link).to_be_visible(timeout=60_000)
            if "/runs/flow-run/" not in page.url:
                link.click()
            page.wait_for_url(re.compile(r".*/runs/flow-run/.*"))
            badge = page.locator(".state-badge").first
            expect(badge).to_have_text(re.compile("Completed|Failed|Crashed|Cancelled"), timeout=240_000)
            page.screenshot(path=str(OUTPUT / "ui-2-run.png"), full_page=True)
            expect(badge).to_have_text(re.compile("Completed"))
            page.get_by_text("Artifacts", exact=True).first.click()
            artifact = page.get_by_text("ingest-ui-chunks")
            expect(artifact).to_be_visible(timeout=30_000)
            expect(page.get_by_text("into ui_chunks").first).to_be_visible()
            page.screenshot(path=str(OUTPUT / "ui-3-artifacts.png"), full_page=True)
            artifact.click()
            expect(page.get_by_text(re.compile("files seen", re.I)).first).to_be_visible(timeout=30_000)
            page.screenshot(path=str(OUTPUT / "ui-4-manifest.png"), full_page=True)
        finally:
            browser.close()
    runs = api.post("/flow_runs/filter", {"flow_runs": {"name": {"any_": [name]}}})
    assert len(runs) == 1 and runs[0]["parameters"]["table"] == "ui_chunks" and runs[0]["state_type"] == "COMPLETED"
    assert _table_doc_ids(server_stack, "ui_chunks")


def test_a_scheduled_run_fires_without_a_trigger(api, server_stack):
    template = api.deployment("ingest-demo")
    due = datetime.now(timezone.utc) + timedelta(seconds=15)
    body = {
        "name": "scheduled-probe",
        "flow_id": template["flow_id"],
        "entrypoint": template["entrypoint"],
        "work_pool_name": "ragtune-ingest",
        "pull_steps": template["pull_steps"],
        "parameter_openapi_schema": template["parameter_openapi_schema"],
        "parameters": {**template["parameters"], "table": "scheduled_chunks"},
        # Once an hour from 15 s from now: exactly one run falls inside the test.
        "schedules": [{"schedule": {"interval": 3600, "anchor_date": due.isoformat(), "timezone": "UTC"}, "active": True}],
    }
    deployment = api.post("/deployments/", body)
    try:
        deadline, runs = time.monotonic() + 120, []
        while time.monotonic() < deadline and not runs:
            runs = api.flow_runs(deployment["id"])
            time.sleep(1)
        assert runs, "the scheduler created no run"
        first = runs[0]
        assert first["auto_scheduled"] is True and abs(datetime.fromisoformat(first["expected_start_time"]) - due) < timedelta(seconds=1)
        done = api.wait_for_run(first["id"])
        assert done["state_type"] == "COMPLETED", done["state"]
        started = datetime.fromisoformat(done["start_time"])
        assert started >= due - timedelta(seconds=1), "the run started before it was due"
        assert _table_doc_ids(server_stack, "scheduled_chunks")
    finally:
        api.http.delete(f"/deployments/{deployment['id']}")


def test_serve_again_reuses_the_stack_and_stop_leaves_the_data(api, server_stack):
    """Runs last in this module: `up` twice reuses the running processes; `down` stops exactly them;
    `up` after `down` comes back on the same database (the earlier runs are still there)."""
    before = stack.StackState.load(server_stack.state_dir / "stack.json")
    # Finished runs (re-deploying replaces the not-yet-started auto-scheduled ones, by design).
    finished = lambda: {r["id"] for r in api.post("/flow_runs/filter") if r["state_type"] == "COMPLETED"}  # noqa: E731
    runs_before = finished()
    assert runs_before
    again = stack.up(server_stack, log=lambda m: None)
    assert again.pids == before.pids
    assert len(api.post("/work_pools/filter")) == len(stack.POOLS)
    assert len(api.post("/deployments/filter")) == len(SPEC["deployments"])

    stack.down(server_stack, log=lambda m: None)
    assert not any(stack._alive(pid) for pid in before.pids.values())
    assert not stack.healthy(server_stack.api_url)
    assert not (server_stack.postgres_dir / "postmaster.pid").exists()
    assert (server_stack.postgres_dir / "PG_VERSION").is_file() and (server_stack.home / "lancedb").is_dir()

    back = stack.up(server_stack, log=lambda m: None)
    assert set(back.pids) == set(before.pids) and all(stack._alive(p) for p in back.pids.values())
    assert finished() == runs_before
    env = (server_stack.state_dir / "env.sh").read_text()
    assert f"export PREFECT_API_URL='{server_stack.api_url}'" in env and f"export RAGTUNE_HOME='{server_stack.home}'" in env
