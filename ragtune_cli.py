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
from typing import Any, Optional

import typer

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
    except Exception as e:  # noqa: BLE001 - any other failure: say what and that nothing was lost
        _fail(
            f"ingest failed ({type(e).__name__}: {e}); the previously committed table is unchanged, "
            "rerun to resume (details in the run manifest under $RAGTUNE_HOME/runs/)",
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
    store = ChunkStore(settings.lancedb_dir, name)
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
    adapter: Optional[str] = typer.Option(None, "--adapter", help="A LoRA adapter directory, or `none`."),
    table: Optional[str] = typer.Option(None, "--table"),
    config: Optional[Path] = ConfigOpt,
    as_json: bool = JsonOpt,
) -> None:
    """A grounded answer with citations, or an honest "the documents don't answer this"."""
    from tasks.config import load_settings
    from tasks.resources import make_answerer, search_filters
    from tasks.store import StoreError

    settings = load_settings(config)
    if k:
        settings = settings.model_copy(update={"retrieval": settings.retrieval.model_copy(update={"k": k})})
    try:
        answerer = make_answerer(settings, table, adapter=None if adapter in (None, "none") else Path(adapter))
    except StoreError as e:
        _fail(str(e), as_json=as_json)
    result = answerer.ask(question, search_filters(settings, _groups(groups))).as_dict()
    lines = [result["answer"], ""]
    for c in result["citations"] or result["closest_sources"]:
        where = c["doc_id"] + (f", page {c['page']}" if c["page"] else "") + (f", {c['section']}" if c["section"] else "")
        lines.append(f"[{c['n']}] {where}  (chunk {c['chunk_id'][:12]})")
    if result["abstained"]:
        lines.append(f"(abstained: {result['reason']})")
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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
