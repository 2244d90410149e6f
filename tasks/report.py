"""How runs explain themselves: manifests on disk and Markdown for Prefect artifacts and the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from data_contracts.manifest import IngestManifest
from tasks import atomic


def write_manifest(manifest: IngestManifest, runs_dir: Path) -> Path:
    """Write the manifest as JSON (atomically) and Markdown under `runs_dir`; point `latest-ingest-<table>.json` at it."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    path = runs_dir / f"ingest-{manifest.run_id}.json"
    atomic.write_text(path, manifest.model_dump_json(indent=2))
    path.with_suffix(".md").write_text(ingest_markdown(manifest, path) + "\n")
    latest = runs_dir / f"latest-ingest-{manifest.table}.json"
    atomic.write_text(latest, json.dumps({"manifest": path.name}))
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


def dataset_markdown(summary: dict[str, Any], rejects: Sequence[Any], show: int = 10) -> str:
    """A dataset build: counts per split and kind, PII, rejects by rule with a few examples."""
    c = summary["counts"]
    lines = [
        f"# Training dataset `{summary['hash'][:12]}`",
        "",
        f"Saved at `{summary['path']}`; rejected rows in `{summary['rejects']}`.",
        "",
        "| train | validation | rejected | instruction | raft | raft without oracle | closed-book | replay | PII found | tokens | longest |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {c['train']} | {c['validation']} | {c['rejected']} | {c['by_kind'].get('instruction', 0)} | "
        f"{c['by_kind'].get('raft', 0)} | {c['raft_without_oracle']} | {c['by_kind'].get('closed_book', 0)} | "
        f"{c['by_kind'].get('replay', 0)} | "
        f"{c['pii_found']} | {c['tokens']['total']} | {c['tokens']['max']} |",
    ]
    if c["rejects_by_reason"]:
        lines += ["", "| rejected for | rows |", "|---|---:|"]
        lines += [f"| {_md_escape(k)} | {v} |" for k, v in sorted(c["rejects_by_reason"].items(), key=lambda kv: -kv[1])]
    if rejects:
        lines += ["", "| row | reasons |", "|---|---|"]
        lines += [f"| `{_md_escape(r.origin)}` | {_md_escape('; '.join(r.reasons))} |" for r in rejects[:show]]
        if len(rejects) > show:
            lines.append(f"| … | {len(rejects) - show} more in the rejects file |")
    return "\n".join(lines)


def retrain_markdown(result: dict[str, Any]) -> str:
    """A retraining run: trained or skipped and why, and the new candidate's numbers."""
    ds = result["dataset"]
    lines = [
        f"# Retrain: {'trained a candidate' if result['trained'] else 'skipped'}",
        "",
        f"Why: {result['reason']}.",
        "",
        f"Dataset `{ds['hash'][:12]}`: {ds['counts']['train']} train / {ds['counts']['validation']} validation rows, "
        f"{ds['counts']['rejected']} rejected.",
    ]
    a = result.get("adapter")
    if a:
        t = a.get("training", {})
        val = a.get("val_loss")
        lines += [
            "",
            "| adapter | status | steps | train loss | val loss | tokens/s | wall s | peak RSS MiB |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
            f"| `{a['name']}` | {a['status']} | {t.get('steps')} | {a['train_loss']:.4f} | "
            f"{'-' if val is None else f'{val:.4f}'} | {a['tokens_per_s']:.0f} | {a['wall_s']:.0f} | {t.get('peak_rss_mb', 0):.0f} |",
        ]
    return "\n".join(lines)


def synth_markdown(summary: dict[str, Any]) -> str:
    """A synthesis run: how many questions each strategy made and kept, what each filter dropped, the split."""
    f = summary["funnel"]
    lines = [
        f"# Synthetic questions `{summary['hash'][:12]}`",
        "",
        f"Saved at `{summary['path']}` (evaluation-set format: `split` train = training pool, test = evaluation set).",
        f"Chunks drafted: {summary['chunks_drafted']} of {summary['chunks_sampled']} sampled"
        + (f"; **stopped at the time budget** ({summary['max_minutes']} min): rerun to continue." if summary["stopped_early"] else "."),
        "",
        "| strategy | generated | kept | survival |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {s} | {n} | {f['kept'].get(s, 0)} | {f['survival'].get(s, 0):.0%} |" for s, n in sorted(f["generated"].items())]
    if f["dropped_by_filter"]:
        lines += ["", "| filter | dropped |", "|---|---:|"]
        lines += [f"| {_md_escape(k)} | {v} |" for k, v in sorted(f["dropped_by_filter"].items(), key=lambda kv: -kv[1])]
    lines += ["", f"Split by document: {f['documents']['train']} documents train ({f['splits'].get('train', 0)} questions), "
              f"{f['documents']['test']} evaluate ({f['splits'].get('test', 0)} questions)."]
    return "\n".join(lines)
