"""Synthetic questions: spans, rule questions, every filter on hand-made chunks, the document split,
the evaluation-set contract, checkpoints. Over a real LanceDB table (tests/unit/conftest.py)."""

from __future__ import annotations

import json

import pytest

from tasks import synth
from tasks.config import Settings, SynthSettings
from tasks.evalset import load_eval_set
from tasks.retrieve import SearchFilters


def spans(sentence):
    return [(s.text, s.kind) for s in synth.answer_spans(sentence)]


def test_spans_find_money_units_dates_names_and_skip_modifiers():
    assert spans("The London hotel cap is £185 per night under the 2026 policy.") == [("£185", "money")]
    found = spans("Tidewell 4.2 allows 1,000 requests per minute per account since 12 March 2026.")
    assert found == [("Tidewell 4.2", "name"), ("1,000 requests per minute", "number"), ("12 March 2026", "date")]
    assert spans("Claims must be filed within 30 days.") == [("30 days", "number")]
    assert ("2024", "year") in spans("In 2024 the company moved its headquarters to Bristol.")


def test_rule_questions_put_the_wh_phrase_where_the_answer_was():
    s = "Expense claims must be filed within 30 days."
    span = synth.answer_spans(s)[0]
    assert synth.cloze_question(s, span) == "Expense claims must be filed within how many days?"
    s = "In 2024 the company moved its headquarters to Bristol."
    year = next(x for x in synth.answer_spans(s) if x.kind == "year")
    assert synth.cloze_question(s, year).startswith("In what year the company moved")
    assert synth.acronym_question("A Service Level Agreement (SLA) sets uptime.") == ("What does SLA stand for?", "Service Level Agreement")
    assert synth.with_title("The cap is how much?", "Travel policy 2026") == "In Travel policy 2026, the cap is how much?"
    assert synth.with_title("The travel cap is how much?", "Travel policy 2026") == "The travel cap is how much?"
    assert synth.parse_question("Question: How long is the SLA? It is") == "How long is the SLA?"
    assert synth.parse_question("The SLA is long.") is None


def test_round_robin_covers_every_document_before_a_second_chunk():
    rows = [{"doc_id": d, "chunk_id": f"{d}{i}"} for d in "abc" for i in range(5)]
    first = synth.round_robin(rows, 3, seed=0)
    assert sorted(r["doc_id"] for r in first) == ["a", "b", "c"]
    assert len(synth.round_robin(rows, 100, seed=0)) == 15
    assert synth.round_robin(rows, 7, seed=1) == synth.round_robin(rows, 7, seed=1)


def _chunks(retriever):
    return synth.sample_chunks(retriever.table, SearchFilters(), 100, seed=0)


def test_sampling_honours_access_groups(retriever):
    docs = {c["doc_id"] for c in _chunks(retriever)}
    assert "hr/salaries.md" not in docs and "finance/board.pdf" not in docs and "policies/travel.md" in docs
    hr = synth.sample_chunks(retriever.table, SearchFilters(groups=("hr",)), 100, seed=0)
    assert "hr/salaries.md" in {c["doc_id"] for c in hr}


def _drafter(retriever, generate=None, strategies=("rules",), reader_check=False):
    return synth.Drafter(retriever, generate, lambda t: len(t.split()), SearchFilters(), strategies, spans_per_chunk=3, k=1,
                         reader_check=reader_check)


def _by_question(candidates):
    return {c.question: c for c in candidates}


def test_each_filter_drops_what_it_names(retriever):
    chunks = _chunks(retriever)
    travel = next(c for c in chunks if c["doc_id"] == "policies/travel.md")
    # A scripted stand-in for the LLM: one good question, one giving the answer away, one whose
    # answer is not in the chunk, one that retrieves another document (round trip fails).
    drafter = _drafter(retriever, generate=lambda convs, n: ["How many pounds per night may a London hotel cost? Answer:"] * len(convs),
                       strategies=("generator",))
    found = drafter.questions([travel])
    assert [c.answer for c in found] == ["185 pounds"]
    give_away = synth.Candidate("Are London hotels capped at 185 pounds per night?", "185 pounds", "money", "generator",
                                travel["chunk_id"], travel["doc_id"], "g-z")
    synth.cheap_checks(give_away, travel["text"])
    bad = synth.Candidate("How much does a Paris hotel cost per night?", "300 euros", "money", "rules", travel["chunk_id"], travel["doc_id"], "g-x")
    synth.cheap_checks(bad, travel["text"])
    astray = synth.Candidate("How fast are priority one tickets answered within minutes?", "185 pounds", "money", "rules",
                             travel["chunk_id"], travel["doc_id"], "g-y")
    synth.cheap_checks(astray, travel["text"] + " 185 pounds")
    candidates = found + [give_away, bad, astray]
    drafter.round_trip(candidates)
    result = synth.finish(candidates, retriever.embedder.embed, lambda term: False,
                          SynthSettings(strategies=["rules", "generator"], eval_share=0), k=1)
    kept = {r["question"] for r in result.rows}
    rejected = {r["question"]: r["filters"] for r in result.rejects}
    assert "How many pounds per night may a London hotel cost?" in kept
    assert rejected["Are London hotels capped at 185 pounds per night?"] == ["answer_in_question"]
    assert rejected["How much does a Paris hotel cost per night?"] == ["answer_not_in_source"]
    assert rejected["How fast are priority one tickets answered within minutes?"] == ["round_trip_retrieval"]
    assert result.funnel["dropped_by_filter"]["round_trip_retrieval"] >= 1


