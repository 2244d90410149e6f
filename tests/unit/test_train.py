"""The LoRA recipe on a tiny random llama (2 layers, hidden 64) with SmolLM2's real tokenizer and chat template.

Invariants only (no golden loss values): answer-only labels, adapter round trip and merge, exact resume,
early stopping keeps the best weights, fail-fast errors, dynamic padding.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from tasks.config import TrainingSettings
from tasks.train import (
    IGNORE,
    MIN_LR_RATIO,
    Example,
    LoraRecipe,
    TrainingError,
    answer_loss_sum,
    collate,
    end_of_turn_ids,
    lr_factor,
    micro_batches,
    optimizer_steps,
    tokenized_conversation,
    train_lora,
)



@pytest.fixture(scope="module", autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def tiny_model(tiny_llama) -> Path:
    """The shared tiny random llama with SmolLM2's tokenizer (tests/conftest.py)."""
    return tiny_llama


@pytest.fixture(scope="module")
def smol_tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def chat(question: str, answer: str, system: str | None = "Answer from the sources and cite them.") -> list[dict[str, str]]:
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


TRAIN = [chat(f"What is the hotel cap in city {i}?", f"£{100 + 5 * i} per night [{i % 3 + 1}].") for i in range(8)]
VALIDATION = [chat(f"What is the meal allowance in city {i}?", f"£{20 + i} per day [1].") for i in range(3)]


def settings(**overrides) -> TrainingSettings:
    base = dict(
        lora_r=4, lora_alpha=8, lora_dropout=0.0, warmup_steps=0, batch_size=2, grad_accum=1, max_steps=2,
        eval_every=1, checkpoint_every=1, patience=0, learning_rate=1e-2, max_length=256,
    )
    return TrainingSettings(**{**base, **overrides})


def lora_tensors(adapter_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(adapter_dir / "adapter_model.safetensors")


def labelled_spans(example: Example) -> list[list[int]]:
    spans: list[list[int]] = []
    for p, label in enumerate(example.labels):
        if label == IGNORE:
            continue
        if spans and spans[-1][-1] == p - 1:
            spans[-1].append(p)
        else:
            spans.append([p])
    return spans


# 1. label masking ------------------------------------------------------------------------------------


def test_only_assistant_content_and_end_of_turn_carry_labels(smol_tokenizer):
    tokenizer = smol_tokenizer
    eot = end_of_turn_ids(tokenizer)
    assert eot == {tokenizer.convert_tokens_to_ids("<|im_end|>")}
    conversation = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Hotel cap in London?"},
        {"role": "assistant", "content": "£185 [1]."},
        {"role": "user", "content": "And in Paris?"},
        {"role": "assistant", "content": "€170 [2]."},
        {"role": "user", "content": "Thanks."},
    ]
    example = tokenized_conversation(tokenizer, conversation, eot, max_length=256)
    text = tokenizer.apply_chat_template(conversation, tokenize=False)
    assert example.input_ids == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert example.input_ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")  # not doubled by the tokenizer

    spans = labelled_spans(example)
    assert [tokenizer.decode([example.input_ids[p] for p in span]) for span in spans] == [
        "£185 [1].<|im_end|>",
        "€170 [2].<|im_end|>",
    ]
    for span in spans:
        assert [example.labels[p] for p in span] == [example.input_ids[p] for p in span]
    unlabelled = tokenizer.decode([t for t, label in zip(example.input_ids, example.labels) if label == IGNORE])
    for turn in ("Answer briefly.", "Hotel cap in London?", "And in Paris?", "Thanks.", "<|im_start|>assistant"):
        assert turn in unlabelled
    assert example.answer_tokens == sum(len(s) for s in spans)


