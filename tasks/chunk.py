"""Token-aware chunking with the embedder's own tokenizer.

A document's sections (split at headings, or per PDF page) are cut into units at paragraphs,
then lines, then sentences, then token windows for anything still too long, and units are packed
greedily up to the budget. Chunks never cross a section, so an edit on one page or under one
heading changes only that section's chunks. Each chunk carries its title/heading path as context
for the embedder, and the final embedded text (context + chunk + special tokens) is counted
exactly and split again if needed: **no chunk exceeds the embedder's max sequence length**,
which the default model would otherwise silently truncate.

Chunking runs in the ingesting process, outside the parse sandbox, so its cost must follow its
input: every step is one pass, and no tokenizer call sees more than `_TOKENIZE_CHARS` characters
(a single call over a 1 MB paragraph cost ~150 MB; a 100 MB one would have exhausted the host).
How much text one document may bring is bounded by the sandbox (`ParseLimits.max_chars`).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Protocol, Sequence

from tasks.parse import ParsedDocument, Section


class Tokenizer(Protocol):
    """What chunking needs from the embedder's tokenizer."""

    def count(self, texts: Sequence[str]) -> list[int]:
        """Word pieces per text, without special tokens."""

    def offsets(self, text: str) -> list[tuple[int, int]]:
        """Character span of each word piece of `text`."""

    @property
    def special_tokens(self) -> int:
        """Special tokens the model adds around a text (e.g. [CLS] and [SEP])."""


