"""`tooltune gguf` on the families users bring (Qwen3, Llama 3.2, Mistral v0.3, SmolLM3, Phi-4-mini, Gemma 3).

Each family: a tiny random model with the family's real tokenizer, converted by our converter and by llama.cpp's own
``convert_hf_to_gguf.py`` (taken from the llama-cpp-python sdist of the installed version, so both sides are the
same llama.cpp); the two files must hold the same metadata and the same tensor bytes. Then llama.cpp loads ours,
tokenizes like the Hugging Face tokenizer and generates. Without a chat template the family is read from the file.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import gguf
import pytest
from llama_cpp_source import llama_cpp_script
from tiny_models import (
    make_tiny_gemma3,
    make_tiny_llama32,
    make_tiny_mistral,
    make_tiny_mistral_saved,
    make_tiny_phi4_mini,
    make_tiny_qwen3_family,
    make_tiny_smollm3,
)

from tooltune.gguf.convert import ConvertError, convert_to_gguf
from tooltune.gguf.family_detect import FamilyDetectError, detect_family, gguf_family
from tooltune.gguf.header import read_gguf_header

llama_cpp = pytest.importorskip("llama_cpp")

BUILDERS: dict[str, Callable[[Path], Path]] = {
    "qwen3": make_tiny_qwen3_family,
    "llama3.2": make_tiny_llama32,
    "mistral": make_tiny_mistral,
    "mistral-saved": make_tiny_mistral_saved,  # no tokenizer.model: llama.cpp's LlamaHfVocab path
    "smollm3": make_tiny_smollm3,
    "phi4-mini": make_tiny_phi4_mini,
    "gemma3": make_tiny_gemma3,
}
FAMILIES = list(BUILDERS)
EXPECTED_ARCH = {"qwen3": "qwen3", "llama3.2": "llama", "mistral": "llama", "mistral-saved": "llama",
                 "smollm3": "smollm3", "phi4-mini": "phi3", "gemma3": "gemma3"}
SAMPLE_TEXT = "Hello world!  It's 2026: 我想在apple工作 3333 'RE\t tabs\n\n\n ok"


# ---- llama.cpp's converter, from the sdist of the llama-cpp-python that is installed ----


@pytest.fixture(scope="session")
def llama_cpp_converter() -> Path:
    """convert_hf_to_gguf.py of the installed llama.cpp (TOOLTUNE_LLAMA_CPP_CONVERTER names one offline)."""
    if given := os.environ.get("TOOLTUNE_LLAMA_CPP_CONVERTER"):
        return Path(given)
    script = llama_cpp_script("convert_hf_to_gguf.py")
    if script is None:
        pytest.skip("the llama-cpp-python sdist (llama.cpp's converter) could not be fetched with pip")
    return script


# The converter's main() reads sys.argv; one process converts every model, so torch and transformers load once.
_DRIVER = """
import os, runpy, sys
script, jobs = sys.argv[1], sys.argv[2:]
sys.path.insert(0, os.path.dirname(script))  # its `conversion` package, as when run as a script
module = runpy.run_path(script, run_name="llama_cpp_converter")
for model_dir, outfile in zip(jobs[::2], jobs[1::2]):
    sys.argv = [script, model_dir, "--outfile", outfile, "--outtype", "f16"]
    module["main"]()