def test_default_system_prompt_is_masked(smol_tokenizer):
    tokenizer = smol_tokenizer
    example = tokenized_conversation(tokenizer, chat("Hi?", "Hello.", system=None), end_of_turn_ids(tokenizer), 256)
    unlabelled = tokenizer.decode([t for t, label in zip(example.input_ids, example.labels) if label == IGNORE])
    assert "SmolLM" in unlabelled  # the template inserted its default system prompt, without labels
    assert [tokenizer.decode([example.input_ids[p] for p in s]) for s in labelled_spans(example)] == ["Hello.<|im_end|>"]


def test_template_boundary_that_is_not_prefix_consistent_is_refused(smol_tokenizer):
    tokenizer = smol_tokenizer
    with pytest.raises(TrainingError, match="train row 4, message 2.*prefix"):
        tokenized_conversation(tokenizer, chat("Hi?", "  \n\n Hello."), end_of_turn_ids(tokenizer), 256, "train row 4")


# 2. end to end ---------------------------------------------------------------------------------------


def test_two_steps_adapter_round_trip_and_merge(tiny_model, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    recipe = LoraRecipe(str(tiny_model), TRAIN, VALIDATION, settings(), tmp_path / "run", tmp_path / "models")
    recipe.setup()
    recipe.train()
    result = recipe.save()

    adapter = Path(result.adapter_dir)
    assert {"adapter_config.json", "adapter_model.safetensors", "training.json"} <= {p.name for p in adapter.iterdir()}
    assert json.loads((adapter / "training.json").read_text()) == json.loads(json.dumps(result.as_dict()))
    assert result.steps == 2 and [h["step"] for h in result.history] == [1, 2]
    assert result.val_loss == min(h["val_loss"] for h in result.history)
    assert result.best_step == min(result.history, key=lambda h: h["val_loss"])["step"]
    assert result.real_tokens > result.answer_tokens > 0 and result.tokens_per_s > 0 and result.peak_rss_mb > 0

    weights = lora_tensors(adapter)
    assert any(k.endswith("lora_B.weight") for k in weights)
    assert all(v.abs().sum() > 0 for k, v in weights.items() if "lora_B" in k)  # B starts at zero: it trained

    batch = collate(recipe.validation_examples, recipe.pad_id)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    recipe.model.eval()
    with torch.no_grad():
        trained = recipe.model(**inputs).logits
        reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), adapter).eval()
        assert torch.allclose(reloaded(**inputs).logits, trained, atol=1e-6, rtol=0)
        merged = reloaded.merge_and_unload()
        assert torch.allclose(merged(**inputs).logits, trained, atol=1e-4, rtol=1e-4)
        base = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
        assert not torch.allclose(base(**inputs).logits, trained, atol=1e-4)

    again = train_lora(str(tiny_model), TRAIN, VALIDATION, settings(), tmp_path / "run", tmp_path / "models")
    assert again.reused and again.fingerprint == result.fingerprint and again.history == result.history


# 3. resume -------------------------------------------------------------------------------------------


def test_interrupted_run_resumes_and_ends_like_an_uninterrupted_one(tiny_model, tmp_path):
    # Dropout on and accumulation over two micro-batches: resume must restore the RNG and the data order too.
    s = settings(lora_dropout=0.1, batch_size=1, grad_accum=2, max_steps=6, checkpoint_every=2, eval_every=2)
    whole = train_lora(str(tiny_model), TRAIN, VALIDATION, s, tmp_path / "whole", tmp_path / "models")
    assert whole.resumed_from_step is None
    assert sorted(p.name for p in (tmp_path / "whole" / "checkpoints").iterdir()) == ["step-4", "step-6"]

    class Interrupted(Exception):
        pass

    def stop_at_3(progress):
        if progress.step == 3:
            raise Interrupted

    with pytest.raises(Interrupted):
        train_lora(str(tiny_model), TRAIN, VALIDATION, s, tmp_path / "cut", tmp_path / "models", on_step=stop_at_3)
    assert not (tmp_path / "cut" / "adapter").exists()
    seen = []
    resumed = train_lora(str(tiny_model), TRAIN, VALIDATION, s, tmp_path / "cut", tmp_path / "models", on_step=seen.append)

    assert resumed.resumed_from_step == 2 and [p.step for p in seen] == [3, 4, 5, 6]
    assert [h["step"] for h in resumed.history] == list(range(1, 7))
    for a, b in zip(whole.history, resumed.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
    assert resumed.best_step == whole.best_step and resumed.val_loss == pytest.approx(whole.val_loss, rel=1e-6)
    assert resumed.real_tokens == whole.real_tokens and resumed.answer_tokens == whole.answer_tokens
    a, b = lora_tensors(tmp_path / "whole" / "adapter"), lora_tensors(tmp_path / "cut" / "adapter")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6, rtol=1e-5) for k in a)


