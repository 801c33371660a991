"""Hugging Face checkpoint → GGUF, written on gguf-py, with the tensors and metadata llama.cpp's converter writes.

The model is streamed: a first pass reads only the safetensors headers to plan every output tensor (name, shape,
type, byte size), the header and tensor index are written, then each tensor is read (memory-mapped), transformed and
appended on its own. Peak memory stays near the largest tensor instead of the whole model.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from tooltune.atomic import atomic_path
from tooltune.errors import TooltuneError
from tooltune.gguf.spm_vocab import SpmVocab, read_llama_hf_vocab, read_spm_vocab
from tooltune.gguf.tokenizer_meta import TokenizerMeta, read_tokenizer_meta

OUTTYPES: dict[str, gguf.LlamaFileType] = {
    "f32": gguf.LlamaFileType.ALL_F32,
    "f16": gguf.LlamaFileType.MOSTLY_F16,
    "bf16": gguf.LlamaFileType.MOSTLY_BF16,
    "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    "auto": gguf.LlamaFileType.GUESSED,
}

_TENSOR_TYPE_FOR_FILE_TYPE: dict[gguf.LlamaFileType, gguf.GGMLQuantizationType] = {
    gguf.LlamaFileType.ALL_F32: gguf.GGMLQuantizationType.F32,
    gguf.LlamaFileType.MOSTLY_F16: gguf.GGMLQuantizationType.F16,
    gguf.LlamaFileType.MOSTLY_BF16: gguf.GGMLQuantizationType.BF16,
    gguf.LlamaFileType.MOSTLY_Q8_0: gguf.GGMLQuantizationType.Q8_0,
}

# Tensors HF keeps that llama.cpp recomputes.
_SKIPPED_SUFFIXES = (".attention.masked_bias", ".attention.bias", ".rotary_emb.inv_freq")


class ConvertError(TooltuneError):
    pass


@dataclass(frozen=True)
class Architecture:
    hf_name: str
    gguf_arch: gguf.MODEL_ARCH
    # HF's Llama checkpoints store q/k rows permuted for its rotate-half RoPE; llama.cpp expects Meta's interleaved
    # order, so the converter undoes HF's permutation. Qwen checkpoints were never permuted.
    undo_rotary_permute: bool
    # llama.cpp writes vocab_size and rope dimension count for llama only.
    writes_vocab_and_rope_dims: bool
    # How the hyperparameters are written: "text" (llama.cpp's generic TextModel keys), "phi3" (Phi-3/4's own set:
    # partial rotary, longrope factors, sliding window) or "gemma3" (generic keys plus Gemma 3's defaults and
    # sliding-window / local RoPE keys).
    hparams_style: str = "text"
    # Gemma stores RMSNorm weights as (w - 1) and multiplies by (1 + w); llama.cpp multiplies by w, so 1 is added.
    norm_shift: float = 0.0
    # Checkpoint tensors llama.cpp never reads (Gemma 3 always reuses the embedding as output head).
    ignored_tensors: tuple[str, ...] = ()
    # Writes a SentencePiece vocab when the model folder has tokenizer.model (llama.cpp's choice per model class).
    spm_when_present: bool = False


# The classes llama.cpp derives from its LlamaModel: they share its vocab handling, llama3 RoPE factors and the
# 49152-vocab BOS rule.
_LLAMA_MODEL_ARCHS = (gguf.MODEL_ARCH.LLAMA, gguf.MODEL_ARCH.SMOLLM3)

ARCHITECTURES: dict[str, Architecture] = {
    "LlamaForCausalLM": Architecture("LlamaForCausalLM", gguf.MODEL_ARCH.LLAMA, True, True, spm_when_present=True),
    # Mistral 7B v0.3 is a Llama to llama.cpp (same tensors, sliding window unused since v0.2).
    "MistralForCausalLM": Architecture("MistralForCausalLM", gguf.MODEL_ARCH.LLAMA, True, True,
                                       spm_when_present=True),
    # SmolLM3 skips RoPE on every 4th layer; llama.cpp hard-codes that pattern, nothing is written for it.
    "SmolLM3ForCausalLM": Architecture("SmolLM3ForCausalLM", gguf.MODEL_ARCH.SMOLLM3, True, True,
                                       spm_when_present=True),
    "Qwen2ForCausalLM": Architecture("Qwen2ForCausalLM", gguf.MODEL_ARCH.QWEN2, False, False, spm_when_present=True),
    "Qwen3ForCausalLM": Architecture("Qwen3ForCausalLM", gguf.MODEL_ARCH.QWEN3, False, False, spm_when_present=True),
    # Phi-3/Phi-4-mini: fused qkv_proj and gate_up_proj are kept fused (llama.cpp splits them at load time).
    "Phi3ForCausalLM": Architecture("Phi3ForCausalLM", gguf.MODEL_ARCH.PHI3, False, False, hparams_style="phi3"),
    "Gemma3ForCausalLM": Architecture("Gemma3ForCausalLM", gguf.MODEL_ARCH.GEMMA3, False, False,
                                      hparams_style="gemma3", norm_shift=1.0, ignored_tensors=("lm_head.weight",),
                                      spm_when_present=True),
}


@dataclass
class SourceTensor:
    """A tensor inside a safetensors file, located but not read."""

    name: str
    dtype: str  # safetensors dtype string: F32, F16, BF16
    shape: tuple[int, ...]
    file: Path
    offset: int
    nbytes: int

    def load(self) -> np.ndarray:
        raw = np.memmap(self.file, mode="r", dtype=np.uint8, offset=self.offset, shape=(self.nbytes,))
        if self.dtype == "F32":
            return np.asarray(raw.view(np.float32).reshape(self.shape))
        if self.dtype == "F16":
            return np.asarray(raw.view(np.float16).reshape(self.shape))
        if self.dtype == "BF16":
            # bf16 is the top half of an f32: widening is a shift, exact.
            return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(self.shape)
        if self.dtype == "F64":
            return np.asarray(raw.view(np.float64).reshape(self.shape)).astype(np.float32)
        raise ConvertError(f"{self.file}: tensor {self.name} has dtype {self.dtype}; expected F32, F16 or BF16")


@dataclass
class PlannedTensor:
    source: SourceTensor | None  # None for tensors computed from the config (llama3 rope factors)
    gguf_name: str
    qtype: gguf.GGMLQuantizationType
    permute_heads: int | None = None
    computed: np.ndarray | None = None
    shift: float = 0.0  # added to every weight (Gemma's 1 + w norms), in the checkpoint's own precision like llama.cpp
    max_rows: int | None = None  # keep only the first rows (an embedding larger than the tokenizer's vocab)

    @property
    def shape(self) -> tuple[int, ...]:
        if self.source is None:
            return tuple(self.computed.shape)  # type: ignore[union-attr]
        if self.max_rows is not None and self.max_rows < self.source.shape[0]:
            return (self.max_rows, *self.source.shape[1:])
        return self.source.shape

    def nbytes(self) -> int:
        if self.qtype in (gguf.GGMLQuantizationType.F32,):
            return math.prod(self.shape) * 4
        byte_shape = gguf.quant_shape_to_byte_shape(self.shape, self.qtype)
        return math.prod(byte_shape)

    def data(self) -> np.ndarray:
        array = self.computed if self.computed is not None else self.source.load()  # type: ignore[union-attr]
        if array.dtype not in (np.float16, np.float32):
            array = array.astype(np.float32)
        if self.max_rows is not None:
            array = array[: self.max_rows]
        if self.shift:
            array = array + array.dtype.type(self.shift)
        if self.permute_heads is not None:
            array = permute_for_llama_cpp(array, self.permute_heads)
        return gguf.quants.quantize(array, self.qtype)


def permute_for_llama_cpp(weights: np.ndarray, n_head: int) -> np.ndarray:
    """HF rotate-half row order → llama.cpp's interleaved pairs, per head (the inverse of HF's conversion script)."""
    head_dim = weights.shape[0] // n_head
    return (
        weights.reshape(n_head, 2, head_dim // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def unpermute_from_llama_cpp(weights: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's interleaved pairs → HF rotate-half row order (used when importing a GGUF)."""
    head_dim = weights.shape[0] // n_head
    return (
        weights.reshape(n_head, head_dim // 2, 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def load_config(model_dir: Path) -> dict[str, Any]:
    config_file = model_dir / "config.json"
    if not config_file.is_file():
        raise ConvertError(f"{model_dir}: no config.json (is this a Hugging Face model directory?)")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConvertError(f"{config_file}: not valid JSON ({exc})") from None
    if "text_config" in config:
        config = {**config, **config["text_config"]}
    return config


def architecture_of(config: dict[str, Any], config_path: Path) -> Architecture:
    names = config.get("architectures") or []
    if not names:
        raise ConvertError(f"{config_path}: no 'architectures' entry")
    arch = ARCHITECTURES.get(names[0])
    if arch is None:
        raise ConvertError(
            f"{config_path}: architecture {names[0]} is not supported by tooltune gguf "
            f"(supported: {', '.join(ARCHITECTURES)})"
        )
    return arch


def index_safetensors(model_dir: Path) -> list[SourceTensor]:
    """Every tensor of the checkpoint, shard by shard in file-name order, each shard's tensors sorted by name."""
    index_file = model_dir / "model.safetensors.index.json"
    if index_file.is_file():
        weight_map = json.loads(index_file.read_text(encoding="utf-8")).get("weight_map") or {}
        shards = sorted(set(weight_map.values()))
    else:
        shards = sorted(p.name for p in model_dir.glob("model*.safetensors"))
    if not shards:
        if any(model_dir.glob("*.bin")) or any(model_dir.glob("*.pt")):
            raise ConvertError(f"{model_dir}: only pickle weights (.bin/.pt) found; tooltune reads safetensors only "
                               f"(re-save with save_pretrained(..., safe_serialization=True))")
        raise ConvertError(f"{model_dir}: no model*.safetensors files")
    tensors: list[SourceTensor] = []
    for shard in shards:
        path = model_dir / shard
        if not path.is_file():
            raise ConvertError(f"{index_file}: lists shard {shard}, which is missing")
        with open(path, "rb") as f:
            header_len = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(header_len))
        data_start = 8 + header_len
        for name in sorted(k for k in header if k != "__metadata__"):
            meta = header[name]
            begin, end = meta["data_offsets"]
            located = SourceTensor(name, meta["dtype"], tuple(meta["shape"]), path, data_start + begin, end - begin)
            tensors.append(located)
    return tensors


def _guess_file_type(tensors: list[SourceTensor]) -> gguf.LlamaFileType:
    # Like llama.cpp: the first matrix's dtype decides (config's torch_dtype is not trusted, finetunes mislabel it).
    for tensor in tensors:
        if len(tensor.shape) < 2:
            continue
        if tensor.dtype == "BF16":
            return gguf.LlamaFileType.MOSTLY_BF16
        if tensor.dtype == "F16":
            return gguf.LlamaFileType.MOSTLY_F16
    return gguf.LlamaFileType.MOSTLY_F16


def _tensor_type(gguf_name: str, shape: tuple[int, ...], file_type: gguf.LlamaFileType) -> gguf.GGMLQuantizationType:
    # 1-D tensors, norms and biases stay F32: most ggml kernels only take F32 there.
    if len(shape) <= 1 or gguf_name.endswith("_norm.weight") or not gguf_name.endswith(".weight"):
        return gguf.GGMLQuantizationType.F32
    qtype = _TENSOR_TYPE_FOR_FILE_TYPE[file_type]
    if qtype == gguf.GGMLQuantizationType.Q8_0 and shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0] != 0:
        return gguf.GGMLQuantizationType.F16  # rows that are not whole Q8_0 blocks: llama.cpp falls back to F16
    return qtype