"""


@pytest.fixture(scope="session")
def family_dirs(tiny_family_model: Callable[[str], Path]) -> dict[str, Path]:
    return {family: tiny_family_model(family) for family in BUILDERS}


@pytest.fixture(scope="session")
def reference_ggufs(family_dirs: dict[str, Path], llama_cpp_converter: Path,
                    tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("llama_cpp_gguf")
    outputs = {family: out / f"{family}.gguf" for family in family_dirs}
    jobs = [str(arg) for family in family_dirs for arg in (family_dirs[family], outputs[family])]
    done = subprocess.run([sys.executable, "-c", _DRIVER, str(llama_cpp_converter), *jobs], capture_output=True,
                          text=True, timeout=900, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-4000:]
    return outputs


@pytest.fixture(scope="session")
def our_ggufs(family_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("tooltune_gguf")
    converted = {}
    for family, model_dir in family_dirs.items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            converted[family] = convert_to_gguf(model_dir, out / f"{family}.gguf", "f16", show_progress=False)
        messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
        # Only the folder without tokenizer.model is warned about, and the warning says what to do.
        if family == "mistral-saved":
            assert any("no tokenizer.model" in m and "Copy tokenizer.model" in m for m in messages), messages
        else:
            assert not any("tokenizer.model" in m for m in messages), messages
    return converted


# The first case runs llama.cpp's converter for every family (one process, ~1 min on 2 cores).
@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_same_file_as_llama_cpp_converter(family: str, our_ggufs: dict[str, Path],
                                          reference_ggufs: dict[str, Path]) -> None:
    ours, theirs = read_gguf_header(our_ggufs[family]), read_gguf_header(reference_ggufs[family])
    assert ours.metadata["general.architecture"] == EXPECTED_ARCH[family]
    assert sorted(ours.metadata) == sorted(theirs.metadata)
    different = [key for key in theirs.metadata if ours.metadata[key] != theirs.metadata[key]]
    assert different == [], {key: (str(ours.metadata[key])[:200], str(theirs.metadata[key])[:200])
                             for key in different}

    assert sorted(ours.tensors) == sorted(theirs.tensors)
    for name, their_tensor in theirs.tensors.items():
        our_tensor = ours.tensors[name]
        assert (our_tensor.qtype, our_tensor.shape) == (their_tensor.qtype, their_tensor.shape), name
        assert ours.tensor_bytes(name) == theirs.tensor_bytes(name), name


def _reference_ids(model_dir: Path, text: str) -> list[int]:
    """The ids the model's own tokenizer gives: HF's from tokenizer.json, or SentencePiece's for a folder with only
    tokenizer.model (the Gemma test tokenizer)."""
    if (model_dir / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(model_dir)(text, add_special_tokens=False)["input_ids"]
    import sentencepiece

    return sentencepiece.SentencePieceProcessor(model_file=str(model_dir / "tokenizer.model")).encode(text)


_SPACE_RUNS_DIFFER = pytest.mark.xfail(
    strict=True, reason="llama.cpp's converter builds the same vocab from tokenizer.json alone (LlamaHfVocab); its "
                        "scores make llama.cpp merge '▁▁' where HF splits '▁', '▁It' (the converter warns)")


@pytest.mark.parametrize("family", [pytest.param(f, marks=_SPACE_RUNS_DIFFER) if f == "mistral-saved" else f
                                    for f in FAMILIES])
def test_llama_cpp_tokenizes_like_hf_and_generates(family: str, our_ggufs: dict[str, Path],
                                                   family_dirs: dict[str, Path]) -> None:
    expected = _reference_ids(family_dirs[family], SAMPLE_TEXT)
    llm = llama_cpp.Llama(model_path=str(our_ggufs[family]), n_ctx=128, n_threads=2, verbose=False, seed=0)
    try:
        assert llm.tokenize(SAMPLE_TEXT.encode(), add_bos=False, special=True) == expected
        out = llm.create_completion("The weather in Paris", max_tokens=6, temperature=0.0)
        assert out["usage"]["completion_tokens"] > 0
    finally:
        llm.close()


# ---- no chat template in the GGUF: the family comes from the architecture and the vocabulary ----


def _without_chat_template(source: Path, target: Path) -> Path:
    """A copy of ``source`` minus its ``tokenizer.chat_template`` pair: header, other pairs, tensor index and data
    copied byte for byte (data re-aligned), as a GGUF from a converter that writes no template would be."""
    header = read_gguf_header(source)
    raw = source.read_bytes()
    kv = b"".join(raw[start:end] for key, (start, end) in header.kv_spans.items() if key != "tokenizer.chat_template")
    n_kv = len(header.kv_spans) - ("tokenizer.chat_template" in header.kv_spans)
    head = raw[:16] + struct.pack("<Q", n_kv) + kv + raw[slice(*header.tensor_info_span)]
    alignment = int(header.metadata.get("general.alignment", gguf.GGUF_DEFAULT_ALIGNMENT))
    padding = b"\0" * (-len(head) % alignment)
    target.write_bytes(head + padding + raw[header.data_offset:])
    return target


@pytest.mark.parametrize("family", FAMILIES)
def test_family_detected_without_chat_template(family: str, our_ggufs: dict[str, Path], tmp_path: Path) -> None:
    stripped = _without_chat_template(our_ggufs[family], tmp_path / "no-template.gguf")
    assert "tokenizer.chat_template" not in read_gguf_header(stripped).metadata
    assert gguf_family(stripped) == family.removesuffix("-saved")
    # The copy is a valid model: llama.cpp loads it (vocab only is enough to prove the layout).
    llama_cpp.Llama(model_path=str(stripped), vocab_only=True, verbose=False).close()


def test_relatives_sharing_an_architecture_are_told_apart() -> None:
    llama3 = ["<|begin_of_text|>", "<|start_header_id|>", "<|eot_id|>"]
    # Hermes 3 is a Llama 3 whose reserved tokens became ChatML and tool tags; SmolLM2 is ChatML without Llama 3's.
    assert detect_family("llama", [*llama3, "<|im_start|>", "<tool_call>"]) == "hermes3"
    assert detect_family("llama", llama3) == "llama3.2"
    assert detect_family("llama", ["<|im_start|>", "<|im_end|>", "hello"]) == "smollm2"
    assert detect_family("qwen2", ["<|im_start|>", "<tool_call>"]) == "qwen2.5"
    assert detect_family("qwen3", ["<|im_start|>", "<tool_call>", "<think>"]) == "qwen3"


def test_undetectable_family_names_the_flags(tmp_path: Path) -> None:
    with pytest.raises(FamilyDetectError, match=r"architecture 'gpt2' is not one tooltune knows.*--template NAME.*"
                                                r"--chat-template FILE\.jinja"):
        detect_family("gpt2", ["<|endoftext|>"])
    with pytest.raises(FamilyDetectError, match="llama vocabulary has none of the special tokens.*--chat-template"):
        detect_family("llama", ["<s>", "</s>", "hello"])
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_bytes(b"not a gguf")
    with pytest.raises(FamilyDetectError, match=r"model\.gguf: not a GGUF file \(bad magic\)"):
        gguf_family(not_gguf)


def test_smollm3_rope_pattern_llama_cpp_cannot_store_is_refused(family_dirs: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    model_dir = shutil.copytree(family_dirs["smollm3"], tmp_path / "smollm3")
    config = json.loads((model_dir / "config.json").read_text())
    config["no_rope_layers"] = [1, 0, 1, 0]
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConvertError, match=r"no_rope_layers \[1, 0, 1, 0\] differs from llama.cpp's fixed"):
        convert_to_gguf(model_dir, tmp_path / "o.gguf")
