"""`make bench`: ingestion throughput of ragtune on a real corpus nobody here wrote.

The corpus is a deterministic subset of Debian documentation packages (python3.11-doc, git-doc,
gnuplot-doc: HTML; git-doc: plain text; debian-reference-en: a 261-page PDF), fetched with
`apt-get download` into `bench/data/` (gitignored). Everything below runs in ONE process:

1. set-up, not timed as part of any run: the temporary Prefect server is started by a trivial flow,
   and the embedder is loaded and warmed up exactly as the flow loads it (it is cached per process);
2. cold run: the real `ingest` flow into a fresh `RAGTUNE_HOME` (bench/data/home-<timestamp>);
3. raw encode: `SentenceTransformer.encode` on the same texts the cold run embedded, same model
   object, batch size and threads;
4. unchanged rerun of the flow, then 5. a rerun after appending a paragraph to one HTML page.

Results: `$RAGTUNE_HOME/bench/ingest-<timestamp>.json` (the user's home, default `.ragtune`),
`bench/results/ingest-latest.{json,md}` (`ingest-quick.*` with `--quick`), and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "bench" / "data"
RESULTS = REPO / "bench" / "results"
sys.path.insert(0, str(REPO))

from bench.corpus import EDIT_PARAGRAPH, build, edit_one_page  # noqa: E402
from ragtune_cli import _prepare_env  # noqa: E402
from tasks.config import load_settings  # noqa: E402

GOAL_RATIO = 0.85  # end-to-end chunks/s ÷ raw encode chunks/s, at least
GOAL_RERUN = 0.05  # unchanged rerun time ÷ cold time, at most
CONTENDED = 0.10  # other processes used more than this share of the machine's CPU while timing


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--max-files", type=int, default=300, help="files in the subset, the PDF included (default 300: ~3,800 chunks)")
    p.add_argument("--quick", action="store_true", help="smoke run: 12 HTML/text files, no PDF")
    p.add_argument("--threads", type=int, default=2, help="RAGTUNE_TORCH_THREADS for the run (default 2)")
    p.add_argument("--raw-repeats", type=int, default=3, help="raw encode timings, median reported (each takes about as long as the embed stage)")
    return p.parse_args()


def configure_env(home: Path, threads: int) -> None:
    """Point ragtune at a fresh home and prepare Prefect the way the CLI does; before Prefect is imported."""
    os.environ["RAGTUNE_HOME"] = str(home)
    os.environ["RAGTUNE_TORCH_THREADS"] = str(threads)
    os.environ["RAGTUNE_PROGRESS"] = "0"  # no progress bars redrawing during timed runs
    _prepare_env(home)


def git_commit() -> str | None:
    """HEAD's commit read from .git (no git subprocess), or None outside a checkout."""
    git = REPO / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head
        ref = head[5:]
        if (git / ref).is_file():
            return (git / ref).read_text().strip()
        for line in (git / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split()[0]
    except OSError:
        pass
    return None


def machine_info() -> dict[str, Any]:
    import torch

    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), platform.processor())
    versions = {name: importlib.metadata.version(name) for name in ("sentence-transformers", "transformers", "lancedb", "prefect", "great-expectations")}
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        **versions,
    }


