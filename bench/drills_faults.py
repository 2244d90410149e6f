"""The fault-injection drill's subprocess: the `ingest` flow in this process with RAGTUNE_FAULTS set.

    .venv/bin/python bench/drills_faults.py --v1 DIR --v2 DIR --src DIR --ref1 HOME --ref2 HOME --work DIR --out FILE.json

For each seed, a fresh home ingests v1 then v2 of the corpus with `RAGTUNE_FAULTS=<rate>`
(each task attempt fails with that probability, tasks/faults.py); each result must equal the clean
reference (chunk ids, texts, vectors, ledger). A flow whose retries ran out is rerun (faults still on)
and counted. Injected failures come from the hook's own counts, retries from Prefect's task runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _env(work: Path) -> None:
    os.environ["RAGTUNE_EMBEDDER__MODEL"] = "hashing:64"
    os.environ["RAGTUNE_PROGRESS"] = "0"
    os.environ["PREFECT_HOME"] = str(work / "prefect")
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ["PREFECT_LOGGING_LEVEL"] = "ERROR"
    os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "180"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _flow_run_id(home: Path) -> str | None:
    pointer = home / "runs" / "latest-ingest-chunks.json"
    if not pointer.is_file():
        return None
    manifest = json.loads((home / "runs" / json.loads(pointer.read_text())["manifest"]).read_text())
    return manifest.get("flow_run_id")


def _task_runs(flow_run_id: str | None) -> dict[str, Any]:
    """Task runs of the flow run as Prefect recorded them: how many, their attempts, retries, failures."""
    if flow_run_id is None:
        return {}
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {
        "task_runs": len(runs),
        "attempts": sum(max(1, r.run_count) for r in runs),
        "retries": sum(max(0, r.run_count - 1) for r in runs),
        "task_runs_retried": sum(1 for r in runs if r.run_count > 1),
        "task_runs_failed": sum(1 for r in runs if r.state_type is not None and r.state_type.value == "FAILED"),
    }


def _ingest(home: Path, src: Path, env: dict[str, str | None]) -> dict[str, Any]:
    """One flow call with `env` set for its duration; never raises."""
    from flows.ingest import ingest
    from tasks import faults

    saved = {k: os.environ.get(k) for k in env}
    os.environ["RAGTUNE_HOME"] = str(home)
    for k, v in env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    before = faults.stats()
    started = time.perf_counter()
    try:
        result = ingest(str(src))
        outcome = {"status": result["status"], "error": None, "counts": result["counts"]}
    except Exception as e:  # noqa: BLE001 - the drill records every failure
        outcome = {"status": "failed", "error": f"{type(e).__name__}: {str(e)[:300]}", "counts": None}
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    after = faults.stats()
    outcome["wall_s"] = round(time.perf_counter() - started, 2)
    outcome["draws"] = sum(after["draws"].values()) - sum(before["draws"].values())
    outcome["injected"] = sum(after["injected"].values()) - sum(before["injected"].values())
    outcome["injected_by_task"] = {k: v - before["injected"].get(k, 0) for k, v in after["injected"].items() if v - before["injected"].get(k, 0)}
    outcome["prefect"] = _task_runs(_flow_run_id(home))
    return outcome


def random_faults(args: argparse.Namespace, ref1: Any, ref2: Any) -> list[dict[str, Any]]:
    from bench.drills_corpus import materialise
    from bench.drills_state import difference, read_state, same

    flows = []
    for seed in args.seeds:
        home = args.work / f"seed-{seed}"
        for version, vdir, ref in (("v1", args.v1, ref1), ("v2", args.v2, ref2)):
            materialise(vdir, args.src)
            env = {"RAGTUNE_FAULTS": str(args.rate), "RAGTUNE_FAULTS_SEED": str(seed), "RAGTUNE_FAULTS_TASKS": None}
            attempts = [_ingest(home, args.src, env)]
            while attempts[-1]["status"] != "completed" and len(attempts) < 3:
                attempts.append(_ingest(home, args.src, env))  # the rerun draws on: other faults
            state = read_state(home, args.src)
            flows.append({
                "seed": seed, "version": version, "flow_runs": attempts,
                "completed": attempts[-1]["status"] == "completed",
                "equals_clean": same(state, ref), "duplicates": state.duplicates,
                "difference": None if same(state, ref) else difference(state, ref),
            })
            print(f"faults seed {seed} {version}: {[a['status'] for a in attempts]} injected "
                  f"{sum(a['injected'] for a in attempts)} equals clean {flows[-1]['equals_clean']}", file=sys.stderr, flush=True)
    return flows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in ("v1", "v2", "src", "ref1", "ref2", "work", "out"):
        parser.add_argument(f"--{name}", type=Path, required=True)
    parser.add_argument("--rate", type=float, default=0.3)
    parser.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 3])
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    _env(args.work)

    from bench.drills_corpus import materialise
    from bench.drills_state import read_state

    materialise(args.v1, args.src)
    ref1 = read_state(args.ref1, args.src)
    ref2 = read_state(args.ref2, args.src)
    started = time.perf_counter()
    result = {"rate": args.rate, "seeds": args.seeds, "random": random_faults(args, ref1, ref2)}
    result["wall_s"] = round(time.perf_counter() - started, 1)
    args.out.write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