def test_near_duplicates_are_dropped_but_not_paraphrases_of_one_answer(retriever):
    t = next(c for c in _chunks(retriever) if c["doc_id"] == "policies/travel.md")
    a = synth.Candidate("How much may a London hotel cost per night?", "185 pounds", "money", "rules", t["chunk_id"], t["doc_id"], "g1")
    b = synth.Candidate("How much may a London hotel cost per night ?", "185 pounds", "money", "generator", t["chunk_id"], t["doc_id"], "g2")
    c = synth.Candidate("London hotels are capped at how much per night?", "185 pounds", "money", "generator", t["chunk_id"], t["doc_id"], "g1")
    for x in (a, b, c):
        synth.cheap_checks(x, t["text"])
        x.derived["retrieval_rank"] = 1
    synth.mark_near_duplicates([a, b, c], retriever.embedder.embed, 0.9)
    assert a.derived.get("duplicate_of") is None and b.derived["duplicate_of"] == a.id and c.derived.get("duplicate_of") is None


def test_reader_round_trip_keeps_only_questions_the_generator_answers(retriever):
    t = next(c for c in _chunks(retriever) if c["doc_id"] == "support/sla.html")
    replies = {"within how many minutes": "Within 30 minutes [1].", "Priority one": "I cannot tell."}

    def generate(convs, n):
        out = []
        for conv in convs:
            text = conv[-1]["content"]
            out.append(next((v for k, v in replies.items() if k in text), "no idea"))
        return out

    drafter = _drafter(retriever, generate=generate, reader_check=True)
    good = synth.Candidate("Priority one tickets are answered within how many minutes?", "30 minutes", "number", "rules",
                           t["chunk_id"], t["doc_id"], "g1")
    other = synth.Candidate("What tickets are answered within 30 minutes?", "Priority one", "name", "rules", t["chunk_id"], t["doc_id"], "g2")
    for x in (good, other):
        synth.cheap_checks(x, t["text"])
    drafter.round_trip([good, other])
    assert good.derived["retrieval_rank"] == 1 and good.derived["reader_ok"] is True
    assert other.derived["reader_ok"] is False


def test_paraphrases_reword_rule_questions_within_their_group_and_face_the_same_filters(retriever):
    t = next(c for c in _chunks(retriever) if c["doc_id"] == "support/sla.html")
    asked = []

    def generate(convs, n):
        asked.extend(conv[-1]["content"] for conv in convs)
        out = []
        for conv in convs:
            q = conv[-1]["content"].split("Question: ", 1)[1].split("\n", 1)[0]
            if "how many minutes" in q:
                out.append("How quickly, in minutes, do priority one tickets get an answer?")
            elif "within 30 minutes" in q:
                out.append(q)  # the model only repeats the question: not a paraphrase
            else:
                out.append("Which tickets get an answer within 30 minutes, priority one?")  # gives its answer away
        return out

    found = _drafter(retriever, generate=generate, strategies=("rules", "paraphrase")).questions([t])
    rules = [c for c in found if c.strategy == "rules"]
    para = [c for c in found if c.strategy == "paraphrase"]
    assert rules and len(para) == len([c for c in rules if synth.passes_cheap(c, synth.Limits())]) == len(asked)
    by_group = {c.paraphrase_group: c for c in rules}
    for p in para:
        assert p.answer == by_group[p.paraphrase_group].answer and p.chunk_id == t["chunk_id"]
    good = next(p for p in para if p.question.startswith("How quickly"))
    assert synth.passes_cheap(good, synth.Limits()) and good.answer == "30 minutes"
    assert all(not synth.passes_cheap(p, synth.Limits()) for p in para if p is not good)  # a repeat, a give-away


def test_unanswerable_questions_use_details_no_chunk_holds(retriever):
    t = next(c for c in _chunks(retriever) if c["doc_id"] == "policies/travel.md")
    kept = synth.Candidate("How much may a London hotel cost per night in 2025?", "185 pounds", "money", "rules", t["chunk_id"], t["doc_id"], "g1")
    corpus = " ".join(c["text"] for c in _chunks(retriever)).lower()
    made = synth.unanswerable([kept], 3, lambda term: term.lower() in corpus, seed=0)
    assert made and all(m.answer is None and m.strategy == "unanswerable" for m in made)
    assert any(m.derived["absent_from_corpus"] for m in made)
    for m in made:
        assert m.question != kept.question
    # a detail the corpus holds is caught by the contract
    present = synth.unanswerable([kept], 1, lambda term: True, seed=0)
    _, rejects, _ = synth.contract(present, synth.synthetic_row_suite(4, 40, 8, 5))
    assert rejects and all(r["filters"] == ["unanswerable_found_in_corpus"] for r in rejects)


