"""The training drill's subprocess: build the tiny random llama, or run the LoRA recipe on it.

    .venv/bin/python bench/drills_train.py build MODEL_DIR
    .venv/bin/python bench/drills_train.py train MODEL_DIR WORK_DIR [--steps 20]

`build` replicates tests/conftest.py's `tiny_llama` (2 layers, hidden 64, the packaged SmolLM2 tokenizer
and chat template read from its GGUF). `train` calls `tasks/train.py:train_lora` with a checkpoint every
step and prints `step N` after each optimizer step (flushed: the drill kills on these lines), then
`result {json}` at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def chat(question: str, answer: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "Answer from the sources and cite them."},
        {"role": "user", "content": question},
        {"role": "assistant", "content": answer},
    ]


TRAIN = [chat(f"What is the hotel cap in city {i}? Give the figure and the source.", f"£{100 + 5 * i} per night [{i % 3 + 1}].") for i in range(16)]
VALIDATION = [chat(f"What is the meal allowance in city {i}?", f"£{20 + i} per day [1].") for i in range(4)]


def settings(steps: int):
    from tasks.config import TrainingSettings

    # Dropout on and two micro-batches per step: an exact resume must restore the RNG and the data order too.
    return TrainingSettings(
        lora_r=4, lora_alpha=8, lora_dropout=0.1, warmup_steps=2, batch_size=2, grad_accum=2, max_steps=steps,
        eval_every=5, checkpoint_every=1, patience=0, learning_rate=1e-2, max_length=256,
    )


def build(model_dir: Path) -> None:
    from tests.fixtures.tiny_llama import build_tiny_llama

    build_tiny_llama(model_dir)
    print("built", model_dir, flush=True)


def train(model_dir: Path, work_dir: Path, steps: int) -> None:
    from tasks.train import train_lora

    def on_step(progress) -> None:
        print(f"step {progress.step}", flush=True)

    result = train_lora(str(model_dir), TRAIN, VALIDATION, settings(steps), work_dir, work_dir.parent / "models", threads=1, on_step=on_step)
    keep = ("steps", "resumed_from_step", "reused", "best_step", "val_loss", "train_loss", "fingerprint", "wall_s")
    print("result " + json.dumps({k: result.as_dict()[k] for k in keep}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["build", "train"])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("work_dir", type=Path, nargs="?")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    if args.command == "build":
        build(args.model_dir)
    else:
        train(args.model_dir, args.work_dir, args.steps)


if __name__ == "__main__":
    main()
