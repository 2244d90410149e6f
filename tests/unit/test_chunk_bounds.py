"""Chunking cost follows its input: bounded tokenizer calls, a constant number of passes, no pile-ups.

Chunking runs in the ingesting process, outside the parse sandbox's limits, so these are adversarial
inputs: one huge paragraph (with and without sentence ends) and long runs of text the tokenizer
reads as nothing. Each test asserts an outcome (bounded calls, bounded output), never a time.
"""

from __future__ import annotations

import random

import pytest

from tasks.chunk import chunk_document
from tasks.parse import ParsedDocument, Section

MAX = 256
# Far below the test paragraphs (1 MB): the old chunker tokenised a whole paragraph in one call,
# which cost ~150 MB per MB of text (a 100 MB paragraph exhausted the host).
CALL_CHARS = 100_000


class SpyTokenizer:
    """The real tokenizer, recording how many characters each call is given."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        self.calls: list[int] = []

    def count(self, texts):
        self.calls.append(sum(len(t) for t in texts))
        return self._tokenizer.count(texts)

    def offsets(self, text):
        self.calls.append(len(text))
        return self._tokenizer.offsets(text)

    @property
    def special_tokens(self):
        return self._tokenizer.special_tokens


def _paragraph(chars: int, sentences: bool) -> str:
    rng = random.Random(0)
    vocab = ["alpha", "beta", "gamma", "delta", "ticket", "escalation", "probe", "firmware", "invoice", "policy"]
    out, size = [], 0
    while size < chars:
        words = " ".join(rng.choice(vocab) for _ in range(rng.randint(4, 18)))
        piece = words.capitalize() + "." if sentences else words
        out.append(piece)
        size += len(piece) + 1
    return " ".join(out)


@pytest.mark.parametrize("sentences", [True, False], ids=["sentences", "one-endless-sentence"])
def test_one_huge_paragraph_is_chunked_with_bounded_tokenizer_calls(tokenizer, sentences):
    text = _paragraph(1_000_000, sentences)
    spy = SpyTokenizer(tokenizer)
    chunks = chunk_document(
        ParsedDocument("text", "Dump", [Section(text, (), None)]), spy, size=200, overlap=32, max_tokens=MAX
    )
    assert max(spy.calls) <= CALL_CHARS, f"one tokenizer call got {max(spy.calls):,} characters"
    # A few linear passes over the text, not one per split level plus recounts.
    assert sum(spy.calls) <= 4 * len(text), f"tokenised {sum(spy.calls) / len(text):.1f}x the text"
    assert all(c.token_count <= MAX for c in chunks)
    assert sum(len(c.text.split()) for c in chunks) >= len(text.split())  # every word is in some chunk


def test_text_the_tokenizer_reads_as_nothing_does_not_pile_up(tokenizer):
    # Lines of combining marks count as 0 word pieces. The old packer let any number of them into one
    # chunk, and carried a trailing pile whole into the next chunk as "overlap" (one list insert at
    # the front per unit: quadratic in the pile, and the pile repeated).
    invisible = "\u0301"
    assert tokenizer.count([invisible]) == [0]
    long_line = " ".join(f"word{i}" for i in range(50))  # ~100 word pieces: always starts a new chunk
    lines = []
    for part in range(3):
        lines += [f"Sentence number {i} of part {part}." for i in range(30)] + [invisible] * 1000 + [long_line]
    lines += ["The very last sentence."]
    text = "\n".join(lines)
    chunks = chunk_document(
        ParsedDocument("text", "Zalgo", [Section(text, (), None)]), tokenizer, size=120, overlap=20, max_tokens=MAX
    )
    assert max(c.text.count(invisible) for c in chunks) <= 120  # a unit costs at least one token
    assert sum(c.text.count(invisible) for c in chunks) <= 1.5 * 3000  # overlap repeats a little, not the pile
    assert all(c.token_count <= MAX for c in chunks)
    assert "The very last sentence." in chunks[-1].text


def test_a_huge_heading_is_not_tokenised_whole(tokenizer):
    spy = SpyTokenizer(tokenizer)
    doc = ParsedDocument("html", "Page", [Section("Body text.", ("word " * 200_000,), None)])
    (chunk,) = chunk_document(doc, spy, size=200, overlap=32, max_tokens=MAX)
    assert max(spy.calls) <= CALL_CHARS
    assert chunk.context.endswith("…") and chunk.token_count <= MAX


@pytest.mark.parametrize("word", ["x", "\u00e9\u0301"], ids=["ascii", "combining"])
def test_a_run_without_spaces_does_not_make_a_giant_chunk(tokenizer, word):
    # Found by `make drills`: a 9 MB "word" is one unknown token per 64k block, so 200 blocks fitted
    # one 200-token chunk of 9.4 million characters.
    text = word * 2_000_000
    chunks = chunk_document(ParsedDocument("text", "Blob", [Section(text, (), None)]), tokenizer, size=200, overlap=32, max_tokens=MAX)
    assert max(len(c.text) for c in chunks) <= 200 * 32 + 100  # title prefix aside
    assert sum(len(c.text) for c in chunks) >= len(text)  # nothing dropped
