"""Training data: readers, RAFT invariants over a real LanceDB table, the GX contract, splits, saving."""

from __future__ import annotations

import json
import re

import pytest

from tasks import dataset as ds
from tasks.config import DatasetSettings
from tasks.embed import HashEmbedder
from tasks.generate import ABSTAIN
from tasks.retrieve import SearchFilters
from tasks.validate import ContractViolation


def words(text: str) -> int:
    return len(text.split())


def chat_words(messages) -> int:
    return sum(words(m["content"]) for m in messages)


def write_jsonl(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


# --- readers ---------------------------------------------------------------------------------------


def test_qa_pairs_reads_the_split_and_rejects_bad_lines(tmp_path):
    f = write_jsonl(tmp_path / "qa.jsonl", [
        {"question": "Q1?", "answers": ["a"], "split": "train", "paraphrase_group": "g1"},
        {"question": "Q2?", "answers": ["b"], "split": "test"},
        {"question": "Q3?", "answer": "c"},  # no split: kept
        {"question": "Q4?", "answers": ["d"], "answerable": False, "split": "train"},
        {"question": "", "answers": ["e"], "split": "train"},
        "{not json",
    ])
    pairs, rejects = ds.qa_pairs(f, "train")
    assert [p.question for p in pairs] == ["Q1?", "Q3?", "Q4?"]
    assert pairs[0].group == "g1" and pairs[1].answers == ["c"] and pairs[2].answers == []
    assert sorted(r.origin for r in rejects) == [f"{f}:5", f"{f}:6"]
    assert ds.qa_pairs(f, None)[0][1].question == "Q2?"


def test_instruction_examples_accept_both_formats(tmp_path):
    folder = tmp_path / "instr"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", [
        {"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]},
        {"prompt": "Tone?", "response": "Brief.", "system": "Be kind."},
        {"text": "no known format"},
    ])
    rows, rejects = ds.instruction_examples(folder)
    assert [r["messages"][-1]["content"] for r in rows] == ["Hello.", "Brief."]
    assert rows[1]["messages"][0] == {"role": "system", "content": "Be kind."} and rows[1]["question"] == "Tone?"
    assert len(rejects) == 1 and rejects[0].reasons[0].startswith("unknown_format")
    with pytest.raises(ds.DatasetError, match="does not exist"):
        ds.instruction_examples(tmp_path / "missing")


# --- RAFT -------------------------------------------------------------------------------------------


def _pairs(*items):
    return [ds.QAPair(q, list(a), [], q, f"qa:{i}") for i, (q, a) in enumerate(items, 1)]


def _sources(messages) -> dict[int, str]:
    user = messages[1]["content"]
    return {int(n): text.strip() for n, text in re.findall(r'<source id="(\d+)"[^>]*>\n(.*?)\n</source>', user, re.S)}


def test_raft_rows_cite_the_oracle_among_retrieved_distractors(retriever):
    settings = DatasetSettings(no_oracle_share=0.0, distractors=2)
    pairs = _pairs(("What is the hotel cap in London?", ["185 pounds"]), ("How fast are priority one tickets answered?", ["30 minutes"]))
    rows, rejects = ds.raft_examples(pairs, retriever, words, 500, settings, k=3, filters=SearchFilters())
    assert not rejects
    raft = [r for r in rows if r["kind"] == "raft"]
    assert [r["oracle_chunk_id"] for r in raft] == ["c0", "c3"]
    for row, pair in zip(raft, pairs):
        sources = _sources(row["messages"])
        n = int(re.search(r"\[(\d+)\]", row["answer"]).group(1))
        assert pair.answers[0] in sources[n]  # the citation points at the oracle
        assert row["answer"] == f"{pair.answers[0]} [{n}]."
        retrieved = {h.chunk_id for h in retriever.search(pair.question, ds.RAFT_DEPTH).hits}
        assert row["distractor_chunk_ids"] and set(row["distractor_chunk_ids"]) <= retrieved  # hard negatives, not random
        assert all(pair.answers[0] not in text for m, text in sources.items() if m != n)
    # Closed-book copies teach the same answer without sources.
    book = [r for r in rows if r["kind"] == "closed_book"]
    assert [r["answer"] for r in book] == ["185 pounds.", "30 minutes."]


def test_raft_leaves_the_oracle_out_in_exactly_the_configured_share(retriever):
    questions = [(f"What is the hotel cap in London, variant {i}?", ["185 pounds"]) for i in range(10)]
    settings = DatasetSettings(no_oracle_share=0.3, closed_book=False, distractors=2)
    rows, _ = ds.raft_examples(_pairs(*questions), retriever, words, 500, settings, k=3, filters=SearchFilters())
    without = [r for r in rows if not r["has_oracle"]]
    assert len(without) == 3
    for r in without:
        assert r["answer"] == ABSTAIN and r["oracle_chunk_id"] is None
        assert all("185 pounds" not in t for t in _sources(r["messages"]).values())


