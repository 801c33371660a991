"""Hugging Face checkpoint → GGUF, written on gguf-py, with the tensors and metadata llama.cpp's converter writes.

The model is streamed: a first pass reads only the safetensors headers to plan every output tensor (name, shape,
type, byte size), the header and tensor index are written, then each tensor is read (memory-mapped), transformed and
appended on its own. Peak memory stays near the largest tensor instead of the whole model.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from tooltune.atomic import atomic_path
from tooltune.errors import TooltuneError
from tooltune.gguf.tokenizer_meta import read_tokenizer_meta

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


ARCHITECTURES: dict[str, Architecture] = {
    "LlamaForCausalLM": Architecture("LlamaForCausalLM", gguf.MODEL_ARCH.LLAMA, True, True),
    "Qwen2ForCausalLM": Architecture("Qwen2ForCausalLM", gguf.MODEL_ARCH.QWEN2, False, False),
    "Qwen3ForCausalLM": Architecture("Qwen3ForCausalLM", gguf.MODEL_ARCH.QWEN3, False, False),
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

    @property
    def shape(self) -> tuple[int, ...]:
        return self.source.shape if self.source is not None else tuple(self.computed.shape)  # type: ignore[union-attr]

    def nbytes(self) -> int:
        if self.qtype in (gguf.GGMLQuantizationType.F32,):
            return math.prod(self.shape) * 4
        byte_shape = gguf.quant_shape_to_byte_shape(self.shape, self.qtype)
        return math.prod(byte_shape)

    def data(self) -> np.ndarray:
        array = self.computed if self.computed is not None else self.source.load()  # type: ignore[union-attr]
        if array.dtype not in (np.float16, np.float32):
            array = array.astype(np.float32)
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


def _rope_parameters(config: dict[str, Any]) -> dict[str, Any]:
    params = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    params = dict(params.get("full_attention", params))
    if "rope_theta" not in params and config.get("rope_theta") is not None:
        params["rope_theta"] = config["rope_theta"]
    if "rope_type" not in params and params.get("type") is not None:
        params["rope_type"] = params["type"]
    return params


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


def plan_tensors(
    arch: Architecture, config: dict[str, Any], sources: list[SourceTensor], file_type: gguf.LlamaFileType
) -> list[PlannedTensor]:
    n_layers = config["num_hidden_layers"]
    name_map = gguf.get_tensor_name_map(arch.gguf_arch, n_layers)
    n_head = config["num_attention_heads"]
    n_head_kv = config.get("num_key_value_heads") or n_head
    planned: list[PlannedTensor] = []

    rope = _rope_parameters(config)
    if arch.gguf_arch == gguf.MODEL_ARCH.LLAMA and str(rope.get("rope_type", "")).lower() == "llama3":
        factors = _llama3_rope_factors(config, rope)
        name = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight"
        planned.append(PlannedTensor(None, name, gguf.GGMLQuantizationType.F32, computed=factors))

    for source in sources:
        if source.name.endswith(_SKIPPED_SUFFIXES):
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
        qtype = _tensor_type(gguf_name, source.shape, file_type)
        planned.append(PlannedTensor(source, gguf_name, qtype, permute_heads))
    return planned


def write_hparams(
    writer: gguf.GGUFWriter, arch: Architecture, config: dict[str, Any], file_type: gguf.LlamaFileType
) -> None:
    def first(*keys: str) -> Any:
        return next((config[k] for k in keys if config.get(k) is not None), None)

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
        raise ConvertError(f"rope type {rope_type!r} is not supported by tooltune gguf")
    if (theta := rope.get("rope_theta")) is not None:
        writer.add_rope_freq_base(theta)
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
    planned = plan_tensors(arch, config, sources, file_type)
    tokenizer = read_tokenizer_meta(model_dir, config["vocab_size"], config, chat_template, tokenizer_pre)

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
    if arch.gguf_arch == gguf.MODEL_ARCH.LLAMA and tokenizer.add_space_prefix is not None:
        writer.add_add_space_prefix(tokenizer.add_space_prefix)
    bos_off = arch.gguf_arch == gguf.MODEL_ARCH.LLAMA and config["vocab_size"] == 49152
    if bos_off and "bos" in tokenizer.add_special:
        tokenizer.add_special["bos"] = False
    tokenizer.write(writer)
    if bos_off and "bos" not in tokenizer.add_special:
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


def make_readable(path: Path) -> None:
    """Give a finished temp file the permissions a plain ``open()`` would have (mkstemp makes it owner-only), so
    that a server running as another user (Ollama) can read the model."""
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o666 & ~umask)


def convert_to_gguf(model_dir: str | Path, outfile: str | Path, outtype: str = "f16", **kwargs: Any) -> Path:
    """Convert a Llama/Qwen2/Qwen3 Hugging Face checkpoint to GGUF and return the written path."""
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


def iter_tensor_names(path: str | Path) -> Iterator[str]:
    for tensor in gguf.GGUFReader(path).tensors:
        yield tensor.name
