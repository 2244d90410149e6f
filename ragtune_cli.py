"""The `ragtune` command.

Every command prints a human summary; with `--json` the machine-readable summary goes to stdout
and human text (progress, logs) to stderr. Exit codes: 0 done (quarantined files included, they
are reported), 1 a real failure (unreadable source, store error, broken contract), 2 bad usage,
3 `--strict` and something was quarantined.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer

if TYPE_CHECKING:
    from data_contracts.evaluation import EvalRun

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Customise a language model for your documents, and measure it.")

ConfigOpt = typer.Option(None, "--config", help="TOML settings file (default: $RAGTUNE_CONFIG or ./ragtune.toml).")
JsonOpt = typer.Option(False, "--json", help="Print a machine-readable summary to stdout; human text to stderr.")


def _prepare_env(home: Path | None = None) -> None:
    """Keep Prefect's state under the ragtune home unless the user points Prefect elsewhere.

    Must run before Prefect is imported: Prefect reads its settings at import.
    """
    from tasks.config import load_settings

    home = (home or load_settings().home).resolve()
    os.environ.setdefault("PREFECT_HOME", str(home / "prefect"))
    # Prefect's temporary server cannot create its SQLite database in a missing directory.
    Path(os.environ["PREFECT_HOME"]).expanduser().mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    # The temporary server takes 11-20 s to start on 2 busy cores; the default timeout is too tight.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


def _emit(as_json: bool, payload: dict[str, Any], human: str) -> None:
    if as_json:
        sys.stdout.write(json.dumps(payload, default=str) + "\n")
        sys.stderr.write(human + "\n")
    elif sys.stdout.isatty() and human.lstrip().startswith("#"):
        from rich.console import Console
        from rich.markdown import Markdown

        Console().print(Markdown(human))
    else:
        sys.stdout.write(human + "\n")


def _fail(message: str, code: int = 1, as_json: bool = False) -> None:
    if as_json:
        sys.stdout.write(json.dumps({"status": "failed", "error": message}) + "\n")
    sys.stderr.write(f"error: {message}\n")
    raise typer.Exit(code)


@app.command()
def ingest(
    source: Path = typer.Argument(..., help="Directory of documents (PDF, HTML, Markdown, text, DOCX)."),
    table: Optional[str] = typer.Option(None, "--table", help="Chunk table name (default: chunks)."),
    include: Optional[list[str]] = typer.Option(None, "--include", help="Glob to include (repeatable)."),
    exclude: Optional[list[str]] = typer.Option(None, "--exclude", help="Glob to exclude (repeatable)."),
    force: bool = typer.Option(False, "--force", help="Re-process unchanged files (vectors are still reused)."),
    strict: bool = typer.Option(False, "--strict", help="Exit non-zero when any file is quarantined."),
    config: Optional[Path] = ConfigOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Ingest documents into the LanceDB index, incrementally (runs the `ingest` flow)."""
    from tasks.sources import SourceError
    from tasks.store import StoreError
    from tasks.validate import ContractViolation

    _prepare_env()
    from flows.ingest import IngestFailed, ingest as ingest_flow
    from tasks.config import load_settings
    from tasks.report import ingest_markdown, latest_manifest

    try:
        result = ingest_flow(
            source=str(source), table=table, include=include, exclude=exclude, force=force, strict=strict,
            config_file=str(config) if config else None,
        )
    except IngestFailed as e:
        _fail(str(e), code=3, as_json=as_json)
    except (SourceError, StoreError, ContractViolation, FileNotFoundError) as e:
        _fail(str(e), code=1, as_json=as_json)
    except Exception as e:  # noqa: BLE001 - any other failure: say what, where, and what is left
        from tasks.store import redacted

        settings = load_settings(config)
        last = latest_manifest(settings.runs_dir, table or settings.store.table)
        stage = last.failed_stage if last and last.status == "failed" else None
        # Before the write stage nothing was committed; from it on, the chunk table may be at a new version.
        left = ("the chunk table may hold this run's commit; a rerun converges to the full result"
                if stage in ("write", "index") else "the previously committed table is unchanged; rerun to resume")
        _fail(
            # An object-store error can echo credentials: mask them as the manifest does.
            f"ingest failed at stage {stage or 'unknown'} ({type(e).__name__}: {redacted(str(e), settings.store_options())}); "
            f"{left} (details in the run manifest under $RAGTUNE_HOME/runs/)",
            code=1,
            as_json=as_json,
        )
    settings = load_settings(config)
    manifest = latest_manifest(settings.runs_dir, table or settings.store.table)
    human = ingest_markdown(manifest) if manifest else json.dumps(result, indent=2)
    _emit(as_json, result, human)


