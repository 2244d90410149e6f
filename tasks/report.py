"""How runs explain themselves: manifests on disk and Markdown for Prefect artifacts and the CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

from data_contracts.manifest import IngestManifest


def write_manifest(manifest: IngestManifest, runs_dir: Path) -> Path:
    """Write the manifest as JSON (atomically) and Markdown under `runs_dir`; point `latest-ingest-<table>.json` at it."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    path = runs_dir / f"ingest-{manifest.run_id}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(manifest.model_dump_json(indent=2))
    os.replace(tmp, path)
    path.with_suffix(".md").write_text(ingest_markdown(manifest, path) + "\n")
    latest = runs_dir / f"latest-ingest-{manifest.table}.json"
    tmp = latest.with_suffix(".tmp")
    tmp.write_text(json.dumps({"manifest": path.name}))
    os.replace(tmp, latest)
    return path


def latest_manifest(runs_dir: Path, table: str) -> IngestManifest | None:
    pointer = runs_dir / f"latest-ingest-{table}.json"
    if not pointer.is_file():
        return None
    path = runs_dir / json.loads(pointer.read_text())["manifest"]
    return IngestManifest.model_validate_json(path.read_text()) if path.is_file() else None


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def ingest_markdown(m: IngestManifest, path: Path | None = None) -> str:
    """A readable summary of one ingest run: counts, quarantines, timings, validation."""
    c = m.counts
    lines = [
        f"# Ingest `{m.source_root}` → `{m.table}`: {m.status}",
        "",
        f"Run `{m.run_id}`" + (f", manifest `{path}`" if path else ""),
        "",
    ]
    if m.error:
        lines += [f"**Error:** {_md_escape(m.error)}", "", "The previously committed table is unchanged.", ""]
    lines += [
        "| files seen | added | updated | unchanged | deleted | quarantined | still quarantined | skipped |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {c.files_seen} | {c.added} | {c.updated} | {c.unchanged} | {c.deleted} | {c.quarantined} | "
        f"{c.still_quarantined} | {c.skipped} |",
        "",
        "| chunks written | embedded | reused | in table | table version |",
        "|---:|---:|---:|---:|---:|",
        f"| {c.chunks_written} | {c.chunks_embedded} | {c.chunks_reused} | {c.chunks_total} | {m.chunk_table_version} |",
        "",
    ]
    if m.quarantine:
        lines += ["## Quarantined", "", "| document | reason | what to do |", "|---|---|---|"]
        lines += [f"| `{_md_escape(q.doc_id)}` | {q.reason} | {_md_escape(q.detail)} |" for q in m.quarantine]
        lines.append("")
    if m.timings:
        lines += ["## Timings (s)", "", "| " + " | ".join(m.timings) + " |", "|" + "---:|" * len(m.timings)]
        lines += ["| " + " | ".join(f"{v:.2f}" for v in m.timings.values()) + " |", ""]
    if m.validation:
        lines += ["## Data contracts", ""]
        lines += [f"- `{v['suite']}`: {v['evaluated']} expectations on {v['rows']} rows, passed" for v in m.validation]
        lines.append("")
    if m.index:
        recall = m.index.get("ann_recall_at_10")
        lines += [
            f"Indexes: full-text {m.index.get('fts')}, vector {m.index.get('vector')}"
            + (f" (ANN recall@10 vs flat {recall:.3f})" if recall is not None else "")
        ]
    return "\n".join(lines)
