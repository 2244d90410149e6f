"""The LoRA recipe on the real packaged SmolLM2 for a few steps (the slower tier: `-m models`)."""

from __future__ import annotations

import math

import pytest

pytestmark = pytest.mark.models

SYSTEM = "You answer questions for the organisation using only the numbered sources. Cite them like [1]."
FACTS = [
    ("What is the nightly hotel cap for London?", "London hotels are capped at £185 per night.", "£185 per night [1]."),
    ("How fast are priority one tickets answered?", "Priority one tickets are answered within 30 minutes.", "Within 30 minutes [1]."),
    ("What is the UK daily meal allowance?", "The UK meal allowance is £50 per day.", "£50 per day [1]."),
    ("How many API requests per minute are allowed?", "Each account may send 1,000 requests per minute.", "1,000 per minute [1]."),
]


def conversation(question: str, source: str, answer: str) -> list[dict[str, str]]:
    user = f'<sources>\n<source id="1" title="policy">\n{source}\n</source>\n</sources>\n\nQuestion: {question}'
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}, {"role": "assistant", "content": answer}]


def test_a_few_steps_on_smollm2_give_a_loadable_adapter(home, tmp_path):
    import torch

    from tasks.config import PACKAGED_GENERATOR, TrainingSettings, load_settings
    from tasks.generate import Generator
    from tasks.models import load_generator
    from tasks.train import train_lora

    models_dir = load_settings().models_dir
    rows = [conversation(*f) for f in FACTS]
    settings = TrainingSettings(batch_size=2, grad_accum=1, warmup_steps=0, learning_rate=1e-3, eval_every=2, checkpoint_every=2)
    result = train_lora(PACKAGED_GENERATOR, rows[:3], rows[3:], settings, tmp_path / "run", models_dir, threads=1, max_steps=2)

    assert result.steps == 2 and all(math.isfinite(h["train_loss"]) for h in result.history)
    assert result.val_loss is not None and math.isfinite(result.val_loss) and result.best_step == 2
    assert 0 < result.answer_tokens < result.real_tokens and result.tokens_per_s > 0

    tuned, tokenizer = load_generator(PACKAGED_GENERATOR, models_dir, threads=1, adapter=result.adapter_dir)
    base, _ = load_generator(PACKAGED_GENERATOR, models_dir, threads=1)
    prompt = tokenizer.apply_chat_template(rows[3][:2], add_generation_prompt=True, tokenize=False)
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        assert not torch.allclose(tuned(**inputs).logits, base(**inputs).logits, atol=1e-5)  # the adapter is applied

    generated = Generator(tuned, tokenizer, max_new_tokens=8).generate([rows[3][:2]])
    assert generated[0].new_tokens > 0 and generated[0].text