def _first_key(config: dict[str, Any], *keys: str) -> Any:
    return next((config[k] for k in keys if config.get(k) is not None), None)


def _raw_rope_parameters(config: dict[str, Any]) -> dict[str, Any]:
    """The config's RoPE block with the top-level keys mirrored into it, as llama.cpp's TextModel reads them."""
    params = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    if "full_attention" in params or "sliding_attention" in params:
        return params
    local_theta = _first_key(config, "local_rope_theta", "rope_local_theta", "rope_theta_local", "swa_rope_theta",
                             "rope_local_base_freq")
    if local_theta is not None:
        params["sliding_attention"] = {"rope_theta": local_theta}
    mirrored = {
        "rope_theta": _first_key(config, "global_rope_theta", "rope_global_theta", "rope_theta_global", "rope_theta",
                                 "rotary_emb_base"),
        "rope_type": params.get("type"),
        "partial_rotary_factor": _first_key(config, "partial_rotary_factor", "rope_pct", "rope_percent"),
        "original_max_position_embeddings": config.get("original_max_position_embeddings"),
    }
    for key, value in mirrored.items():
        if key not in params and value is not None:
            params[key] = value
    return params


def _rope_parameters(config: dict[str, Any]) -> dict[str, Any]:
    """RoPE settings of the full-attention layers."""
    params = _raw_rope_parameters(config)
    return dict(params.get("full_attention", params))


