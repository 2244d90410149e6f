"""The answer pipeline's decisions with a scripted generator: citations, abstention, access control."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tasks.answer import Answerer
from tasks.generate import ABSTAIN, Generation
from tasks.ground import LexicalSemanticScorer
from tasks.rerank import FusionOrder
from tasks.retrieve import SearchFilters


@dataclass
class ScriptedGenerator:
    """Replies with a fixed text and records the prompts it was given."""

    reply: str
    prompts: list

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def generate(self, conversations):
        self.prompts.extend(conversations)
        return [Generation(self.reply, len(self.reply.split()), 0.0) for _ in conversations]


def _answerer(retriever, reply: str, min_dense: float = -1.0) -> tuple[Answerer, ScriptedGenerator]:
    generator = ScriptedGenerator(reply, [])
    scorer = LexicalSemanticScorer(retriever.embedder)
    return Answerer(retriever, generator, scorer, FusionOrder(), k=3, context_tokens=500, min_dense=min_dense), generator


def test_supported_answer_cites_its_marked_source(retriever):
    answerer, _ = _answerer(retriever, "London hotels are capped at 185 pounds per night [1].")
    result = answerer.ask("What is the hotel cap in London?")
    assert not result.abstained
    assert [c.doc_id for c in result.citations] == ["policies/travel.md"]
    assert result.citations[0].chunk_id and result.citations[0].snippet
    assert result.grounding and result.grounding[0]["supported"]
    assert set(result.timings) >= {"rewrite", "search", "rerank", "generate", "validate"}


def test_unsupported_answer_is_withheld_with_closest_sources(retriever):
    answerer, _ = _answerer(retriever, "The Zurich office has 412 parking spaces and a rooftop heliport.")
    result = answerer.ask("How many parking spaces does the Zurich office have?")
    assert result.abstained and result.answer == ABSTAIN and result.reason == "unsupported"
    assert result.citations == [] and result.closest_sources and result.draft


def test_model_abstention_is_respected(retriever):
    answerer, _ = _answerer(retriever, ABSTAIN)
    result = answerer.ask("What is the CEO's shoe size?")
    assert result.abstained and result.reason == "model_abstained"


def test_low_retrieval_confidence_abstains_without_generating(retriever):
    answerer, generator = _answerer(retriever, "anything", min_dense=0.99)
    result = answerer.ask("Completely unrelated question about volcanoes?")
    assert result.abstained and result.reason == "low_retrieval_confidence" and generator.prompts == []


@pytest.mark.parametrize("groups", [(), ("support",)])
def test_forbidden_answer_is_never_given_or_cited(retriever, groups):
    # The generator "knows" the secret; the pipeline must not let it through.
    answerer, generator = _answerer(retriever, "The secret salary band for engineers is 91000 pounds per year [1].")
    result = answerer.ask("What is the secret salary band for engineers?", SearchFilters(groups=groups))
    prompt = generator.prompts[0][1]["content"] if generator.prompts else ""
    assert "91000" not in prompt
    assert result.abstained
    cited = {c.doc_id for c in result.citations + result.closest_sources}
    assert "hr/salaries.md" not in cited
    allowed, _ = _answerer(retriever, "The secret salary band for engineers is 91000 pounds per year [1].")
    ok = allowed.ask("What is the secret salary band for engineers?", SearchFilters(groups=("hr",)))
    assert not ok.abstained and ok.citations[0].doc_id == "hr/salaries.md"


def test_llm_rewrites_are_fused_and_timed(retriever):
    answerer, generator = _answerer(retriever, "London hotels are capped at 185 pounds per night [1].")
    answerer.rewrite_queries = 1
    result = answerer.ask("What is the hotel cap in London?")
    assert not result.abstained and result.citations[0].doc_id == "policies/travel.md"
    assert len(generator.prompts) == 2  # one rewrite prompt, one answer prompt
    assert "search queries" in generator.prompts[0][0]["content"]
