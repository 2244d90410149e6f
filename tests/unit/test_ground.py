"""The grounding validator: sentence splitting, lexical and semantic support, refusals, edge cases."""

from __future__ import annotations

import pytest

from tasks.embed import HashEmbedder
from tasks.ground import (
    LexicalSemanticScorer,
    SentenceSupport,
    answer_support,
    content_tokens,
    is_refusal,
    lexical_support,
    source_windows,
    split_sentences,
    strip_citations,
    vocabulary,
)

POLICY = (
    "Hotel stays are reimbursed up to 150 EUR per night in Berlin. "
    "Claims must be filed within 30 days of the trip. Receipts are required for every expense."
)
HOTLINE = "The support hotline opens at 08:00 CET on weekdays. Urgent incidents are escalated to the on-call engineer."


@pytest.fixture
def scorer(tokenizer) -> LexicalSemanticScorer:
    return LexicalSemanticScorer(HashEmbedder(tokenizer, dimension=64))


# --- sentences ---------------------------------------------------------------------------------


def test_split_keeps_citations_with_their_sentence_and_strips_them_for_scoring():
    text = "Hotels cost 150 EUR per night [1]. Claims take 30 days.[2][3] Receipts are required [1, 3]."
    sentences = split_sentences(text)
    assert sentences == [
        "Hotels cost 150 EUR per night [1].",
        "Claims take 30 days.[2][3]",
        "Receipts are required [1, 3].",
    ]
    assert [strip_citations(s) for s in sentences] == [
        ("Hotels cost 150 EUR per night.", (0,)),
        ("Claims take 30 days.", (1, 2)),
        ("Receipts are required.", (0, 2)),
    ]
    assert strip_citations("See both [2-4].") == ("See both.", (1, 2, 3))


def test_split_does_not_break_abbreviations_initials_or_numbers():
    text = (
        "Dr. Smith shipped v4.2 to the U.S. office, e.g. in Boston. The box weighs 3.5 kg and costs 1,500.00 EUR! "
        "J. R. R. Tolkien wrote it? Yes."
    )
    assert split_sentences(text) == [
        "Dr. Smith shipped v4.2 to the U.S. office, e.g. in Boston.",
        "The box weighs 3.5 kg and costs 1,500.00 EUR!",
        "J. R. R. Tolkien wrote it?",
        "Yes.",
    ]


def test_split_at_paragraphs_and_list_items_and_list_numbers_are_not_claims():
    text = "Steps:\n1. Install it.\n2. Run it.\n\nDone"
    assert split_sentences(text) == ["Steps:", "1. Install it.", "2. Run it.", "Done"]
    assert strip_citations("2. Run it.") == ("Run it.", ())


def test_source_windows_are_sentences_and_repair_missing_spaces():
    # Scraped text (and HaluEval) often loses the space between paragraphs.
    windows = source_windows("Arthur's Magazine was published in Philadelphia.First for Women is published by Bauer.")
    assert windows == ["Arthur's Magazine was published in Philadelphia.", "First for Women is published by Bauer."]
    # ...but versions, decimals and abbreviations are not paragraph joins.
    assert source_windows("Use v4.2 of the U.S.Army kit.It weighs 3.5 kg.") == ["Use v4.2 of the U.S.Army kit.", "It weighs 3.5 kg."]
    assert source_windows("One sentence only.") == ["One sentence only."]
    assert source_windows("") == []


# --- lexical support ---------------------------------------------------------------------------


def test_numbers_and_names_weigh_more_and_stopwords_do_not_count():
    tokens = {t.key: t.weight for t in content_tokens("The hotel in Berlin costs 1,500 EUR per night.")}
    assert tokens == {"hotel": 1.0, "berlin": 2.0, "cost": 1.0, "1500": 3.0, "eur": 2.0, "per": 1.0, "night": 1.0}
    # Capitals that only open the sentence say nothing about names.
    assert {t.key: t.weight for t in content_tokens("Receipts matter.")} == {"receipt": 1.0, "matter": 1.0}


def test_number_mismatch_lowers_lexical_support():
    vocab = vocabulary(POLICY)
    right = lexical_support(content_tokens("Hotel stays are reimbursed up to 150 EUR per night."), vocab)
    wrong = lexical_support(content_tokens("Hotel stays are reimbursed up to 180 EUR per night."), vocab)
    assert right == 1.0
    assert wrong < 0.8  # the number weighs 3 of the sentence's 11


def test_spelled_out_numbers_match_digits():
    vocab = vocabulary("The team has 12 members.")
    assert lexical_support(content_tokens("The team has twelve members."), vocab) == 1.0
    assert lexical_support(content_tokens("The team has eleven members."), vocab) < 0.5


def test_lexical_support_with_nothing_to_check_is_one():
    assert lexical_support(content_tokens("Yes, it is."), vocabulary(POLICY)) == 1.0


# --- scoring -----------------------------------------------------------------------------------