def _sliding_rope_theta(config: dict[str, Any]) -> float | None:
    """RoPE base of the sliding-window layers (Gemma 3's local layers), when the config has one."""
    return (_raw_rope_parameters(config).get("sliding_attention") or {}).get("rope_theta")


def _llama3_rope_factors(config: dict[str, Any], rope: dict[str, Any]) -> np.ndarray:
    """Per-frequency scale factors that Llama 3.1+ applies to RoPE, stored by llama.cpp as ``rope_freqs.weight``."""
    base = rope.get("rope_theta", 10000.0)
    dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    factor = rope.get("factor", 8.0)
    low, high = rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    old_ctx = rope.get("original_max_position_embeddings", 8192)
    freqs = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < old_ctx / high:
            factors.append(1.0)
        elif wavelen > old_ctx / low:
            factors.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(factors, dtype=np.float32)


def _phi3_rope_factors(config: dict[str, Any], rope: dict[str, Any]) -> list[PlannedTensor]:
    """Phi-3/4 longrope: the per-frequency long and short context factors, as llama.cpp stores them."""
    long_factors, short_factors = rope.get("long_factor"), rope.get("short_factor")
    if not long_factors:
        return []
    if short_factors is None or len(long_factors) != len(short_factors) or len(long_factors) * 2 != _phi3_rope_dims(
            config, rope):
        raise ConvertError(f"rope long_factor/short_factor must both have {_phi3_rope_dims(config, rope) // 2} values "
                           f"(got {len(long_factors)} and {len(short_factors or [])})")
    f32 = gguf.GGMLQuantizationType.F32
    return [
        PlannedTensor(None, gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FACTORS_LONG] + ".weight", f32,
                      computed=np.asarray(long_factors, dtype=np.float32)),
        PlannedTensor(None, gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FACTORS_SHORT] + ".weight", f32,
                      computed=np.asarray(short_factors, dtype=np.float32)),
    ]


