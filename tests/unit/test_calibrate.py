"""Choosing the grounding threshold on the generator's own drafts (no model needed)."""

from __future__ import annotations

from tasks.calibrate import Calibration, auroc, held_out_wins, calibration_key, choose_threshold, draft_labels, kept, load_calibration, save_calibration
from tasks.metrics import QuestionResult


def test_threshold_maximises_right_minus_cost_times_wrong_kept():
    supports = [0.1, 0.2, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9] * 3
    right = [False, False, True, False, True, True, True, True] * 3
    c = choose_threshold(supports, right, wrong_cost=1.0, default=0.95)
    # Keeping from 0.6 up: 12 right, 0 wrong (+12); from 0.3 up: 15 right, 3 wrong (+12): ties go higher.
    assert c.calibrated and c.threshold == 0.6
    assert c.at_threshold == {"kept": 12, "right_kept": 12, "wrong_kept": 0}
    assert c.at_default == {"kept": 0, "right_kept": 0, "wrong_kept": 0}
    # A cheap wrong answer moves the threshold down to keep the right 0.3 drafts.
    assert choose_threshold(supports, right, wrong_cost=0.5, default=0.95).threshold == 0.3
    # Wrong answers so costly that nothing is worth keeping: abstain on every draft.
    mostly_wrong = choose_threshold([0.5, 0.6, 0.7] * 10, [False, True, False] * 10, wrong_cost=5.0, default=0.5)
    assert 0.7 < mostly_wrong.threshold <= 1.0 and mostly_wrong.at_threshold["kept"] == 0
    assert c.held_out_wins is not None and c.held_out_wins >= 0.8
    assert held_out_wins(supports, right, 1.0, default=0.95) == c.held_out_wins  # seeded: the same every time


def test_the_threshold_is_one_the_answerer_can_use_and_is_reported_as_used():
    # Drafts with nothing checkable score 1.0 and pass any threshold <= 1.0: "withhold all" is not on offer.
    supports = [1.0] * 10 + [0.3] * 20
    right = [False] * 10 + [True] * 5 + [False] * 15
    c = choose_threshold(supports, right, wrong_cost=1.0, default=0.2)
    assert c.calibrated and c.threshold == 1.0
    assert c.at_threshold == kept(supports, right, c.threshold) == {"kept": 10, "right_kept": 0, "wrong_kept": 10}


def test_the_default_stays_when_there_is_too_little_or_nothing_to_separate():
    few = choose_threshold([0.2, 0.9], [False, True], wrong_cost=1.0, default=0.61)
    assert not few.calibrated and few.threshold == 0.61 and "only 2 drafts" in few.reason
    one_kind = choose_threshold([0.2, 0.9] * 15, [True, True] * 15, wrong_cost=1.0, default=0.61)
    assert not one_kind.calibrated and "all 30 drafts were right" in one_kind.reason
    assert "default kept" in one_kind.summary()


def test_a_threshold_that_only_fits_noise_is_not_adopted():
    """Right exactly when support reaches the default, up to 15 % label noise: the default is already
    best, so whatever the drafts' noise suggests instead must not be adopted."""
    import random

    rng = random.Random(1)
    supports = [rng.random() for _ in range(60)]
    right = [(s >= 0.61) != (rng.random() < 0.15) for s in supports]
    c = choose_threshold(supports, right, wrong_cost=1.0, default=0.61)
    assert not c.calibrated and c.threshold == 0.61 and c.fitted is not None
    assert c.held_out_wins is not None and c.held_out_wins < 0.8 and "does not generalise" in c.reason


def test_auroc_and_kept_counts():
    assert auroc([0.9, 0.8, 0.1], [True, True, False]) == 1.0
    assert auroc([0.1, 0.9], [True, False]) == 0.0
    assert auroc([0.5, 0.5], [True, False]) == 0.5
    assert auroc([0.5], [True]) is None
    assert kept([0.2, 0.7, 0.9], [True, False, True], 0.7) == {"kept": 2, "right_kept": 1, "wrong_kept": 1}


def _result(answer: str, support: float | None, answerable: bool = True, abstained: bool = False) -> QuestionResult:
    return QuestionResult(id=answer, question="q", arm="rag", answerable=answerable, golds=["150 EUR"],
                          answer=answer, abstained=abstained, support=support)


def test_drafts_are_labelled_by_correctness_and_unanswerable_drafts_are_wrong():
    results = [
        _result("Hotels are capped at 150 EUR per night.", 0.4),
        _result("Hotels are capped at 200 EUR.", 0.8),
        _result("The cap is 150 EUR.", 0.7, answerable=False),  # answering an unanswerable question
        _result("The documents don't answer this.", None, abstained=True),  # the model abstained: not a draft
    ]
    assert draft_labels(results) == ([0.4, 0.8, 0.7], [True, False, False])
    quoted = _result("Hotels are capped at 150 EUR per night. [1]", 1.0)
    quoted.quoted = True  # a source sentence quoted for a withheld draft: not the generator's draft
    assert draft_labels(results + [quoted]) == ([0.4, 0.8, 0.7], [True, False, False])


