"""The promotion gate on synthetic arms whose metric differences are known by construction."""

import json

import pytest

from tasks.gate import decide
from tasks.metrics import QuestionResult

N = 60  # evaluation questions; the incumbent answers the first 30 right


def arm(name, correct, support=None, grounded=None, prefix="q"):
    """One arm: question i answered right when i in `correct`; support 0.9 / 1 of 1 sentence unless overridden."""
    support, grounded = support or {}, grounded or {}
    results = []
    for i in range(N if prefix == "q" else 20):
        s_supported, sentences = grounded.get(i, (1, 1))
        results.append(
            QuestionResult(
                id=f"{prefix}{i:03d}", question=f"question {i}", arm=name, answerable=True, golds=["£185"],
                answer="£185 [1]." if i in correct else "The cap is £150 [1].", abstained=False,
                support=support.get(i, 0.9), sentences_supported=s_supported, sentences=sentences,
            )
        )  # fmt: skip
    return results


INCUMBENT = arm("rag", set(range(30)))
CANARY = arm("base", set(range(18)), prefix="c")
BETTER = set(range(50))  # 20 more right answers: F1 +0.333


def test_promotes_a_clear_win_with_equal_guards():
    d = decide(arm("hybrid", BETTER), INCUMBENT, CANARY, CANARY)
    assert d.promote, d.reasons
    assert d.reasons[0].startswith("promote")
    assert any(r.startswith("f1 +0.333 [") and "beats the incumbent beyond the CI" in r for r in d.reasons)
    checks = d.numbers["checks"]
    assert checks["f1"]["difference"]["low"] > 0 and checks["f1"]["candidate"]["value"] == pytest.approx(50 / 60, abs=1e-4)
    assert checks["hallucination_rate"]["difference"]["value"] == 0.0 and checks["canary:contains"]["passed"]
    assert d.numbers["arms"] == {"candidate": "hybrid", "incumbent": "rag", "candidate_canary": "base", "incumbent_canary": "base"}
    json.dumps(d.as_dict())  # JSON-safe


def test_rejects_a_hallucination_regression():
    # The 10 wrong answers lose their support: wrong + unsupported = hallucination (0 -> 1/6).
    d = decide(arm("hybrid", BETTER, support={i: 0.3 for i in range(50, 60)}), INCUMBENT, CANARY, CANARY)
    assert not d.promote
    assert d.reasons[0] == "reject: failed hallucination_rate"
    line = next(r for r in d.reasons if r.startswith("hallucination_rate"))
    assert "+0.167" in line and "worse" in line and "rises beyond the CI" in line


def test_rejects_a_groundedness_regression():
    # Half the sentences of 30 answers unsupported: groundedness 1.0 -> 0.75.
    d = decide(arm("hybrid", BETTER, grounded={i: (1, 2) for i in range(30)}), INCUMBENT, CANARY, CANARY)
    assert not d.promote and d.reasons[0] == "reject: failed groundedness, draft_groundedness"  # an answer is its draft
    assert d.numbers["checks"]["groundedness"]["difference"]["value"] == pytest.approx(-0.25)


def test_rejects_drafts_that_got_less_grounded_even_when_the_answers_shown_did_not():
    # 20 drafts with no supported sentence, withheld by the validator: the answers shown are as grounded
    # as before, but the adapter writes worse drafts.
    candidate = arm("hybrid", BETTER)
    for r in candidate[40:]:
        r.abstained, r.answer, r.sentences_supported, r.sentences = True, "The documents don't answer this.", 0, 0
        r.withheld_supported, r.withheld_sentences = 0, 1
    d = decide(candidate, INCUMBENT, CANARY, CANARY)
    checks = d.numbers["checks"]
    assert checks["groundedness"]["passed"] and not checks["draft_groundedness"]["passed"]
    assert checks["draft_groundedness"]["difference"]["value"] == pytest.approx(-20 / 60, abs=1e-3)
    assert "draft_groundedness" in d.reasons[0]


def test_groundedness_tolerance_decides_a_small_noisy_drop():
    # One answer of 60 loses half its support: -0.008, interval reaches 0.
    candidate = arm("hybrid", BETTER, grounded={0: (1, 2)})
    assert decide(candidate, INCUMBENT, CANARY, CANARY).promote
    strict = decide(candidate, INCUMBENT, CANARY, CANARY, tolerances={"groundedness": 0.005, "draft_groundedness": 0.005})
    assert not strict.promote and "drops by 0.008 > tolerance 0.005" in " ".join(strict.reasons)


def test_rejects_forgetting_on_the_canary_set():
    d = decide(arm("hybrid", BETTER), INCUMBENT, arm("lora", set(range(10)), prefix="c"), CANARY)
    assert not d.promote and d.reasons[0] == "reject: failed canary:contains"
    line = next(r for r in d.reasons if r.startswith("canary contains"))
    assert "-0.400" in line and "candidate 0.500 vs incumbent 0.900" in line


def test_rejects_a_gain_within_the_interval():
    # Two more right, one more wrong: F1 +0.017, not beyond the CI.
    d = decide(arm("hybrid", set(range(1, 32))), INCUMBENT, CANARY, CANARY)
    assert not d.promote and d.reasons[0] == "reject: failed f1"
    line = next(r for r in d.reasons if r.startswith("f1"))
    assert "+0.017" in line and "not a win beyond the CI" in line
    assert d.numbers["checks"]["f1"]["difference"]["low"] <= 0 < d.numbers["checks"]["f1"]["difference"]["high"]


def test_lower_is_better_primary_and_identical_candidate():
    same = decide(arm("hybrid", set(range(30))), INCUMBENT, CANARY, CANARY)
    assert not same.promote and same.numbers["checks"]["f1"]["difference"] == {"value": 0.0, "low": 0.0, "high": 0.0, "n": N}
    # Unsupported wrong answers in the incumbent, supported ones in the candidate: hallucinations fall.
    noisy = arm("rag", set(range(30)), support={i: 0.3 for i in range(30, 60)})
    d = decide(arm("hybrid", set(range(30))), noisy, CANARY, CANARY, primary="hallucination_rate")
    assert d.promote, d.reasons
    assert d.numbers["checks"]["hallucination_rate"]["difference"]["high"] < 0


def test_mismatched_ids_and_bad_settings_are_errors():
    with pytest.raises(ValueError, match="different questions"):
        decide(arm("hybrid", BETTER)[:-1], INCUMBENT, CANARY, CANARY)
    with pytest.raises(ValueError, match="canary results cover different questions"):
        decide(arm("hybrid", BETTER), INCUMBENT, CANARY[1:], CANARY)
    with pytest.raises(ValueError, match="unknown primary metric 'bleu'"):
        decide(arm("hybrid", BETTER), INCUMBENT, CANARY, CANARY, primary="bleu")
    with pytest.raises(ValueError, match="no better direction"):
        decide(arm("hybrid", BETTER), INCUMBENT, CANARY, CANARY, primary="abstention_rate")
    with pytest.raises(ValueError, match="at least one question"):
        decide([], [], CANARY, CANARY)
