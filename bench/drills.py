"""Reliability drills (issue 12): kill -9 during ingest and training, injected task failures, concurrent
ingests, hostile files. Not part of `make test`: `make drills` runs this.

    .venv/bin/python bench/drills.py                      # everything, ~25 min on 2 cores
    .venv/bin/python bench/drills.py --quick              # the same drills, fewer repetitions (~10 min)
    .venv/bin/python bench/drills.py --only kill,train    # some of: kill, train, faults, concurrency, hostile

Clean references, killed runs and concurrent runs are subprocesses (`.venv/bin/ragtune ingest DIR --json`)
with their own RAGTUNE_HOME, the hashing embedder (`hashing:64`) and Prefect's temporary server, as a
user runs them; the reruns after the kills (bench/drills_rerun.py) and the fault drill
(bench/drills_faults.py, which reads the hook's counts) call the same flow in one helper process each,
which saves a ~20 s start per run. Results:
bench/results/drills-latest.{json,md} (`drills-quick` for --quick); the work tree is bench/data/drills-<stamp>/
(deleted at the end unless --keep).

What each drill checks:
1. kill: a clean reference ingests corpus v1, then v2 (edited/added/deleted/renamed/corrupted files).
   Then N times: a home in the v1 state, `ingest v2` killed with SIGKILL at a seeded random moment of the
   run (measured on the clean v2 run), the table opened and compared (no duplicate chunk_id; chunk ids
   and texts equal to the v1 or the v2 state; ledger likewise), what the killed process left running,
   then a rerun, which must equal the clean v2 result exactly (chunk ids, texts, vectors, ledger).
   Plus: killed right after the chunk commit (before the ledger's), then the source left as is or
   reverted to v1 (old or new modification times): the rerun must match the source it sees.
2. train: the LoRA recipe on a tiny random llama, checkpoint every step, killed N times at random steps
   and resumed each time; the final adapter must equal an uninterrupted run's, tensor by tensor, exactly.
3. faults: RAGTUNE_FAULTS=0.3 (tasks/faults.py) on v1 then v2 for several seeds: the flows complete
   (Prefect retries) with exactly the clean rows, counted from the hook and from Prefect's task runs.
4. concurrency: two ingests of one table at once (one waits for the writer lock; no duplicates), two
   of different tables (both complete, overlapping), two homes sharing one store.uri.
5. hostile: >= 200 mutated PDF/DOCX/HTML files and generated ones in one ingest: each file ingested or
   quarantined with a reason, the run within a time bound, the main process's peak RSS within a bound;
   per-file parse time and peak memory from a second pass through the sandbox.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import random
import shutil
import statistics
import sys
import time
import traceback
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import drills_proc as procs  # noqa: E402
from bench.common import DATA, commit, write_results  # noqa: E402
from bench.drills_corpus import Versions, build_versions, copy_home, materialise  # noqa: E402
from bench.drills_state import State, classify, difference, read_state, same  # noqa: E402

DRILLS = ("kill", "train", "faults", "concurrency", "hostile")


def log(message: str) -> None:
    print(f"[drills {datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer repetitions and a smaller corpus (a smoke run)")
    p.add_argument("--only", default=",".join(DRILLS), help=f"comma-separated subset of {','.join(DRILLS)}")
    p.add_argument("--seed", type=int, default=12)
    p.add_argument("--max-files", type=int, default=None, help="Debian documents in corpus v1 (default 300, quick 60)")
    p.add_argument("--ingest-kills", type=int, default=None, help="default 20 (quick 4)")
    p.add_argument("--write-window-kills", type=int, default=None, help="extra kills aimed at the commit window (default 5, quick 2)")
    p.add_argument("--train-kills", type=int, default=None, help="default 5 (quick 2)")
    p.add_argument("--train-steps", type=int, default=20)
    p.add_argument("--fault-rate", type=float, default=0.3)
    p.add_argument("--fault-seeds", default=None, help="default 1,2,3,4,5 (quick 1)")
    p.add_argument("--hostile-bound-s", type=float, default=1200.0, help="the hostile ingest must finish within this")
    p.add_argument("--rss-bound-mb", type=float, default=4096.0, help="peak RSS bound for the hostile ingest's main process")
    p.add_argument("--keep", action="store_true", help="keep the work tree under bench/data/")
    args = p.parse_args()
    args.only = [d.strip() for d in args.only.split(",") if d.strip()]
    unknown = sorted(set(args.only) - set(DRILLS))
    if unknown:
        p.error(f"unknown drill(s) {unknown}: choose from {', '.join(DRILLS)}")
    args.max_files = args.max_files or (60 if args.quick else 300)
    args.ingest_kills = args.ingest_kills if args.ingest_kills is not None else (4 if args.quick else 20)
    args.write_window_kills = args.write_window_kills if args.write_window_kills is not None else (2 if args.quick else 5)
    args.train_kills = args.train_kills if args.train_kills is not None else (2 if args.quick else 5)
    args.fault_seeds = args.fault_seeds or ("1" if args.quick else "1,2,3,4,5")
    return args


def machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), platform.processor())
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "python": platform.python_version(),
        **{n: importlib.metadata.version(n) for n in ("prefect", "lancedb", "pyarrow", "torch", "peft", "transformers")},
    }


class Context:
    """What the drills share: the work tree, the corpus versions, the clean references."""

    def __init__(self, args: argparse.Namespace, work: Path):
        self.args, self.work = args, work
        self.rng = random.Random(args.seed)
        self.src = work / "src"
        self.versions: Versions | None = None
        self.ref1_home, self.ref2_home = work / "ref-v1", work / "ref-v2"
        self.ref1: State | None = None
        self.ref2: State | None = None
        self.ref2_run: procs.Proc | None = None
        self.references: dict[str, Any] = {}

    def prepare(self) -> None:
        """Corpus v1/v2 and the clean reference runs: v1 into a fresh home, then v2 on a copy of it."""
        log(f"building corpus v1/v2 ({self.args.max_files} Debian documents + the demo corpus)")
        self.versions = build_versions(self.work, self.args.max_files, self.args.seed)
        materialise(self.versions.v1, self.src)
        run1 = self._clean(self.src, self.ref1_home, "v1")
        copy_home(self.ref1_home, self.ref2_home)
        materialise(self.versions.v2, self.src)
        run2 = self._clean(self.src, self.ref2_home, "v2 (from the v1 state)")
        self.ref2_run = run2
        self.ref1, self.ref2 = read_state(self.ref1_home, self.src), read_state(self.ref2_home, self.src)
        for name, st in (("v1", self.ref1), ("v2", self.ref2)):
            if not st.opens or st.duplicates:
                raise SystemExit(f"the clean {name} reference is not usable: {st.summary()}")
        if self.ref1.chunks == self.ref2.chunks:
            raise SystemExit("corpus v1 and v2 give the same chunks: the drills could not tell old from new")
        self.references = {
            "corpus": self.versions.describe(),
            "v1": {**self.ref1.summary(), "run": run1.summary(), "counts": (run1.json_out() or {}).get("counts")},
            "v2": {**self.ref2.summary(), "run": run2.summary(), "counts": (run2.json_out() or {}).get("counts"),
                   "events_s": {e: round(t, 2) for t, e in run2.events()}},
            "chunks_only_in_v1": len(set(self.ref1.chunks) - set(self.ref2.chunks)),
            "chunks_only_in_v2": len(set(self.ref2.chunks) - set(self.ref1.chunks)),
        }

    def _clean(self, source: Path, home: Path, label: str) -> procs.Proc:
        run = procs.run_ingest(source, home, self.work)
        if run.returncode != 0:
            raise SystemExit(f"clean {label} ingest failed (exit {run.returncode}):\n{run.stderr_text()[-3000:]}")
        log(f"clean {label}: {run.wall_s:.1f} s, flow started at {run.first('flow started') or float('nan'):.1f} s")
        return run

    def scratch(self, name: str) -> Path:
        path = self.work / name
        shutil.rmtree(path, ignore_errors=True)
        return path

    def discard(self, path: Path) -> None:
        if not self.args.keep:
            shutil.rmtree(path, ignore_errors=True)


# --- 1. kill -9 during ingest ------------------------------------------------------------------------


def stratified(rng: random.Random, lo: float, hi: float, n: int) -> list[float]:
    """n points in [lo, hi], one uniformly inside each of n equal slices (covers the span, seeded)."""
    return [lo + (k + rng.random()) * (hi - lo) / n for k in range(n)] if n > 0 else []


def drill_kill(ctx: Context) -> dict[str, Any]:
    assert ctx.ref2_run is not None and ctx.ref1 is not None and ctx.ref2 is not None
    materialise(ctx.versions.v2, ctx.src)
    clean = ctx.ref2_run
    total = clean.wall_s or 60.0
    flow_at = clean.first("flow started") or total / 3
    flow_end = clean.first("flow completed") or 0.9 * total
    n = ctx.args.ingest_kills
    rng = random.Random(ctx.args.seed + 1)
    # Spread over the clean run's duration, measured from the events of the killed run itself (start-up
    # time varies most with load): a fifth in start-up (imports, Prefect's temporary server), one in the
    # exit after the flow, the rest over the flow, where state is written.
    n_start = max(1, n // 5) if n > 2 else 0
    n_exit = 1 if n > 3 else 0
    plan: list[tuple[str, float]] = [("start-up", d) for d in stratified(rng, 0.5, 0.95 * flow_at, n_start)]
    plan += [("flow", u) for u in stratified(rng, 0.0, 1.0, n - n_start - n_exit)]
    plan += [("exit", u) for u in stratified(rng, 0.0, 0.9, n_exit)]
    # The commit window (write-chunks, write-ledger, indexes) lasts well under a second: these kills
    # are aimed at it, some milliseconds after the validation task reports done.
    aimed = stratified(rng, 0.0, 500.0, ctx.args.write_window_kills)
    plan += [("commit window", ms) for ms in aimed]
    delays = [v for m, v in plan if m != "commit window"]

    trials, homes = [], []
    orphan: dict[str, Any] | None = None  # the first orphaned Prefect server, kept alive for a while
    for i, (mode, value) in enumerate(plan):
        home = copy_home(ctx.ref1_home, ctx.scratch(f"kill-{i:02d}"))
        proc = procs.start(procs.ingest_argv(ctx.src), procs.drill_env(home), ctx.work)
        if mode == "start-up":
            at = value
        elif mode == "flow":
            begun = proc.wait_for("flow started", 3 * total)
            at = None if begun is None else begun + value * (flow_end - flow_at)
        elif mode == "exit":
            done = proc.wait_for("flow completed", 3 * total)
            at = None if done is None else done + value * (total - flow_end)
        else:
            checked = proc.wait_for("validate-contracts finished", 3 * total)
            at = None if checked is None else checked + value / 1000
        while at is not None and proc.running() and proc.elapsed() < at:
            time.sleep(0.002)
        finished_first = not proc.running()
        if finished_first:
            procs.wait(proc, 60)
        else:
            procs.kill(proc, spare=("prefect temporary server",) if orphan is None else ())
        phase = "finished before the kill" if finished_first else proc.phase_at(proc.killed_at_s or 0)
        verdict = classify(read_state(home, ctx.src), ctx.ref1, ctx.ref2)
        trial = {
            "mode": mode, "aim": round(value, 3), "at_s": round(proc.killed_at_s if proc.killed_at_s is not None else proc.wall_s or 0, 2),
            "phase": phase, "after_kill": verdict,
            "leftovers": [p["kind"] for p in proc.leftovers],
        }
        trial["ok_after_kill"] = bool(
            verdict["opens"] and not verdict["duplicates"] and verdict["vectors_match"]
            and verdict["chunks"] in ("old", "new") and verdict["ledger"] in ("old", "new", "old, marked pending")
            and not (verdict["chunks"] == "old" and verdict["ledger"] == "new")
        )
        spared = [p for p in proc.leftovers if p["kind"] == "prefect temporary server"]
        if orphan is None and spared:
            # A user's next `ragtune ingest` meets the orphaned server: rerun through the CLI right now.
            cli = procs.run_ingest(ctx.src, home, ctx.work)
            orphan = {
                "trial": i + 1, "pid": spared[0]["pid"], "rss_mb": spared[0]["rss_mb"], "since": time.monotonic(),
                "cli_rerun_exit": cli.returncode, "cli_rerun_s": round(cli.wall_s or 0, 1),
                "cli_rerun_converged": same(read_state(home, ctx.src), ctx.ref2),
                "cli_rerun_errors": _errors(cli), "alive_after_cli_rerun": procs.alive(spared[0]["pid"]),
            }
        trials.append(trial)
        homes.append(home)
        log(f"kill {i + 1}/{len(plan)} ({mode}) at {trial['at_s']} s ({phase}): chunks {verdict['chunks']}, ledger {verdict['ledger']}, "
            f"spool {'left' if verdict['spool_left'] else 'none'}, left running: {trial['leftovers'] or 'nothing'}")

    # Every killed home rerun once, in one helper process, and compared with the clean v2 result.
    out_file = ctx.work / "reruns.json"
    argv = [procs.PYTHON, REPO / "bench" / "drills_rerun.py", "--src", ctx.src, "--ref", ctx.ref2_home, "--work", ctx.scratch("rerun-prefect"),
            "--out", out_file, "--homes", ",".join(str(h) for h in homes)]
    helper = procs.wait(procs.start(argv, _helper_env(), ctx.work), 3600)
    reruns = json.loads(out_file.read_text()) if out_file.is_file() else []
    if helper.returncode != 0 or len(reruns) != len(trials):
        raise RuntimeError(f"drills_rerun.py exit {helper.returncode}: {helper.stderr_text()[-3000:]}")
    for trial, rerun in zip(trials, reruns):
        trial.update(rerun_status=rerun["status"], rerun_s=rerun["wall_s"], converged=rerun["converged"],
                     rerun_counts=rerun["counts"], difference=rerun["difference"], rerun_error=rerun["error"])
    if orphan is not None:
        orphan["alive_after_s"] = round(time.monotonic() - orphan.pop("since"), 1)
        orphan["still_alive"] = procs.alive(orphan["pid"])
        procs.kill_pid(orphan["pid"])
    for home in homes:
        ctx.discard(home)
    between = _between_commits(ctx)

    leftovers = Counter(k for t in trials for k in t["leftovers"])
    return {
        "passed": all(t["ok_after_kill"] and t["converged"] and t["rerun_status"] == "completed" for t in trials)
        and all(b["equals_expected"] for b in between),
        "kills": len(trials), "random_kills": len(delays), "commit_window_kills": len(aimed),
        "clean_run_s": round(total, 1), "flow_started_at_s": round(flow_at, 1), "flow_completed_at_s": round(flow_end, 1),
        "phases": dict(Counter(t["phase"] for t in trials)),
        "states_after_kill": dict(Counter(f"chunks {t['after_kill']['chunks']} / ledger {t['after_kill']['ledger']}" for t in trials)),
        "ok_after_kill": sum(t["ok_after_kill"] for t in trials),
        "tables_opened": sum(t["after_kill"]["opens"] for t in trials),
        "duplicates_after_kill": sum(t["after_kill"]["duplicates"] for t in trials),
        "spool_left": sum(t["after_kill"]["spool_left"] for t in trials),
        "reruns_converged": sum(t["converged"] for t in trials),
        "leftover_processes": dict(leftovers),
        "kills_leaving_processes": sum(1 for t in trials if t["leftovers"]),
        "orphaned_server": orphan,
        "reruns_helper_s": round(helper.wall_s or 0, 1),
        "between_commits": between,
        "trials": trials,
    }


def _between_commits(ctx: Context) -> list[dict[str, Any]]:
    """kill -9 as soon as the chunk commit is logged (before the ledger's), then the source is left as is,
    reverted to v1 with its old modification times (a restore from backup), or reverted with new ones (a
    checkout, an editor's undo), and ingested again: the table must match the source it then sees."""
    out = []
    for case, then in (("rerun as is", "v2"), ("revert, old mtimes", "v1"), ("revert, new mtimes", "v1-touched")):
        # The window between the two commits lasts tens of milliseconds: a kill that lands after the
        # ledger commit is tried again from a fresh copy, up to 5 times.
        for attempt in range(1, 6):
            home = copy_home(ctx.ref1_home, ctx.scratch(f"between-{len(out)}"))
            materialise(ctx.versions.v2, ctx.src)
            proc = procs.start(procs.ingest_argv(ctx.src), procs.drill_env(home), ctx.work)
            seen = proc.wait_for("write-chunks finished", 600)
            if proc.running():
                procs.kill(proc, settle_s=0.5)
            else:
                procs.wait(proc, 60)
            after = classify(read_state(home, ctx.src), ctx.ref1, ctx.ref2)
            if after["chunks"] == "new" and after["ledger"] != "new":
                break
        materialise(ctx.versions.v2 if then == "v2" else ctx.versions.v1, ctx.src)
        if then == "v1-touched":
            now = time.time()
            for path in ctx.src.rglob("*"):
                if path.is_file():
                    os.utime(path, (now, now))
        rerun = procs.run_ingest(ctx.src, home, ctx.work)
        reference = ctx.ref2 if then == "v2" else ctx.ref1
        final = read_state(home, ctx.src)
        equal = same(final, reference)
        out.append({
            "case": case, "killed": seen is not None, "attempts": attempt, "phase": proc.phase_at(proc.killed_at_s or 0), "after_kill": after,
            "hit_window": after["chunks"] == "new" and after["ledger"] != "new",
            "rerun_exit": rerun.returncode, "rerun_counts": {k: v for k, v in ((rerun.json_out() or {}).get("counts") or {}).items() if v},
            "expected": "v2" if then == "v2" else "v1", "equals_expected": equal,
            "difference": None if equal else difference(final, reference),
        })
        log(f"between the commits, {case}: after the kill chunks {after['chunks']} / ledger {after['ledger']}; "
            f"rerun {'equals' if equal else 'DIFFERS FROM'} {out[-1]['expected']}")
        ctx.discard(home)
    materialise(ctx.versions.v2, ctx.src)
    return out


def _helper_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAGTUNE_", "PREFECT_"))}
    env.update(PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
    return env


# --- 2. kill -9 during training ----------------------------------------------------------------------


def _train_argv(model: Path, work: Path, steps: int) -> list[str]:
    return [str(procs.PYTHON), str(REPO / "bench" / "drills_train.py"), "train", str(model), str(work), "--steps", str(steps)]


def _train_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAGTUNE_")}
    env.update(PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    return env


def _steps_seen(proc: procs.Proc) -> list[tuple[float, int]]:
    return [(t, int(line.split()[1])) for t, line in list(proc.stdout) if line.startswith("step ")]


def _result_line(proc: procs.Proc) -> dict[str, Any] | None:
    for _, line in proc.stdout:
        if line.startswith("result "):
            return json.loads(line[len("result "):])
    return None


def _tensors(adapter: Path) -> dict[str, Any]:
    from safetensors.numpy import load_file

    return load_file(str(adapter / "adapter_model.safetensors"))


def drill_train(ctx: Context) -> dict[str, Any]:
    import numpy as np

    steps, n = ctx.args.train_steps, ctx.args.train_kills
    model = ctx.scratch("tiny-llama")
    build = procs.wait(procs.start([procs.PYTHON, REPO / "bench" / "drills_train.py", "build", model], _train_env(), ctx.work), 600)
    if build.returncode != 0:
        return {"passed": False, "error": "building the tiny llama failed: " + build.stderr_text()[-2000:]}
    ref_dir, cut_dir = ctx.scratch("train-uninterrupted"), ctx.scratch("train-killed")
    ref = procs.wait(procs.start(_train_argv(model, ref_dir, steps), _train_env(), ctx.work), 900)
    if ref.returncode != 0:
        return {"passed": False, "error": "the uninterrupted run failed: " + ref.stderr_text()[-2000:]}
    seen = _steps_seen(ref)
    gaps = [b[0] - a[0] for a, b in zip(seen, seen[1:])]
    step_s = statistics.median(gaps) if gaps else 0.05
    log(f"uninterrupted training: {ref.wall_s:.1f} s, {len(seen)} steps, median {step_s * 1000:.0f} ms per step (checkpoint included)")

    rng = random.Random(ctx.args.seed + 2)
    targets = sorted(rng.sample(range(1, steps + 1), min(n, steps)))
    kills = []
    for target in targets:
        proc = procs.start(_train_argv(model, cut_dir, steps), _train_env(), ctx.work)
        while proc.running() and not any(s >= target for _, s in _steps_seen(proc)):
            time.sleep(0.002)
        jitter = rng.uniform(0, 1.5 * step_s)
        time.sleep(jitter)
        finished_first = not proc.running()
        if finished_first:
            procs.wait(proc, 60)
        else:
            procs.kill(proc, settle_s=0.2)
        printed = [s for _, s in _steps_seen(proc)]
        checkpoints = sorted((p.name for p in (cut_dir / "checkpoints").glob("*")), key=lambda s: (not s.startswith("step-"), s))
        kills.append({
            "target_step": target, "jitter_ms": round(jitter * 1000, 1), "finished_before_kill": finished_first,
            "first_step_printed": printed[0] if printed else None, "last_step_printed": printed[-1] if printed else None,
            "checkpoints_after": checkpoints, "adapter_written": (cut_dir / "adapter" / "adapter_model.safetensors").is_file(),
            "leftovers": [p["kind"] for p in proc.leftovers],
        })
        log(f"training kill at step {target} (+{jitter * 1000:.0f} ms): steps {printed[:1]}..{printed[-1:]} printed, checkpoints {checkpoints}")
    final = procs.wait(procs.start(_train_argv(model, cut_dir, steps), _train_env(), ctx.work), 900)
    result = _result_line(final) or {}
    if final.returncode != 0 or not (cut_dir / "adapter").is_dir():
        return {"passed": False, "kills": kills, "error": "the final resumed run failed: " + final.stderr_text()[-2000:]}
    a, b = _tensors(ref_dir / "adapter"), _tensors(cut_dir / "adapter")
    same_keys = a.keys() == b.keys()
    exact = same_keys and all(np.array_equal(a[k], b[k]) for k in a)
    max_diff = max((float(np.max(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64)))) for k in a if k in b), default=float("nan"))
    ref_hist = json.loads((ref_dir / "adapter" / "training.json").read_text())["history"]
    cut_hist = json.loads((cut_dir / "adapter" / "training.json").read_text())["history"]
    same_losses = [h["train_loss"] for h in ref_hist] == [h["train_loss"] for h in cut_hist]
    out = {
        "passed": bool(exact and same_losses),
        "kills": len(kills), "steps": steps, "tensors": len(a), "parameters": int(sum(v.size for v in a.values())),
        "weights_identical": exact, "max_abs_diff": max_diff, "train_losses_identical": same_losses,
        "final_resumed_from_step": result.get("resumed_from_step"), "final_reused": result.get("reused"),
        "uninterrupted_s": round(ref.wall_s or 0, 1), "median_step_ms": round(step_s * 1000, 1),
        "kill_log": kills,
    }
    ctx.discard(model)
    return out


# --- 3. injected faults ----------------------------------------------------------------------------


def drill_faults(ctx: Context) -> dict[str, Any]:
    out_file = ctx.work / "faults.json"
    argv = [procs.PYTHON, REPO / "bench" / "drills_faults.py", "--v1", ctx.versions.v1, "--v2", ctx.versions.v2, "--src", ctx.src,
            "--ref1", ctx.ref1_home, "--ref2", ctx.ref2_home, "--work", ctx.scratch("faults"), "--out", out_file,
            "--rate", str(ctx.args.fault_rate), "--seeds", ctx.args.fault_seeds]
    proc = procs.start(argv, _helper_env(), ctx.work)
    procs.wait(proc, 3600)
    if proc.returncode != 0 or not out_file.is_file():
        return {"passed": False, "error": f"drills_faults.py exit {proc.returncode}: " + proc.stderr_text()[-3000:]}
    data = json.loads(out_file.read_text())
    flows = data["random"]
    runs = [r for f in flows for r in f["flow_runs"]]
    prefect = [r["prefect"] for r in runs if r.get("prefect")]
    task_runs = sum(p.get("task_runs", 0) for p in prefect)
    attempts = sum(r["draws"] for r in runs)
    injected = sum(r["injected"] for r in runs)
    retries = sum(p.get("retries", 0) for p in prefect)
    exhausted = sum(1 for r in runs if r["status"] != "completed")
    by_task: Counter[str] = Counter()
    for r in runs:
        by_task.update(r["injected_by_task"])
    summary = {
        "passed": all(f["completed"] and f["equals_clean"] for f in flows),
        "rate": data["rate"], "seeds": data["seeds"],
        "flows": len(flows), "flow_runs": len(runs), "flows_needing_a_rerun": sum(1 for f in flows if len(f["flow_runs"]) > 1),
        "flows_completed": sum(f["completed"] for f in flows), "flows_equal_to_clean": sum(f["equals_clean"] for f in flows),
        "task_runs": task_runs, "task_attempts": attempts, "injected_failures": injected,
        "injected_share_of_attempts": round(injected / attempts, 3) if attempts else None,
        "task_runs_retried": sum(p.get("task_runs_retried", 0) for p in prefect),
        "prefect_retries": retries, "flow_runs_failed_retries_exhausted": exhausted,
        "injected_by_task": dict(by_task.most_common()),
        "duplicates": sum(f["duplicates"] for f in flows),
        "flows_detail": flows, "wall_s": data["wall_s"],
    }
    return summary


# --- 4. concurrent ingests ---------------------------------------------------------------------------


def _interval(proc: procs.Proc) -> tuple[float, float]:
    """(flow start, exit) on the monotonic clock."""
    begin = proc.first("flow started")
    return (proc.t0 + (begin if begin is not None else 0.0), proc.t0 + (proc.wall_s or proc.elapsed()))


def _pair(ctx: Context, homes: tuple[Path, Path], extra: tuple[list[str], list[str]], env_extra: dict[str, str] | None = None) -> tuple[procs.Proc, procs.Proc]:
    a = procs.start(procs.ingest_argv(ctx.src, *extra[0]), procs.drill_env(homes[0], **(env_extra or {})), ctx.work)
    b = procs.start(procs.ingest_argv(ctx.src, *extra[1]), procs.drill_env(homes[1], **(env_extra or {})), ctx.work)
    procs.wait(a, 1200)
    procs.wait(b, 1200)
    return a, b


def _errors(proc: procs.Proc) -> list[str]:
    keep = ("database is locked", "Traceback", "| ERROR", "error:")
    return sorted({line.strip()[:200] for _, line in proc.stderr if any(k in line for k in keep)})[:8]


def drill_concurrency(ctx: Context) -> dict[str, Any]:
    assert ctx.ref1 is not None
    materialise(ctx.versions.v1, ctx.src)
    out: dict[str, Any] = {}

    # Same home, same table: the second must wait for the writer lock (or stop with a message naming it).
    home = ctx.scratch("conc-same-table")
    a, b = _pair(ctx, (home, home), ([], []))
    counts = [(p.json_out() or {}).get("counts") or {} for p in (a, b)]
    first, second = sorted((a, b), key=lambda p: _interval(p)[1])
    state = read_state(home, ctx.src)
    # The lock covers the whole run: the second reads the source only after the first has written.
    first_writes = [t for t, e in first.events() if e in ("write-ledger finished", "maintain-indexes finished")]
    second_discover = second.first("discover-sources finished")
    gap = None if not first_writes or second_discover is None else round(second.t0 + second_discover - (first.t0 + max(first_writes)), 2)
    added = sorted(c.get("added", 0) for c in counts)
    out["same_table"] = {
        "exit_codes": [a.returncode, b.returncode],
        "added": [c.get("added") for c in counts], "unchanged": [c.get("unchanged") for c in counts],
        "chunks_before": [c.get("chunks_before") for c in counts],
        "second_discovered_after_first_wrote_s": gap,
        "serialised": added == [0, max(added)] and max(added) > 0,
        "duplicates": state.duplicates, "equals_clean": same(state, ctx.ref1),
        "lock_message": next((line.strip() for _, line in a.stderr + b.stderr if "lock" in line.lower() and "table" in line.lower()), None),
        "errors_logged": _errors(a) + _errors(b),
    }
    out["same_table"]["passed"] = bool(
        a.returncode == 0 and b.returncode == 0 and out["same_table"]["serialised"] and not state.duplicates and out["same_table"]["equals_clean"]
    )
    log(f"concurrency, same table: exits {out['same_table']['exit_codes']}, added {out['same_table']['added']}, equals clean {out['same_table']['equals_clean']}")
    ctx.discard(home)

    # Same home, different tables: both complete, and they ran at the same time.
    home = ctx.scratch("conc-two-tables")
    a, b = _pair(ctx, (home, home), (["--table", "alpha"], ["--table", "beta"]))
    (a0, a1), (b0, b1) = _interval(a), _interval(b)
    states = {t: read_state(home, ctx.src, table=t) for t in ("alpha", "beta")}
    out["two_tables"] = {
        "exit_codes": [a.returncode, b.returncode],
        "flows_overlapped_s": round(max(0.0, min(a1, b1) - max(a0, b0)), 2),
        "duplicates": sum(s.duplicates for s in states.values()),
        "equal_to_clean": {t: (s.chunks == ctx.ref1.chunks and s.vectors == ctx.ref1.vectors and s.ledger == ctx.ref1.ledger) for t, s in states.items()},
        "errors_logged": _errors(a) + _errors(b),
    }
    out["two_tables"]["passed"] = bool(a.returncode == 0 and b.returncode == 0 and all(out["two_tables"]["equal_to_clean"].values()))
    log(f"concurrency, two tables: exits {out['two_tables']['exit_codes']}, overlap {out['two_tables']['flows_overlapped_s']} s")
    ctx.discard(home)

    # Two homes, one store.uri: the writer lock lives under each home, so nothing serialises them.
    shared = ctx.scratch("conc-shared-store")
    homes = (shared / "home-a", shared / "home-b")
    a, b = _pair(ctx, homes, ([], []), {"RAGTUNE_STORE__URI": str(shared / "lancedb")})
    state = read_state(homes[0], ctx.src, lancedb_dir=shared / "lancedb")
    counts = [(p.json_out() or {}).get("counts") or {} for p in (a, b)]
    (a0, a1), (b0, b1) = _interval(a), _interval(b)
    out["shared_store_two_homes"] = {
        "exit_codes": [a.returncode, b.returncode], "added": [c.get("added") for c in counts],
        "flows_overlapped_s": round(max(0.0, min(a1, b1) - max(a0, b0)), 2),
        "rows": state.rows, "clean_rows": ctx.ref1.rows, "duplicates": state.duplicates,
        "equals_clean": same(state, ctx.ref1), "opens": state.opens, "error": state.error,
        "errors_logged": _errors(a) + _errors(b),
    }
    out["shared_store_two_homes"]["passed"] = bool(state.opens and not state.duplicates and out["shared_store_two_homes"]["equals_clean"])
    log(f"concurrency, shared store: exits {[a.returncode, b.returncode]}, rows {state.rows} (clean {ctx.ref1.rows}), duplicates {state.duplicates}")
    ctx.discard(shared)
    out["passed"] = out["same_table"]["passed"] and out["two_tables"]["passed"]  # the shared store is reported, not required
    return out


# --- 5. hostile inputs -------------------------------------------------------------------------------


def drill_hostile(ctx: Context) -> dict[str, Any]:
    from bench.drills_hostile import make_hostile
    from bench.drills_parse import split_detail

    folder = ctx.scratch("hostile")
    made = make_hostile(folder, ctx.args.seed, quick=ctx.args.quick)
    kinds = {h.name: h.kind for h in made}
    log(f"hostile: {len(made)} files ({sum(h.size for h in made) / 2**20:.0f} MiB), ingesting")
    home = ctx.scratch("hostile-home")
    proc = procs.wait(procs.start(procs.ingest_argv(folder), procs.drill_env(home), ctx.work), ctx.args.hostile_bound_s)
    manifest = proc.json_out() or {}
    state = read_state(home, folder)
    skipped = {q["doc_id"]: q for q in manifest.get("quarantine", [])}
    outcome: dict[str, str] = {}
    for h in made:
        row = state.ledger.get(h.name)
        if row is not None:
            outcome[h.name] = "ingested" if row[0] == "ingested" else (row[3] or "(no reason)")
        elif h.name in skipped:
            outcome[h.name] = skipped[h.name]["reason"] or "(no reason)"
        else:
            outcome[h.name] = "(missing)"
    reasons = Counter(outcome.values())
    by_kind: dict[str, Counter[str]] = {}
    for name, result in outcome.items():
        by_kind.setdefault(kinds[name], Counter())[result] += 1

    # Per-file parse time and peak memory: every file again through the same sandbox, one worker, with
    # the worker's peak RSS reset before each file. Files that timed out in the ingest are not retried.
    from tasks.config import load_settings
    from tasks.ingest import parse_limits
    from tasks.sandbox import parse_many

    limits = parse_limits(load_settings())
    paths = [folder / h.name for h in made if outcome[h.name] != "timeout"]
    per_file = []
    started = time.perf_counter()
    for o in parse_many(paths, limits, workers=1, parse_fn="bench.drills_parse:measured_parse"):
        rss = getattr(o.document, "drill_rss_kb", None) if o.document is not None else split_detail(o.detail)[1]
        ok = rss is not None and None not in rss
        per_file.append({"file": o.path.name, "kind": kinds[o.path.name], "seconds": round(o.seconds, 3),
                         "peak_rss_mb": round(rss[1] / 1024, 1) if ok else None,
                         "growth_mb": round((rss[1] - rss[0]) / 1024, 1) if ok else None, "reason": o.reason or "ingested"})
    timeouts = [h.name for h in made if outcome[h.name] == "timeout"]
    per_file += [{"file": n, "kind": kinds[n], "seconds": limits.timeout_s, "peak_rss_mb": None, "growth_mb": None, "reason": "timeout"} for n in timeouts]
    measured_s = time.perf_counter() - started
    slowest = sorted(per_file, key=lambda r: -r["seconds"])[:5]
    hungriest = sorted((r for r in per_file if r["growth_mb"] is not None), key=lambda r: -r["growth_mb"])[:5]
    accounted = all(v not in ("(missing)", "(no reason)") for v in outcome.values())
    # Chunks are bounded in embedder tokens; a text with few tokens (one huge word) can still be huge.
    by_length = sorted(((len(text), doc) for doc, text in state.chunks.values()), reverse=True)[:3]
    peak_main = proc.peak_rss_mb
    out = {
        "files": len(made), "bytes": sum(h.size for h in made),
        "files_by_kind": dict(Counter(kinds.values())),
        "exit_code": proc.returncode, "wall_s": round(proc.wall_s or 0, 1), "bound_s": ctx.args.hostile_bound_s,
        "finished_within_bound": proc.killed_at_s is None and proc.returncode is not None,
        "every_file_accounted": accounted, "missing": sorted(n for n, v in outcome.items() if v == "(missing)")[:10],
        "outcomes": dict(reasons.most_common()),
        "outcomes_by_kind": {k: dict(v.most_common()) for k, v in sorted(by_kind.items())},
        "chunks_written": state.rows, "duplicates": state.duplicates, "table_opens": state.opens and state.searches,
        "longest_chunks": [{"chars": n, "doc_id": doc} for n, doc in by_length],
        "peak_rss_main_mb": round(peak_main, 1), "rss_bound_mb": ctx.args.rss_bound_mb,
        "peak_rss_child_mb": round(proc.peak_children_rss_mb, 1), "maxrss_tree_mb": round(proc.maxrss_mb or 0, 1),
        "manifest_timings_s": manifest.get("timings"),
        "per_file_pass_s": round(measured_s, 1),
        "slowest_files": slowest, "largest_rss_growth_files": hungriest,
        "worker_peak_rss_mb": max((r["peak_rss_mb"] for r in per_file if r["peak_rss_mb"] is not None), default=None),
        "parse_limits": {"timeout_s": limits.timeout_s, "memory_mb": limits.memory_mb, "max_file_mb": limits.max_bytes / 2**20, "max_chars": limits.max_chars},
    }
    out["passed"] = bool(
        proc.returncode == 0 and out["finished_within_bound"] and accounted and not state.duplicates
        and out["table_opens"] and peak_main <= ctx.args.rss_bound_mb
    )
    if proc.returncode != 0:
        out["stderr_tail"] = proc.stderr_text()[-3000:]
    log(f"hostile: exit {proc.returncode} in {proc.wall_s:.0f} s, outcomes {dict(reasons.most_common(6))}, peak RSS main {peak_main:.0f} MiB")
    ctx.discard(folder)
    ctx.discard(home)
    return out


# --- report ------------------------------------------------------------------------------------------


def _yes(v: Any) -> str:
    return "**yes**" if v else "**NO**"


def to_markdown(r: dict[str, Any]) -> str:
    d = r["drills"]
    lines = [
        f"## ragtune reliability drills ({r['timestamp']}, commit {str(r.get('commit'))[:10]})",
        "",
        f"{r['machine']['nproc']} × {r['machine']['cpu_model']}, Python {r['machine']['python']}, prefect {r['machine']['prefect']}, "
        f"lancedb {r['machine']['lancedb']}; `{r['command']}`; seed {r['settings']['seed']}; {r['wall_s'] / 60:.1f} min; "
        f"load average {r['load_before']} before, {r['load_after']} after.",
    ]
    ref = r.get("references") or {}
    if ref:
        c = ref["corpus"]
        lines += [
            "",
            f"Corpus v1: {c['v1_files']} files ({c['v1_bytes'] / 2**20:.1f} MiB; {', '.join(f'{k} {v}' for k, v in c['v1_by_format'].items())}); "
            f"v2: {', '.join(f'{v} {k}' for k, v in c['changes'].items())}. Clean runs (hashing embedder, temporary Prefect server): "
            f"v1 {ref['v1']['run']['wall_s']} s → {ref['v1']['rows']} chunks; v2 from the v1 state {ref['v2']['run']['wall_s']} s → "
            f"{ref['v2']['rows']} chunks ({ref['chunks_only_in_v1']} only in v1, {ref['chunks_only_in_v2']} only in v2).",
        ]
    lines += ["", "| drill | checked | result |", "|---|---|---|"]
    for name in [n for n in DRILLS if n in d and "error" in d[n]]:
        lines.append(f"| {name} | | **failed to run**: {' '.join(d[name]['error'].split())[-300:]} |")
    d = {n: v for n, v in d.items() if "error" not in v}
    if "kill" in d:
        k = d["kill"]
        lines.append(
            f"| kill -9 during ingest | {k['random_kills']} kills at seeded random moments of `ingest v2` over a v1 table ({k['clean_run_s']} s clean run, "
            f"flow {k['flow_started_at_s']}–{k['flow_completed_at_s']} s) + {k['commit_window_kills']} aimed at the commit window; then a rerun each | "
            f"table opened {k['tables_opened']}/{k['kills']}, duplicate chunk_ids {k['duplicates_after_kill']}, "
            f"old or new state {k['ok_after_kill']}/{k['kills']}; reruns equal to the clean result (ids, texts, vectors, ledger) {k['reruns_converged']}/{k['kills']} "
            f"→ {_yes(all(t['ok_after_kill'] and t['converged'] for t in k['trials']))} |"
        )
        for b in k["between_commits"]:
            attempt = f" (attempt {b['attempts']})" if b["attempts"] > 1 else ""
            lines.append(
                f"| kill -9 right after the chunk commit, then {b['case']} | the rerun must give {b['expected']} | "
                f"after the kill{attempt}: "
                f"chunks {b['after_kill']['chunks']}, ledger {b['after_kill']['ledger']}; after the rerun equal: {_yes(b['equals_expected'])}"
                + ("" if b["equals_expected"] else f" ({b['difference']['extra_chunks']} extra / {b['difference']['missing_chunks']} missing chunks in {', '.join(b['difference']['documents'][:3])})")
                + " |"
            )
    if "train" in d:
        t = d["train"]
        lines.append(
            f"| kill -9 during training | {t['kills']} kills of one {t['steps']}-step LoRA run (checkpoint every step), resumed each time | "
            f"{t['tensors']} adapter tensors ({t['parameters']:,} values) identical to the uninterrupted run: {_yes(t['weights_identical'])} "
            f"(max abs diff {t['max_abs_diff']:g}); train losses identical: {_yes(t['train_losses_identical'])} |"
        )
    if "faults" in d:
        f = d["faults"]
        lines.append(
            f"| {f['rate']:.0%} of task attempts fail | {f['flows']} ingest flows (seeds {', '.join(map(str, f['seeds']))}; v1 then v2 each) | "
            f"{f['injected_failures']} failures injected in {f['task_attempts']} attempts of {f['task_runs']} task runs "
            f"({f['injected_share_of_attempts']:.0%}), {f['prefect_retries']} Prefect retries; completed {f['flows_completed']}/{f['flows']} "
            f"({f['flows_needing_a_rerun']} after a rerun), equal to the clean rows {f['flows_equal_to_clean']}/{f['flows']} → {_yes(all(x['completed'] and x['equals_clean'] for x in f['flows_detail']))} |"
        )
    if "concurrency" in d:
        c = d["concurrency"]
        s, t2, sh = c["same_table"], c["two_tables"], c["shared_store_two_homes"]
        lines.append(
            f"| two ingests, one table | started together | exits {s['exit_codes']}; added {s['added']} (one waited for the writer lock; "
            f"it listed the source {s['second_discovered_after_first_wrote_s']} s after the other's last write); duplicates {s['duplicates']}; equal to clean {_yes(s['equals_clean'])} |"
        )
        lines.append(
            f"| two ingests, two tables | started together | exits {t2['exit_codes']}; flows overlapped {t2['flows_overlapped_s']} s; "
            f"both equal to clean {_yes(all(t2['equal_to_clean'].values()))} |"
        )
        lines.append(
            f"| two homes, one `store.uri` | started together | exits {sh['exit_codes']}; added {sh['added']}; overlapped {sh['flows_overlapped_s']} s; "
            f"rows {sh['rows']} (clean {sh['clean_rows']}), duplicates {sh['duplicates']}; equal to clean {_yes(sh['equals_clean'])} |"
        )
    if "hostile" in d:
        h = d["hostile"]
        lines.append(
            f"| hostile files | {h['files']} files ({h['bytes'] / 2**20:.0f} MiB: {', '.join(f'{v} {k}' for k, v in h['files_by_kind'].items())}) in one ingest | "
            f"exit {h['exit_code']} in {h['wall_s']} s (bound {h['bound_s']:.0f}); every file ingested or quarantined with a reason: {_yes(h['every_file_accounted'])}; "
            f"peak RSS main process {h['peak_rss_main_mb']:.0f} MiB (bound {h['rss_bound_mb']:.0f}) → {_yes(h['passed'])} |"
        )
    if "kill" in d:
        k = d["kill"]
        lines += ["", "Ingest kills (phase: the last task Prefect reported finished before the kill):", "",
                  "| # | kill | at s | phase | chunks / ledger after | spool left | left running | rerun |", "|---:|---|---:|---|---|---|---|---|"]
        for i, t in enumerate(k["trials"]):
            a = t["after_kill"]
            aim = {"start-up": f"at {t['aim']:.1f} s", "flow": f"flow + {t['aim']:.0%}", "exit": f"exit + {t['aim']:.0%}",
                   "commit window": f"validate + {t['aim']:.0f} ms"}[t["mode"]]
            lines.append(
                f"| {i + 1} | {aim} | {t['at_s']} | {t['phase']} | {a['chunks']} / {a['ledger']}{'' if a['opens'] else ' (does not open)'} | "
                f"{'yes' if a['spool_left'] else ''} | {', '.join(t['leftovers']) or ''} | {'equal' if t['converged'] else '**differs**'} ({t['rerun_s']} s) |"
            )
        if k["leftover_processes"]:
            o = k.get("orphaned_server") or {}
            lines += ["", f"Processes left running 2 s after the kill: {', '.join(f'{v} × {n}' for n, v in k['leftover_processes'].items())} "
                      f"({k['kills_leaving_processes']} of {k['kills']} kills)."
                      + (f" The first orphaned server ({o.get('rss_mb')} MiB) was left alone: a CLI rerun in that home meanwhile exited "
                         f"{o.get('cli_rerun_exit')} ({'equal to the clean result' if o.get('cli_rerun_converged') else 'NOT equal'}), and the server was "
                         f"{'still running' if o.get('still_alive') else 'gone'} {o.get('alive_after_s')} s later." if o else "")]
    if "train" in d and "kill_log" in d["train"]:
        t = d["train"]
        lines += ["", f"Training kills (uninterrupted run {t['uninterrupted_s']} s, {t['median_step_ms']} ms per step with its checkpoint): "
                  + "; ".join(f"step {x['target_step']} +{x['jitter_ms']:.0f} ms → checkpoints {', '.join(x['checkpoints_after']) or 'none'}" for x in t["kill_log"])
                  + f"; the final run resumed from step {t['final_resumed_from_step']}."]
    if "faults" in d and "injected_by_task" in d["faults"]:
        f = d["faults"]
        lines += ["", "Injected failures by task: " + ", ".join(f"{k} {v}" for k, v in f["injected_by_task"].items())
                  + f". Flow runs whose retries ran out: {f['flow_runs_failed_retries_exhausted']} (each rerun with faults still on)."]
    if "hostile" in d:
        h = d["hostile"]
        lines += ["", "Hostile files, outcome by kind:", "", "| kind | files | outcomes |", "|---|---:|---|"]
        for kind, outcomes in h["outcomes_by_kind"].items():
            lines.append(f"| {kind} | {sum(outcomes.values())} | {', '.join(f'{k} {v}' for k, v in outcomes.items())} |")
        lines += ["", "Slowest files to parse (sandbox, one worker): " + "; ".join(f"`{x['file']}` {x['seconds']} s ({x['reason']})" for x in h["slowest_files"][:3])
                  + ". Most memory taken while parsing one file (worker RSS growth, to its peak): "
                  + "; ".join(f"`{x['file']}` +{x['growth_mb']} MiB to {x['peak_rss_mb']} MiB ({x['reason']})" for x in h["largest_rss_growth_files"][:3])
                  + f"; the worker's peak over all files {h['worker_peak_rss_mb']} MiB (cap {h['parse_limits']['memory_mb']} MiB of address space)"
                  + f". Stages of the hostile ingest (s): {h['manifest_timings_s']}. Longest chunks stored: "
                  + "; ".join(f"{x['chars']:,} characters (`{x['doc_id']}`)" for x in h["longest_chunks"]) + "."]
    lines += ["", f"Overall: {_yes(r['passed'])} (per-drill details in `{r['json']}`)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    args = parse_args()
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    work = DATA / f"drills-{stamp}"
    work.mkdir(parents=True)
    result: dict[str, Any] = {
        "benchmark": "drills", "timestamp": stamp, "command": "python bench/drills.py " + " ".join(sys.argv[1:]),
        "machine": machine(), "load_before": [round(x, 2) for x in os.getloadavg()],
        "settings": {k: getattr(args, k) for k in ("quick", "only", "seed", "max_files", "ingest_kills", "write_window_kills", "train_kills", "train_steps", "fault_rate", "fault_seeds", "hostile_bound_s", "rss_bound_mb")},
        "drills": {},
    }
    started = time.perf_counter()
    ctx = Context(args, work)
    try:
        if set(args.only) & {"kill", "faults", "concurrency"}:
            ctx.prepare()
            result["references"] = ctx.references
        for name, fn in (("kill", drill_kill), ("faults", drill_faults), ("concurrency", drill_concurrency), ("hostile", drill_hostile), ("train", drill_train)):
            if name in args.only:
                log(f"drill: {name}")
                t0 = time.perf_counter()
                try:
                    result["drills"][name] = fn(ctx)
                except Exception:  # noqa: BLE001 - one drill that cannot run must not lose the others' results
                    result["drills"][name] = {"passed": False, "error": traceback.format_exc()[-4000:]}
                    log(f"drill {name} could not run:\n{result['drills'][name]['error']}")
                result["drills"][name]["drill_s"] = round(time.perf_counter() - t0, 1)
    finally:
        result["wall_s"] = round(time.perf_counter() - started, 1)
        result["load_after"] = [round(x, 2) for x in os.getloadavg()]
        result["passed"] = all(d.get("passed") for d in result["drills"].values()) and bool(result["drills"])
        name = "drills-quick" if args.quick else "drills"
        result["json"] = f"bench/results/{name}-latest.json"
        result["commit"] = commit()
        markdown = to_markdown(result)
        write_results(name, result, markdown)
        print(markdown)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