def test_checkpoints_of_another_run_are_not_resumed(tiny_model, tmp_path):
    def stop(progress):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_lora(str(tiny_model), TRAIN, [], settings(), tmp_path / "run", tmp_path / "models", on_step=stop)
    with pytest.raises(TrainingError, match="different run.*fresh work_dir"):
        train_lora(str(tiny_model), TRAIN, [], settings(lora_r=8), tmp_path / "run", tmp_path / "models")


# 4. fail fast ----------------------------------------------------------------------------------------


def test_unsupported_settings_and_data_fail_fast(tiny_model, tmp_path):
    def run(train=TRAIN, validation=(), **overrides):
        return train_lora(str(tiny_model), train, list(validation), settings(**overrides), tmp_path / "run", tmp_path / "m")

    with pytest.raises(TrainingError, match=r"target_modules \['c_attn'\].*q_proj"):
        run(target_modules=["q_proj", "c_attn"])
    with pytest.raises(TrainingError, match=r"target_modules \(empty\)"):
        run(target_modules=[])
    too_long = chat("Summarise this: " + "lorem ipsum dolor " * 40, "It is filler text.")
    with pytest.raises(TrainingError, match="train row 1 is [0-9]+ tokens, over training.max_length=64"):
        run(train=[TRAIN[0], too_long], max_length=64)
    with pytest.raises(TrainingError, match="validation row 0 is"):
        run(validation=[too_long], max_length=64)
    with pytest.raises(TrainingError, match="training set is empty"):
        run(train=[])
    with pytest.raises(TrainingError, match="train row 0 has no assistant message"):
        run(train=[[{"role": "user", "content": "Hi"}]])
    with pytest.raises(TrainingError, match="train row 0, message 0"):
        run(train=[[{"role": "narrator", "content": "Hi"}]])
    assert not (tmp_path / "run" / "adapter").exists()


