"""Hybrid retrieval: fusion maths, filters, and access control enforced inside the search."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from tasks.retrieve import SearchFilters, access_clause, fts_query, rrf, weighted
from tests.unit.conftest import DOCS

def test_rrf_rewards_agreement():
    scores = rrf([["a", "b", "c"], ["b", "a", "d"]], k=60)
    assert scores["a"] == scores["b"] == pytest.approx(1 / 61 + 1 / 62)
    assert scores["a"] > scores["c"] > 0 and scores["c"] == scores["d"]


def test_weighted_fusion_normalises_each_side():
    scores = weighted({"a": 0.9, "b": 0.1}, {"b": 30.0, "c": 10.0}, dense_weight=0.5)
    assert scores == pytest.approx({"a": 0.5, "b": 0.5, "c": 0.0})
    assert weighted({"a": 0.9, "b": 0.1}, {}, 1.0)["a"] == 1.0


def test_fts_query_drops_fillers_keeps_numbers():
    assert fts_query("What is the v4.2 rate limit in requests/min?") == "v4.2 rate limit requests/min"
    assert fts_query("How much is £185?") == "much £185"
    assert fts_query("???") == "???"


def test_hybrid_finds_by_words_and_meaning(retriever):
    hits = retriever.search("hotel cap in London", k=2).hits
    assert hits[0].doc_id == "policies/travel.md"
    assert hits[0].dense is not None and hits[0].lexical is not None


@pytest.mark.parametrize("fusion", ["rrf", "weighted", "dense", "fts"])
def test_forbidden_documents_are_never_candidates(retriever, fusion):
    retriever.fusion = fusion
    # The query is the forbidden chunk's own text: it would rank first on both sides.
    question = DOCS["hr/salaries.md"][0]
    for groups in [(), ("support",), ("finance",), ("hr') OR (1=1",), ("HR",), ("*",)]:
        hits = retriever.search(question, k=10, filters=SearchFilters(groups=groups)).hits
        assert "hr/salaries.md" not in {h.doc_id for h in hits}, (fusion, groups)
        assert all("*" in h.groups or set(h.groups) & set(groups) for h in hits)
    allowed = retriever.search(question, k=10, filters=SearchFilters(groups=("hr",))).hits
    assert allowed[0].doc_id == "hr/salaries.md"


def test_access_filter_is_a_prefilter_not_a_post_filter(retriever):
    # With k=1 a post-filter would drop the forbidden top hit and return nothing.
    hits = retriever.search(DOCS["finance/board.pdf"][0], k=1, filters=SearchFilters(groups=())).hits
    assert len(hits) == 1 and hits[0].doc_id != "finance/board.pdf"


def test_group_names_cannot_inject_sql():
    clause = access_clause(["x') OR true OR ('"])
    assert "'x'') OR true OR ('''" in clause


def test_metadata_filters(retriever):
    only_support = retriever.search("tickets answered", k=10, filters=SearchFilters(path_prefix="support/")).hits
    assert {h.doc_id for h in only_support} == {"support/sla.html", "support/old-sla.html"}
    pdfs = retriever.search("acquisition", k=10, filters=SearchFilters(formats=("pdf",), groups=("board",))).hits
    assert [h.doc_id for h in pdfs] == ["finance/board.pdf"]
    recent = retriever.search(
        "tickets answered", k=10, filters=SearchFilters(modified_since=datetime.now(timezone.utc) - timedelta(days=30))
    ).hits
    assert "support/old-sla.html" not in {h.doc_id for h in recent} and "support/sla.html" in {h.doc_id for h in recent}


def test_search_many_matches_single_searches(retriever):
    questions = ["hotel cap London", "priority one tickets"]
    many = retriever.search_many(questions, k=3)
    for q, result in zip(questions, many):
        assert [h.chunk_id for h in result.hits] == [h.chunk_id for h in retriever.search(q, k=3).hits]
        assert set(result.timings) >= {"rewrite", "embed", "search"}


def test_rewrite_parsing_dedupes_and_drops_numbering():
    from tasks.rewrite import parse_queries

    text = "1. London hotel cap\n- london HOTEL cap\n\n2) nightly accommodation limit London\nWhat is the cap?\nextra"
    assert parse_queries(text, "What is the cap?", 2) == ["London hotel cap", "nightly accommodation limit London"]


def test_multi_query_search_fuses_rankings(retriever):
    from tasks.rewrite import multi_query_search

    result = multi_query_search(retriever, "hotel cap", ["priority one tickets"], k=4)
    docs = [h.doc_id for h in result.hits]
    assert "policies/travel.md" in docs and "support/sla.html" in docs
    assert result.hits == sorted(result.hits, key=lambda h: -h.score)


def test_newest_version_keeps_one_version_of_near_duplicates():
    from datetime import datetime, timezone

    from tasks.rerank import NewestVersion
    from tasks.retrieve import Hit

    def hit(doc_id, vector, year_mtime):
        v = np.asarray(vector, dtype=np.float32)
        return Hit(f"{doc_id}#0", doc_id, doc_id, "text", None, [], "/p", "markdown", ["*"], v / np.linalg.norm(v),
                   modified=datetime(year_mtime, 1, 1, tzinfo=timezone.utc))

    old, new, other = hit("travel-2025.md", [1, 0.01, 0], 2026), hit("travel-2026.md", [1, 0, 0], 2026), hit("sla.md", [0, 1, 0], 2024)
    reranker = NewestVersion(0.9)
    assert [h.doc_id for h in reranker.rerank("hotel cap now?", [old, other, new], 3)] == ["travel-2026.md", "sla.md", "travel-2025.md"]
    assert [h.doc_id for h in reranker.rerank("hotel cap in the 2025 policy?", [new, old, other], 2)] == ["travel-2025.md", "sla.md"]
    # Same year names: the newer file wins; unrelated documents are untouched.
    a, b = hit("notes-a.md", [0, 0, 1], 2020), hit("notes-b.md", [0, 0.01, 1], 2023)
    assert [h.doc_id for h in reranker.rerank("notes", [a, other, b], 3)] == ["notes-b.md", "sla.md", "notes-a.md"]