def test_split_is_by_document_and_the_set_passes_the_eval_contract(tmp_path, retriever):
    chunks = _chunks(retriever)
    drafter = _drafter(retriever)
    candidates = drafter.draft(chunks)
    result = synth.finish(candidates, retriever.embedder.embed, lambda term: False,
                          SynthSettings(strategies=["rules", "unanswerable"], eval_share=0.5, unanswerable_share=0.3), k=1)
    assert result.rows, result.rejects
    train_docs = {r["source_chunk_id"] for r in result.rows if r["split"] == "train"}
    test_docs = {r["source_chunk_id"] for r in result.rows if r["split"] == "test"}
    doc_of = {c["chunk_id"]: c["doc_id"] for c in chunks}
    assert not {doc_of[c] for c in train_docs} & {doc_of[c] for c in test_docs}
    path = synth.save(result, tmp_path / "synth", {"key": "k"})
    loaded = load_eval_set(path / "questions.jsonl", None)
    assert len(loaded.rows) == len(result.rows)
    assert synth.latest(tmp_path / "synth") == path / "questions.jsonl"
    manifest = json.loads((path / "synth.json").read_text())
    assert manifest["funnel"]["generated"]["rules"] == sum(c.strategy == "rules" for c in candidates)


def _chunk(cid, text_hash="h1"):
    return {"chunk_id": cid, "text_hash": text_hash}


def test_a_torn_checkpoint_line_is_drafted_again_and_the_next_batch_is_kept(tmp_path):
    cp = synth.Checkpoint(tmp_path / "work")
    c = synth.Candidate("How long is it kept in days?", "30 days", "number", "rules", "c1", "d1", "g")
    cp.append([_chunk("c1")], [c])
    with open(cp.path, "a") as f:
        f.write('{"chunks": ["c2"], "candid')  # killed mid-write
    sample = [_chunk(i) for i in ("c1", "c2", "c3")]
    done, found = cp.current(sample)
    assert done == {"c1"} and [x.id for x in found] == [c.id]
    assert synth.batches(sample, done, 1) == [[_chunk("c2")], [_chunk("c3")]]
    # The rerun's first batch lands after the torn fragment: it must be read back, not glued to it.
    d = synth.Candidate("How long is the other kept in days?", "40 days", "number", "rules", "c2", "d1", "g2")
    cp.append([_chunk("c2")], [d])
    done, found = cp.current(sample)
    assert done == {"c1", "c2"} and [x.id for x in found] == [c.id, d.id]


def test_a_chunk_whose_text_changed_is_drafted_again_and_its_old_questions_dropped(tmp_path):
    cp = synth.Checkpoint(tmp_path / "work")
    old = synth.Candidate("How long is it kept in days?", "30 days", "number", "rules", "c1", "d1", "g")
    kept = synth.Candidate("How long is the log kept in days?", "90 days", "number", "rules", "c2", "d2", "g2")
    cp.append([_chunk("c1", "old"), _chunk("c2")], [old, kept])
    sample = [_chunk("c1", "new"), _chunk("c2")]  # a nightly ingest changed c1; c3 left the index
    done, found = cp.current(sample)
    assert done == {"c2"} and [x.id for x in found] == [kept.id]
    assert synth.batches(sample, done, 4) == [[_chunk("c1", "new")]]
    assert cp.current([_chunk("c2", "changed")]) == (set(), [])


def test_the_run_key_survives_a_reingest_and_answer_settings_but_not_the_recipe():
    s = Settings()
    key = synth.run_key(s, "chunks", ["embedder", "generator"])
    answer_time = s.model_copy(update={"retrieval": s.retrieval.model_copy(update={"fallback": "quote", "min_support": 0.3})})
    assert synth.run_key(answer_time, "chunks", ["embedder", "generator"]) == key
    deeper = s.model_copy(update={"retrieval": s.retrieval.model_copy(update={"k": 9})})
    recipe = s.model_copy(update={"synth": s.synth.model_copy(update={"spans_per_chunk": 5})})
    budget = s.model_copy(update={"synth": s.synth.model_copy(update={"max_minutes": 5.0, "max_chunks": 4000})})
    assert synth.run_key(deeper, "chunks", ["embedder", "generator"]) != key
    assert synth.run_key(recipe, "chunks", ["embedder", "generator"]) != key
    assert synth.run_key(budget, "chunks", ["embedder", "generator"]) == key
    assert synth.run_key(s, "chunks", ["embedder", "other-generator"]) != key


@pytest.mark.parametrize("question", ["Is 1,000 the limit?", "What is it?"])
def test_length_and_give_away_checks(question):
    c = synth.Candidate(question, "1,000", "number", "rules", "c", "d", "g")
    synth.cheap_checks(c, "The limit is 1,000.")
    assert not synth.passes_cheap(c, synth.Limits())
