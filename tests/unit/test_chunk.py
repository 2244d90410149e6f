"""Chunker invariants with the real MiniLM tokenizer: token bounds, coverage, determinism, stable ids."""

from __future__ import annotations

import random
import re

import pytest

from tasks.chunk import chunk_document, chunk_ids, embed_text
from tasks.parse import ParsedDocument, Section

MAX = 256


def _words(n: int, seed: int) -> str:
    rng = random.Random(seed)
    vocab = ["alpha", "beta", "gamma", "delta", "ticket", "escalation", "probe", "firmware", "invoice", "policy"]
    sentences = []
    for _ in range(n):
        words = [rng.choice(vocab) for _ in range(rng.randint(4, 18))]
        sentences.append(" ".join(words).capitalize() + ".")
    return " ".join(sentences)


def _doc(*sections: Section, title: str = "Handbook") -> ParsedDocument:
    return ParsedDocument(format="markdown", title=title, sections=list(sections))


def _chunks(doc: ParsedDocument, tokenizer, size: int = 120, overlap: int = 20):
    return chunk_document(doc, tokenizer, size=size, overlap=overlap, max_tokens=MAX, context_max_tokens=32)


def test_no_chunk_exceeds_the_embedder_window(tokenizer):
    # A pathological mix: long paragraphs, one endless sentence, an unbroken token run, long headings.
    endless = "and then " * 400 + "end."
    unbroken = "x" * 5000
    doc = _doc(
        Section(_words(60, 1), ("Travel", "Per diems"), None),
        Section(endless, ("A very long heading " * 30,), None),
        Section(unbroken + "\n\n" + _words(5, 2), (), 3),
    )
    chunks = _chunks(doc, tokenizer, size=250, overlap=40)
    assert len(chunks) > 5
    for c in chunks:
        exact = tokenizer.count([c.embed_text])[0] + tokenizer.special_tokens
        assert exact == c.token_count
        assert c.token_count <= MAX


def test_every_sentence_is_covered_and_order_is_kept(tokenizer):
    text = "\n\n".join(_words(8, seed) for seed in range(6))
    doc = _doc(Section(text, ("Refunds",), None))
    chunks = _chunks(doc, tokenizer, size=80, overlap=16)
    joined = " ".join(c.text for c in chunks)
    for sentence in re.split(r"(?<=\.)\s+", text.replace("\n\n", " ")):
        assert sentence.strip() in joined
    positions = [text.replace("\n\n", " ").find(c.text.split(".")[0]) for c in chunks]
    assert positions == sorted(positions)
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))


def test_overlap_repeats_trailing_sentences(tokenizer):
    doc = _doc(Section(_words(40, 7), (), None))
    with_overlap = _chunks(doc, tokenizer, size=100, overlap=30)
    without = _chunks(doc, tokenizer, size=100, overlap=0)
    assert len(with_overlap) >= len(without) > 2
    shared = [a.text.split(". ")[-1] in b.text for a, b in zip(with_overlap, with_overlap[1:])]
    assert any(shared)
    assert not any(a.text.split(". ")[-1] in b.text for a, b in zip(without, without[1:]))


def test_chunks_never_cross_sections_and_carry_heading_context(tokenizer):
    doc = _doc(
        Section("Flights are booked in economy.", ("Travel policy", "Flights"), None),
        Section("Hotels up to 180 EUR per night.", ("Travel policy", "Hotels"), 2),
        title="Travel policy",
    )
    chunks = _chunks(doc, tokenizer)
    assert [c.text for c in chunks] == ["Flights are booked in economy.", "Hotels up to 180 EUR per night."]
    assert chunks[0].context == "Travel policy > Flights"  # title not repeated
    assert chunks[1].page == 2
    assert embed_text(chunks[1].context, chunks[1].text).startswith("Travel policy > Hotels\n")


def test_chunking_is_deterministic(tokenizer):
    doc = _doc(Section(_words(50, 3), ("A",), None), Section(_words(30, 4), ("B",), None))
    first, second = _chunks(doc, tokenizer), _chunks(doc, tokenizer)
    assert first == second
    assert chunk_ids("/r", "a.md", first) == chunk_ids("/r", "a.md", second)


def test_ids_survive_an_insertion_above(tokenizer):
    sections = [Section(_words(10, s), (f"H{s}",), None) for s in range(5)]
    before = _chunks(_doc(*sections), tokenizer)
    after = _chunks(_doc(Section("A new first section.", ("New",), None), *sections), tokenizer)
    ids_before = set(chunk_ids("/r", "a.md", before))
    ids_after = set(chunk_ids("/r", "a.md", after))
    assert ids_before < ids_after and len(ids_after - ids_before) == 1


def test_repeated_text_gets_distinct_ids(tokenizer):
    doc = _doc(Section("Same disclaimer.", ("X",), None), Section("Same disclaimer.", ("X",), None))
    ids = chunk_ids("/r", "a.md", _chunks(doc, tokenizer))
    assert len(ids) == 2 and len(set(ids)) == 2
    assert chunk_ids("/other", "a.md", _chunks(doc, tokenizer))[0] != ids[0]


def test_budget_too_small_for_context_fails_clearly(tokenizer):
    doc = _doc(Section("text", ("heading " * 50,), None))
    with pytest.raises(ValueError, match="context_max_tokens"):
        chunk_document(doc, tokenizer, size=100, overlap=0, max_tokens=40, context_max_tokens=40)
