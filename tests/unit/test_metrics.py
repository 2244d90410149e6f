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


# --- answer metrics ------------------------------------------------------------------------------

import numpy as np  # noqa: E402

from tasks.metrics import (  # noqa: E402
    EMPTY,
    Estimate,
    QuestionResult,
    ScoringRules,
    answers_agree,
    arm_metrics,
    bootstrap,
    contains_gold,
    exact_match,
    follows_format,
    is_hallucination,
    normalise_answer,
    paired_difference,
    paraphrase_agreement,
    question_scores,
    semantic_similarity,
    token_f1,
)

ABSTAIN = "The documents don't answer this."


def qr(id, answer="", *, golds=("£185",), answerable=True, abstained=False, arm="rag", **kw) -> QuestionResult:
    if abstained:
        answer = ABSTAIN
    return QuestionResult(id=id, question=f"q {id}", arm=arm, answerable=answerable,
                          golds=list(golds) if answerable else [], answer=answer, abstained=abstained, **kw)  # fmt: skip


def test_normalisation_strips_citations_articles_punctuation():
    assert normalise_answer("The cap is £185 per night [1].") == "cap is £185 per night"
    assert normalise_answer("An answer [1][2], a limit [1, 3]; 1,000’s!") == "answer limit 1000s"


def test_exact_match_and_f1_with_known_values():
    assert exact_match("The £185 [1].", ["185 pounds", "£185"]) == 1.0  # second gold, marker and article dropped
    assert exact_match("£185 per night", ["£185"]) == 0.0
    # answer tokens: cap is £185 per night (5); gold: £185 per night (3): P = 3/5, R = 1 -> F1 = 0.75.
    # With the "[1]" marker kept as a token it would be 4/6 -> 0.667.
    assert token_f1("The cap is £185 per night [1].", ["185 pounds", "£185 per night"]) == pytest.approx(0.75)
    assert token_f1("Nothing relevant.", ["£185"]) == 0.0 and token_f1("£185", []) == 0.0


def test_contains_needs_whole_tokens_and_first_word_for_yes_no():
    assert contains_gold("The limit is 1,000 requests per minute [2].", ["1000"]) == 1.0
    assert contains_gold("It rose from £150 to £185 [1].", ["£150 to £185"]) == 1.0
    assert contains_gold("The fee is £1850.", ["£185"]) == 0.0  # not at a word boundary
    assert contains_gold("The fee is £185.", ["the £185"]) == 1.0  # articles normalised on both sides
    assert contains_gold("No, claims must be filed within 30 days [1].", ["No"]) == 1.0
    assert contains_gold("There is no limit on taxis.", ["No"]) == 0.0
    assert contains_gold("Yes [1].", ["Yes", "Yes, since Tidewell 4.1"]) == 1.0


def test_semantic_similarity_with_vectors_and_embed_callable():
    assert semantic_similarity(np.array([1.0, 0.0]), np.array([[0.0, 1.0], [3.0, 4.0]])) == pytest.approx(0.6)
    assert semantic_similarity(np.array([0.0, 2.0]), np.array([0.0, 1.0])) == pytest.approx(1.0)

    table = {"The cap is £185.": [1.0, 0.0], "£185": [0.6, 0.8], "185 pounds": [0.0, 1.0]}
    seen: list[list[str]] = []

    def embed(texts):
        seen.append(list(texts))
        return np.array([table[t] for t in texts])

    results = [qr("a", "The cap is £185 [1]."), qr("b", abstained=True), qr("c", answerable=False, answer="x"),
               qr("d", "given", answer_vector=np.array([0.0, 1.0]), gold_vectors=np.array([[0.0, 1.0]]))]  # fmt: skip
    for r in results[:3]:
        r.golds = ["£185", "185 pounds"] if r.answerable else []
    values = question_scores(results, embed=embed)["semantic_similarity"]
    assert values == [pytest.approx(0.6), 0.0, None, pytest.approx(1.0)]
    assert seen == [["The cap is £185.", "£185", "185 pounds"]]  # one batch, markers stripped, only what's missing
    assert question_scores(results[:1])["semantic_similarity"] == [None]  # no vectors, no embed: not scored


