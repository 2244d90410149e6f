"""Reranker training data: query synthesis and negative mining (no model weights)."""

from __future__ import annotations

import random

import numpy as np

from tasks.rerank_train import (
    Chunk,
    cloze_query,
    covers_query,
    content_words,
    keyword_query,
    sentences,
    synthetic_queries,
    table_chunks,
    term_idf,
    training_groups,
)
from tasks.retrieve import SearchFilters

PASSAGE = (
    "Hotel stays in London are capped at 185 pounds per night. Book through the Northbound portal at least "
    "14 days ahead. Late bookings need a reason recorded in Ledgerly by the approver."
)


def chunk(text: str, doc: str = "d.md", cid: str = "c1") -> Chunk:
    return Chunk(cid, doc, text, np.ones(4, np.float32) / 2)


def test_sentences_split_on_punctuation_lines_and_glued_passages():
    assert sentences("One two. Three four!\n- Item five\n\nSix") == ["One two.", "Three four!", "Item five", "Six"]
    # HaluEval concatenates passages without a space; a decimal or an initial is not a sentence end.
    assert sentences("He died in 1989.James Miller sang. Pi is 3.14 here.") == ["He died in 1989.", "James Miller sang.", "Pi is 3.14 here."]


def test_cloze_removes_the_query_sentence_unless_kept():
    rng = random.Random(0)
    made = [cloze_query(chunk(PASSAGE), rng, keep_share=0.5) for _ in range(40)]
    assert {q.kind for q in made} == {"cloze", "cloze-kept"}
    for q in made:
        assert q.query in sentences(PASSAGE)
        if q.kind == "cloze":
            assert q.query not in q.passage and len(q.passage.split()) >= 6
        else:
            assert q.passage == PASSAGE


def test_cloze_keeps_a_lone_sentence_and_skips_chunks_without_one():
    lone = cloze_query(chunk("Refunds are issued within fourteen days of the request."), random.Random(0), keep_share=0.0)
    assert lone is not None and lone.kind == "cloze-kept"
    assert cloze_query(chunk("SEV1 | outage"), random.Random(0)) is None


def test_keyword_query_draws_rare_words_of_one_sentence_in_text_order():
    idf = term_idf([PASSAGE, "The London office opens at nine.", "Book a room in London."])
    for seed in range(10):
        q = keyword_query(chunk(PASSAGE), idf, random.Random(seed), terms=4)
        words = q.query.split()
        assert len(words) == 4 and q.kind == "keywords" and q.passage == PASSAGE
        source = next(s for s in sentences(PASSAGE) if set(words) <= set(content_words(s)))
        order = content_words(source)
        assert [order.index(w) for w in words] == sorted(order.index(w) for w in words)
    assert keyword_query(chunk("Too short."), idf, random.Random(0)) is None


def test_synthetic_queries_spread_over_documents_one_per_chunk_and_repeatable():
    chunks = [chunk(f"{PASSAGE} Section {i} of {d}.", doc=d, cid=f"{d}-{i}") for d in ("big.pdf", "a.md", "b.md") for i in range(10 if d == "big.pdf" else 2)]
    made = synthetic_queries(chunks, 3, seed=1)
    assert len(made) == 3 and {q.doc_id for q in made} == {"big.pdf", "a.md", "b.md"}
    everything = synthetic_queries(chunks, 100, seed=1)
    assert len(everything) == len(chunks) == len({q.chunk_id for q in everything})
    assert synthetic_queries(chunks, 100, seed=1) == everything


def test_covers_query_needs_every_content_word():
    assert covers_query("hotel cap London", "The London hotel cap is 185 pounds.")
    assert not covers_query("hotel cap Paris", "The London hotel cap is 185 pounds.")
    assert not covers_query("the of", "anything")  # no content words: never claims a cover


def test_table_chunks_are_only_those_the_groups_may_read(retriever):
    public = {c.doc_id for c in table_chunks(retriever.table)}
    assert public == {"policies/travel.md", "support/sla.html", "support/old-sla.html"}
    assert "hr/salaries.md" in {c.doc_id for c in table_chunks(retriever.table, SearchFilters(groups=("hr",)))}


def test_mined_negatives_are_other_documents_and_never_answer_the_query(retriever):
    chunks = table_chunks(retriever.table)
    queries = synthetic_queries(chunks, len(chunks), seed=0, keyword_share=0.5)
    groups = training_groups(queries, retriever, chunks, hard=2, random_negatives=1)
    assert groups
    doc_of = {c.chunk_id: c.doc_id for c in chunks}
    for g in groups:
        assert g.negatives and len(g.negatives) == len(g.negative_ids) <= 3
        assert len(set(g.negative_ids)) == len(g.negative_ids)
        assert all(doc_of[n] != doc_of[g.chunk_id] for n in g.negative_ids)  # public chunks only, other documents
        assert not any(covers_query(g.query, text) for text in g.negatives)
        assert g.positive not in g.negatives


def test_near_duplicates_of_the_positive_are_never_negatives(retriever):
    chunks = table_chunks(retriever.table)
    queries = synthetic_queries(chunks, len(chunks), seed=0)
    # Every chunk counts as a near-duplicate of every other: nothing is left to mine, no group is made.
    assert training_groups(queries, retriever, chunks, duplicate_cosine=-1.0) == []