class HFTokenizer:
    """`Tokenizer` over a Hugging Face fast tokenizer's `tokenizers` backend.

    The backend is copied with truncation and padding switched off: the packaged MiniLM's
    tokenizer.json truncates and pads to 128, which would make every count wrong.
    """

    def __init__(self, tokenizer: object):
        from tokenizers import Tokenizer as Backend

        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise TypeError(f"{type(tokenizer).__name__} is not a fast tokenizer: chunking needs offsets")
        self._backend = Backend.from_str(backend.to_str())
        self._backend.no_truncation()
        self._backend.no_padding()
        self._specials = len(self._backend.encode("", add_special_tokens=True).ids)

    def count(self, texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        return [len(e.ids) for e in self._backend.encode_batch(list(texts), add_special_tokens=False)]

    def offsets(self, text: str) -> list[tuple[int, int]]:
        return list(self._backend.encode(text, add_special_tokens=False).offsets)

    @property
    def special_tokens(self) -> int:
        return self._specials


@dataclass(frozen=True)
class Chunk:
    text: str
    heading_path: tuple[str, ...]
    page: int | None
    ordinal: int
    context: str
    token_count: int  # of `embed_text`, special tokens included

    @property
    def embed_text(self) -> str:
        return embed_text(self.context, self.text)


def embed_text(context: str, text: str) -> str:
    """The text the embedder sees: heading context, then the chunk."""
    return f"{context}\n{text}" if context else text


def sha256(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode("utf-8"))
        h.update(b"\x1f")
    return h.hexdigest()


# A sentence ends at . ! ? (optionally closed by a quote/bracket) followed by space and a capital,
# digit or opening quote. Deliberately simple: abbreviations may split early, never late, and a
# wrong split only moves a chunk boundary.
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]?\s+(?=[A-Z0-9\"'(\[])")

# Most characters one tokenizer call gets (a batch's total, or one window of a longer text). Far
# above any chunk budget (64k characters are well over 8k word pieces), so it only bounds memory.
_TOKENIZE_CHARS = 1 << 16
# Characters one word piece may stand for when packing. Real word pieces are a few characters; a
# longer span is one unknown token ([UNK]) over a run without spaces (a 9 MB "word"), which would
# otherwise let 200 of them make one 9-million-character chunk.
_CHARS_PER_TOKEN = 32


@dataclass(frozen=True)
class _Unit:
    text: str
    sep: str  # joins this unit to the previous one in a chunk
    tokens: int


def _context(title: str, heading_path: tuple[str, ...]) -> str:
    parts = [title] if title else []
    for h in heading_path:
        if not parts or h.casefold() != parts[-1].casefold():
            parts.append(h)
    return " > ".join(parts)


def _count(tokenizer: Tokenizer, texts: Sequence[str]) -> list[int]:
    """Word pieces per text, tokenised in batches of at most `_TOKENIZE_CHARS` characters."""
    counts: list[int] = []
    batch: list[str] = []
    size = 0
    for text in texts:
        if batch and size + len(text) > _TOKENIZE_CHARS:
            counts += tokenizer.count(batch)
            batch, size = [], 0
        batch.append(text)
        size += len(text)
    return counts + tokenizer.count(batch) if batch else counts


def _blocks(text: str, limit: int) -> list[str]:
    """`text` cut into pieces of at most `limit` characters, at the last whitespace where there is one."""
    blocks, start = [], 0
    while len(text) - start > limit:
        cut = max(text.rfind(c, start + 1, start + limit) for c in " \n\t")
        cut = cut if cut > start else start + limit
        blocks.append(text[start:cut])
        start = cut
    blocks.append(text[start:])
    return blocks


def _truncate(text: str, max_tokens: int, tokenizer: Tokenizer) -> str:
    if max_tokens <= 0:
        return ""
    head = text[:_TOKENIZE_CHARS]  # a longer heading path is cut anyway: never tokenise all of it
    spans = tokenizer.offsets(head)
    if len(spans) <= max_tokens:
        return text if len(head) == len(text) else head.rstrip() + " …"
    return head[: spans[max_tokens - 1][1]].rstrip() + " …"


def _windows(text: str, budget: int, tokenizer: Tokenizer) -> list[str]:
    """Cut `text` into pieces of at most `budget` word pieces, at word-piece boundaries."""
    pieces = []
    for block in _blocks(text, _TOKENIZE_CHARS):
        spans = tokenizer.offsets(block)
        for start in range(0, len(spans), budget):
            lo = spans[start][0] if start else 0
            hi = spans[start + budget][0] if start + budget < len(spans) else len(block)
            pieces += _blocks(block[lo:hi].strip(), budget * _CHARS_PER_TOKEN)
    return [p for p in pieces if p]


def _split(text: str, budget: int, tokenizer: Tokenizer) -> list[tuple[str, str, int]]:
    """(separator, piece, word pieces) of at most `budget` tokens: paragraphs, lines, sentences, windows."""
    levels: list[tuple[str, re.Pattern[str] | None]] = [
        ("\n\n", re.compile(r"\n\s*\n")),
        ("\n", re.compile(r"\n")),
        (" ", _SENTENCE_END),
        (" ", None),
    ]

    def recurse(piece: str, level: int) -> list[tuple[str, str, int]]:
        sep, pattern = levels[level]
        if pattern is None:
            windows = _windows(piece, budget, tokenizer)
            return [(sep, w, n) for w, n in zip(windows, _count(tokenizer, windows))]
        parts = [p for p in (p.strip() for p in pattern.split(piece)) if p]
        # A part longer than one tokenizer call is over any budget: split it further uncounted.
        counts = iter(_count(tokenizer, [p for p in parts if len(p) <= _TOKENIZE_CHARS]))
        out: list[tuple[str, str, int]] = []
        for part in parts:
            n = next(counts) if len(part) <= _TOKENIZE_CHARS else budget + 1
            if n <= budget:
                out.append((sep, part, n))
            else:
                sub = recurse(part, level + 1)
                if sub:
                    out.append((sep, *sub[0][1:]))
                    out.extend(sub[1:])
        return out

    return recurse(text, 0)


def _cost(unit: _Unit) -> int:
    """What a unit costs when packing: its word pieces, at least one (units the tokenizer reads as
    nothing, a line of combining marks, would otherwise pile up without bound and be carried into
    every chunk), and at least one per `_CHARS_PER_TOKEN` characters (runs of unknown tokens)."""
    return max(1, unit.tokens, -(-len(unit.text) // _CHARS_PER_TOKEN))


def _pack(units: list[_Unit], budget: int, overlap: int) -> list[list[_Unit]]:
    chunks: list[list[_Unit]] = []
    current: list[_Unit] = []
    size = 0
    for unit in units:
        cost = _cost(unit)
        if current and size + cost > budget:
            chunks.append(current)
            # Carry trailing units (up to `overlap` tokens) into the next chunk for context.
            carry: list[_Unit] = []
            carried = 0
            for prev in reversed(current[1:]):
                prev_cost = _cost(prev)
                if carried + prev_cost > overlap or carried + prev_cost + cost > budget:
                    break
                carry.append(prev)
                carried += prev_cost
            current, size = carry[::-1], carried
        current.append(unit)
        size += cost
    if current:
        chunks.append(current)
    return chunks


def _join(units: list[_Unit]) -> str:
    return "".join((u.sep if i else "") + u.text for i, u in enumerate(units))


def chunk_section(
    section: Section,
    title: str,
    tokenizer: Tokenizer,
    *,
    size: int,
    overlap: int,
    max_tokens: int,
    context_max_tokens: int,
) -> list[tuple[str, str, int]]:
    """(context, text, token_count) for one section; token_count includes context and special tokens."""
    context = _truncate(_context(title, section.heading_path), context_max_tokens, tokenizer)
    context_tokens = tokenizer.count([context + "\n"])[0] if context else 0
    limit = max_tokens - tokenizer.special_tokens - context_tokens
    if limit < 8:
        raise ValueError(
            f"chunk budget is {limit} word pieces after the heading context: lower chunking.context_max_tokens "
            f"or use an embedder with a longer max sequence length than {max_tokens}"
        )
    budget = min(size, limit)
    units = [_Unit(text=p, sep=s, tokens=n) for s, p, n in _split(section.text, budget, tokenizer)]
    out: list[tuple[str, str, int]] = []
    # A stack (next group last), checked in batches: popping from the front was quadratic.
    pending = [(group, budget) for group in reversed(_pack(units, budget, min(overlap, budget // 2)))]
    while pending:
        batch = [pending.pop() for _ in range(min(len(pending), 256))]
        texts = [_join(group) for group, _ in batch]
        totals = _count(tokenizer, [embed_text(context, t) for t in texts])
        for i, ((group, group_budget), text, n) in enumerate(zip(batch, texts, totals)):
            total = n + tokenizer.special_tokens
            if total <= max_tokens:
                out.append((context, text, total))
                continue
            # Rare: re-split this group; the rest of the batch waits until its pieces are placed.
            pending.extend(reversed(batch[i + 1 :]))
            if len(group) > 1:
                # Joining can tokenise differently from the parts (BPE models): split and recheck.
                half = len(group) // 2
                pending += [(group[half:], group_budget), (group[:half], group_budget)]
            else:
                # One unit still too long with its context: cut it into smaller windows; the budget
                # keeps shrinking until every window fits.
                smaller = max(1, group_budget - (total - max_tokens) - 1)
                pieces = _windows(text, smaller, tokenizer)
                pending += [([_Unit(p, group[0].sep, 0)], smaller) for p in reversed(pieces)]
            break
    return out


def chunk_document(
    document: ParsedDocument,
    tokenizer: Tokenizer,
    *,
    size: int,
    overlap: int,
    max_tokens: int,
    context_max_tokens: int = 32,
) -> list[Chunk]:
    """All chunks of a parsed document, in reading order, with ordinals from 0."""
    chunks: list[Chunk] = []
    for section in document.sections:
        for context, text, tokens in chunk_section(
            section,
            document.title,
            tokenizer,
            size=size,
            overlap=overlap,
            max_tokens=max_tokens,
            context_max_tokens=context_max_tokens,
        ):
            chunks.append(
                Chunk(
                    text=text,
                    heading_path=section.heading_path,
                    page=section.page,
                    ordinal=len(chunks),
                    context=context,
                    token_count=tokens,
                )
            )
    return chunks


def chunk_ids(source_root: str, doc_id: str, chunks: Sequence[Chunk]) -> list[str]:
    """Ids that depend on the chunk's text, not its position: unchanged chunks keep their id
    when text is inserted above them. Repeated identical text in one document is told apart
    by its occurrence number."""
    seen: dict[str, int] = {}
    ids = []
    for c in chunks:
        key = sha256(c.context, c.text)
        n = seen.get(key, 0)
        seen[key] = n + 1
        ids.append(sha256(source_root, doc_id, key, str(n))[:32])
    return ids