def test_copied_facts_score_above_invented_ones(scorer):
    supported = scorer.score("Hotel stays are reimbursed up to 150 EUR per night in Berlin.", [POLICY])
    invented = scorer.score("Flights to Tokyo are reimbursed by Lufthansa within 90 days.", [POLICY])
    assert len(supported) == len(invented) == 1
    assert supported[0].score > invented[0].score
    assert supported[0].supported and not invented[0].supported
    assert supported[0].lexical > invented[0].lexical
    assert supported[0].semantic > invented[0].semantic


def test_number_mismatch_lowers_support(scorer):
    right = scorer.score("Hotel stays are reimbursed up to 150 EUR per night in Berlin.", [POLICY])[0]
    wrong = scorer.score("Hotel stays are reimbursed up to 180 EUR per night in Berlin.", [POLICY])[0]
    assert wrong.score < right.score
    assert wrong.lexical < right.lexical


def test_reports_the_source_that_supports_the_sentence(scorer):
    supports = scorer.score("The support hotline opens at 08:00 CET on weekdays [2].", [POLICY, HOTLINE])
    assert supports[0].source == 1
    assert supports[0].citations == (1,)
    supports = scorer.score("Claims must be filed within 30 days of the trip.", [HOTLINE, POLICY])
    assert supports[0].source == 1


def test_each_sentence_is_judged_and_the_answer_takes_the_weakest(scorer):
    supports = scorer.score(
        "Hotel stays are reimbursed up to 150 EUR per night in Berlin [1]. The CEO approves every claim in Paris.",
        [POLICY],
    )
    assert [s.supported for s in supports] == [True, False]
    assert answer_support(supports) == min(s.score for s in supports)
    assert answer_support(supports) < answer_support(supports[:1])


def test_empty_answer_and_empty_sources(scorer):
    assert scorer.score("", [POLICY]) == []
    assert scorer.score("   [1] ", [POLICY]) == []
    assert answer_support([]) == 1.0  # nothing claimed, nothing unsupported
    nothing = scorer.score("Hotel stays are reimbursed up to 150 EUR.", [])
    assert [(s.supported, s.source, s.score) for s in nothing] == [(False, None, 0.0)]
    blank = scorer.score("Hotel stays are reimbursed up to 150 EUR.", ["", "  "])
    assert [(s.supported, s.source) for s in blank] == [(False, None)]


def test_refusals_are_not_hallucinations(scorer):
    for refusal in (
        "The documents don't say how much a taxi costs.",
        "I cannot find this in the provided context.",
        "There is no information about taxis in the sources.",
        "This is not mentioned in the passage.",
    ):
        assert is_refusal(refusal), refusal
        supports = scorer.score(refusal, [POLICY])
        assert [(s.refusal, s.checkable, s.supported, s.source) for s in supports] == [(True, False, True, None)]
        assert answer_support(supports) == 1.0
    # A refusal is flagged even with no sources at all: it claims nothing.
    assert scorer.score("I don't know.", [])[0].supported


def test_a_refusal_that_goes_on_to_claim_something_is_still_checked(scorer):
    sentence = "The documents don't say, but taxis are reimbursed up to 900 EUR in Tokyo."
    assert not is_refusal(sentence)
    assert not scorer.score(sentence, [POLICY])[0].supported
    # Refusal sentences are left out of the answer's support, claims are not.
    supports = scorer.score("I don't know the taxi limit. Taxis cost 900 EUR in Tokyo.", [POLICY])
    assert [s.refusal for s in supports] == [True, False]
    assert answer_support(supports) == supports[1].score < 0.5


def test_sentences_with_nothing_to_check_are_not_flagged_nor_counted(scorer):
    supports = scorer.score("Yes. Taxis are reimbursed up to 900 EUR in Tokyo.", [POLICY])
    assert [(s.checkable, s.supported, s.refusal) for s in supports] == [(False, True, False), (True, False, False)]
    assert answer_support(supports) == supports[1].score
    assert answer_support(scorer.score("No, it is not.", [POLICY])) == 1.0


def test_threshold_and_weights_are_constructor_arguments(tokenizer):
    embedder = HashEmbedder(tokenizer, dimension=64)
    sentence = "Hotel stays are reimbursed up to 180 EUR per night in Berlin."
    strict = LexicalSemanticScorer(embedder, threshold=0.99).score(sentence, [POLICY])[0]
    lenient = LexicalSemanticScorer(embedder, threshold=0.01).score(sentence, [POLICY])[0]
    assert strict.score == lenient.score and not strict.supported and lenient.supported
    lexical_only = LexicalSemanticScorer(embedder, weights=(0.0, 1.0, 0.0)).score(sentence, [POLICY])[0]
    assert lexical_only.score == pytest.approx(1 / (1 + 2.718281828459045 ** -lexical_only.lexical))


def test_any_grounding_scorer_can_stand_in():
    class Always:
        def score(self, answer, sources):
            return [SentenceSupport(s, 0.2, False, None, 0.0, 0.0) for s in split_sentences(answer)]

    from tasks.ground import GroundingScorer

    scorer: GroundingScorer = Always()
    assert answer_support(scorer.score("One. Two.", ["x"])) == 0.2


