"""The trained grounding scorer: features on hand-made drafts, fit/save/load round trip, the adoption rule."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tasks.embed import HashEmbedder
from tasks.ground import LexicalSemanticScorer, answer_support
from tasks.ground_model import (
    FEATURES,
    LogisticModel,
    TrainedGroundingScorer,
    adoption,
    answer_core,
    auroc,
    draft_features,
    grounding_model_path,
    make_grounding_scorer,
)

PASSAGE = (
    "The Oberoi Group is a hotel company with its head office in Delhi. "
    "Founded in 1934, the company owns and operates 30 luxury hotels and two river cruise ships."
)
OTHER = "The Taj group runs hotels in Mumbai. Its chairman lives in London."
QUESTION = "The Oberoi family is part of a hotel company that has a head office in what city?"


@pytest.fixture
def embedder(tokenizer) -> HashEmbedder:
    return HashEmbedder(tokenizer, dimension=64)


def features(embedder, answer, sources=(PASSAGE,), question=QUESTION):
    base = LexicalSemanticScorer(embedder)
    supports = base.score(answer, list(sources), question)
    return draft_features(answer, list(sources), question, supports, base._vectors)


# --- features ----------------------------------------------------------------------------------


def test_answer_core_drops_citations_refusals_and_boilerplate():
    assert answer_core("The answer is: Delhi [1].") == ("Delhi.", (0,))
    assert answer_core("According to the passage, Delhi [2]. The passage does not say more.") == ("Delhi.", (1,))
    assert answer_core("Yes, both are magazines.")[0] == "both are magazines."


def test_verbatim_span_rank_and_citation(embedder):
    f = features(embedder, "Delhi [2].", sources=(OTHER, PASSAGE))
    assert f["verbatim"] == 1.0 and f["verbatim_rank"] == pytest.approx(0.5) and f["verbatim_cited"] == 1.0
    assert f["top_share"] == 0.0  # not in the first source
    uncited = features(embedder, "Delhi [1].", sources=(OTHER, PASSAGE))
    assert uncited["verbatim"] == 1.0 and uncited["verbatim_cited"] == 0.0
    # Word boundaries: "Delhi" is not in "New Delhites".
    assert features(embedder, "Delhi.", sources=("New Delhites run hotels.",))["verbatim"] == 0.0


def test_copying_a_sentence_and_restating_the_question(embedder):
    copy = features(embedder, "Founded in 1934, the company owns and operates 30 luxury hotels and two river cruise ships.")
    assert copy["copies_sentence"] == 1.0 and copy["copied_run"] == 1.0 and copy["verbatim"] == 1.0
    restated = features(embedder, "The Oberoi family is part of a hotel company that has a head office.")
    right = features(embedder, "The Oberoi family's hotel company has its head office in Delhi.")
    assert restated["novel_share"] == 0.0 and restated["log_novel"] == 0.0 and restated["type_match"] == 0.0
    assert right["novel_found"] == 1.0 and right["novel_in_question_sentence"] == 1.0 and right["type_match"] == 1.0
    invented = features(embedder, "The head office is in Paris.")
    assert invented["novel_found"] < 1.0 and invented["verbatim"] == 0.0
    # Embedding features (the hashing embedder shares vectors between texts that share words).
    assert restated["question_similarity"] > invented["question_similarity"] > 0.0
    closest = features(embedder, "The Oberoi Group is a hotel company with its head office in Delhi.")
    assert closest["question_sentence_similarity"] == pytest.approx(1.0)
    assert closest["question_sentence_similarity"] > invented["question_sentence_similarity"]


def test_length_yes_no_and_unfinished(embedder):
    f = features(embedder, "Yes, both are women's magazines", question="Are Jane and First for Women both women's magazines?")
    assert f["yes_no"] == 1.0 and f["unfinished"] == 1.0
    assert features(embedder, "Delhi.")["log_words"] == pytest.approx(np.log1p(1))
    number = features(embedder, "It was founded in 1934.", question="When was the Oberoi Group founded?")
    assert number["type_match"] == 1.0
    assert features(embedder, "It was founded by a family.", question="When was the Oberoi Group founded?")["type_match"] == 0.0


# --- fit, save, load ---------------------------------------------------------------------------


DRAFTS = [
    ("The head office is in Delhi.", 1), ("Its head office is in Delhi [1].", 1), ("Delhi.", 1),
    ("The hotel company has its head office in Delhi.", 1), ("The answer is Delhi.", 1),
    ("The head office is in Paris.", 0), ("The Oberoi family is part of a hotel company.", 0),
    ("The company has a head office in Mumbai.", 0), ("The Oberoi family is part of a hotel company that has a head", 0),
    ("It operates two river cruise ships.", 0),
]  # fmt: skip


def test_fit_save_load_round_trip(embedder, tmp_path):
    items = [(a, [PASSAGE]) for a, _ in DRAFTS]
    labels = [y for _, y in DRAFTS]
    scorer = TrainedGroundingScorer.fit(embedder, items, labels, [QUESTION] * len(items), fitted_on={"rows": "hand-made"}, l2=0.3)
    before = [answer_support(s) for s in scorer.score_many(items, [QUESTION] * len(items))]
    assert auroc(np.array(before), np.array(labels)) > 0.9  # it learned something from its own fit data
    path = scorer.save(tmp_path / "model.json")
    data = json.loads(path.read_text())
    assert data["features"] == list(FEATURES) and data["fitted_on"]["rows"] == "hand-made" and data["fitted_on"]["drafts"] == 10
    loaded = make_grounding_scorer(f"trained:{path}", embedder)
    assert isinstance(loaded, TrainedGroundingScorer) and loaded.threshold == scorer.threshold
    after = [answer_support(s) for s in loaded.score_many(items, [QUESTION] * len(items))]
    assert after == pytest.approx(before)
    # Same interface as the lexical scorer: one SentenceSupport per sentence, refusals left alone.
    supports = loaded.score("Delhi. The passage does not say more.", [PASSAGE], QUESTION)
    assert len(supports) == 2 and supports[1].refusal and supports[1].score == 1.0
    assert supports[0].supported == (supports[0].score >= loaded.threshold)


def test_load_refuses_other_features_and_formats(embedder, tmp_path):
    model = LogisticModel(["support"], [0.0], [1.0], [1.0], 0.0)
    path = tmp_path / "m.json"
    path.write_text(json.dumps(model.to_json()))
    with pytest.raises(ValueError, match="refit it"):
        TrainedGroundingScorer.load(path, embedder)
    path.write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="format"):
        TrainedGroundingScorer.load(path, embedder)
    with pytest.raises(FileNotFoundError, match="lexical"):
        TrainedGroundingScorer.load(tmp_path / "missing.json", embedder)


def test_config_spec():
    assert grounding_model_path("lexical") is None
    assert str(grounding_model_path("trained:models/g.json")) == "models/g.json"
    with pytest.raises(ValueError, match="lexical"):
        grounding_model_path("trained:")


def test_scorer_identity_follows_the_model_files_content(tmp_path):
    from tasks.ground_model import grounding_scorer_identity

    assert grounding_scorer_identity("lexical") == "lexical"
    path = tmp_path / "g.json"
    path.write_text('{"weights": [1.0]}')
    first = grounding_scorer_identity(f"trained:{path}")
    assert first.startswith("trained:") and first == grounding_scorer_identity(f"trained:{path}")
    path.write_text('{"weights": [2.0]}')  # refitted in place: a stored calibration must not be reused
    assert grounding_scorer_identity(f"trained:{path}") != first
    assert grounding_scorer_identity(f"trained:{tmp_path / 'none.json'}") == "trained:missing"


def test_config_switch_picks_the_threshold(home, monkeypatch, tmp_path):
    from pydantic import ValidationError

    from tasks.config import load_settings
    from tasks.resources import support_threshold

    path = tmp_path / "g.json"
    path.write_text(json.dumps(LogisticModel(list(FEATURES), [0.0] * len(FEATURES), [1.0] * len(FEATURES),
                                             [0.0] * len(FEATURES), 0.0, threshold=0.37).to_json()))  # fmt: skip
    assert load_settings().retrieval.grounding_scorer == "lexical"
    monkeypatch.setenv("RAGTUNE_RETRIEVAL__GROUNDING_SCORER", f"trained:{path}")
    assert support_threshold(load_settings()) == 0.37  # probabilities: the model's own threshold, not 0.61
    monkeypatch.setenv("RAGTUNE_RETRIEVAL__MIN_SUPPORT", "0.8")
    assert support_threshold(load_settings()) == 0.8  # unless set explicitly
    assert support_threshold(load_settings().with_support_threshold(0.2)) == 0.2  # an evaluation's calibrated one
    monkeypatch.setenv("RAGTUNE_RETRIEVAL__GROUNDING_SCORER", "nli")
    with pytest.raises(ValidationError, match="grounding_scorer"):
        load_settings()


# --- adoption rule -----------------------------------------------------------------------------


def test_auroc_matches_pairwise_definition():
    s, y = np.array([0.1, 0.4, 0.4, 0.9, 0.3]), np.array([0, 1, 0, 1, 1])
    pairs = [(a, b) for a, ya in zip(s, y) for b, yb in zip(s, y) if ya == 1 and yb == 0]
    assert auroc(s, y) == pytest.approx(np.mean([1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs]))


def test_adoption_accepts_a_clearly_better_scorer_and_rejects_an_equal_one():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    weak = y * 0.3 + rng.normal(0, 1, 300)  # AUROC ~0.58
    strong = y * 2.0 + rng.normal(0, 1, 300)  # AUROC ~0.92
    better = adoption(weak, strong, y, resamples=500)
    assert better.adopted and better.difference_interval[0] > 0 and better.candidate > better.current
    assert better.candidate_interval[0] < better.candidate < better.candidate_interval[1]
    same = adoption(weak, weak + 1e-3, y, resamples=500)  # ranks identical: difference 0
    assert not same.adopted and same.difference == pytest.approx(0.0) and "not better" in same.reason
    noisy = adoption(weak, y * 0.3 + rng.normal(0, 1, 300), y, resamples=500)  # as good, other noise
    assert not noisy.adopted
    assert json.loads(json.dumps(better.to_json()))["adopted"] is True