def _probed(answer: str, support: float | None, quote: str, similarity: float, answerable: bool = True) -> QuestionResult:
    r = _result(answer, support, answerable=answerable, abstained=support is None)
    r.quote = {"text": quote, "similarity": similarity}
    return r


def test_quotes_are_labelled_only_for_drafts_the_threshold_withholds():
    from tasks.calibrate import quote_labels

    results = [
        _probed("It is 90 EUR.", 0.3, "Hotels are capped at 150 EUR per night. [1]", 0.7),  # withheld, right quote
        _probed("It is 150 EUR.", 0.9, "Hotels are capped at 150 EUR. [1]", 0.8),  # kept as written: no quote
        _probed("The documents don't answer this.", None, "Taxis are refunded. [1]", 0.5),  # the model abstained
        _probed("It is 90 EUR.", 0.2, "Hotels are capped at 150 EUR. [1]", 0.6, answerable=False),  # unanswerable
        _result("It is 90 EUR.", 0.1),  # no quote probed (no sentence to quote)
    ]
    assert quote_labels(results, threshold=0.61) == ([0.7, 0.5, 0.6], [True, False, False])
    assert quote_labels(results, threshold=0.95) == ([0.7, 0.8, 0.5, 0.6], [True, True, False, False])


def test_the_quote_floor_is_fitted_saved_and_read_back_beside_the_threshold(tmp_path):
    # Right quotes at similarity 0.7, wrong ones (e.g. unanswerable questions) at 0.5: the 0.4 default
    # quotes both, a floor at 0.7 keeps only the right ones.
    c = choose_threshold([0.1, 0.9] * 15, [False, True] * 15, wrong_cost=1.0, default=0.61)
    c.quote = choose_threshold([0.5, 0.7] * 8, [False, True] * 8, wrong_cost=1.0, default=0.4, min_drafts=12, what="quote floor")
    assert c.quote.calibrated and c.quote.threshold == 0.7
    assert c.quote.at_threshold["wrong_kept"] == 0 and c.quote.at_default["wrong_kept"] == 8
    path = tmp_path / "grounding.json"
    save_calibration(c, path, "k")
    again = load_calibration(path, "k")
    assert isinstance(again.quote, Calibration) and again.quote.threshold == 0.7
    assert "quote floor 0.700 (default 0.400)" in again.summary()
    assert Calibration.from_dict({**again.__dict__, "quote": None}).quote is None


def test_quoting_is_turned_off_where_it_does_not_pay_and_no_floor_generalises():
    from tasks.calibrate import choose_quote_floor

    # Right and wrong quotes equally similar (the demo: its unanswerable questions are about the same company),
    # 9 right and 10 wrong: no floor separates them and quoting at the default loses one.
    same = choose_quote_floor([0.6] * 19, [True] * 9 + [False] * 10, wrong_cost=1.0, default=0.4)
    assert same.calibrated and same.threshold > 0.6 and same.at_threshold["kept"] == 0 and "quote nothing" in same.reason
    assert same.held_out_wins is not None and same.held_out_wins < 0.8
    # Mostly wrong quotes at every similarity: keeping none generalises on its own.
    worse = choose_quote_floor([0.5, 0.6, 0.7] * 6, [True, False, False] * 6, wrong_cost=1.0, default=0.4)
    assert worse.calibrated and worse.at_threshold["kept"] == 0
    # Quotes that pay at the default keep it; too few drafts decide nothing.
    pays = choose_quote_floor([0.5, 0.6, 0.7] * 6, [True, True, False] * 6, wrong_cost=1.0, default=0.4)
    assert pays.threshold == 0.4 or (pays.calibrated and pays.threshold <= 0.7)
    assert pays.at_threshold["right_kept"] > pays.at_threshold["wrong_kept"]
    few = choose_quote_floor([0.5, 0.6], [False, False], wrong_cost=1.0, default=0.4)
    assert not few.calibrated and few.threshold == 0.4


def test_a_calibration_sample_keeps_both_kinds_of_question_in_proportion(tmp_path):
    from tasks.evalset import EvalSet, spread

    # The demo's training split: 33 answerable rows first, then 13 unanswerable ones.
    rows = [{"id": f"a{i}", "answerable": True} for i in range(33)] + [{"id": f"u{i}", "answerable": False} for i in range(13)]
    sample = spread(EvalSet(tmp_path, "train", rows), 24).rows
    assert len(sample) == 24 and len({r["id"] for r in sample}) == 24
    assert sum(not r["answerable"] for r in sample) == 7  # 24 x 13/46
    assert [r["id"] for r in sample] == [r["id"] for r in rows if r in sample]  # file order
    assert spread(EvalSet(tmp_path, "train", rows), None).rows == rows
    assert spread(EvalSet(tmp_path, "train", rows), 100).rows == rows
    assert sum(not r["answerable"] for r in spread(EvalSet(tmp_path, "train", rows), 2).rows) == 1