def test_raft_never_uses_chunks_the_caller_may_not_read(retriever):
    settings = DatasetSettings(no_oracle_share=0.0)
    pairs = _pairs(("What is the salary band for engineers?", ["91000 pounds"]), ("What is the hotel cap in London?", ["185 pounds"]))
    rows, rejects = ds.raft_examples(pairs, retriever, words, 500, settings, k=5, filters=SearchFilters(groups=()))
    assert [r.origin for r in rejects] == ["qa:1"] and rejects[0].reasons[0].startswith("no_oracle")
    used = {c for r in rows if r["kind"] == "raft" for c in r["distractor_chunk_ids"] + [r["oracle_chunk_id"]]}
    assert "c1" not in used and "c2" not in used  # hr and finance chunks stay out of training data
    assert all("secret salary" not in m["content"] for r in rows for m in r["messages"])


def test_unanswerable_pairs_count_towards_the_abstention_share():
    pairs = _pairs(*[(f"q{i}", ["a"]) for i in range(8)], ("u1", []), ("u2", []))
    assert len(ds.without_oracle(pairs, 0.3, seed=0)) == 1  # 3 abstention targets of 10: 2 unanswerable + 1
    assert ds.without_oracle(pairs, 0.1, seed=0) == set()  # the unanswerable ones already exceed the share
    assert ds.without_oracle(pairs, 0.3, seed=0) <= {p.question for p in pairs if p.answers}


def test_unanswerable_pairs_become_abstentions(retriever):
    rows, rejects = ds.raft_examples(_pairs(("Who founded the company?", [])), retriever, words, 500, DatasetSettings(), k=3)
    assert not rejects and len(rows) == 1  # no closed-book copy without an answer
    assert rows[0]["answer"] == ABSTAIN and rows[0]["has_oracle"] is False


# --- contract ----------------------------------------------------------------------------------------


def _instruction(question: str, answer: str, origin: str):
    messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return ds._row("instruction", origin, messages, question, group_key=origin)


def _checked(rows, tokenizer, eval_questions=(), policy="redact", **settings):
    embedder = HashEmbedder(tokenizer, dimension=64)
    ds.add_contract_columns(rows, chat_words, embedder.embed, list(eval_questions), policy)
    ds.assign_splits(rows, 0.0, 0)
    rejects: list[ds.Reject] = []
    kept, _ = ds.contract(rows, rejects, DatasetSettings(**settings), max_tokens=12)
    return kept, {r.origin: r.reasons for r in rejects}


def test_contract_rejects_each_bad_row_and_says_why(tokenizer):
    rows = [
        _instruction("How do I reset my hub?", "Hold the button for ten seconds.", "ok"),
        _instruction("What is the refund window?", "Thirty days from delivery.", "leak"),
        _instruction("Explain everything about the platform please", " ".join(["word"] * 20), "long"),
        _instruction("Anything?", "   ", "empty"),
        _instruction("Who is on call?", "Call me on +44 20 7946 0958.", "pii"),
        _instruction("How do I reset my hub?", "Hold the button for ten seconds.", "dup"),
    ]
    kept, rejected = _checked(rows, tokenizer, eval_questions=["What is the refund window?"], policy="reject", max_reject_rate=0.9, max_duplicate_rate=0.5)
    assert [r["origin"] for r in kept] == ["ok"]
    assert set(rejected) == {"leak", "long", "empty", "pii", "dup"}
    assert any(r.startswith("leakage") for r in rejected["leak"])
    assert any(r.startswith("too_long") for r in rejected["long"])
    assert any(r.startswith("bad_roles") for r in rejected["empty"])
    assert any(r.startswith("pii") for r in rejected["pii"])
    assert any(r.startswith("duplicate") for r in rejected["dup"])


def test_pii_is_redacted_in_redact_mode(tokenizer):
    rows = [_instruction("Who is on call?", "Call Sam on +44 20 7946 0958.", "pii"), _instruction("Hours?", "Nine to five.", "ok")]
    kept, rejected = _checked(rows, tokenizer)
    assert not rejected
    assert kept[0]["answer"] == "Call Sam on [PHONE]." and kept[0]["pii_found"] == 1 and kept[0]["pii_remaining"] == 0


def test_unsupported_raft_answer_is_rejected(tokenizer):
    row = _instruction("What is the cap?", "185 pounds [1].", "raft")
    row.update(kind="raft", has_oracle=True, oracle_text="Hotels are capped at 150 pounds.", gold_answer="185 pounds")
    ok = _instruction("Hours?", "Nine to five.", "ok")
    kept, rejected = _checked([row, ok], tokenizer)
    assert any(r.startswith("oracle_unsupported") for r in rejected["raft"])


