"""The adapter registry and the retrain decision: statuses, promotion history, atomicity, skip-when-unchanged."""

from __future__ import annotations

import json

import pytest

from tasks.config import load_settings
from tasks.dataset import SavedDataset
from tasks.registry import AdapterNotFound, Registry, RegistryError
from tasks.retrain import plan, training_key


def fake_adapter(path, marker="x"):
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(json.dumps({"marker": marker}))
    (path / "adapter_model.safetensors").write_bytes(b"weights")
    return path


@pytest.fixture
def registry(tmp_path):
    return Registry(tmp_path / "adapters", tmp_path / "locks")


def test_register_promote_rollback(registry, tmp_path):
    a = registry.register(fake_adapter(tmp_path / "wa"), "a", {"created_at": "2026-01-01T00:00:00", "training_key": "k1"})
    registry.register(fake_adapter(tmp_path / "wb"), "b", {"created_at": "2026-01-02T00:00:00", "training_key": "k2"})
    assert [(x.name, x.status) for x in registry.adapters()] == [("a", "candidate"), ("b", "candidate")]
    assert registry.latest().name == "b" and registry.champion() is None
    assert (a.path / "adapter_model.safetensors").read_bytes() == b"weights"
    assert json.loads((a.path / "metadata.json").read_text())["training_key"] == "k1"

    assert registry.promote("a", "gate: F1 +0.1") is None
    assert registry.promote("b", "gate: F1 +0.05") == "a"
    assert {x.name: x.status for x in registry.adapters()} == {"a": "retired", "b": "champion"}
    assert registry.rollback() == ("b", "a")
    assert {x.name: x.status for x in registry.adapters()} == {"a": "champion", "b": "rolled_back"}
    assert registry.rollback() == ("a", None)
    assert registry.champion() is None
    with pytest.raises(RegistryError, match="no champion"):
        registry.rollback()
    assert [d["action"] for d in registry.get("b").decisions()] == ["promote", "rollback"]
    assert [e["action"] for e in registry.events()] == ["register", "register", "promote", "promote", "rollback", "rollback"]


def test_resolve_references(registry, tmp_path):
    assert registry.resolve("none") is None and registry.resolve(None) is None
    assert registry.resolve("champion") is None  # no champion: the base model serves
    with pytest.raises(AdapterNotFound, match="run `ragtune train`"):
        registry.resolve("latest")
    registry.register(fake_adapter(tmp_path / "w"), "a", {"created_at": "2026-01-01"})
    registry.promote("a", "test")
    assert registry.resolve("champion") == registry.resolve("a") == registry.resolve("latest") == registry.get("a").path
    outside = fake_adapter(tmp_path / "elsewhere")
    assert registry.resolve(str(outside)) == outside
    with pytest.raises(AdapterNotFound, match="registered: a"):
        registry.resolve("nope")


def test_a_failed_registration_changes_nothing(registry, tmp_path):
    registry.register(fake_adapter(tmp_path / "w"), "a", {"created_at": "2026-01-01"})
    before = (registry.root / "registry.json").read_text()
    (tmp_path / "broken").mkdir()
    with pytest.raises(RegistryError, match="not a finished adapter"):
        registry.register(tmp_path / "broken", "b", {})
    with pytest.raises(RegistryError, match="already exists"):
        registry.register(fake_adapter(tmp_path / "w2"), "a", {})
    assert (registry.root / "registry.json").read_text() == before
    assert [x.name for x in registry.adapters()] == ["a"]


def test_reject_keeps_the_champion(registry, tmp_path):
    registry.register(fake_adapter(tmp_path / "w"), "a", {"created_at": "1"})
    registry.register(fake_adapter(tmp_path / "w2"), "b", {"created_at": "2"})
    registry.promote("a", "first")
    registry.reject("b", "hallucination rate +0.08", {"numbers": {"f1": 0.1}})
    assert {x.name: x.status for x in registry.adapters()} == {"a": "champion", "b": "rejected"}
    assert registry.get("b").decisions()[0]["numbers"] == {"f1": 0.1}


def _dataset(tmp_path, h):
    return SavedDataset(tmp_path / h, {"hash": h}, [], [])