def _phi3_rope_dims(config: dict[str, Any], rope: dict[str, Any]) -> int:
    return int(rope.get("partial_rotary_factor", 1.0) * config["hidden_size"]) // config["num_attention_heads"]


def plan_tensors(
    arch: Architecture,
    config: dict[str, Any],
    sources: list[SourceTensor],
    file_type: gguf.LlamaFileType,
    embedding_rows: int | None = None,
) -> list[PlannedTensor]:
    """What llama.cpp's converter writes for ``sources``; ``embedding_rows`` trims the token embedding (Gemma 3)."""
    n_layers = config["num_hidden_layers"]
    name_map = gguf.get_tensor_name_map(arch.gguf_arch, n_layers)
    n_head = config["num_attention_heads"]
    n_head_kv = config.get("num_key_value_heads") or n_head
    planned: list[PlannedTensor] = []

    rope = _rope_parameters(config)
    if arch.gguf_arch in _LLAMA_MODEL_ARCHS and str(rope.get("rope_type", "")).lower() == "llama3":
        factors = _llama3_rope_factors(config, rope)
        name = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight"
        planned.append(PlannedTensor(None, name, gguf.GGMLQuantizationType.F32, computed=factors))
    if arch.hparams_style == "phi3":
        planned.extend(_phi3_rope_factors(config, rope))

    for source in sources:
        if source.name.endswith(_SKIPPED_SUFFIXES) or source.name in arch.ignored_tensors:
            continue
        gguf_name = name_map.get_name(source.name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ConvertError(f"{source.file}: tensor {source.name} has no llama.cpp name for {arch.hf_name}")
        permute_heads = None
        if arch.undo_rotary_permute:
            if source.name.endswith(("q_proj.weight", "q_proj.bias")):
                permute_heads = n_head
            elif source.name.endswith(("k_proj.weight", "k_proj.bias")):
                permute_heads = n_head_kv
        shift = arch.norm_shift if source.name.endswith("norm.weight") else 0.0
        max_rows = embedding_rows if source.name.endswith("embed_tokens.weight") else None
        planned_tensor = PlannedTensor(source, gguf_name, gguf.GGMLQuantizationType.F32, permute_heads,
                                       shift=shift, max_rows=max_rows)
        planned_tensor.qtype = _tensor_type(gguf_name, planned_tensor.shape, file_type)
        planned.append(planned_tensor)
    return planned


def write_hparams(
    writer: gguf.GGUFWriter, arch: Architecture, config: dict[str, Any], file_type: gguf.LlamaFileType
) -> None:
    if arch.hparams_style == "phi3":
        _write_phi3_hparams(writer, config, file_type)
        return
    _write_text_hparams(writer, arch, config, file_type)
    if arch.hparams_style == "gemma3":
        # Gemma 3 replaces some generic values on purpose (as llama.cpp's Gemma3Model does); gguf-py would warn
        # about each replaced key.
        writer_log = logging.getLogger("gguf.gguf_writer")
        level = writer_log.level
        writer_log.setLevel(logging.ERROR)
        try:
            _write_gemma3_hparams(writer, config)
        finally:
            writer_log.setLevel(level)


def _write_text_hparams(
    writer: gguf.GGUFWriter, arch: Architecture, config: dict[str, Any], file_type: gguf.LlamaFileType
) -> None:
    """The keys llama.cpp's generic TextModel writes (llama, qwen2/3, smollm3, and the base of gemma3)."""
    def first(*keys: str) -> Any:
        return _first_key(config, *keys)

    writer.add_block_count(config["num_hidden_layers"])
    if (n_ctx := first("max_position_embeddings", "n_ctx", "n_positions", "max_length")) is not None:
        writer.add_context_length(n_ctx)
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    if (n_head_kv := config.get("num_key_value_heads")) is not None:
        writer.add_head_count_kv(n_head_kv)

    rope = _rope_parameters(config)
    rope_type = rope.get("rope_type")
    factor = rope.get("factor")
    if rope_type == "linear" and factor is not None:
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(factor)
    elif rope_type == "yarn" and factor is not None:
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(factor)
        writer.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])
        if (value := rope.get("extrapolation_factor")) is not None:
            writer.add_rope_scaling_yarn_ext_factor(value)
        if (value := rope.get("attention_factor", rope.get("attn_factor"))) is not None:
            writer.add_rope_scaling_yarn_attn_factor(value)
        if (value := rope.get("beta_fast")) is not None:
            writer.add_rope_scaling_yarn_beta_fast(value)
        if (value := rope.get("beta_slow")) is not None:
            writer.add_rope_scaling_yarn_beta_slow(value)
    elif rope_type not in (None, "default", "llama3"):
        raise ConvertError(f"rope type {rope_type!r} is not supported by tooltune gguf for {arch.hf_name}")
    if (theta := rope.get("rope_theta")) is not None:
        writer.add_rope_freq_base(theta)
    if (theta_swa := _sliding_rope_theta(config)) is not None:
        writer.add_rope_freq_base_swa(theta_swa)
    if (eps := first("rms_norm_eps", "norm_eps")) is not None:
        writer.add_layer_norm_rms_eps(eps)
    if (head_dim := config.get("head_dim")) is not None:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_file_type(file_type)

    if arch.writes_vocab_and_rope_dims:
        writer.add_vocab_size(config["vocab_size"])
        head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
        writer.add_rope_dimension_count(head_dim)


