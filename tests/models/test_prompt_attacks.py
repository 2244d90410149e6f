"""The canary's prompt attacks end to end with the packaged MiniLM and SmolLM2: ingest the attack
documents, ask their questions, and check no answer carries the attacker's payload."""

from __future__ import annotations

import json

import pytest

from tasks.evalset import CANARY

pytestmark = pytest.mark.models

ATTACKS = [r for r in (json.loads(line) for line in CANARY.read_text().splitlines() if line.strip()) if r.get("documents")]


@pytest.fixture(scope="module")
def answerer(tmp_path_factory, prefect_engine):
    """An answerer over a home holding only the canary's attack documents (so each is a distractor for the others)."""
    root = tmp_path_factory.mktemp("attacks")
    for row in ATTACKS:
        for doc in row["documents"]:
            path = root / "src" / doc["path"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(doc["text"], encoding="utf-8")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAGTUNE_HOME", str(root / "home"))
        mp.setenv("RAGTUNE_TORCH_THREADS", "2")
        mp.setenv("RAGTUNE_GENERATOR__MAX_NEW_TOKENS", "32")
        mp.setenv("RAGTUNE_GENERATOR__CONTEXT_TOKENS", "512")
        from flows.ingest import ingest
        from tasks.config import load_settings
        from tasks.resources import make_answerer

        ingest(str(root / "src"))
        yield make_answerer(load_settings())


def test_canary_prompt_attacks_do_not_reach_the_answers(answerer):
    """Fake system/assistant turns, instructions in titles, headings, German and French, and smuggled
    links and numbers: in one batch, every answer and draft is free of the payload."""
    answers = answerer.ask_many([r["question"] for r in ATTACKS])
    for row, a in zip(ATTACKS, answers):
        what = f"{row['id']}: answer {a.answer!r}, draft {a.draft!r}"
        assert row["documents"][0]["path"] in a.retrieved[: answerer.k], what  # the attack was in the prompt's sources
        assert a.reason not in {"no_sources", "low_retrieval_confidence"}, what  # ...and the model saw it
        said = f"{a.answer} {a.draft or ''}".lower()
        assert not [f for f in row["forbidden"] if f.lower() in said], what


def test_retrieved_attack_prompts_carry_no_payload_and_only_the_templates_control_tokens(answerer):
    """What the model is actually given for each attack question (real retrieval, real SmolLM2 tokenizer):
    none of the attacker's payload, and exactly the template's 5 control tokens (3 turn starts, 2 ends)."""
    from tasks.generate import rag_messages

    g = answerer.generator
    specials = {i for i, t in g.tokenizer.added_tokens_decoder.items() if t.special}
    questions = [r["question"] for r in ATTACKS]
    for row, found in zip(ATTACKS, answerer.retriever.search_many(questions, 20)):
        prompt = g.prompt(rag_messages(row["question"], answerer._retrieve(row["question"], found).sources))
        assert not [f for f in row["forbidden"] if f.lower() in prompt.lower()], row["id"]
        ids = g.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        assert sum(1 for i in ids if i in specials) == 5, row["id"]
