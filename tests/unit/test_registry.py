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


def test_training_key_follows_recipe_and_base_model_but_not_the_step_cap(tmp_path):
    s = load_settings(home=tmp_path)
    key = training_key(s, "d1")
    assert training_key(load_settings(home=tmp_path, training={"max_steps": 3}), "d1") == key
    assert training_key(load_settings(home=tmp_path, training={"lora_r": 16}), "d1") != key
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    assert training_key(load_settings(home=tmp_path, generator={"model": str(model)}), "d1") != key