def test_a_stored_calibration_is_reused_only_for_the_same_key(tmp_path):
    path = tmp_path / "calibration" / "grounding.json"
    c = choose_threshold([0.1, 0.9] * 15, [False, True] * 15, wrong_cost=1.0, default=0.61)
    key = calibration_key({"generator": "g", "rows": "abc"})
    save_calibration(c, path, key)
    again = load_calibration(path, key)
    assert isinstance(again, Calibration) and again.threshold == c.threshold and again.created_at
    assert load_calibration(path, calibration_key({"generator": "g", "rows": "abd"})) is None
    path.write_text("{not json")
    assert load_calibration(path, key) is None


def test_calibration_needs_a_held_out_split_and_says_so(home, tmp_path):
    import json

    from tasks.calibrate import calibrate_grounding
    from tasks.config import load_settings
    from tasks.evalset import load_eval_set

    path = tmp_path / "eval.jsonl"
    path.write_text("\n".join(json.dumps({"id": f"q{i}", "question": f"Question {i}?", "answers": ["x"], "split": "test"})
                              for i in range(3)) + "\n")
    evaluated = load_eval_set(path, "test")
    settings = load_settings()
    no_rows = calibrate_grounding(settings, evaluated, None, None)
    assert not no_rows.calibrated and no_rows.threshold == settings.retrieval.min_support and "no rows with split 'train'" in no_rows.reason
    same = settings.model_copy(update={"evaluation": settings.evaluation.model_copy(update={"calibration_split": "test"})})
    assert "is the evaluated split" in calibrate_grounding(same, evaluated, None, None).reason
    # evaluation.split = null evaluates every row, the calibration rows too
    path.write_text(path.read_text() + json.dumps({"id": "t1", "question": "Train?", "answers": ["x"], "split": "train"}) + "\n")
    everything = load_eval_set(path, None)
    leak = calibrate_grounding(settings, everything, None, None)
    assert not leak.calibrated and "also evaluated" in leak.reason and "'t1'" in leak.reason
    off = settings.model_copy(update={"evaluation": settings.evaluation.model_copy(update={"calibrate_grounding": False})})
    assert "off" in calibrate_grounding(off, evaluated, None, None).reason
    assert not settings.calibration_file.exists()  # nothing was drafted, nothing stored


def test_answers_use_the_stored_threshold_of_the_same_generator_only(home):
    from tasks.calibrate import answer_scope
    from tasks.config import load_settings
    from tasks.models import generator_fingerprint
    from tasks.resources import support_threshold

    settings = load_settings()
    assert support_threshold(settings) == settings.retrieval.min_support  # nothing calibrated yet
    c = choose_threshold([0.1, 0.9] * 15, [False, True] * 15, wrong_cost=1.0, default=0.95)  # keeps none: 0.9 wins
    assert c.calibrated and c.threshold == 0.9
    me = generator_fingerprint(settings.generator.model, settings.models_dir)
    save_calibration(c, settings.calibration_file, "k", generator=me, scope=answer_scope(settings))
    assert support_threshold(settings) == c.threshold
    assert support_threshold(settings, table="other") == settings.retrieval.min_support  # another index
    explicit = settings.model_copy(update={"retrieval": settings.retrieval.model_copy(update={"min_support": 0.5})})
    assert support_threshold(explicit) == 0.5  # a changed default is not overridden by an older calibration
    assert support_threshold(settings.model_copy(update={"retrieval": settings.retrieval.model_copy(update={"calibrated_support": False})})) == 0.61
    save_calibration(c, settings.calibration_file, "k", generator="another generator", scope=answer_scope(settings))
    assert support_threshold(settings) == settings.retrieval.min_support
    assert settings.with_support_threshold(0.4).retrieval.min_support == 0.4
    assert settings.with_support_threshold(0.4, quote_floor=0.55).retrieval.quote_min_similarity == 0.55