def _relative(path: str | Path) -> str:
    path = Path(path)
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def run(args: argparse.Namespace, stamp: str) -> dict[str, Any]:
    """Fetch the corpus, then measure set-up, cold run, raw encode, unchanged rerun and one-file edit."""
    with_pdf = not args.quick
    corpus = build(DATA, 12 if args.quick else args.max_files, with_pdf)
    repeats = 1 if args.quick else args.raw_repeats
    home = DATA / f"home-{stamp}"
    configure_env(home, args.threads)
    from bench import ingest as measure  # imports Prefect: only now that its environment is set

    settings = load_settings()
    prefect_s = measure.start_prefect()
    embedder, load_s, warmup_s = measure.load_model(settings)

    with measure.ChildRssSampler() as children:
        cold = measure.run_flow(corpus.root)
    rss_after_cold = {**measure.peak_rss_mb(), **{f"sampled_{k}": v for k, v in children.peak_mb.items()}}
    raw = measure.raw_encode(corpus.root, embedder, settings, repeats)
    rerun = measure.run_flow(corpus.root)
    edited = edit_one_page(corpus)
    edit = measure.run_flow(corpus.root)

    c = cold.summary()
    embedded = c["counts"]["chunks_embedded"]
    with_load = cold.wall_s + load_s + warmup_s
    description = corpus.describe()
    description["source_dir"] = _relative(description["source_dir"])
    return {
        "benchmark": "ingest",
        "timestamp": stamp,
        "git_commit": git_commit(),
        "command": " ".join([Path(sys.executable).name, _relative(__file__), *sys.argv[1:]]),
        "machine": machine_info(),
        "settings": {
            "torch_threads": settings.threads,
            "embedder": embedder.fingerprint,
            "encode_batch_size": embedder.batch_size,
            "embed_task_group": settings.embedder.batch_size * 4,
            "max_tokens": embedder.max_tokens,
            "chunking": settings.chunking.model_dump(),
            "parse_workers": settings.ingest.parse_workers,
            "ragtune_home": _relative(home),
            "prefect_api": os.environ.get("PREFECT_API_URL") or "temporary server, started by a trivial flow before timing",
        },
        "corpus": description,
        "setup_s": {"prefect_server_start": round(prefect_s, 2), "model_load": round(load_s, 2), "model_warmup_encode": round(warmup_s, 2)},
        "cold": {**c, "peak_rss_mb": rss_after_cold},
        "raw_encode": raw,
        "ratio_e2e_over_raw": {
            "flow_wall": round(c["chunks_embedded_per_s"] / raw["chunks_per_s"], 3),
            "flow_wall_excl_load_models_stage": round(c["chunks_embedded_per_s_excl_load_models"] / raw["chunks_per_s"], 3),
            "flow_wall_plus_model_load": round(embedded / with_load / raw["chunks_per_s"], 3),
            "goal_at_least": GOAL_RATIO,
        },
        "rerun_unchanged": {**rerun.summary(), "ratio_to_cold": round(rerun.wall_s / cold.wall_s, 4), "goal_at_most": GOAL_RERUN},
        "edit_one_file": {**edit.summary(), "file": _relative(edited), "appended_chars": len(EDIT_PARAGRAPH)},
        "peak_rss_mb_end": measure.peak_rss_mb(),
    }