@app.command()
def status(
    table: Optional[str] = typer.Option(None, "--table"),
    config: Optional[Path] = ConfigOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Documents, chunks, table versions and the last run."""
    from tasks.config import load_settings
    from tasks.report import latest_manifest
    from tasks.store import ChunkStore

    settings = load_settings(config)
    name = table or settings.store.table
    store = ChunkStore(settings.store_uri, name, storage_options=settings.store_options())
    info = store.status()
    last = latest_manifest(settings.runs_dir, name)
    info["home"] = str(settings.home.resolve())
    info["last_run"] = last.model_dump(mode="json") if last else None
    lines = [f"ragtune home {info['home']}, table {name!r}"]
    if not info["exists"]:
        lines.append("  no chunk table yet: run `ragtune ingest DIR`")
    else:
        lines.append(
            f"  {info.get('documents', 0)} documents, {info.get('quarantined', 0)} quarantined, "
            f"{info['chunks']} chunks ({info['dimension']}-d), table version {info['chunk_table_version']}"
        )
        lines.append("  indexes: " + (", ".join(f"{i['type']} on {','.join(i['columns'])}" for i in info["indexes"]) or "none"))
    if last:
        c = last.counts
        lines.append(
            f"  last run {last.run_id} {last.status} at {last.finished_at:%Y-%m-%d %H:%M:%S}: "
            f"+{c.added} ~{c.updated} -{c.deleted} ={c.unchanged}, {c.quarantined} quarantined, {c.chunks_embedded} embedded"
        )
    _emit(as_json, info, "\n".join(lines))


GroupsOpt = typer.Option(None, "--groups", help="Your access groups, comma-separated (default: retrieval.groups).")


def _groups(value: Optional[str]) -> Optional[list[str]]:
    return None if value is None else [g for g in value.split(",") if g.strip()]


def _hit_line(rank: int, hit: dict[str, Any]) -> str:
    where = hit["doc_id"] + (f" p.{hit['page']}" if hit.get("page") else "")
    section = " > ".join(hit.get("heading_path") or [])
    snippet = " ".join(hit["text"].split())[:160]
    return f"{rank:>2}. {hit['score']:.4f}  {where}" + (f"  [{section}]" if section else "") + f"\n      {snippet}"


@app.command()
def search(
    query: Optional[str] = typer.Argument(None, help="The question or keywords."),
    queries: Optional[Path] = typer.Option(None, "--queries", help="JSONL file: search every `question` in it."),
    k: Optional[int] = typer.Option(None, "--k", help="Results per query (default: retrieval.k)."),
    groups: Optional[str] = GroupsOpt,
    path_prefix: Optional[str] = typer.Option(None, "--path-prefix", help="Only documents under this path."),
    formats: Optional[list[str]] = typer.Option(None, "--format", help="Only these formats (repeatable)."),
    since: Optional[datetime] = typer.Option(None, "--since", help="Only documents modified since (YYYY-MM-DD)."),
    table: Optional[str] = typer.Option(None, "--table"),
    config: Optional[Path] = ConfigOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Ranked chunks with scores and sources (hybrid dense + full-text search)."""
    from tasks.config import load_settings
    from tasks.resources import open_retriever, search_filters
    from tasks.store import StoreError

    if (query is None) == (queries is None):
        _fail("give either a QUERY or --queries FILE.jsonl", code=2, as_json=as_json)
    settings = load_settings(config)
    try:
        retriever = open_retriever(settings, table)
    except StoreError as e:
        _fail(str(e), as_json=as_json)
    filters = search_filters(settings, _groups(groups), path_prefix, formats, since)
    questions = [query] if query is not None else _read_questions(queries)
    results = retriever.search_many(questions, k or settings.retrieval.k, filters)
    for question, result in zip(questions, results):
        payload = {
            "query": question,
            "fts_query": result.fts_query,
            "hits": [h.public() for h in result.hits],
            "timings": {k_: round(v, 4) for k_, v in result.timings.items()},
        }
        human = f"{question}\n" + "\n".join(_hit_line(i, h) for i, h in enumerate(payload["hits"], 1))
        _emit(as_json, payload, human)


def _read_questions(path: Path) -> list[str]:
    questions = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            questions.append(json.loads(line)["question"])
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            _fail(f"{path}:{n} is not a JSON object with a 'question' ({e})", code=2)
    return questions


@app.command()
def ask(
    question: str = typer.Argument(..., help="Your question."),
    k: Optional[int] = typer.Option(None, "--k", help="Sources given to the model (default: retrieval.k)."),
    groups: Optional[str] = GroupsOpt,
    adapter: Optional[str] = typer.Option(
        None, "--adapter", help="A registered adapter name, `champion` (the default when there is one), `latest`, a directory, or `none`."
    ),
    table: Optional[str] = typer.Option(None, "--table"),
    config: Optional[Path] = ConfigOpt,
    as_json: bool = JsonOpt,
) -> None:
    """A grounded answer with citations, or an honest "the documents don't answer this"."""
    from tasks.config import load_settings
    from tasks.registry import AdapterNotFound
    from tasks.resources import make_answerer, search_filters, serving_adapter
    from tasks.store import StoreError

    settings = load_settings(config)
    if k:
        settings = settings.model_copy(update={"retrieval": settings.retrieval.model_copy(update={"k": k})})
    try:
        adapter_dir, served = serving_adapter(settings, adapter or "champion", _groups(groups))
        answerer = make_answerer(settings, table, adapter=adapter_dir)
    except (StoreError, AdapterNotFound) as e:
        _fail(str(e), as_json=as_json)
    result = answerer.ask(question, search_filters(settings, _groups(groups))).as_dict() | served
    lines = [result["answer"], ""]
    for c in result["citations"] or result["closest_sources"]:
        where = c["doc_id"] + (f", page {c['page']}" if c["page"] else "") + (f", {c['section']}" if c["section"] else "")
        lines.append(f"[{c['n']}] {where}  (chunk {c['chunk_id'][:12]})")
    if result["abstained"]:
        lines.append(f"(abstained: {result['reason']})")
    if result["quoted"]:
        lines.append("(quoted from the source: the generated answer was not supported by it)")
    if result["adapter_withheld"]:
        lines.append(f"(base model: {result['adapter_withheld']})")
    lines.append("timings: " + ", ".join(f"{k_} {v * 1000:.0f} ms" for k_, v in result["timings"].items()))
    _emit(as_json, result, "\n".join(lines))


@app.command("setup-models")
def setup_models(config: Optional[Path] = ConfigOpt, as_json: bool = JsonOpt) -> None:
    """Convert the packaged generator to a safetensors cache once, and check the embedder loads."""
    from tasks.config import load_settings
    from tasks.models import load_embedder_for, resolve_generator

    settings = load_settings(config)
    embedder = load_embedder_for(settings)
    location, _ = resolve_generator(settings.generator.model, settings.models_dir)
    payload = {"embedder": embedder.fingerprint, "dimension": embedder.dimension, "generator": location}
    _emit(as_json, payload, f"embedder {embedder.fingerprint} ({embedder.dimension}-d); generator at {location}")


dataset_app = typer.Typer(no_args_is_help=True, help="Training datasets.")
app.add_typer(dataset_app, name="dataset")


@dataset_app.command("build")
def dataset_build(
    table: Optional[str] = typer.Option(None, "--table", help="Chunk table the RAFT examples retrieve from."),
    config: Optional[Path] = ConfigOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Build the training dataset from the `[dataset]` sources, validated by its contract (runs `build-dataset`)."""
    from tasks.dataset import DatasetError
    from tasks.store import StoreError
    from tasks.validate import ContractViolation

    _prepare_env()
    from flows.dataset import build_dataset
    from tasks.report import dataset_markdown

    try:
        summary = build_dataset(table=table, config_file=str(config) if config else None)
    except (DatasetError, StoreError, ContractViolation, FileNotFoundError, ValueError) as e:
        _fail(str(e), as_json=as_json)
    _emit(as_json, summary, dataset_markdown(summary, []))


@app.command()
def synth(
    max_chunks: Optional[int] = typer.Option(None, "--max-chunks", min=1, help="Chunks to sample (default synth.max_chunks)."),
    max_minutes: Optional[float] = typer.Option(None, "--max-minutes", min=0.1, help="Drafting time budget; a rerun resumes."),
    table: Optional[str] = typer.Option(None, "--table", help="Chunk table to draw questions from."),
    config: Optional[Path] = ConfigOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Synthetic questions from the chunks alone, filtered and split by document (runs `synthesize`).

    The result is an evaluation-set file: `ragtune eval --eval-set synthetic` scores its `test` rows
    (held-out documents); `dataset.synthetic = true` makes RAFT examples from its `train` rows.
    """
    from tasks.store import StoreError
    from tasks.synth import SynthError
    from tasks.validate import ContractViolation

    _prepare_env()
    from flows.synthesize import synthesize
    from tasks.report import synth_markdown

    try:
        summary = synthesize(table=table, max_chunks=max_chunks, max_minutes=max_minutes, config_file=str(config) if config else None)
    except (SynthError, StoreError, ContractViolation, FileNotFoundError, ValueError) as e:
        _fail(str(e), as_json=as_json)
    _emit(as_json, summary, synth_markdown(summary))


@app.command()
def train(
    max_steps: Optional[int] = typer.Option(None, "--max-steps", min=1, help="Cap on optimizer steps for this run."),
    force: bool = typer.Option(False, "--force", help="Train even when nothing changed since the newest adapter."),
    table: Optional[str] = typer.Option(None, "--table"),
    config: Optional[Path] = ConfigOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Build the dataset and train a LoRA candidate when data, base model or recipe changed (runs `retrain`)."""
    from tasks.dataset import DatasetError
    from tasks.store import StoreError
    from tasks.validate import ContractViolation

    _prepare_env()
    from flows.retrain import retrain
    from tasks.report import retrain_markdown

    try:
        result = retrain(force=force, max_steps=max_steps, table=table, config_file=str(config) if config else None)
    except (DatasetError, StoreError, ContractViolation, FileNotFoundError, ValueError) as e:
        _fail(str(e), as_json=as_json)
    except Exception as e:  # noqa: BLE001 - any other failure: say what and that nothing was lost
        _fail(f"training failed ({type(e).__name__}: {e}); the registry is unchanged, rerun to resume from the last checkpoint",
              as_json=as_json)
    _emit(as_json, result, retrain_markdown(result))


@app.command()
def nightly(
    source: Path = typer.Argument(Path("demo/corpus"), help="Directory of documents to ingest incrementally."),
    force_train: bool = typer.Option(False, "--force-train", help="Train even when nothing changed since the newest adapter."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", min=1, help="Cap on optimizer steps."),
    arms: Optional[str] = typer.Option(None, "--arms", help="Comma-separated arms (default: evaluation.arms)."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Evaluate only the first N questions."),
    table: Optional[str] = typer.Option(None, "--table"),
    config: Optional[Path] = ConfigOpt,
    as_json: bool = JsonOpt,
) -> None:
    """The nightly chain in this process: ingest → retrain when needed → evaluate → gate → report (runs `nightly`)."""
    _prepare_env()
    from flows.nightly import NightlyStepFailed, nightly as nightly_flow, summary_markdown

    try:
        result = nightly_flow(
            source=str(source), force_train=force_train, max_steps=max_steps, arms=arms.split(",") if arms else None,
            limit=limit, table=table, config_file=str(config) if config else None, step_mode="in-process",
        )  # fmt: skip
    except NightlyStepFailed as e:
        _fail(str(e), as_json=as_json)
    _emit(as_json, result, summary_markdown(result["steps"]))


adapters_app = typer.Typer(no_args_is_help=True, help="The adapter registry: list, show, promote, roll back.")
app.add_typer(adapters_app, name="adapters")


def _registry(config: Optional[Path]) -> Any:
    from tasks.config import load_settings
    from tasks.registry import Registry

    settings = load_settings(config)
    return Registry(settings.adapters_dir, settings.locks_dir)


@adapters_app.command("list")
def adapters_list(config: Optional[Path] = ConfigOpt, as_json: bool = JsonOpt) -> None:
    """Every adapter with its status, data and losses, oldest first."""
    adapters = _registry(config).adapters()
    lines = ["| adapter | status | created | dataset | train loss | val loss | steps |", "|---|---|---|---|---:|---:|---:|"]
    for a in adapters:
        m = a.metadata
        val = m.get("val_loss")
        lines.append(
            f"| `{a.name}` | {a.status} | {m.get('created_at', '')} | `{str(m.get('dataset_hash', ''))[:12]}` | "
            f"{m.get('train_loss', float('nan')):.4f} | {'-' if val is None else f'{val:.4f}'} | {m.get('training', {}).get('steps', '')} |"
        )
    human = "\n".join(lines) if adapters else "no adapters yet: run `ragtune train`"
    _emit(as_json, {"adapters": [a.as_dict() for a in adapters]}, human)


@adapters_app.command("show")
def adapters_show(name: str = typer.Argument("champion", help="Adapter name, `champion` or `latest`."), config: Optional[Path] = ConfigOpt, as_json: bool = JsonOpt) -> None:
    """One adapter's metadata and decision history."""
    from tasks.registry import AdapterNotFound

    registry = _registry(config)
    try:
        adapter = registry.champion() if name == "champion" else (registry.latest() if name == "latest" else registry.get(name))
    except AdapterNotFound as e:
        _fail(str(e), as_json=as_json)
    if adapter is None:
        _fail(f"there is no {name} adapter yet", as_json=as_json)
    payload = {**adapter.as_dict(), "decisions": adapter.decisions()}
    _emit(as_json, payload, json.dumps(payload, indent=2, default=str))


@adapters_app.command("promote")
def adapters_promote(
    name: str = typer.Argument(..., help="The adapter to make champion."),
    reason: str = typer.Option("manual promotion", "--reason"),
    config: Optional[Path] = ConfigOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Make an adapter the champion by hand (the nightly gate does this when the numbers say so)."""
    from tasks.registry import AdapterNotFound, RegistryError

    try:
        previous = _registry(config).promote(name, reason, {"by": "cli"})
    except (AdapterNotFound, RegistryError) as e:
        _fail(str(e), as_json=as_json)
    _emit(as_json, {"champion": name, "previous": previous}, f"{name} is now champion (was: {previous or 'none'})")


@adapters_app.command("rollback")
def adapters_rollback(
    reason: str = typer.Option("manual rollback", "--reason"), config: Optional[Path] = ConfigOpt, as_json: bool = JsonOpt
) -> None:
    """Undo the latest promotion: the previous champion (or none) serves again."""
    from tasks.registry import RegistryError

    try:
        rolled_back, restored = _registry(config).rollback(reason)
    except RegistryError as e:
        _fail(str(e), as_json=as_json)
    _emit(as_json, {"rolled_back": rolled_back, "champion": restored}, f"rolled back {rolled_back}; champion is now {restored or 'none (base model)'}")


def _run_payload(run: "EvalRun", folder: Path) -> dict[str, Any]:
    """An evaluation run as `eval --json` and `report --json` print it.

    `arms` maps each arm's name to its `ArmResult` as saved in results.json (every metric an
    `Estimate`: value, low, high, n); `decision_table` holds the rows the human summary shows
    (aspect, cells per arm, best, verdict, the metrics judged); `limit` is set on a limited run.
    """
    from tasks.eval_report import decision_table

    saved = run.model_dump(mode="json")
    return {
        "run_id": run.run_id, "report": str(folder / "report.html"), "markdown": str(folder / "report.md"),
        "results": str(folder / "results.json"), "eval_path": run.eval_path, "eval_split": run.eval_split,
        "questions": run.questions, "limit": run.settings.get("limit"), "notes": run.settings.get("notes", []),
        "arms": {a["name"]: a for a in saved["arms"]}, "decision_table": decision_table(run),
        "canary": saved["canary"], "gate": saved["gate"], "calibration": saved["calibration"],
        "alongside": [{**o, "arms": {a["name"]: a for a in o["arms"]}} for o in saved["alongside"]],
    }  # fmt: skip


@app.command("eval")
def eval_(
    arms: Optional[str] = typer.Option(None, "--arms", help="Comma-separated subset of base,rag,lora,hybrid,full,full+rag."),
    limit: Optional[int] = typer.Option(
        None, "--limit", min=1,
        help="Smoke run: the first N questions, N calibration rows and N canary questions; report-only unless --gate.",
    ),  # fmt: skip
    eval_set: Optional[Path] = typer.Option(None, "--eval-set", help="Evaluation JSONL (default: evaluation.path), or `synthetic`: the held-out rows of the latest `ragtune synth` set."),
    gate: Optional[bool] = typer.Option(
        None, "--gate/--no-gate",
        help="Apply the gate's verdict to the registry, or only report it (default: evaluation.apply_gate; "
        "a --limit run only reports it).",
    ),
    table: Optional[str] = typer.Option(None, "--table"),
    config: Optional[Path] = ConfigOpt,
    as_json: bool = JsonOpt,
) -> None:
    """The arena: every arm on the evaluation set, the promotion gate, and the report (runs `evaluate`)."""
    from data_contracts.evaluation import ARM_KINDS, EvalRun
    from tasks.evalset import EvalSetError
    from tasks.registry import AdapterNotFound
    from tasks.store import StoreError
    from tasks.validate import ContractViolation

    chosen = [a.strip() for a in arms.split(",") if a.strip()] if arms else None
    unknown = sorted(set(chosen or []) - set(ARM_KINDS))
    if unknown:
        _fail(f"unknown arm(s) {', '.join(unknown)}: choose from {', '.join(ARM_KINDS)}", code=2, as_json=as_json)
    _prepare_env()
    from flows.evaluate import evaluate

    try:
        result = evaluate(
            arms=chosen, limit=limit, eval_set_path=str(eval_set) if eval_set else None, apply_gate=gate,
            table=table, config_file=str(config) if config else None,
        )
    except (EvalSetError, StoreError, ContractViolation, AdapterNotFound, FileNotFoundError, ValueError) as e:
        _fail(str(e), as_json=as_json)
    results = Path(result["results"])
    payload = _run_payload(EvalRun.model_validate_json(results.read_text()), results.parent)
    _emit(as_json, {**{k: v for k, v in result.items() if k != "summary"}, **payload}, result["summary"])


@app.command()
def report(
    run_id: Optional[str] = typer.Argument(None, help="A run id under <home>/reports (default: the latest)."),
    config: Optional[Path] = ConfigOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Print an evaluation run's summary (decision table, gate) and where its Markdown and HTML reports are."""
    from data_contracts.evaluation import EvalRun
    from tasks.config import load_settings
    from tasks.eval_report import ReportFiles, summary_markdown
    from tasks.evalset import notes_markdown

    settings = load_settings(config)
    reports = settings.reports_dir
    if run_id is None:
        pointer = reports / "LATEST"
        if not pointer.is_file():
            _fail(f"no evaluation run under {reports} yet: run `ragtune eval`", as_json=as_json)
        run_id = pointer.read_text().strip()
    folder = reports / run_id
    if not (folder / "results.json").is_file():
        known = ", ".join(sorted(p.parent.name for p in reports.glob("*/results.json"))) or "none"
        _fail(f"no evaluation run {run_id!r} under {reports} (runs: {known})", as_json=as_json)
    run = EvalRun.model_validate_json((folder / "results.json").read_text())
    files = ReportFiles(markdown=folder / "report.md", html=folder / "report.html", charts=sorted((folder / "charts").glob("*.png")))
    _emit(as_json, _run_payload(run, folder), summary_markdown(run, files) + notes_markdown(run.settings.get("notes", [])))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
