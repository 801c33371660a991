"""`tooltune import-gguf`: the embedded SmolLM2-135M (Q4_1 GGUF) → fp32 Hugging Face checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from tokenizers import Tokenizer

from tooltune.gguf.import_gguf import (
    ImportGGUFError,
    ImportResult,
    ensure_default_model,
    import_gguf,
    import_gguf_model,
)
from tooltune.gguf.tokenizer_meta import CHECK_TEXT

SAMPLES = [
    CHECK_TEXT,
    "<|im_start|>user\nCall get_weather for 北京, 12345 °C?<|im_end|>\n",
    "  leading spaces\n\n\ttab",
]


@pytest.fixture(scope="module")
def import_result(default_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> ImportResult:
    return import_gguf_model(default_gguf, tmp_path_factory.mktemp("import") / "smollm2-hf")


@pytest.fixture(scope="module")
def imported(import_result: ImportResult) -> Path:
    return import_result.path


def test_checkpoint_layout(imported: Path) -> None:
    config = json.loads((imported / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"]) == (576, 30, 9)
    assert config["tie_word_embeddings"] is True
    weights = load_file(imported / "model.safetensors")
    assert all(w.dtype == np.float32 for w in weights.values())
    assert "lm_head.weight" not in weights
    assert weights["model.embed_tokens.weight"].shape == (49152, 576)
    assert "SmolLM" in (imported / "chat_template.jinja").read_text()


def test_tokenizer_matches_smollm2_original(imported: Path, smollm2_tokenizer_dir: Path) -> None:
    ours = Tokenizer.from_file(str(imported / "tokenizer.json"))
    original = Tokenizer.from_file(str(smollm2_tokenizer_dir / "tokenizer.json"))
    for text in SAMPLES:
        assert ours.encode(text).ids == original.encode(text).ids
        assert ours.decode(ours.encode(text).ids, skip_special_tokens=False) == text


def test_weights_round_trip_through_our_converter(imported: Path, default_gguf: Path, tmp_path: Path) -> None:
    """import (dequantize + unpermute) then convert (permute) gives back exactly the dequantized original tensors."""
    from tooltune.gguf.convert import convert_to_gguf

    back = gguf.GGUFReader(convert_to_gguf(imported, tmp_path / "back-f32.gguf", "f32"))
    original = {t.name: t for t in gguf.GGUFReader(default_gguf).tensors}
    assert back.fields["tokenizer.ggml.pre"].contents() == "smollm"
    for tensor in back.tensors:
        source = original[tensor.name]
        expected = gguf.quants.dequantize(np.asarray(source.data), source.tensor_type)
        np.testing.assert_array_equal(np.asarray(tensor.data).reshape(expected.shape), expected, err_msg=tensor.name)


@pytest.mark.slow
def test_transformers_loads_and_answers(imported: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(imported)
    model = AutoModelForCausalLM.from_pretrained(imported, dtype=torch.float32, use_safetensors=True)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0][prompt["input_ids"].shape[1]:])


def test_ensure_default_model_imports_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, imported: Path) -> None:
    import shutil

    monkeypatch.setenv("TOOLTUNE_CACHE", str(tmp_path))
    target = tmp_path / "SmolLM2-135M-Instruct-hf"
    shutil.copytree(imported, target)  # as if a first call had imported it
    stamp = (target / "model.safetensors").stat().st_mtime_ns
    assert ensure_default_model() == target
    assert (target / "model.safetensors").stat().st_mtime_ns == stamp  # cached, not re-imported


def test_import_errors(tmp_path: Path, default_gguf: Path) -> None:
    not_gguf = tmp_path / "x.gguf"
    not_gguf.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(ImportGGUFError, match="not a GGUF file"):
        import_gguf(not_gguf, tmp_path / "out")
    with pytest.raises(ImportGGUFError, match="no such file"):
        import_gguf(tmp_path / "missing.gguf", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_import_summary_reports_source_types(import_result: ImportResult) -> None:
    result = import_result
    assert result.source_types == {"F32": 61, "Q4_1": 210, "Q8_0": 1}
    assert "134.5M params" in result.summary()