def test_contract_fails_closed_when_too_much_is_rejected(tokenizer):
    rows = [_instruction("Q?", "x " * 30, f"long{i}") for i in range(3)] + [_instruction("Hours?", "Nine to five.", "ok")]
    with pytest.raises(ds.DatasetError, match="3 of 4 training rows broke the contract"):
        _checked(rows, tokenizer, max_reject_rate=0.5)


def test_contract_fails_closed_on_a_high_duplicate_rate(tokenizer):
    rows = [_instruction("Hours?", "Nine to five.", f"copy{i}") for i in range(4)] + [_instruction("Where?", "Leeds.", "ok")]
    with pytest.raises(ContractViolation, match="training_set(.|\n)*observed 0.4"):
        _checked(rows, tokenizer, max_reject_rate=0.9, max_duplicate_rate=0.2)


# --- splits, hash, saving ------------------------------------------------------------------------------


def test_splits_keep_groups_together_and_follow_the_share():
    rows = [ds._row("raft", f"o{i}", [], f"q{i}", group_key=f"g{i // 2}") for i in range(40)]
    ds.assign_splits(rows, 0.25, seed=0)
    by_group: dict[str, set[str]] = {}
    for r in rows:
        by_group.setdefault(r["group_key"], set()).add(r["split"])
    assert all(len(s) == 1 for s in by_group.values())
    assert sum(s == {"validation"} for s in by_group.values()) == 5


def test_save_is_versioned_by_content_and_reuses_an_identical_build(tmp_path, tokenizer):
    rows = [_instruction("How do I reset my hub?", "Hold the button.", "a"), _instruction("Hours?", "Nine to five.", "b")]
    kept, _ = _checked(rows, tokenizer)
    build = ds.DatasetBuild(kept, [ds.Reject("x:1", ["invalid_json: bad"])], None, {"instructions_dir": "i"})  # type: ignore[arg-type]
    build.report = type("R", (), {"as_dict": lambda self: {"success": True}})()
    path = ds.save(build, tmp_path / "datasets")
    assert path.name == build.hash[:12] and ds.latest(tmp_path / "datasets") == path
    saved = ds.load(path)
    assert saved.hash == build.hash and len(saved.train) == 2
    assert saved.train[0][-1]["role"] == "assistant"
    assert json.loads((path / "rejects.jsonl").read_text().splitlines()[0])["origin"] == "x:1"
    mtime = (path / "dataset.json").stat().st_mtime_ns
    assert ds.save(build, tmp_path / "datasets") == path and (path / "dataset.json").stat().st_mtime_ns == mtime
    changed = ds.DatasetBuild(kept[:1], [], build.report, {})
    assert changed.hash != build.hash


def test_synthetic_training_pool_needs_a_synthetic_set(tmp_path):
    from tasks.config import load_settings

    settings = load_settings(home=tmp_path / "home")
    with pytest.raises(ds.DatasetError, match="ragtune synth"):
        ds.synthetic_set(settings)
    target = settings.synth_dir / "abc"
    target.mkdir(parents=True)
    (target / "questions.jsonl").write_text('{"id": "s1", "question": "How long?", "answers": ["3 days"], "split": "train"}\n')
    (settings.synth_dir / "LATEST").write_text("abc\n")
    assert ds.synthetic_set(settings) == target / "questions.jsonl"


def test_replay_rows_are_the_base_models_own_answers_in_the_closed_book_format():
    assert ds.replay_count(0.2, 80, 40) == 20 and ds.replay_count(0.5, 80, 40) == 40 and ds.replay_count(0, 80, 40) == 0
    asked = []

    def answer(prompts):
        asked.extend(prompts)
        return ["" if "empty" in p else f"answer to {p}" for p in prompts]

    prompts = ["Name a red fruit.", "What is 2 plus 2?", "An empty one?", "Which season is warmest?"]
    rows = ds.replay_examples(prompts, answer, 3, seed=0)
    assert len(asked) == 3 and ds.replay_examples(prompts, answer, 3, seed=0)[0]["question"] == rows[0]["question"]
    for r in rows:
        assert r["kind"] == "replay" and r["messages"][-1] == {"role": "assistant", "content": f"answer to {r['question']}"}
        assert r["messages"][:-1] == ds.base_messages(r["question"])  # what the lora arm and the canary are asked in
    assert all("empty" not in r["question"] for r in rows)  # an empty answer teaches nothing


def test_shipped_replay_prompts_are_not_canary_questions():
    from tasks.evalset import CANARY

    replay = {json.loads(line)["prompt"].lower() for line in ds.REPLAY.read_text().splitlines()}
    canary = {json.loads(line)["question"].lower() for line in CANARY.read_text().splitlines()}
    assert len(replay) >= 30 and not replay & canary
