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