def to_markdown(r: dict[str, Any]) -> str:
    """The short human summary printed to stdout and saved next to the JSON."""
    m, corpus, cold, raw = r["machine"], r["corpus"], r["cold"], r["raw_encode"]
    ratio, rerun, edit, setup = r["ratio_e2e_over_raw"], r["rerun_unchanged"], r["edit_one_file"], r["setup_s"]
    rss = cold["peak_rss_mb"]
    fmts = ", ".join(f"{n} {f}" for f, n in corpus["files_by_format"].items())
    ok = lambda good: "met" if good else "**missed**"  # noqa: E731
    lines = [
        f"## ragtune ingest benchmark ({r['timestamp']}, commit {(r['git_commit'] or 'unknown')[:10]})",
        "",
        f"{m['nproc']} × {m['cpu_model']}, Python {m['python']}, torch {m['torch']} with {m['torch_threads']} threads "
        f"(RAGTUNE_TORCH_THREADS={r['settings']['torch_threads']}); corpus {corpus['files']} files ({fmts}), "
        f"{corpus['bytes'] / 2**20:.1f} MiB from {', '.join(corpus['packages'])}.",
        "",
        "| metric | value | goal |",
        "|---|---:|---|",
        f"| cold run wall (flow call; model preloaded) | {cold['wall_s']:.1f} s | |",
        f"| documents/s | {cold['documents_per_s']:.2f} ({cold['files_parsed']} files, {len(cold['quarantine'])} quarantined) | |",
        f"| chunks/s end-to-end | {cold['chunks_embedded_per_s']:.2f} ({cold['counts']['chunks_embedded']} embedded, "
        f"{cold['counts']['chunks_written']} written) | |",
        f"| chunks/s end-to-end, excl. `load_models` stage | {cold['chunks_embedded_per_s_excl_load_models']:.2f} | |",
        f"| raw `encode` chunks/s (batch {raw['batch_size']}, median of {len(raw['runs_s'])}) | {raw['chunks_per_s']:.2f} | |",
        f"| **end-to-end ÷ raw** | **{ratio['flow_wall']:.3f}** | ≥ {ratio['goal_at_least']} {ok(ratio['flow_wall'] >= ratio['goal_at_least'])} |",
        f"| … excl. `load_models` stage / incl. model load ({setup['model_load']:.1f} s) | "
        f"{ratio['flow_wall_excl_load_models_stage']:.3f} / {ratio['flow_wall_plus_model_load']:.3f} | |",
        f"| unchanged rerun wall | {rerun['wall_s']:.2f} s | |",
        f"| **rerun ÷ cold** | **{rerun['ratio_to_cold']:.4f}** | ≤ {rerun['goal_at_most']} {ok(rerun['ratio_to_cold'] <= rerun['goal_at_most'])} |",
        f"| one-file edit rerun wall | {edit['wall_s']:.2f} s | |",
        f"| one-file edit: chunks embedded / in table | {edit['counts']['chunks_embedded']} / {edit['counts']['chunks_total']} | |",
        f"| peak RSS, cold run: this process (`RUSAGE_SELF`) | {rss['self']:.0f} MiB | |",
        f"| peak RSS, cold run: parse worker, sampled / `RUSAGE_CHILDREN`¹ | {rss['sampled_parse_workers']:.0f} / {rss['children']:.0f} MiB | |",
        f"| peak RSS, cold run: other children (Prefect server), sampled | {rss['sampled_other_children']:.0f} MiB | |",
        f"| set-up (not in any run): Prefect server start / model load / warm-up | "
        f"{setup['prefect_server_start']:.1f} / {setup['model_load']:.1f} / {setup['model_warmup_encode']:.1f} s | |",
        "",
    ]
    stages = list(dict.fromkeys(k for run in (cold, rerun, edit) for k in run["stages_s"]))
    runs = (("cold", cold), ("unchanged rerun", rerun), ("one-file edit", edit))
    lines += ["| flow stages (s) | wall | " + " | ".join(stages) + " | wall − stages |", "|---|" + "---:|" * (len(stages) + 2)]
    for name, run in runs:
        cells = " | ".join(f"{run['stages_s'].get(s, 0.0):.2f}" for s in stages)
        lines.append(f"| {name} | {run['wall_s']:.2f} | {cells} | {run['wall_s'] - run['stages_sum_s']:.2f} |")
    lines += [
        "",
        "| CPU-seconds while timing | wall s | this process | parse workers | Prefect server | other processes | contention² |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    timed = [(name, run["wall_s"], run["cpu_s"]) for name, run in runs]
    timed.insert(1, ("raw encode (middle run)", raw["median_s"], raw["cpu_s"]))
    contended = []
    for name, wall, cpu in timed:
        share = cpu["others"] / (wall * m["nproc"])
        if share > CONTENDED:
            contended.append(name)
        lines.append(
            f"| {name} | {wall:.2f} | {cpu['self']:.1f} | {cpu['workers']:.1f} | {cpu['server']:.1f} | {cpu['others']:.1f} | {share:.0%} |"
        )
    if contended:
        lines += ["", f"**Warning: other processes used over {CONTENDED:.0%} of the CPU during: {', '.join(contended)}. "
                  "Those timings are slowed by contention; rerun on an idle machine.**"]
    lines += [
        "",
        "¹ Linux starts a child's `ru_maxrss` at its parent's RSS when it forks before `exec`, so `RUSAGE_CHILDREN` "
        "shows this process's size when the workers started; the sampled figure is the workers' own.",
        f"² CPU-seconds of unrelated processes ÷ (wall × {m['nproc']} cores): the share of the machine taken from the benchmark.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    args = parse_args()
    user_home = load_settings().home.resolve()  # before configure_env points RAGTUNE_HOME at the bench home
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    result = run(args, stamp)
    markdown = to_markdown(result)
    name = "ingest-quick" if args.quick else "ingest-latest"
    (user_home / "bench").mkdir(parents=True, exist_ok=True)
    (user_home / "bench" / f"ingest-{stamp}.json").write_text(json.dumps(result, indent=2) + "\n")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown)
    sys.stdout.write(markdown)


if __name__ == "__main__":
    main()