def test_retrain_skips_when_nothing_changed_and_says_why(registry, tmp_path):
    settings = load_settings(home=tmp_path)
    first = plan(registry, settings, _dataset(tmp_path, "d1"))
    assert first.train and first.reason == "no adapter yet"
    registry.register(fake_adapter(tmp_path / "w"), "a", {
        "created_at": "1", "training_key": first.key, "dataset_hash": "d1",
        "base_model_fingerprint": "x", "recipe": {},
    })
    same = plan(registry, settings, _dataset(tmp_path, "d1"))
    assert not same.train and "unchanged since adapter a" in same.reason
    assert plan(registry, settings, _dataset(tmp_path, "d1"), force=True).train
    changed = plan(registry, settings, _dataset(tmp_path, "d2"))
    assert changed.train and changed.reason.startswith("dataset")
    assert changed.key != first.key


def test_a_run_cut_by_the_time_budget_is_resumed_not_skipped(registry, tmp_path):
    settings = load_settings(home=tmp_path, training={"max_minutes": 5})
    first = plan(registry, settings, _dataset(tmp_path, "d1"))
    registry.register(fake_adapter(tmp_path / "w"), "a", {
        "created_at": "1", "training_key": first.key, "training": {"stopped_for_time": True, "steps": 12, "total_steps": 40},
    })
    again = plan(registry, settings, _dataset(tmp_path, "d1"))
    assert again.train and again.key == first.key and "resuming" in again.reason and "12 of 40 steps" in again.reason


def test_training_key_follows_recipe_and_base_model_but_not_the_step_cap(tmp_path):
    s = load_settings(home=tmp_path)
    key = training_key(s, "d1")
    assert training_key(load_settings(home=tmp_path, training={"max_steps": 3}), "d1") == key
    assert training_key(load_settings(home=tmp_path, training={"max_minutes": 30}), "d1") == key  # a budget, not the recipe
    assert training_key(load_settings(home=tmp_path, training={"method": "full"}), "d1") != key
    assert training_key(load_settings(home=tmp_path, training={"lora_r": 16}), "d1") != key
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    assert training_key(load_settings(home=tmp_path, generator={"model": str(model)}), "d1") != key


def test_an_adapter_is_withheld_from_callers_who_may_not_read_what_it_saw(tmp_path):
    import json

    from tasks.registry import served_to, withheld_for

    def adapter(name, access):
        d = tmp_path / name
        d.mkdir()
        (d / "metadata.json").write_text(json.dumps({"access": access} if access is not None else {}))
        return d

    public = adapter("public", {"readers": [["*"]], "groups": ["*"]})
    hr = adapter("hr", {"readers": [["*"], ["hr"], ["finance", "legal"]], "groups": ["*", "finance", "hr", "legal"]})
    legacy = adapter("legacy", None)
    assert withheld_for(public, []) is None
    assert "hr" in withheld_for(hr, [])
    assert "finance/legal" in withheld_for(hr, ["hr"])  # every chunk must be readable, not just one
    assert withheld_for(hr, ["hr", "legal"]) is None
    assert "no access record" in withheld_for(legacy, ["hr", "finance", "legal"])
    assert served_to({"readers": [["*"]]}) == "everyone"
    assert served_to({"readers": [["hr"], ["*"]]}) == "callers in hr"
    assert served_to(None).startswith("no one")


def test_two_gate_verdicts_racing_promote_exactly_one(registry, tmp_path):
    """Two evaluations compared their candidates with champion `a`; whichever applies second must
    not promote over the champion the first one installed meanwhile."""
    import threading

    from tasks.registry import StaleVerdict

    for name in ("a", "c1", "c2"):
        registry.register(fake_adapter(tmp_path / f"w{name}"), name, {"created_at": f"2026-01-0{len(name)}"})
    registry.promote("a", "first champion")
    barrier, outcomes = threading.Barrier(2), {}

    def apply(candidate):
        barrier.wait()
        try:
            outcomes[candidate] = registry.promote(candidate, "gate", compared_with="a")
        except StaleVerdict as e:
            outcomes[candidate] = e

    threads = [threading.Thread(target=apply, args=(c,)) for c in ("c1", "c2")]
    [t.start() for t in threads]
    [t.join() for t in threads]
    won = [c for c, o in outcomes.items() if o == "a"]
    lost = [c for c, o in outcomes.items() if isinstance(o, StaleVerdict)]
    assert len(won) == 1 and len(lost) == 1 and registry.champion().name == won[0]
    assert "compared with champion a" in str(outcomes[lost[0]])
    with pytest.raises(StaleVerdict):  # a verdict from when there was no champion
        registry.promote(lost[0], "gate", compared_with=None)