def test_scoring_a_batch_equals_scoring_one_by_one_and_embeds_each_text_once(tokenizer):
    embedder = HashEmbedder(tokenizer, dimension=64)
    batch_scorer = LexicalSemanticScorer(embedder)
    items = [
        ("Hotel stays are reimbursed up to 150 EUR per night [1].", [POLICY, HOTLINE]),
        ("The hotline opens at 09:00 on Sundays.", [HOTLINE, POLICY]),
        ("The documents don't answer this.", [POLICY]),
        ("Claims must be filed within 30 days.", []),
    ]
    together = batch_scorer.score_many(items)
    assert len(embedder.calls) == 1  # one embedding call for the whole batch
    first = embedder.calls[0]
    one_by_one = [LexicalSemanticScorer(HashEmbedder(tokenizer, dimension=64)).score(a, s) for a, s in items]
    assert together == one_by_one
    assert together[0][0].supported and not together[1][0].supported and together[2][0].refusal
    assert together[3][0].score == 0.0
    # The same sources again: their sentences come from the cache, only the new claim is embedded.
    batch_scorer.score_many([("Taxi receipts are optional.", [POLICY, HOTLINE])])
    assert embedder.calls[1:] == [1] and first > 1
    # A batch with more texts than the cache holds is still scored whole.
    tiny = LexicalSemanticScorer(HashEmbedder(tokenizer, dimension=64), cache_size=2)
    assert tiny.score_many(items) == one_by_one and len(tiny._cache) == 2


# --- contact details and citation markers from untrusted output ---------------------------------

PORTAL = (
    "Expense claims are filed on the travel portal at https://travel.example-corp.com/claims within 30 days of the trip. "
    "Questions go to expenses@example-corp.com or +44 20 7946 0958."
)
FILED = "Expense claims are filed on the travel portal at {} within 30 days of the trip."


@pytest.mark.parametrize("smuggled", [
    FILED.format("https://travel-example-corp.com/claims"),  # look-alike portal: every word of it is in the source
    FILED.format("https://travel.example-corp.com.claims-portal.net"),
    FILED.format("www.travel-example-corp.com"),
    "Expense claims are filed within 30 days of the trip; questions go to expenses@example-corp.co.",
    "Expense claims are filed within 30 days of the trip; questions go to +30 20 7946 44.",  # each number is in the source
])
def test_a_contact_detail_missing_from_the_sources_makes_a_supported_sentence_unsupported(scorer, smuggled):
    genuine = scorer.score(FILED.format("https://travel.example-corp.com/claims"), [PORTAL])[0]
    s = scorer.score(f"Claims must be filed within 30 days [1]. {smuggled}", [PORTAL])
    assert genuine.supported and s[0].supported and not s[1].supported and s[1].score == 0.0
    assert answer_support(s) == 0.0  # so the answerer withholds the answer
    assert s[1].untrusted and not genuine.untrusted


def test_contact_details_from_the_sources_or_the_question_are_trusted_in_any_spelling(scorer):
    answer = "Questions go to Expenses@Example-Corp.com or +44 (0)20 7946 0958, see travel.example-corp.com."
    assert scorer.score(answer, [PORTAL])[0].untrusted == ()
    asked = "Expense claims are filed on the travel portal at https://help.example.org within 30 days of the trip."
    assert scorer.score(asked, [PORTAL])[0].untrusted == ("help.example.org",)
    assert scorer.score(asked, [PORTAL], question="Is https://help.example.org the portal?")[0].untrusted == ()
    assert scorer.score_many([(asked, [PORTAL])], ["Is help.example.org the portal?"])[0][0].untrusted == ()


def test_numbers_versions_dates_and_file_names_are_not_contact_details():
    from tasks.ground import untrusted_contacts

    for text in ["Dr. Smith shipped v4.2 to the U.S. office, e.g. in Boston.", "It costs 1 500 000 EUR (1,500.00 EUR each).",
                 "Open 12:00 to 14:00 from 2024-01-15 to 15.03.2026, as in 2024-2026.", "Install Node.js, see README.md.",
                 "Order 1234567 ships."]:
        assert untrusted_contacts(text, "") == [], text


def test_citation_ranges_are_bounded_by_the_sources_given(scorer):
    """A range like [1-10**12] would be a list of 10**12 indices (MemoryError): it is clipped instead."""
    huge = "Hotel stays are reimbursed up to 150 EUR per night in Berlin [1-1000000000000]."
    assert scorer.score(huge, [POLICY, HOTLINE])[0].citations == (0, 1)
    assert strip_citations("Both [2-1000000000000].", available=3) == ("Both.", (1, 2))
    assert strip_citations(f"Far [{'9' * 5000}-1][7][0].", available=3) == ("Far.", ())  # int() of 5000 digits raises
    assert strip_citations("See [1-2-3][3, 1].", available=3) == ("See.", (0, 1, 2))
    assert strip_citations("See both [2-4].") == ("See both.", (1, 2, 3))  # no count given: markers as written
