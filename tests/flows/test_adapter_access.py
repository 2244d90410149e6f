"""Adapters and datasets under access control, through the real flows (hashing embedder, tiny llama):
an adapter is served only to callers who may read every chunk it was trained on, and no personal
data from the documents or QA pairs is kept under datasets/ or in an adapter's metadata."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows.answer import answer
from flows.dataset import build_dataset
from flows.ingest import ingest
from flows.retrain import retrain
from tasks.registry import Registry

PII = {
    "email": "jane.doe@example.com",
    "phone": "+44 20 7946 0958",
    "card": "4111 1111 1111 1111",
    "iban": "GB82 WEST 1234 5698 7654 32",
    "ssn": "123-45-6789",
    "nino": "AB 12 34 56 C",
}
DOCS = {
    "public/travel.md": "# Travel policy\n\nHotels in London are capped at 185 pounds per night.\n\nThe daily meal allowance is 50 pounds.\n",
    "public/sla.md": "# Support SLA\n\nPriority one tickets get a first response within 30 minutes.\n",
    "hr/pay.md": "# Pay bands\n\nSenior engineers are paid 91000 pounds a year.\n\n"
    f"Payroll questions go to {PII['email']} or {PII['phone']}.\n\n"
    f"The payroll test card is {PII['card']} and the payroll account is {PII['iban']}.\n\n"
    f"The sample employee has SSN {PII['ssn']} and NINO {PII['nino']}.\n",
}
QA = [
    ("What is the London hotel cap?", ["185 pounds"]),
    ("How much is the daily meal allowance?", ["50 pounds"]),
    ("How fast is a first response to a priority one ticket?", ["30 minutes"]),
    ("How much are senior engineers paid?", ["91000 pounds"]),
    ("Where do payroll questions go?", [PII["email"]]),
    (f"Which account is {PII['iban']}?", ["the payroll account"]),
]


@pytest.fixture
def org(home, tmp_path, tiny_llama, monkeypatch):
    corpus = tmp_path / "corpus"
    for rel, text in DOCS.items():
        (corpus / rel).parent.mkdir(parents=True, exist_ok=True)
        (corpus / rel).write_text(text)
    rows = [{"id": f"t{i}", "question": q, "answers": a, "split": "train"} for i, (q, a) in enumerate(QA)]
    (tmp_path / "qa.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    config = tmp_path / "ragtune.toml"
    config.write_text(
        f"""
[ingest]
access_root = "{corpus}"
access_groups = {{ "hr/**" = ["hr"] }}
[dataset]
qa_pairs = "{tmp_path / 'qa.jsonl'}"
validation_share = 0.3
max_reject_rate = 0.9
[training]
batch_size = 2
grad_accum = 1
eval_every = 1
checkpoint_every = 1
max_steps = 1
"""
    )
    monkeypatch.setenv("RAGTUNE_GENERATOR__MODEL", str(tiny_llama))
    monkeypatch.setenv("RAGTUNE_GENERATOR__MAX_NEW_TOKENS", "4")
    monkeypatch.setenv("RAGTUNE_TORCH_THREADS", "1")
    ingest(str(corpus), config_file=str(config))
    return config


def _manifest(summary: dict) -> dict:
    return json.loads((Path(summary["path"]) / "dataset.json").read_text())


def test_an_adapter_trained_on_hr_chunks_is_served_only_to_hr(org, home, tmp_path, monkeypatch):
    public = build_dataset(config_file=str(org))
    assert _manifest(public)["access"] == {"readers": [["*"]], "groups": ["*"]}  # default: public chunks only
    assert public["counts"]["rejects_by_reason"].get("no_oracle", 0) >= 1  # the hr questions found no readable chunk

    monkeypatch.setenv("RAGTUNE_DATASET__GROUPS", '["hr"]')
    result = retrain(config_file=str(org))
    assert result["trained"]
    adapter = Registry(home / "adapters", home / "locks").get(result["adapter"]["name"])
    assert adapter.metadata["access"]["groups"] == ["*", "hr"]  # the audit list names every group it saw
    assert ["hr"] in adapter.metadata["access"]["readers"]

    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"id": "q", "question": "How much are senior engineers paid?"}) + "\n")
    ref = str(adapter.path)
    outsider = answer(str(questions), str(tmp_path / "out.jsonl"), groups=[], adapter=ref, config_file=str(org))
    row = json.loads((tmp_path / "out.jsonl").read_text())
    assert outsider["adapter"] is None and "hr" in outsider["adapter_withheld"]
    assert row["adapter"] is None and row["adapter_withheld"] == outsider["adapter_withheld"]
    insider = answer(str(questions), str(tmp_path / "in.jsonl"), groups=["hr"], adapter=ref, config_file=str(org))
    assert insider["adapter"] == adapter.path.name and insider["adapter_withheld"] is None
    # The metadata holds no planted personal data either.
    text = adapter.path.joinpath("metadata.json").read_text()
    assert not [k for k, v in PII.items() if v in text]


@pytest.mark.parametrize("mode", ["redact", "reject"])
def test_no_planted_personal_data_is_kept_under_datasets(org, home, monkeypatch, mode):
    monkeypatch.setenv("RAGTUNE_DATASET__GROUPS", '["hr"]')
    monkeypatch.setenv("RAGTUNE_DATASET__PII", mode)
    summary = build_dataset(config_file=str(org))
    assert summary["counts"]["pii_found"] > 0
    found = {}
    for f in (home / "datasets").rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            # Arrow files hold the text as UTF-8 too; a plain byte search covers every file kind.
            found.update({(k, f.name): 1 for k, v in PII.items() if v.encode() in data})
    assert not found, f"planted PII kept at rest: {sorted(found)}"
