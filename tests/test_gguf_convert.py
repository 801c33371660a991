"""`tooltune gguf`: tiny random llama / qwen2 / qwen3 checkpoints with real tokenizers → GGUF → llama.cpp.

The converter must write what llama.cpp's converter writes; the strongest check here is behavioural: llama.cpp loads
our file and its logits match transformers' on the same token ids.
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from tooltune.chat_template import render
from tooltune.gguf.convert import ConvertError, convert, convert_to_gguf, permute_for_llama_cpp
from tooltune.gguf.tokenizer_meta import TokenizerMetaError

PROMPT_MESSAGES = [
    {"role": "system", "content": "You call tools."},
    {"role": "user", "content": "What's the weather in Paris? 北京 also, 12345 ok"},
]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                          "required": ["city"]}}}]


def _field(reader: gguf.GGUFReader, key: str):
    return reader.fields[key].contents()


def _tensors(reader: gguf.GGUFReader) -> dict[str, gguf.ReaderTensor]:
    return {t.name: t for t in reader.tensors}


@pytest.fixture(scope="module")
def llama_f16(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return convert_to_gguf(tiny_llama_dir, tmp_path_factory.mktemp("gguf") / "llama-f16.gguf", "f16")


@pytest.fixture(scope="module")
def qwen2_f16(tiny_qwen2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return convert_to_gguf(tiny_qwen2_dir, tmp_path_factory.mktemp("gguf") / "qwen2-f16.gguf", "f16")


def test_llama_metadata_round_trip(tiny_llama_dir: Path, llama_f16: Path) -> None:
    reader = gguf.GGUFReader(llama_f16)
    config = json.loads((tiny_llama_dir / "config.json").read_text())
    assert _field(reader, "general.architecture") == "llama"
    assert _field(reader, "llama.block_count") == 2
    assert _field(reader, "llama.embedding_length") == 64
    assert _field(reader, "llama.attention.head_count") == 4
    assert _field(reader, "llama.attention.head_count_kv") == 2
    assert _field(reader, "llama.rope.freq_base") == pytest.approx(100000.0)
    assert _field(reader, "llama.rope.dimension_count") == 16
    assert _field(reader, "llama.vocab_size") == config["vocab_size"]
    assert _field(reader, "general.file_type") == gguf.LlamaFileType.MOSTLY_F16
    # Tokenizer: SmolLM2's BPE with the pre-tokenizer name llama.cpp uses for it.
    assert _field(reader, "tokenizer.ggml.model") == "gpt2"
    assert _field(reader, "tokenizer.ggml.pre") == "smollm"
    tokenizer_json = json.loads((tiny_llama_dir / "tokenizer.json").read_text())
    tokens = _field(reader, "tokenizer.ggml.tokens")
    assert len(tokens) == config["vocab_size"]
    assert tokens[1] == "<|im_start|>"
    assert _field(reader, "tokenizer.ggml.token_type")[1] == gguf.TokenType.CONTROL
    assert len(_field(reader, "tokenizer.ggml.merges")) == len(tokenizer_json["model"]["merges"])
    assert _field(reader, "tokenizer.ggml.bos_token_id") == 1
    assert _field(reader, "tokenizer.ggml.eos_token_id") == 2
    assert _field(reader, "tokenizer.ggml.add_bos_token") is False
    assert _field(reader, "tokenizer.chat_template") == (tiny_llama_dir / "chat_template.jinja").read_text()

    tensors = _tensors(reader)
    assert "output.weight" not in tensors  # tied embeddings: llama.cpp reuses token_embd
    assert tensors["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    assert tensors["token_embd.weight"].tensor_type == gguf.GGMLQuantizationType.F16
    # q/k rows are moved from HF's rotate-half order into llama.cpp's interleaved order; v is untouched.
    weights = load_file(tiny_llama_dir / "model.safetensors")
    q = weights["model.layers.0.self_attn.q_proj.weight"]
    k = weights["model.layers.0.self_attn.k_proj.weight"]
    v = weights["model.layers.0.self_attn.v_proj.weight"]
    np.testing.assert_array_equal(np.asarray(tensors["blk.0.attn_q.weight"].data),
                                  permute_for_llama_cpp(q, 4).astype(np.float16))
    np.testing.assert_array_equal(np.asarray(tensors["blk.0.attn_k.weight"].data),
                                  permute_for_llama_cpp(k, 2).astype(np.float16))
    np.testing.assert_array_equal(np.asarray(tensors["blk.0.attn_v.weight"].data), v.astype(np.float16))


def test_qwen2_metadata_and_biases(tiny_qwen2_dir: Path, qwen2_f16: Path) -> None:
    reader = gguf.GGUFReader(qwen2_f16)
    assert _field(reader, "general.architecture") == "qwen2"
    assert _field(reader, "tokenizer.ggml.pre") == "qwen2"
    assert _field(reader, "tokenizer.ggml.eos_token_id") == 151645
    tensors = _tensors(reader)
    assert "output.weight" in tensors  # untied head
    weights = load_file(tiny_qwen2_dir / "model.safetensors")
    bias = tensors["blk.1.attn_q.bias"]
    assert bias.tensor_type == gguf.GGMLQuantizationType.F32
    # Qwen was never permuted: the bias goes in as is, and it is not all zeros (the fixture perturbs it).
    np.testing.assert_array_equal(np.asarray(bias.data), weights["model.layers.1.self_attn.q_proj.bias"])
    assert np.abs(np.asarray(bias.data)).max() > 0


def test_chat_template_in_gguf_renders_like_hf_tokenizer(qwen2_f16: Path, tiny_qwen2_dir: Path) -> None:
    from transformers import AutoTokenizer

    template = _field(gguf.GGUFReader(qwen2_f16), "tokenizer.chat_template")
    tokenizer = AutoTokenizer.from_pretrained(tiny_qwen2_dir)
    expected = tokenizer.apply_chat_template(PROMPT_MESSAGES, tools=TOOLS, add_generation_prompt=True, tokenize=False)
    assert render(template, PROMPT_MESSAGES, tools=TOOLS, add_generation_prompt=True) == expected
    assert "<tool_call>" in expected


def test_chat_template_override(tiny_llama_dir: Path, tmp_path: Path, qwen_tokenizer_dir: Path) -> None:
    # The training template (e.g. qwen's) replaces SmolLM2's tool-less one, so serving renders what was trained.
    qwen_template = (qwen_tokenizer_dir / "chat_template.jinja").read_text()
    out = convert_to_gguf(tiny_llama_dir, tmp_path / "m.gguf", "f32", chat_template=qwen_template)
    reader = gguf.GGUFReader(out)
    assert _field(reader, "tokenizer.chat_template") == qwen_template
    assert _field(reader, "general.file_type") == gguf.LlamaFileType.ALL_F32
    assert _tensors(reader)["token_embd.weight"].tensor_type == gguf.GGMLQuantizationType.F32


def test_auto_outtype_follows_checkpoint_dtype(tmp_path: Path) -> None:
    from tiny_models import make_tiny_llama

    model_dir = make_tiny_llama(tmp_path / "bf16", torch_dtype="bfloat16")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16)
    model.save_pretrained(model_dir, safe_serialization=True)
    result = convert(model_dir, tmp_path / "auto.gguf", "auto", show_progress=False)
    assert result.outtype == "BF16"
    reader = gguf.GGUFReader(result.path)
    assert _tensors(reader)["blk.0.ffn_up.weight"].tensor_type == gguf.GGMLQuantizationType.BF16


def test_output_is_written_atomically_and_readable(tiny_llama_dir: Path, tmp_path: Path) -> None:
    out = convert_to_gguf(tiny_llama_dir, tmp_path / "x.gguf", "q8_0")
    assert [p.name for p in tmp_path.iterdir()] == ["x.gguf"]  # no temp file left behind
    assert out.stat().st_mode & 0o044  # group/other can read it (Ollama runs as its own user)


def test_unsupported_architecture_is_named(tmp_path: Path, tiny_llama_dir: Path) -> None:
    model_dir = tmp_path / "gpt2"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(ConvertError, match="GPT2LMHeadModel is not supported"):
        convert_to_gguf(model_dir, tmp_path / "o.gguf")
    with pytest.raises(ConvertError, match="unknown --outtype 'q4'"):
        convert_to_gguf(tiny_llama_dir, tmp_path / "o.gguf", "q4")


def test_missing_weights_and_unknown_tokenizer(tmp_path: Path, tiny_llama_dir: Path) -> None:
    import shutil

    model_dir = tmp_path / "no_weights"
    model_dir.mkdir()
    shutil.copy(tiny_llama_dir / "config.json", model_dir / "config.json")
    (model_dir / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ConvertError, match="safetensors only"):
        convert_to_gguf(model_dir, tmp_path / "o.gguf")

    # A tokenizer whose pre-tokenizer llama.cpp does not know (punctuation split char by char): refuse, don't guess.
    odd = tmp_path / "odd"
    shutil.copytree(tiny_llama_dir, odd)
    tokenizer = json.loads((odd / "tokenizer.json").read_text())
    tokenizer["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Punctuation", "behavior": "Isolated"}, tokenizer["pre_tokenizer"]]}
    (odd / "tokenizer.json").write_text(json.dumps(tokenizer))
    with pytest.raises(TokenizerMetaError, match="unrecognised BPE pre-tokenizer"):
        convert_to_gguf(odd, tmp_path / "o.gguf")
    # ...unless the user names it.
    out = convert_to_gguf(odd, tmp_path / "o.gguf", tokenizer_pre="smollm")
    assert _field(gguf.GGUFReader(out), "tokenizer.ggml.pre") == "smollm"