def test_abstentions_score_zero_and_unanswerables_do_not_count():
    s = question_scores([qr("a", abstained=True), qr("b", "Paris.", answerable=False), qr("c", "£185 [1].")])
    for name in ("em", "f1", "contains", "accuracy"):
        assert s[name] == [0.0, None, 1.0], name


def test_hallucination_classification():
    t = ScoringRules().support_threshold
    cases = [
        (qr("wrong-unsupported", "The cap is £150.", support=None), True),
        (qr("wrong-low-support", "The cap is £150.", support=t - 0.1), True),
        (qr("wrong-but-supported", "The cap is £150.", support=t + 0.1), False),  # stale source: F1's job
        (qr("right-unsupported", "The cap is £185."), False),
        (qr("unanswerable-answered", "It is 42.", answerable=False, support=0.99), True),
        (qr("unanswerable-abstained", answerable=False, abstained=True), False),
        (qr("answerable-abstained", abstained=True), False),
    ]
    assert [is_hallucination(r) for r, _ in cases] == [h for _, h in cases]
    assert arm_metrics([r for r, _ in cases], resamples=50)["hallucination_rate"].value == pytest.approx(3 / 7)


def test_abstention_precision_and_recall():
    mixed = [qr("a", abstained=True), qr("u1", answerable=False, abstained=True), qr("u2", "It is 42.", answerable=False),
             qr("b", "£185.")]  # fmt: skip
    m = arm_metrics(mixed, resamples=50)
    assert (m["abstention_precision"].value, m["abstention_precision"].n) == (0.5, 2)
    assert (m["abstention_recall"].value, m["abstention_recall"].n) == (0.5, 2)
    assert m["abstention_rate"].value == 0.5

    all_abstain = arm_metrics([qr("a", abstained=True), qr("u", answerable=False, abstained=True),
                               qr("v", answerable=False, abstained=True)], resamples=50)  # fmt: skip
    assert all_abstain["abstention_precision"].value == pytest.approx(2 / 3)
    assert all_abstain["abstention_recall"].value == 1.0
    assert all_abstain["groundedness"] == EMPTY and all_abstain["format_adherence"] == EMPTY
    assert all_abstain["f1"].value == 0.0

    none_abstain = arm_metrics([qr("a", "£185."), qr("u", "It is 42.", answerable=False)], resamples=50)
    assert none_abstain["abstention_precision"] == EMPTY
    assert none_abstain["abstention_recall"].value == 0.0


def test_groundedness_is_a_mean_per_answer():
    results = [qr("a", "£185.", sentences_supported=2, sentences=2), qr("b", "£185.", sentences_supported=1, sentences=4),
               qr("c", abstained=True, sentences_supported=0, sentences=3), qr("d", "£185.")]  # fmt: skip
    assert question_scores(results)["groundedness"] == [1.0, 0.25, None, None]
    assert arm_metrics(results, resamples=50)["groundedness"].value == pytest.approx(0.625)  # pooled would be 0.5


def test_draft_groundedness_also_counts_drafts_the_validator_withheld():
    results = [qr("a", "£185.", sentences_supported=2, sentences=2),
               qr("b", abstained=True, withheld_supported=1, withheld_sentences=4),  # withheld as unsupported
               qr("c", abstained=True),  # the model abstained itself: no draft to judge
               qr("d", "£185.")]  # fmt: skip
    scores = question_scores(results)
    assert scores["draft_groundedness"] == [1.0, 0.25, None, None]
    assert scores["groundedness"] == [1.0, None, None, None]


