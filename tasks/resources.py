"""Build the retriever and answerer that settings describe; every model is loaded once per process."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Literal, Sequence

from tasks.config import Settings
from tasks.models import load_embedder_for, load_generator
from tasks.registry import trained_method
from tasks.retrieve import Retriever, SearchFilters
from tasks.store import ChunkStore, StoreError


def open_retriever(settings: Settings, table: str | None = None) -> Retriever:
    """A retriever over the configured chunk table; fails clearly when nothing was ingested."""
    name = table or settings.store.table
    store = ChunkStore(settings.store_uri, name, storage_options=settings.store_options())
    chunks = store.chunks
    if chunks is None:
        raise StoreError(f"no chunk table {name!r} at {settings.store_uri}: run `ragtune ingest DIR` first")
    embedder = load_embedder_for(settings)
    store.check_dimension(embedder.dimension)
    r = settings.retrieval
    return Retriever(chunks, embedder, fusion=r.fusion, candidates=r.candidates, rrf_k=r.rrf_k, dense_weight=r.dense_weight)


def search_filters(
    settings: Settings,
    groups: Sequence[str] | None = None,
    path_prefix: str | None = None,
    formats: Sequence[str] | None = None,
    modified_since: datetime | None = None,
) -> SearchFilters:
    """Filters for one call; the caller's groups default to `retrieval.groups` from settings."""
    chosen = settings.retrieval.groups if groups is None else groups
    return SearchFilters(
        path_prefix=path_prefix, formats=tuple(formats or ()), modified_since=modified_since, groups=tuple(chosen)
    )


def serving_adapter(settings: Settings, ref: str | None, groups: Sequence[str] | None = None) -> tuple[Path | None, dict[str, str | None]]:
    """The adapter `ref` names, if the caller (`groups`, default `retrieval.groups`) may be served it.

    Returns the directory (None: the base model) and what to tell the caller: `adapter` (the one used)
    and `adapter_withheld` (why the named adapter was not used; `tasks/registry.py:withheld_for`).
    """
    from tasks.registry import Registry, withheld_for

    path = Registry(settings.adapters_dir, settings.locks_dir).resolve(ref)
    if path is None:
        return None, {"adapter": None, "adapter_withheld": None}
    reason = withheld_for(path, settings.retrieval.groups if groups is None else groups)
    if reason:
        return None, {"adapter": None, "adapter_withheld": reason}
    return path, {"adapter": path.name, "adapter_withheld": None}


def support_threshold(settings: Settings, table: str | None = None) -> float:
    """The grounding threshold answers are held to: the one the last evaluation calibrated for this
    generator, index and settings when enabled and present (`tasks/calibrate.py`), else `retrieval.min_support`.

    With a trained grounding scorer (`retrieval.grounding_scorer = "trained:<path>"`) its scores are
    probabilities, not lexical-semantic support: it uses its model's own threshold unless `min_support`
    is set explicitly, and never a stored calibration (those do not record which scorer they were made with).
    """
    from tasks.ground_model import grounding_model_path, read_model

    r = settings.retrieval
    model_path = grounding_model_path(r.grounding_scorer)
    if model_path is not None:
        return r.min_support if "min_support" in r.model_fields_set else read_model(model_path).threshold
    found = _last_calibration(settings, table)
    return found.threshold if found is not None and found.calibrated else r.min_support


def quote_floor(settings: Settings, table: str | None = None) -> float:
    """The similarity a quote must reach (`retrieval.fallback = "quote"`): the floor the last evaluation
    calibrated for this generator, index and settings when enabled and present, else `retrieval.quote_min_similarity`."""
    found = _last_calibration(settings, table)
    quote = found.quote if found is not None else None
    return quote.threshold if quote is not None and quote.calibrated else settings.retrieval.quote_min_similarity


def _last_calibration(settings: Settings, table: str | None):
    """The last evaluation's calibration when `retrieval.calibrated_support` is on and it was made for this
    generator and scope (`tasks.calibrate.answer_scope`), else None."""
    from tasks.calibrate import answer_scope, stored_calibration
    from tasks.models import generator_fingerprint

    if not settings.retrieval.calibrated_support:
        return None
    generator = generator_fingerprint(settings.generator.model, settings.models_dir)
    return stored_calibration(settings.calibration_file, generator, answer_scope(settings, table))


def make_answerer(
    settings: Settings,
    table: str | None = None,
    retrieval: bool = True,
    adapter: Path | None = None,
    min_support: float | None = None,
    quote: bool | Literal["probe"] = True,
):
    """The grounded answerer (or a closed-book one with `retrieval=False`) with an optional LoRA adapter
    or fully fine-tuned model (`adapter`: a registered directory of either kind).

    `min_support` overrides the grounding threshold (default: `support_threshold(settings)`); `quote=False`
    turns the quote fallback off; `quote="probe"` records each draft's quote and replaces nothing, whatever the
    fallback (calibration judges the drafts themselves and fits the quote floor on those quotes).
    """
    from tasks.answer import Answerer, QuoteRule
    from tasks.generate import Generator
    from tasks.ground_model import make_grounding_scorer
    from tasks.rerank import make_reranker

    g, r = settings.generator, settings.retrieval
    if adapter is not None and trained_method(Path(adapter)) == "full":  # a whole model: it replaces the base one
        model, tokenizer = load_generator(str(adapter), settings.models_dir, threads=settings.threads, dtype=g.dtype)
    else:
        model, tokenizer = load_generator(g.model, settings.models_dir, threads=settings.threads, adapter=adapter, dtype=g.dtype)
    generator = Generator(model, tokenizer, max_new_tokens=g.max_new_tokens, batch_size=g.batch_size)
    retriever = open_retriever(settings, table) if retrieval else None
    scorer = make_grounding_scorer(r.grounding_scorer, retriever.embedder) if retriever else None
    return Answerer(
        retriever,
        generator,
        scorer,
        make_reranker(r.reranker, r.mmr_lambda),
        k=r.k,
        context_tokens=g.context_tokens,
        min_dense=r.min_dense,
        min_support=support_threshold(settings, table) if min_support is None else min_support,
        rewrite_queries=r.rewrite_queries,
        quote=(QuoteRule(r.quote_min_similarity, r.quote_sources, probe=True) if quote == "probe"
               else QuoteRule(quote_floor(settings, table), r.quote_sources) if quote and r.fallback == "quote" else None),
    )