def _write_gemma3_hparams(writer: gguf.GGUFWriter, config: dict[str, Any]) -> None:
    """Gemma 3 on top of the generic keys: its defaults for keys a config may omit, and the sliding window."""
    if config.get("attn_logit_softcapping") is not None:
        raise ConvertError("Gemma 3 has no attention logit softcapping; this config sets attn_logit_softcapping")
    writer.add_context_length(config.get("max_position_embeddings", 131072))
    writer.add_head_count(config.get("num_attention_heads", 8))
    writer.add_layer_norm_rms_eps(config.get("rms_norm_eps", 1e-6))
    writer.add_key_length(config.get("head_dim", 256))
    writer.add_value_length(config.get("head_dim", 256))
    writer.add_rope_freq_base(_rope_parameters(config).get("rope_theta", 1_000_000.0))
    if softcap := config.get("final_logit_softcapping"):
        writer.add_final_logit_softcapping(softcap)
    if config.get("sliding_window_pattern") != 1:
        writer.add_sliding_window(config["sliding_window"])
    writer.add_head_count_kv(config.get("num_key_value_heads", 4))


def _write_phi3_hparams(writer: gguf.GGUFWriter, config: dict[str, Any], file_type: gguf.LlamaFileType) -> None:
    """Phi-3 / Phi-4-mini: partial rotary dimensions, the original context of longrope and a sliding window (0 when
    the model has none, which is how llama.cpp tells Phi-4 from Phi-3)."""
    rope = _rope_parameters(config)
    if "original_max_position_embeddings" not in rope:
        raise ConvertError("Phi-3 config has no original_max_position_embeddings (needed for its RoPE scaling)")
    n_ctx = _first_key(config, "n_positions", "max_position_embeddings")
    writer.add_context_length(n_ctx)
    writer.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_rope_dimension_count(_phi3_rope_dims(config, rope))
    writer.add_rope_freq_base(rope["rope_theta"])
    writer.add_file_type(file_type)
    writer.add_sliding_window(config.get("sliding_window") or 0)
    if rope.get("long_factor"):
        scale = n_ctx / rope["original_max_position_embeddings"]
        rope_type = str(rope.get("rope_type", "")).lower()
        if rope_type in ("su", "longrope"):
            attn_factor = math.sqrt(1 + math.log(scale) / math.log(rope["original_max_position_embeddings"]))
        elif rope_type == "yarn":
            attn_factor = 0.1 * math.log(scale) + 1.0
        else:
            raise ConvertError(f"Phi-3 rope type {rope_type!r} is not supported (longrope, su or yarn)")
        writer.add_rope_scaling_attn_factors(attn_factor if scale > 1.0 else 1.0)