def test_answers_quote_at_the_stored_floor_of_the_same_generator_and_index_only(home):
    from tasks.calibrate import answer_scope
    from tasks.config import load_settings
    from tasks.models import generator_fingerprint
    from tasks.resources import quote_floor

    settings = load_settings()
    default = settings.retrieval.quote_min_similarity
    assert quote_floor(settings) == default  # nothing calibrated yet
    c = choose_threshold([0.2, 0.9] * 2, [False, True] * 2, wrong_cost=1.0, default=0.61)  # too few: default kept
    c.quote = choose_threshold([0.5, 0.7] * 8, [False, True] * 8, wrong_cost=1.0, default=default, min_drafts=12)
    me = generator_fingerprint(settings.generator.model, settings.models_dir)
    save_calibration(c, settings.calibration_file, "k", generator=me, scope=answer_scope(settings))
    assert quote_floor(settings) == 0.7  # adopted even where the grounding threshold was not
    assert quote_floor(settings, table="other") == default
    off = settings.model_copy(update={"retrieval": settings.retrieval.model_copy(update={"calibrated_support": False})})
    assert quote_floor(off) == default
    c.quote = choose_threshold([0.5, 0.7], [False, True], wrong_cost=1.0, default=default, min_drafts=12)
    save_calibration(c, settings.calibration_file, "k", generator=me, scope=answer_scope(settings))
    assert quote_floor(settings) == default  # a floor that was not calibrated is not used


def test_the_sweep_finds_the_same_threshold_as_trying_every_candidate():
    import random

    from tasks.calibrate import ABOVE, best_threshold, utility

    rng = random.Random(0)
    for _ in range(300):
        supports = [rng.choice([round(rng.random(), 1), 1.0]) for _ in range(rng.randint(1, 25))]
        right = [rng.random() < 0.4 for _ in supports]
        cost = rng.choice([0.5, 1.0, 2.0])
        candidates = set(supports) | ({max(supports) + ABOVE} if max(supports) + ABOVE <= 1.0 else set())
        brute = max(sorted(candidates), key=lambda t: (utility(supports, right, t, cost), t))
        assert best_threshold(supports, right, cost) == brute


def _calibration_file(tmp_path, train_rows: int):
    """An evaluation file with `train_rows` calibration rows and three test rows."""
    import json

    path = tmp_path / "eval.jsonl"
    rows = [{"id": f"t{i}", "question": f"Train {i}?", "answers": ["150 EUR"], "split": "train"} for i in range(train_rows)]
    rows += [{"id": f"q{i}", "question": f"Test {i}?", "answers": ["x"], "split": "test"} for i in range(3)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def _fake_drafting(monkeypatch) -> list[int]:
    """Stand-ins for the answerer: every call records how many rows it drafted. Drafts alternate wrong
    (support 0.3) and right (0.5, below the 0.61 default): enough of them calibrate to 0.5."""
    from types import SimpleNamespace

    import tasks.arena
    import tasks.resources

    drafted: list[int] = []

    def run_arm(spec, rows, answerer, filters, batch_size, on_batch=None):
        drafted.append(len(rows))
        results = [_result("It is 150 EUR." if i % 2 else "It is 90 EUR.", 0.3 + 0.2 * (i % 2)) for i in range(len(rows))]
        return SimpleNamespace(results=results)

    monkeypatch.setattr(tasks.arena, "run_arm", run_arm)
    monkeypatch.setattr(tasks.resources, "make_answerer", lambda *a, **kw: None)
    return drafted


def test_a_limited_run_drafts_at_most_n_calibration_rows_and_never_saves_them(home, tmp_path, monkeypatch):
    from tasks.calibrate import calibrate_grounding
    from tasks.config import load_settings
    from tasks.evalset import load_eval_set

    drafted = _fake_drafting(monkeypatch)
    path = _calibration_file(tmp_path, train_rows=30)
    settings = load_settings()
    limited = calibrate_grounding(settings, load_eval_set(path, "test", 2), None, None, limit=2)
    assert drafted == [2] and limited.rows == 2 and limited.limited and limited.drafts <= 2
    assert not limited.calibrated and "limited run" in limited.summary() and "first 2" in limited.origin()
    assert not settings.calibration_file.exists()  # full runs and `ask` must not reuse a 2-row threshold

    full = calibrate_grounding(settings, load_eval_set(path, "test"), None, None)
    assert drafted == [2, 30] and full.rows == 30 and not full.limited and full.calibrated and full.threshold == 0.5
    assert settings.calibration_file.exists()
    # A later limited run reuses the full calibration: nothing drafted, the full threshold held.
    again = calibrate_grounding(settings, load_eval_set(path, "test", 2), None, None, limit=2)
    assert drafted == [2, 30] and again.key == full.key and again.threshold == full.threshold and not again.limited
    # A limit that leaves every calibration row is a full calibration: drafted once, then stored.
    path.write_text(path.read_text().replace("Train 0?", "Train zero?"))
    whole = calibrate_grounding(settings, load_eval_set(path, "test", 2), None, None, limit=50)
    assert drafted == [2, 30, 30] and not whole.limited and load_calibration(settings.calibration_file, whole.key) is not None