def test_paraphrase_agreement_on_crafted_groups():
    results = [
        qr("a1", "The cap is £185 [1].", paraphrase_group="g1"),
        qr("a2", "£185 per night.", paraphrase_group="g1"),  # both correct, different wording: agree
        qr("b1", abstained=True, paraphrase_group="g2"),
        qr("b2", "£185.", paraphrase_group="g2"),  # abstains vs answers: disagree
        qr("c1", answerable=False, abstained=True, paraphrase_group="g3"),
        qr("c2", answerable=False, abstained=True, paraphrase_group="g3"),
        qr("c3", "It is 42.", answerable=False, paraphrase_group="g3"),  # pairs: 1, 0, 0
        qr("d1", "£185.", paraphrase_group="g4"),  # a group of one: not counted
    ]
    assert paraphrase_agreement(results) == {"g1": 1.0, "g2": 0.0, "g3": pytest.approx(1 / 3)}
    m = arm_metrics(results, resamples=50)["paraphrase_agreement"]
    assert m.value == pytest.approx(4 / 9) and m.n == 3
    per_question = question_scores(results)["paraphrase_agreement"]
    assert per_question[:4] == [1.0, 1.0, 0.0, 0.0] and per_question[4] == 0.5 and per_question[6] == 0.0
    assert per_question[7] is None
    # Similar wording does not rescue a right and a wrong answer; two similar wrong answers agree.
    right, wrong = qr("x", "The London cap is £185 per night."), qr("y", "The London cap is £150 per night.")
    assert not answers_agree(right, wrong)
    assert answers_agree(wrong, qr("z", "The London cap is £150 a night."))
    assert not answers_agree(wrong, qr("w", "Hotels cost 200 euros."))  # wrong in different ways


def test_format_adherence():
    pattern = ScoringRules().format_pattern
    assert follows_format("The cap is £185 [1].", pattern) and follows_format("Cap £185 [1][2]", pattern)
    assert follows_format("Cap £185 [1, 2].", pattern)
    assert not follows_format("The cap is £185.", pattern) and not follows_format("[1] The cap is £185.", pattern)
    results = [qr("a", "£185 [1]."), qr("b", "£185."), qr("c", abstained=True)]
    assert question_scores(results)["format_adherence"] == [1.0, 0.0, None]
    assert question_scores(results, ScoringRules(format_pattern=None))["format_adherence"] == [None, None, None]


def test_retrieval_metrics_only_for_answerable_questions_of_retrieval_arms():
    results = [qr("a", "£185.", gold_docs=["g"], retrieved_docs=["x", "g"]), qr("b", "£185.", gold_docs=["g"]),
               qr("c", "42.", answerable=False, retrieved_docs=["x"]), qr("d", "£185.", gold_docs=["g"], retrieved_docs=[])]  # fmt: skip
    s = question_scores(results)
    assert s["hit@5"] == [1.0, None, None, 0.0] and s["mrr"] == [0.5, None, None, 0.0]
    assert s["ndcg@10"][0] == pytest.approx(1 / math.log2(3))
    assert question_scores(results, ScoringRules(k=1))["hit@1"][0] == 0.0


def test_latency_percentiles_and_cost():
    results = [qr(str(i), "£185.", timings={"search": 0.1 * i, "generate": float(i)}, cpu_seconds=2.0 * i) for i in range(1, 6)]
    m = arm_metrics(results, resamples=200)
    assert m["latency_p50.generate"].value == 3.0 and m["latency_p50.total"].value == pytest.approx(3.3)
    assert m["latency_p95.generate"].value == pytest.approx(4.8)
    assert m["latency_p50.search"].low <= 0.3 <= m["latency_p50.search"].high
    assert m["cost_cpu_s"].value == 6.0 and m["latency_s"].value == pytest.approx(3.3)
    with_total = qr("t", "£185.", timings={"search": 1.0, "generate": 1.0, "total": 5.0})
    assert question_scores([with_total])["latency_s"] == [5.0]