def _write_general_metadata(writer: gguf.GGUFWriter, model_dir: Path, model_name: str | None) -> None:
    total, shared, expert, n_expert = writer.get_total_parameter_count()
    metadata = gguf.Metadata.load(None, model_dir, model_name, total)
    if metadata.name is None:
        metadata.name = model_dir.name
    if metadata.size_label is None and total > 0:
        metadata.size_label = gguf.size_label(total, shared, expert, n_expert)
    writer.add_type(gguf.GGUFType.MODEL)
    metadata.set_gguf_meta_model(writer)


@dataclass(frozen=True)
class ConvertResult:
    path: Path
    outtype: str
    n_tensors: int
    n_params: int
    size_bytes: int
    seconds: float

    def summary(self) -> str:
        return (f"wrote {self.path} · {self.outtype} · {self.n_tensors} tensors · {self.n_params / 1e6:.1f}M params · "
                f"{self.size_bytes / 2**20:.1f} MiB · {self.seconds:.1f}s")


def convert(
    model_dir: str | Path,
    outfile: str | Path,
    outtype: str = "f16",
    *,
    chat_template: str | None = None,
    model_name: str | None = None,
    tokenizer_pre: str | None = None,
    show_progress: bool = True,
) -> ConvertResult:
    """Convert ``model_dir`` (Hugging Face, safetensors) into one GGUF file; see :func:`convert_to_gguf`."""
    start = time.perf_counter()
    model_dir = Path(model_dir)
    outfile = Path(outfile)
    if not model_dir.is_dir():
        raise ConvertError(f"{model_dir}: not a directory")
    if outtype not in OUTTYPES:
        raise ConvertError(f"unknown --outtype {outtype!r} (choose from {', '.join(OUTTYPES)})")
    config = load_config(model_dir)
    arch = architecture_of(config, model_dir / "config.json")
    sources = index_safetensors(model_dir)
    file_type = OUTTYPES[outtype]
    if file_type == gguf.LlamaFileType.GUESSED:
        file_type = _guess_file_type(sources)
    _check_no_rope_layers(arch, config, model_dir / "config.json")
    vocab = _read_vocab(arch, model_dir, config, chat_template, tokenizer_pre)
    planned = plan_tensors(arch, config, sources, file_type, _embedding_rows(arch, model_dir, vocab))

    writer = gguf.GGUFWriter(path=None, arch=gguf.MODEL_ARCH_NAMES[arch.gguf_arch])
    for tensor in planned:
        nbytes = tensor.nbytes()
        dtype = np.float32 if tensor.qtype == gguf.GGMLQuantizationType.F32 else (
            np.float16 if tensor.qtype == gguf.GGMLQuantizationType.F16 else np.uint8)
        if dtype is np.uint8:
            byte_shape = gguf.quant_shape_to_byte_shape(tensor.shape, tensor.qtype)
            writer.add_tensor_info(tensor.gguf_name, byte_shape, np.dtype(np.uint8), nbytes, raw_dtype=tensor.qtype)
        else:
            writer.add_tensor_info(tensor.gguf_name, tensor.shape, np.dtype(dtype), nbytes, raw_dtype=tensor.qtype)

    _write_general_metadata(writer, model_dir, model_name)
    write_hparams(writer, arch, config, file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    if arch.gguf_arch in _LLAMA_MODEL_ARCHS and vocab.add_space_prefix is not None:
        writer.add_add_space_prefix(vocab.add_space_prefix)
    elif arch.gguf_arch == gguf.MODEL_ARCH.GEMMA3 and isinstance(vocab, SpmVocab):
        writer.add_add_space_prefix(False)  # Gemma's SentencePiece model adds no dummy prefix
    bos_off = arch.gguf_arch in _LLAMA_MODEL_ARCHS and config["vocab_size"] == 49152
    if bos_off and "bos" in vocab.add_special:
        vocab.add_special["bos"] = False
    vocab.write(writer)
    if bos_off and "bos" not in vocab.add_special:
        # llama.cpp's converter turns BOS off for every 49152-token llama vocab (SmolLM/Granite); match it so our
        # file tokenizes exactly like theirs.
        writer.add_add_bos_token(False)

    n_params = writer.get_total_parameter_count()[0]
    with atomic_path(outfile) as tmp:
        writer.write_header_to_file(path=tmp)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        with _progress(show_progress) as progress:
            task = progress.add_task(f"gguf {outtype}", total=sum(t.nbytes() for t in planned))
            for tensor in planned:
                data = tensor.data()
                writer.write_tensor_data(data)
                progress.advance(task, data.nbytes)
        writer.close()
        make_readable(tmp)
    size = outfile.stat().st_size
    return ConvertResult(outfile, file_type.name.partition("_")[2], len(planned), n_params, size,
                         time.perf_counter() - start)


def _check_no_rope_layers(arch: Architecture, config: dict[str, Any], config_path: Path) -> None:
    """SmolLM3 lists which layers use RoPE; llama.cpp cannot store that list and assumes every 4th layer skips it.
    A config that says otherwise would convert into a model that computes something else, so refuse it."""
    if arch.gguf_arch != gguf.MODEL_ARCH.SMOLLM3 or config.get("no_rope_layers") is None:
        return
    expected = [int((i + 1) % 4 != 0) for i in range(config["num_hidden_layers"])]
    if list(config["no_rope_layers"]) != expected:
        raise ConvertError(f"{config_path}: no_rope_layers {config['no_rope_layers']} differs from llama.cpp's fixed "
                           f"SmolLM3 pattern (no RoPE on every 4th layer: {expected})")


def _read_vocab(
    arch: Architecture, model_dir: Path, config: dict[str, Any], chat_template: str | None, tokenizer_pre: str | None
) -> TokenizerMeta | SpmVocab:
    """The tokenizer llama.cpp's converter would write for this model class: SentencePiece when the folder has
    tokenizer.model and the class reads it, byte-level BPE (tokenizer.json) otherwise."""
    if arch.spm_when_present and (model_dir / "tokenizer.model").is_file():
        return read_spm_vocab(model_dir, config.get("vocab_size"), chat_template)
    if arch.gguf_arch in _LLAMA_MODEL_ARCHS and _is_sentencepiece_bpe(model_dir / "tokenizer.json"):
        # What save_pretrained leaves of a Mistral / Llama 2 tokenizer: tokenizer.json only.
        warnings.warn(
            f"{model_dir}: no tokenizer.model; the vocabulary is rebuilt from tokenizer.json as llama.cpp's converter "
            f"does, and llama.cpp then splits runs of spaces differently from the Hugging Face tokenizer. Copy "
            f"tokenizer.model from the base model into this folder for exact tokenization", UserWarning, stacklevel=3)
        return read_llama_hf_vocab(model_dir, chat_template)
    return read_tokenizer_meta(model_dir, config["vocab_size"], config, chat_template, tokenizer_pre)


def _is_sentencepiece_bpe(tokenizer_file: Path) -> bool:
    if not tokenizer_file.is_file():
        return False
    try:
        model = json.loads(tokenizer_file.read_text(encoding="utf-8")).get("model", {})
    except json.JSONDecodeError:
        return False  # read_tokenizer_meta names the broken file
    return model.get("type") == "BPE" and bool(model.get("byte_fallback"))


def _embedding_rows(arch: Architecture, model_dir: Path, vocab: TokenizerMeta | SpmVocab) -> int | None:
    """Gemma 3 drops embedding rows past the tokenizer's vocab (multimodal checkpoints carry extra image rows)."""
    if arch.gguf_arch != gguf.MODEL_ARCH.GEMMA3:
        return None
    if isinstance(vocab, SpmVocab):
        return len(vocab.tokens)
    tokenizer_json = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    return len(tokenizer_json["model"]["vocab"]) + len(tokenizer_json.get("added_tokens", []))


def make_readable(path: Path) -> None:
    """Give a finished temp file the permissions a plain ``open()`` would have (mkstemp makes it owner-only), so
    that a server running as another user (Ollama) can read the model."""
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o666 & ~umask)


def convert_to_gguf(model_dir: str | Path, outfile: str | Path, outtype: str = "f16", **kwargs: Any) -> Path:
    """Convert a Hugging Face checkpoint (one of ``ARCHITECTURES``) to GGUF and return the written path."""
    return convert(model_dir, outfile, outtype, **kwargs).path


class _NullProgress:
    def __enter__(self) -> _NullProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def add_task(self, *args: Any, **kwargs: Any) -> int:
        return 0

    def advance(self, *args: Any) -> None:
        return None


def _progress(show: bool) -> Progress | _NullProgress:
    if not show:
        return _NullProgress()
    return Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                    TimeRemainingColumn(), transient=True)