def test_two_trainings_with_one_key_never_share_a_work_directory(registry, tmp_path, monkeypatch):
    """The second run with the same key stops at once, before touching the first one's checkpoints."""
    import threading

    import tasks.train
    from tasks.retrain import train_candidate

    started, release, seen = threading.Event(), threading.Event(), []

    def slow_training(*args, work_dir, **kwargs):  # holds the work directory like a real run
        seen.append(work_dir)
        started.set()
        assert release.wait(30)
        raise RuntimeError("stopped by the test")

    monkeypatch.setattr(tasks.train, "train_lora", slow_training)
    settings = load_settings(home=str(tmp_path / "home"))
    dataset = SavedDataset(tmp_path / "ds", {"hash": "h" * 64, "counts": {}}, [], [])
    first_error = []
    first = threading.Thread(target=lambda: first_error.append(pytest.raises(RuntimeError, train_candidate, registry, settings, dataset, "k" * 64)))
    first.start()
    assert started.wait(30)
    with pytest.raises(RegistryError, match="another training of the same dataset"):
        train_candidate(registry, settings, dataset, "k" * 64)
    release.set()
    first.join()
    assert len(seen) == 1  # the second run never reached the recipe


def test_a_corrupt_registry_names_the_file_and_the_way_back(registry, tmp_path):
    registry.register(fake_adapter(tmp_path / "wa"), "a", {"created_at": "2026-01-01"})
    registry.promote("a", "gate")
    state = registry.root / "registry.json"
    good = state.read_text()
    state.write_text(good[: len(good) // 2])  # a torn write by another tool
    with pytest.raises(RegistryError, match="registry.json is corrupt") as e:
        registry.champion()
    assert "registry.json.bak" in str(e.value)
    (registry.root / "registry.json.bak").replace(state)
    assert registry.get("a").status == "candidate"  # the version before the promotion


def fake_full_model(path):
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    (path / "model.safetensors").write_bytes(b"weights")
    return path


def test_arena_runs_each_method_against_its_own_models_and_gates_the_newest_candidate(registry, tmp_path):
    from tasks.arena import ArmRun, arm_specs, gated_arms, newest_candidate
    from tasks.registry import trained_method

    assert trained_method(fake_full_model(tmp_path / "f")) == "full" and trained_method(tmp_path) is None
    registry.register(fake_adapter(tmp_path / "w1"), "lora1", {"method": "lora"})
    registry.promote("lora1", "first")
    registry.register(fake_full_model(tmp_path / "w2"), "full1", {"method": "full"})
    registry.register(fake_adapter(tmp_path / "w3"), "lora2", {})  # registered before `method` existed: lora
    specs, notes = arm_specs(["rag", "hybrid", "full+rag"], registry)
    got = [(s.name, s.adapter.name if s.adapter else None, s.role, s.retrieval) for s in specs]
    assert got == [("rag", None, None, True), ("hybrid@champion", "lora1", "champion", True),
                   ("hybrid@candidate", "lora2", "candidate", True), ("full+rag", "full1", "candidate", True)]
    assert notes == [] and [s.model for s in specs] == ["base", "lora@champion", "lora@candidate", "full@candidate"]

    runs = [ArmRun(s, [], [], 1.0) for s in specs]
    candidate, incumbent = gated_arms(runs, newest_candidate(registry))
    assert candidate.spec.adapter.name == "lora2" and incumbent.spec.name == "hybrid@champion"
    registry.reject("lora2", "worse")
    candidate, incumbent = gated_arms(runs, newest_candidate(registry))
    assert candidate.spec.adapter.name == "full1" and incumbent.spec.adapter.name == "lora1"  # against the champion, any method

    _, notes = arm_specs(["full"], type(registry)(tmp_path / "empty", tmp_path / "locks"))
    assert notes and 'training.method = "full"' in notes[0]