def test_tokenizer_without_chat_template_fails_fast(tiny_model, tmp_path):
    import shutil

    plain = tmp_path / "plain"
    shutil.copytree(tiny_model, plain)
    (plain / "chat_template.jinja").unlink()
    config = json.loads((plain / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (plain / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(TrainingError, match="no chat template"):
        train_lora(str(plain), TRAIN, [], settings(), tmp_path / "run", tmp_path / "models")


# 5. early stopping -----------------------------------------------------------------------------------


def test_early_stopping_keeps_the_best_adapter(tiny_model, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    # Validation asks the training questions but expects other answers: fitting the training set soon
    # makes validation worse, and patience=1 stops at the first check without improvement.
    train = [chat(f"Is city {i} in the policy?", "Yes, it is listed [1].") for i in range(8)]
    validation = [chat(f"Is city {i} in the policy?", "No.") for i in range(3)]
    s = settings(learning_rate=3e-2, max_steps=20, patience=1, eval_every=1, checkpoint_every=5)
    result = train_lora(str(tiny_model), train, validation, s, tmp_path / "run", tmp_path / "models")

    assert result.stopped_early and result.steps < 20
    losses = [h["val_loss"] for h in result.history]
    assert losses[-1] > result.val_loss == min(losses)
    assert result.best_step == result.steps - 1  # patience 1: the check right after the best one stops
    assert result.train_loss is not None and result.history[-1]["train_loss"] < result.history[0]["train_loss"]

    # The saved adapter holds the best step's weights: its validation loss is the best one, not the last.
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), result.adapter_dir).eval()
    recipe = LoraRecipe(str(tiny_model), train, validation, s, tmp_path / "unused", tmp_path / "models")
    recipe.setup()
    total, count = 0.0, 0
    with torch.no_grad():
        for example in recipe.validation_examples:
            loss, n = answer_loss_sum(model, collate([example], recipe.pad_id))
            total, count = total + float(loss), count + n
    assert total / count == pytest.approx(result.val_loss, rel=1e-5)


# 6. batching -----------------------------------------------------------------------------------------


def test_collate_pads_to_the_longest_row_of_the_micro_batch():
    examples = [Example(list(range(1, n + 1)), [IGNORE] * (n - 1) + [n]) for n in (3, 7, 5)]
    batch = collate(examples, pad_id=0)
    assert batch["input_ids"].shape == (3, 7)  # not max_length
    assert batch["attention_mask"].sum(dim=1).tolist() == [3, 7, 5]
    assert batch["input_ids"][0].tolist() == [1, 2, 3, 0, 0, 0, 0]
    assert batch["labels"][0].tolist() == [IGNORE, IGNORE, 3] + [IGNORE] * 4


def test_length_grouped_batches_cover_every_row_once_with_little_padding():
    rng = random.Random(1)
    lengths = [rng.randint(100, 1200) for _ in range(203)]
    batches = micro_batches(lengths, batch_size=4, seed=7, epoch=0)
    assert sorted(i for b in batches for i in b) == list(range(203))
    assert batches == micro_batches(lengths, batch_size=4, seed=7, epoch=0)  # a pure function: resume relies on it
    assert batches != micro_batches(lengths, batch_size=4, seed=7, epoch=1)
    assert batches != micro_batches(lengths, batch_size=4, seed=8, epoch=0)
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    assert padded < 1.05 * sum(lengths)  # random batches of 4 pad ~30 % here
    widths = [max(lengths[i] for i in b) for b in batches]
    assert widths != sorted(widths, reverse=True)  # shuffled, not longest first


def test_step_plan_and_learning_rate_schedule():
    plan = list(optimizer_steps([10] * 10, batch_size=2, grad_accum=2, seed=0, total_steps=7))
    assert [step for step, _, _ in plan] == list(range(1, 8))
    assert [epoch for _, epoch, _ in plan] == [0, 0, 0, 1, 1, 1, 2]  # 5 micro-batches: steps of 2, 2, 1
    assert [len(batches) for _, _, batches in plan] == [2, 2, 1, 2, 2, 1, 2]
    assert [lr_factor(s, 4, 20) for s in (1, 2, 4)] == [0.25, 0.5, 1.0]
    assert lr_factor(5, 4, 20) == 1.0 and lr_factor(20, 4, 20) == pytest.approx(MIN_LR_RATIO)
    assert all(lr_factor(s, 4, 20) >= lr_factor(s + 1, 4, 20) for s in range(4, 20))


def test_right_padding_without_attention_mask_leaves_each_rows_loss_unchanged(tiny_model, smol_tokenizer):
    """The loss runs without an attention mask (fused causal attention): padding must not change any row's loss."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    eot = end_of_turn_ids(smol_tokenizer)
    short = tokenized_conversation(smol_tokenizer, chat("Cap?", "£185 [1]."), eot, 512)
    long = tokenized_conversation(smol_tokenizer, chat("What is the hotel cap in London for a night?", "It is £185 per night [2]."), eot, 512)
    pad = smol_tokenizer.pad_token_id
    with torch.no_grad():
        together, n = answer_loss_sum(model, collate([short, long], pad))
        alone = [answer_loss_sum(model, collate([e], pad)) for e in (short, long)]
    assert n == sum(k for _, k in alone)
    assert torch.allclose(together, sum(loss for loss, _ in alone), atol=1e-4)


# 7. full fine-tuning and the time budget ---------------------------------------------------------------


def model_tensors(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(model_dir / "model.safetensors")


def test_full_fine_tuning_writes_a_whole_model_that_reloads_exactly(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    before = model_tensors(tiny_model)
    recipe = LoraRecipe(str(tiny_model), TRAIN, VALIDATION, settings(method="full", full_learning_rate=1e-3), tmp_path / "run", tmp_path / "m")
    recipe.setup()
    assert sum(p.numel() for p in recipe.params) == sum(p.numel() for p in recipe.model.parameters())  # every weight trains
    recipe.train()
    result = recipe.save()

    out = Path(result.adapter_dir)
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "training.json", "tokenizer_config.json"} <= names
    assert "adapter_config.json" not in names and "weights.pt" not in names
    assert result.method == "full" and not result.stopped_for_time
    assert result.history[0]["lr"] <= 1e-3  # the full learning rate, not LoRA's 1e-2

    batch = collate(recipe.validation_examples, recipe.pad_id)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    recipe.model.eval()
    with torch.no_grad():
        trained = recipe.model(**inputs).logits
        reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
        assert torch.allclose(reloaded(**inputs).logits, trained, atol=1e-6, rtol=0)
        base = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
        assert not torch.allclose(base(**inputs).logits, trained, atol=1e-4)
    assert AutoTokenizer.from_pretrained(out).chat_template  # the directory serves on its own
    after = model_tensors(tiny_model)
    assert all(torch.equal(before[k], after[k]) for k in before)  # the base model on disk is untouched


@pytest.mark.parametrize("method", ["lora", "full"])
def test_time_budget_stops_checkpoints_and_a_rerun_finishes_like_an_uninterrupted_run(tiny_model, tmp_path, method):
    s = settings(method=method, full_learning_rate=1e-3, max_steps=4, checkpoint_every=10, eval_every=2)
    whole = train_lora(str(tiny_model), TRAIN, VALIDATION, s, tmp_path / "whole", tmp_path / "m")

    budget = s.model_copy(update={"max_minutes": 1e-9})  # spent after the first step
    cut = train_lora(str(tiny_model), TRAIN, VALIDATION, budget, tmp_path / "cut", tmp_path / "m")
    assert cut.stopped_for_time and cut.steps == 1 < cut.total_steps == 4
    assert (tmp_path / "cut" / "checkpoints" / "step-1").is_dir()  # checkpointed although checkpoint_every is 10
    assert cut.fingerprint == whole.fingerprint  # the budget is not part of what the weights are

    resumed = train_lora(str(tiny_model), TRAIN, VALIDATION, s, tmp_path / "cut", tmp_path / "m")
    assert not resumed.reused and resumed.resumed_from_step == 1 and resumed.steps == 4 and not resumed.stopped_for_time
    for a, b in zip(whole.history, resumed.history, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
    read = lora_tensors if method == "lora" else model_tensors
    a, b = read(tmp_path / "whole" / "adapter"), read(tmp_path / "cut" / "adapter")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6, rtol=1e-5) for k in a)
    assert train_lora(str(tiny_model), TRAIN, VALIDATION, s, tmp_path / "cut", tmp_path / "m").reused


def test_recipe_identity_holds_only_what_shapes_the_weights():
    from tasks.train import recipe_identity

    lora = recipe_identity(TrainingSettings())
    assert not {"method", "full_learning_rate", "max_minutes"} & lora.keys() and lora["lora_r"] == 8
    assert recipe_identity(TrainingSettings(max_minutes=5, full_learning_rate=1e-6)) == lora
    full = recipe_identity(TrainingSettings(method="full"))
    assert full["method"] == "full" and "full_learning_rate" in full and not {"lora_r", "learning_rate"} & full.keys()
    assert recipe_identity(TrainingSettings(method="full", lora_r=64)) == full
    assert recipe_identity(TrainingSettings(method="full", full_learning_rate=1e-4)) != full
