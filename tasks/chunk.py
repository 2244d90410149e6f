"""Token-aware chunking with the embedder's own tokenizer.

A document's sections (split at headings, or per PDF page) are cut into units at paragraphs,
then lines, then sentences, then token windows for anything still too long, and units are packed
greedily up to the budget. Chunks never cross a section, so an edit on one page or under one
heading changes only that section's chunks. Each chunk carries its title/heading path as context
for the embedder, and the final embedded text (context + chunk + special tokens) is counted
exactly and split again if needed: **no chunk exceeds the embedder's max sequence length**,
which the default model would otherwise silently truncate.
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


def _truncate(text: str, max_tokens: int, tokenizer: Tokenizer) -> str:
    if max_tokens <= 0:
        return ""
    spans = tokenizer.offsets(text)
    if len(spans) <= max_tokens:
        return text
    return text[: spans[max_tokens - 1][1]].rstrip() + " …"


def _windows(text: str, budget: int, tokenizer: Tokenizer) -> list[str]:
    """Cut `text` into pieces of at most `budget` word pieces, at word-piece boundaries."""
    spans = tokenizer.offsets(text)
    pieces = []
    for start in range(0, len(spans), budget):
        lo = spans[start][0] if start else 0
        hi = spans[start + budget][0] if start + budget < len(spans) else len(text)
        pieces.append(text[lo:hi].strip())
    return [p for p in pieces if p]


def _split(text: str, budget: int, tokenizer: Tokenizer) -> list[tuple[str, str]]:
    """(separator, piece) pairs of at most `budget` tokens: paragraphs, lines, sentences, windows."""
    levels: list[tuple[str, re.Pattern[str] | None]] = [
        ("\n\n", re.compile(r"\n\s*\n")),
        ("\n", re.compile(r"\n")),
        (" ", _SENTENCE_END),
        (" ", None),
    ]

    def recurse(piece: str, level: int) -> list[tuple[str, str]]:
        sep, pattern = levels[level]
        parts = [p.strip() for p in pattern.split(piece)] if pattern else _windows(piece, budget, tokenizer)
        parts = [p for p in parts if p]
        out: list[tuple[str, str]] = []
        counts = tokenizer.count(parts)
        for part, n in zip(parts, counts):
            if n <= budget or pattern is None:
                out.append((sep, part))
            else:
                sub = recurse(part, level + 1)
                out.extend([(sep, sub[0][1]), *sub[1:]] if sub else [])
        return out

    return recurse(text, 0)


def _pack(units: list[_Unit], budget: int, overlap: int) -> list[list[_Unit]]:
    chunks: list[list[_Unit]] = []
    current: list[_Unit] = []
    size = 0
    for unit in units:
        if current and size + unit.tokens > budget:
            chunks.append(current)
            # Carry trailing units (up to `overlap` tokens) into the next chunk for context.
            carry: list[_Unit] = []
            carried = 0
            for prev in reversed(current[1:] if len(current) > 1 else []):
                if carried + prev.tokens > overlap or carried + prev.tokens + unit.tokens > budget:
                    break
                carry.insert(0, prev)
                carried += prev.tokens
            current, size = carry, carried
        current.append(unit)
        size += unit.tokens
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
    pieces = _split(section.text, budget, tokenizer)
    counts = tokenizer.count([p for _, p in pieces])
    units = [_Unit(text=p, sep=s, tokens=n) for (s, p), n in zip(pieces, counts)]
    out: list[tuple[str, str, int]] = []
    pending = _pack(units, budget, min(overlap, budget // 2))
    while pending:
        group = pending.pop(0)
        text = _join(group)
        total = tokenizer.count([embed_text(context, text)])[0] + tokenizer.special_tokens
        if total <= max_tokens:
            out.append((context, text, total))
        elif len(group) > 1:
            # Joining can tokenise differently from the parts (rare, BPE models): split and recheck.
            half = len(group) // 2
            pending[:0] = [group[:half], group[half:]]
        else:
            # One unit still too long with its context: cut it into smaller windows; the budget keeps
            # shrinking until every window fits.
            budget = max(1, budget - (total - max_tokens) - 1)
            pending[:0] = [[_Unit(p, group[0].sep, 0)] for p in _windows(text, budget, tokenizer)]
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
