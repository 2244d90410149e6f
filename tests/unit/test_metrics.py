"""Retrieval metrics on hand-made rankings with known values."""

import math

import pytest

from tasks.metrics import hit_at, ndcg_at, recall_at, reciprocal_rank


def test_single_gold_at_rank_three():
    ranking = ["a", "b", "g", "c"]
    assert hit_at(ranking, {"g"}, 2) == 0.0 and hit_at(ranking, {"g"}, 3) == 1.0
    assert reciprocal_rank(ranking, {"g"}) == pytest.approx(1 / 3)
    assert ndcg_at(ranking, {"g"}, 10) == pytest.approx(1 / math.log2(4))


def test_duplicates_count_once_and_two_golds():
    ranking = ["a", "a", "g1", "a", "g2"]
    assert recall_at(ranking, {"g1", "g2"}, 2) == 0.5  # deduped: a, g1
    assert recall_at(ranking, {"g1", "g2"}, 3) == 1.0
    ideal = 1 + 1 / math.log2(3)
    assert ndcg_at(ranking, {"g1", "g2"}, 10) == pytest.approx((1 / math.log2(3) + 1 / math.log2(4)) / ideal)


def test_edges_empty_gold_and_empty_ranking():
    assert recall_at(["a"], set(), 5) == 0.0 and ndcg_at(["a"], set()) == 0.0
    assert reciprocal_rank([], {"g"}) == 0.0 and hit_at([], {"g"}, 10) == 0.0
    assert reciprocal_rank(["a", "g"], {"g"}, k=1) == 0.0
    assert ndcg_at(["g"], {"g"}) == 1.0