def test_arm_metrics_rejects_mixed_arms_and_duplicates_and_handles_empty():
    with pytest.raises(ValueError, match="mix arms"):
        arm_metrics([qr("a", "x", arm="rag"), qr("b", "x", arm="hybrid")])
    with pytest.raises(ValueError, match="more than once"):
        arm_metrics([qr("a", "x"), qr("a", "y")])
    empty = arm_metrics([])
    assert empty["f1"] == EMPTY and empty["latency_p50.total"] == EMPTY and empty["paraphrase_agreement"] == EMPTY


def test_question_result_from_answer():
    from tasks.answer import Answer

    item = {"id": "q1", "question": "Cap?", "answers": ["£185"], "gold_docs": ["d"], "answerable": True,
            "category": "numeric", "paraphrase_group": "pg01", "split": "test"}  # fmt: skip
    grounding = [{"sentence": "s1", "supported": True}, {"sentence": "s2", "supported": False}]
    answered = Answer("Cap?", "£185 [1]. Really.", False, [], grounding, {"generate": 1.5}, support=0.7)
    r = QuestionResult.of(item, "hybrid", answered, retrieved_docs=["d", "e"], cpu_seconds=3.0)
    assert (r.sentences_supported, r.sentences, r.support, r.golds, r.paraphrase_group) == (1, 2, 0.7, ["£185"], "pg01")
    assert r.as_dict()["retrieved_docs"] == ["d", "e"] and "answer_vector" not in r.as_dict()
    withheld = Answer("Cap?", ABSTAIN, True, [], grounding, {}, support=0.2, reason="unsupported")
    r = QuestionResult.of(item, "base", withheld)
    assert (r.abstained, r.support, r.sentences, r.retrieved_docs) == (True, None, 0, None)


# --- bootstrap -----------------------------------------------------------------------------------


def test_bootstrap_is_deterministic_and_contains_the_estimate():
    values = [0.0, 1.0, 1.0, 0.5, 0.25, 1.0, 0.0, 0.75, 1.0, 0.5]
    a, b = bootstrap(values, seed=3), bootstrap(values, seed=3)
    assert a == b and a.value == pytest.approx(0.6) and a.n == 10
    assert a.low < a.value < a.high and 0.0 <= a.low and a.high <= 1.0
    assert bootstrap(values, seed=4) != a  # the seed is what makes it repeatable
    narrow = bootstrap(values, confidence=0.5, seed=3)
    assert a.low < narrow.low and narrow.high < a.high


def test_bootstrap_edges():
    assert bootstrap([]) == EMPTY == Estimate(None, None, None, 0)
    assert bootstrap([None, None]) == EMPTY
    assert bootstrap([0.3] * 7) == Estimate(0.3, 0.3, 0.3, 7)
    assert bootstrap([0.8]) == Estimate(0.8, 0.8, 0.8, 1)
    assert bootstrap([1.0, None, 0.0]).n == 2
    assert EMPTY.as_dict() == {"value": None, "low": None, "high": None, "n": 0}
    with pytest.raises(ValueError, match="confidence"):
        bootstrap([1.0], confidence=95)


def test_paired_difference():
    values = [0.1, 0.9, 0.4, None, 0.7]
    assert paired_difference(values, list(values)) == Estimate(0.0, 0.0, 0.0, 4)
    assert paired_difference([1.0] * 10, [0.0] * 10) == Estimate(1.0, 1.0, 1.0, 10)
    a = [1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0]
    b = [0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0]
    d = paired_difference(a, b, seed=1)
    assert d == paired_difference(a, b, seed=1) and d.value == pytest.approx(0.375)
    assert d.low <= d.value <= d.high and d.high <= 1.0
    # The point estimate is the difference of the two arms' aggregates, each over its own values.
    assert paired_difference([1.0, None], [0.5, 0.0]).value == pytest.approx(0.75)
    assert paired_difference([None, None], [0.5, 0.0]).value is None
    with pytest.raises(ValueError, match="aligned"):
        paired_difference([1.0], [1.0, 0.0])
