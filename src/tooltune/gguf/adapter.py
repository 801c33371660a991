"""PEFT LoRA adapter → llama.cpp LoRA GGUF (what Ollama's ``ADAPTER`` and llama.cpp's ``--lora`` load).

The file has the layout llama.cpp's ``convert_lora_to_gguf.py`` writes: ``general.type = adapter``,
``adapter.type = lora``, ``adapter.lora.alpha``, and for every adapted matrix ``<base tensor>.lora_a`` (PEFT's A,
rank × in) and ``<base tensor>.lora_b`` (PEFT's B, out × rank), named like the base GGUF's tensors. llama.cpp adds
``scale · alpha / rank · B·A`` to each matmul, which is PEFT's LoRA exactly when nothing else was trained.

What llama.cpp cannot apply is refused before anything is written, with the reason and the fallback (merge, then
convert): DoRA, trained embeddings or LM head (``modules_to_save`` or LoRA on them), trained biases, and LoRA on
modules other than the attention and MLP projections. An adapter that silently does nothing is worse than an error.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from tooltune.atomic import atomic_path
from tooltune.errors import TooltuneError
from tooltune.gguf.convert import (
    ARCHITECTURES,
    OUTTYPES,
    Architecture,
    SourceTensor,
    architecture_of,
    index_safetensors,
    load_config,
    permute_for_llama_cpp,
)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
MERGE_FALLBACK = ("fallback: merge the adapter into its base (`tooltune export --model_name_or_path BASE "
                  "--adapter_name_or_path ADAPTER --export_dir MERGED`), then `tooltune gguf MERGED`")

# The matmuls llama.cpp's graph for llama/qwen2/qwen3 routes through its LoRA hook (build_lora_mm).
APPLICABLE_TENSORS = (
    gguf.MODEL_TENSOR.ATTN_Q, gguf.MODEL_TENSOR.ATTN_K, gguf.MODEL_TENSOR.ATTN_V, gguf.MODEL_TENSOR.ATTN_OUT,
    gguf.MODEL_TENSOR.FFN_GATE, gguf.MODEL_TENSOR.FFN_UP, gguf.MODEL_TENSOR.FFN_DOWN,
)
_EMBEDDING_MODULES = ("embed_tokens", "lm_head", "wte", "embed_out", "output")


class AdapterGGUFError(TooltuneError, ValueError):
    """An adapter that cannot become a llama.cpp LoRA; the message names the file and the reason."""


@dataclass(frozen=True)
class BaseModel:
    """What the adapter must fit: architecture, head counts (for llama's q/k row order) and every matrix's shape."""

    path: Path
    arch: Architecture
    n_layers: int
    n_head: int
    n_head_kv: int
    shapes: dict[str, tuple[int, ...]]  # GGUF tensor name → (out, in), torch order
    name: str


@dataclass(frozen=True)
class LoraPair:
    module: str  # PEFT module path, e.g. model.layers.0.self_attn.q_proj
    gguf_name: str  # base tensor, e.g. blk.0.attn_q.weight
    a: SourceTensor
    b: SourceTensor
    b_scale: float  # folds rsLoRA / per-module alpha into B so one alpha serves the whole file


@dataclass(frozen=True)
class AdapterGGUFResult:
    path: Path
    outtype: str
    n_pairs: int
    rank: int
    alpha: float
    size_bytes: int
    seconds: float

    def summary(self) -> str:
        return (f"wrote {self.path} · LoRA adapter · {self.outtype} · {self.n_pairs} matrices · rank {self.rank} · "
                f"alpha {self.alpha:g} · {self.size_bytes / 2**20:.2f} MiB · {self.seconds:.1f}s")


# ------------------------------------------------------------------------------------------------------------- base


def _architecture_for_gguf(name: str, path: Path) -> Architecture:
    for arch in ARCHITECTURES.values():
        if gguf.MODEL_ARCH_NAMES[arch.gguf_arch] == name:
            return arch
    supported = sorted({gguf.MODEL_ARCH_NAMES[a.gguf_arch] for a in ARCHITECTURES.values()})
    raise AdapterGGUFError(f"{path}: architecture {name!r} is not supported (supported: {', '.join(supported)})")


_SCALAR_FORMATS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class GGUFHeader:
    """A GGUF's metadata (arrays left out) and tensor shapes in ggml order, read without touching tensor data.
    gguf-py's reader decodes every vocabulary entry first, seconds per file; this stays in milliseconds."""

    path: Path
    metadata: dict[str, Any]
    tensor_shapes: dict[str, tuple[int, ...]]

    def get(self, key: str) -> Any:
        value = self.metadata.get(key)
        if value is None:
            raise AdapterGGUFError(f"{self.path}: metadata key {key} missing; is this a complete llama.cpp GGUF?")
        return value


def read_gguf_header(path: Path) -> GGUFHeader:
    import mmap
    import struct

    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            if data[:4] != b"GGUF":
                raise AdapterGGUFError(f"{path}: not a GGUF file (no GGUF magic)")
            at = 8
            n_tensors, n_kv = struct.unpack_from("<QQ", data, at)
            at += 16

            def string() -> str:
                nonlocal at
                (length,) = struct.unpack_from("<Q", data, at)
                at += 8 + length
                return bytes(data[at - length:at]).decode("utf-8", errors="replace")

            def value(kind: int) -> Any:
                nonlocal at
                if kind == _STRING:
                    return string()
                if kind == _ARRAY:
                    item_kind, count = struct.unpack_from("<IQ", data, at)
                    at += 12
                    if item_kind in _SCALAR_FORMATS:
                        at += count * struct.calcsize("<" + _SCALAR_FORMATS[item_kind])
                    else:
                        for _ in range(count):
                            value(item_kind)
                    return None
                fmt = "<" + _SCALAR_FORMATS[kind]
                (result,) = struct.unpack_from(fmt, data, at)
                at += struct.calcsize(fmt)
                return result

            metadata: dict[str, Any] = {}
            for _ in range(n_kv):
                key = string()
                (kind,) = struct.unpack_from("<I", data, at)
                at += 4
                metadata[key] = value(kind)
            shapes: dict[str, tuple[int, ...]] = {}
            for _ in range(n_tensors):
                name = string()
                (n_dims,) = struct.unpack_from("<I", data, at)
                shapes[name] = struct.unpack_from(f"<{n_dims}Q", data, at + 4)
                at += 4 + 8 * n_dims + 4 + 8
    except (OSError, ValueError, KeyError, struct.error) as exc:
        raise AdapterGGUFError(f"{path}: not a readable GGUF file ({exc})") from None
    return GGUFHeader(path, metadata, shapes)


def read_base(base: str | Path) -> BaseModel:
    """The base the adapter will be applied to: a Hugging Face model directory or the base GGUF itself."""
    path = Path(base)
    if path.is_file():
        header = read_gguf_header(path)
        if header.metadata.get("general.type") == "adapter":
            raise AdapterGGUFError(f"{path}: is itself a LoRA adapter GGUF; --base must be the model it adapts")
        arch_name = header.get("general.architecture")
        arch = _architecture_for_gguf(arch_name, path)
        n_head = int(header.get(f"{arch_name}.attention.head_count"))
        shapes = {name: tuple(reversed(shape)) for name, shape in header.tensor_shapes.items()}
        return BaseModel(path, arch, int(header.get(f"{arch_name}.block_count")), n_head,
                         int(header.metadata.get(f"{arch_name}.attention.head_count_kv") or n_head), shapes,
                         str(header.metadata.get("general.name") or path.stem))
    if not path.is_dir():
        raise AdapterGGUFError(f"{path}: base not found (give the Hugging Face model directory or the base .gguf)")
    config = load_config(path)
    arch = architecture_of(config, path / "config.json")
    n_layers = config["num_hidden_layers"]
    name_map = gguf.get_tensor_name_map(arch.gguf_arch, n_layers)
    shapes: dict[str, tuple[int, ...]] = {}
    try:
        sources = index_safetensors(path)
    except TooltuneError:
        sources = []  # config alone is enough to name tensors; shapes are then checked by llama.cpp at load time
    for source in sources:
        name = name_map.get_name(source.name, try_suffixes=(".weight", ".bias"))
        if name is not None:
            shapes[name] = source.shape
    n_head = config["num_attention_heads"]
    return BaseModel(path, arch, n_layers, n_head, config.get("num_key_value_heads") or n_head, shapes, path.name)


# ---------------------------------------------------------------------------------------------------------- adapter


def read_adapter_config(adapter_dir: Path) -> dict[str, Any]:
    if not adapter_dir.is_dir():
        raise AdapterGGUFError(f"{adapter_dir}: adapter directory not found")
    config_file = adapter_dir / ADAPTER_CONFIG
    if not config_file.is_file():
        raise AdapterGGUFError(f"{config_file}: missing; the adapter must be a PEFT LoRA output directory")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise AdapterGGUFError(f"{config_file}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(config, dict):
        raise AdapterGGUFError(f"{config_file}: expected a JSON object")
    return config


def refusal_reasons(config: dict[str, Any]) -> list[str]:
    """Everything in an adapter config that llama.cpp's LoRA cannot reproduce (empty: convertible)."""
    reasons = []
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type != "LORA":
        reasons.append(f"peft_type is {peft_type or 'missing'}; llama.cpp applies only LoRA adapters")
    if config.get("use_dora"):
        reasons.append("DoRA (use_dora: true): llama.cpp has no weight-magnitude vector, the adapter would act as "
                       "plain LoRA and give different answers")
    if config.get("modules_to_save"):
        reasons.append(f"modules_to_save {config['modules_to_save']}: fully trained copies of modules (usually "
                       "embeddings / LM head) cannot be stored in a llama.cpp LoRA")
    targets = config.get("target_modules")
    names = [targets] if isinstance(targets, str) else list(targets or [])
    trained_embeddings = [n for n in names if n.rsplit(".", 1)[-1] in _EMBEDDING_MODULES]
    if trained_embeddings:
        reasons.append(f"LoRA on {', '.join(trained_embeddings)}: llama.cpp does not reliably apply LoRA to the "
                       "token embeddings or LM head (llama.cpp #11554; tied embeddings have no output tensor)")
    if str(config.get("bias", "none")) != "none" or config.get("lora_bias"):
        reasons.append(f"trained biases (bias: {config.get('bias')}, lora_bias: {config.get('lora_bias')}): "
                       "llama.cpp's LoRA carries no bias deltas")
    if config.get("fan_in_fan_out"):
        reasons.append("fan_in_fan_out: true (Conv1D-style weights) is not a llama/qwen layout")
    if config.get("alora_invocation_tokens") or config.get("invocation_string"):
        reasons.append("activated LoRA (aLoRA) is not supported by tooltune")
    if config.get("layer_replication"):
        reasons.append("layer_replication changes the layer count; llama.cpp cannot follow it")
    return reasons


def check_recorded_base(config: dict[str, Any], base: BaseModel, adapter_dir: Path) -> None:
    """When the adapter names a base that exists here, its architecture and depth must be the given base's (module
    names and shapes alone cannot tell a Llama from a Qwen2 of the same size)."""
    recorded = config.get("base_model_name_or_path")
    if not isinstance(recorded, str) or not recorded or not (Path(recorded) / "config.json").is_file():
        return
    try:
        recorded_config = load_config(Path(recorded))
        recorded_arch = architecture_of(recorded_config, Path(recorded) / "config.json")
    except TooltuneError:
        return  # a recorded base we cannot read proves nothing either way
    theirs = (gguf.MODEL_ARCH_NAMES[recorded_arch.gguf_arch], recorded_config.get("num_hidden_layers"))
    ours = (gguf.MODEL_ARCH_NAMES[base.arch.gguf_arch], base.n_layers)
    if theirs != ours:
        raise AdapterGGUFError(f"{adapter_dir / ADAPTER_CONFIG}: adapter was trained on {recorded} ({theirs[0]}, "
                               f"{theirs[1]} layers) but the base given, {base.path}, is {ours[0]} with {ours[1]} "
                               "layers; pass the base model the adapter was trained on")


def _scaling(config: dict[str, Any], module: str, rank: int) -> float:
    """PEFT's scale for one module: alpha/r (alpha/sqrt(r) under rsLoRA), with per-module rank/alpha patterns."""
    alpha = float(config.get("lora_alpha", 8))
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if module == pattern or module.endswith("." + pattern):
            alpha = float(value)
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


def _read_header(path: Path) -> list[SourceTensor]:
    try:
        with open(path, "rb") as f:
            header_len = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(header_len))
    except (OSError, ValueError) as exc:
        raise AdapterGGUFError(f"{path}: not a readable safetensors file ({exc})") from None
    start = 8 + header_len
    return [SourceTensor(name, meta["dtype"], tuple(meta["shape"]), path, start + meta["data_offsets"][0],
                         meta["data_offsets"][1] - meta["data_offsets"][0])
            for name, meta in sorted(header.items()) if name != "__metadata__"]


def plan_pairs(adapter_dir: Path, config: dict[str, Any], base: BaseModel) -> list[LoraPair]:
    weights = adapter_dir / ADAPTER_WEIGHTS
    if not weights.is_file():
        reason = "only a pickle adapter_model.bin" if (adapter_dir / "adapter_model.bin").is_file() else "no weights"
        raise AdapterGGUFError(f"{weights}: missing ({reason}); tooltune reads adapters saved as safetensors")
    name_map = gguf.get_tensor_name_map(base.arch.gguf_arch, base.n_layers)
    applicable = {gguf.TENSOR_NAMES[t].rsplit(".", 1)[-1] for t in APPLICABLE_TENSORS}
    halves: dict[str, dict[str, SourceTensor]] = {}
    for tensor in _read_header(weights):
        module, marker, _ = tensor.name.partition(".lora_A.")
        side = "a"
        if not marker:
            module, marker, _ = tensor.name.partition(".lora_B.")
            side = "b"
        if not marker:
            if ".lora_embedding_" in tensor.name or any(f".{m}." in tensor.name for m in _EMBEDDING_MODULES):
                why = "trains the token embeddings or LM head"
            elif "lora_magnitude_vector" in tensor.name:
                why = "is a DoRA magnitude vector"
            else:
                why = "is not a LoRA A/B matrix (a fully trained module or bias)"
            raise AdapterGGUFError(f"{weights}: tensor {tensor.name} {why}; llama.cpp cannot apply it — "
                                   f"{MERGE_FALLBACK}")
        if len(tensor.shape) != 2:
            raise AdapterGGUFError(f"{weights}: tensor {tensor.name} has shape {list(tensor.shape)}; expected a matrix")
        halves.setdefault(module.removeprefix("base_model.model."), {})[side] = tensor
    if not halves:
        raise AdapterGGUFError(f"{weights}: no LoRA tensors (lora_A / lora_B) found")

    pairs = []
    for module, sides in halves.items():
        if set(sides) != {"a", "b"}:
            missing = "lora_B" if "a" in sides else "lora_A"
            raise AdapterGGUFError(f"{weights}: module {module} has no {missing} tensor; the adapter is incomplete")
        a, b = sides["a"], sides["b"]
        if a.shape[0] != b.shape[1]:
            raise AdapterGGUFError(f"{weights}: module {module}: lora_A is {list(a.shape)} and lora_B is "
                                   f"{list(b.shape)}; their ranks differ")
        gguf_name = name_map.get_name(module + ".weight", try_suffixes=(".weight",))
        if gguf_name is None:
            raise AdapterGGUFError(f"{weights}: module {module} has no llama.cpp tensor in a {base.arch.hf_name} "
                                   f"model; the adapter was trained on another architecture")
        kind = gguf_name.split(".")[-2]
        if kind not in applicable:
            raise AdapterGGUFError(f"{weights}: module {module} ({gguf_name}) is not a matmul llama.cpp applies "
                                   f"LoRA to (it does: q/k/v/o and gate/up/down projections) — {MERGE_FALLBACK}")
        expected = base.shapes.get(gguf_name)
        if base.shapes and expected is None:
            raise AdapterGGUFError(f"{weights}: module {module} targets {gguf_name}, which {base.path} does not "
                                   f"have; the adapter was trained on another base model")
        if expected is not None and (b.shape[0], a.shape[1]) != tuple(expected):
            raise AdapterGGUFError(f"{weights}: module {module} is {b.shape[0]}×{a.shape[1]} (out×in) but "
                                   f"{base.path}'s {gguf_name} is {expected[0]}×{expected[1]}; the adapter was "
                                   f"trained on another base model")
        rank = a.shape[0]
        reference = float(config.get("lora_alpha", 8)) / rank
        pairs.append(LoraPair(module, gguf_name, a, b, _scaling(config, module, rank) / reference))
    return pairs


# ----------------------------------------------------------------------------------------------------------- writer


def _qtype(file_type: gguf.LlamaFileType) -> gguf.GGMLQuantizationType:
    return {
        gguf.LlamaFileType.ALL_F32: gguf.GGMLQuantizationType.F32,
        gguf.LlamaFileType.MOSTLY_F16: gguf.GGMLQuantizationType.F16,
        gguf.LlamaFileType.MOSTLY_BF16: gguf.GGMLQuantizationType.BF16,
        gguf.LlamaFileType.MOSTLY_Q8_0: gguf.GGMLQuantizationType.Q8_0,
    }[file_type]


def _as_float(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # Like llama.cpp's converter: A and B of different dtypes both go to f32; anything not f16/f32 goes to f32.
    if a.dtype != b.dtype:
        a, b = a.astype(np.float32), b.astype(np.float32)
    if a.dtype not in (np.float16, np.float32):
        a, b = a.astype(np.float32), b.astype(np.float32)
    return a, b


def _encode(data: np.ndarray, qtype: gguf.GGMLQuantizationType) -> tuple[np.ndarray, gguf.GGMLQuantizationType]:
    try:
        return gguf.quants.quantize(data, qtype), qtype
    except gguf.QuantError:  # rows that are not whole Q8_0 blocks (lora_b's rank): F16, as llama.cpp does
        return gguf.quants.quantize(data, gguf.GGMLQuantizationType.F16), gguf.GGMLQuantizationType.F16


def convert_adapter(
    adapter_dir: str | Path,
    base: str | Path,
    outfile: str | Path,
    outtype: str = "f16",
) -> AdapterGGUFResult:
    """Write ``adapter_dir`` (PEFT LoRA, safetensors) as a llama.cpp LoRA GGUF for ``base`` (HF dir or GGUF)."""
    start = time.perf_counter()
    adapter_dir, outfile = Path(adapter_dir), Path(outfile)
    if outtype not in OUTTYPES or outtype == "auto":
        raise AdapterGGUFError(f"unknown --outtype {outtype!r} for an adapter (choose from f16, bf16, f32, q8_0)")
    config = read_adapter_config(adapter_dir)
    reasons = refusal_reasons(config)
    if reasons:
        raise AdapterGGUFError(f"{adapter_dir / ADAPTER_CONFIG}: llama.cpp cannot apply this adapter: "
                               f"{'; '.join(reasons)} — {MERGE_FALLBACK}")
    base_model = read_base(base)
    check_recorded_base(config, base_model, adapter_dir)
    pairs = plan_pairs(adapter_dir, config, base_model)
    file_type = OUTTYPES[outtype]
    qtype = _qtype(file_type)

    writer = gguf.GGUFWriter(path=None, arch=gguf.MODEL_ARCH_NAMES[base_model.arch.gguf_arch])
    for pair in pairs:
        a, b = _as_float(pair.a.load(), pair.b.load())
        if pair.b_scale != 1.0:
            b = (b.astype(np.float32) * np.float32(pair.b_scale)).astype(b.dtype)
        if base_model.arch.undo_rotary_permute and pair.gguf_name.endswith(("attn_q.weight", "attn_k.weight")):
            # B holds the output rows, which llama.cpp keeps in its interleaved RoPE order; A (inputs) is untouched.
            b = permute_for_llama_cpp(b, base_model.n_head if "attn_q" in pair.gguf_name else base_model.n_head_kv)
        for suffix, data in ((".lora_a", a), (".lora_b", b)):
            encoded, used = _encode(np.ascontiguousarray(data), qtype)
            writer.add_tensor(pair.gguf_name + suffix, encoded, raw_dtype=used)

    alpha = float(config.get("lora_alpha", 8))
    total, shared, expert, n_expert = writer.get_total_parameter_count()
    metadata = gguf.Metadata.load(None, adapter_dir, None, total)
    if metadata.name is None:
        metadata.name = base_model.name
    if metadata.size_label is None and total > 0:
        metadata.size_label = gguf.size_label(total, shared, expert, n_expert)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    metadata.set_gguf_meta_model(writer)
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    outfile.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(outfile) as tmp:
        writer.write_header_to_file(path=tmp)
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    ranks = {p.a.shape[0] for p in pairs}
    return AdapterGGUFResult(outfile, file_type.name.partition("_")[2], len(pairs), max(ranks), alpha,
                             outfile.stat().st_size, time.perf_counter() - start)


# ------------------------------------------------------------------------------------------------ checking a pair


@dataclass(frozen=True)
class AdapterInfo:
    path: Path
    arch: str
    alpha: float
    n_pairs: int
    rank: int


def check_adapter_gguf(adapter_gguf: str | Path, base_gguf: str | Path) -> AdapterInfo:
    """Check that ``adapter_gguf`` is a llama.cpp LoRA that fits ``base_gguf`` (the checks llama.cpp makes at load
    time, done before a Modelfile or server is built on the pair)."""
    adapter_path, base_path = Path(adapter_gguf), Path(base_gguf)
    for path, what in ((adapter_path, "adapter"), (base_path, "base model")):
        if not path.is_file():
            raise AdapterGGUFError(f"{path}: {what} GGUF not found")
    adapter = read_gguf_header(adapter_path)
    kind = adapter.metadata.get("general.type")
    if kind != "adapter":
        raise AdapterGGUFError(f"{adapter_path}: general.type is {kind or 'missing'}, not 'adapter'; ADAPTER needs "
                               "a LoRA GGUF (`tooltune lora-gguf ADAPTER_DIR --base BASE`)")
    if adapter.get(gguf.Keys.Adapter.TYPE) != "lora":
        raise AdapterGGUFError(f"{adapter_path}: adapter.type is not 'lora'")
    alpha = float(adapter.get(gguf.Keys.Adapter.LORA_ALPHA))
    base = read_base(base_path)
    arch = adapter.get("general.architecture")
    base_arch = gguf.MODEL_ARCH_NAMES[base.arch.gguf_arch]
    if arch != base_arch:
        raise AdapterGGUFError(f"{adapter_path}: adapter is for architecture {arch}, {base_path} is {base_arch}")
    shapes = adapter.tensor_shapes  # ggml order: (ne0, ne1)
    ranks = set()
    for name, (a_in, rank) in ((n.removesuffix(".lora_a"), s) for n, s in shapes.items() if n.endswith(".lora_a")):
        b_shape = shapes.get(name + ".lora_b")
        if b_shape is None:
            raise AdapterGGUFError(f"{adapter_path}: {name}.lora_a has no {name}.lora_b")
        expected = base.shapes.get(name)
        if expected is None:
            raise AdapterGGUFError(f"{adapter_path}: tensor {name} does not exist in {base_path}; the adapter was "
                                   "made for another base model")
        out_features, in_features = expected
        if (a_in, b_shape[1], b_shape[0]) != (in_features, out_features, rank):
            raise AdapterGGUFError(f"{adapter_path}: {name} is {b_shape[1]}×{a_in} (out×in) but {base_path} has "
                                   f"{out_features}×{in_features}; the adapter was made for another base model")
        ranks.add(rank)
    unpaired = [n for n in shapes if n.endswith(".lora_b") and n.removesuffix("b") + "a" not in shapes]
    if unpaired or not ranks:
        raise AdapterGGUFError(f"{adapter_path}: {'unpaired ' + unpaired[0] if unpaired else 'no LoRA tensors'}")
    return AdapterInfo(adapter_path, arch, alpha, sum(n.endswith(".lora_a") for n in shapes), max(ranks))
