"""Merge a LoRA adapter into its base model and write a model every later stage can load on its own.

The output is what the seed's ``llamafactory-cli export`` writes (sharded safetensors with an index, tokenizer, config),
plus two things merged models often lack: a chat template equal to the one used in training, and a
``generation_config.json`` whose EOS ids include the template's end-of-turn token, so ``generate`` stops after one
assistant turn instead of running on. Before the output is renamed into place it is reloaded from disk and its logits
are compared with base + adapter on a few rendered conversations.
"""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from tooltune.atomic import atomic_dir
from tooltune.chat_template import ChatTemplateError, load_from_tokenizer_dir, render
from tooltune.errors import TooltuneError

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}
# Relative logit tolerance of the verification, by the dtype the merged weights are stored in: merging W + B·A and
# rounding to 16 bits moves logits by about the dtype's precision times their magnitude, never by more in practice.
RELATIVE_TOLERANCE: dict[torch.dtype, float] = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 4e-2}
ABSOLUTE_TOLERANCE = 1e-4
VERIFY_MAX_TOKENS = 384  # enough to reach the assistant turns after a Qwen tools block
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


class MergeError(TooltuneError, ValueError):
    """A merge that cannot be done; the message names the file and the reason."""


@dataclass
class ExportResult:
    export_dir: Path
    shards: list[Path]
    total_bytes: int
    dtype: str
    max_abs_diff: float | None
    tolerance: float | None
    verified_samples: int
    end_of_turn_token: str | None
    eos_token_ids: list[int]
    chat_template_source: str
    legacy_format: bool
    seconds: float
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        diff = "not verified" if self.max_abs_diff is None else (
            f"max abs logit diff {self.max_abs_diff:.2e} "
            f"(tolerance {self.tolerance:.1e}, {self.verified_samples} samples)"
        )
        return (
            f"merged → {self.export_dir}: {len(self.shards)} shard(s), {self.total_bytes / 1e6:.1f} MB {self.dtype}, "
            f"eos {self.eos_token_ids} ({self.end_of_turn_token}), {diff}, {self.seconds:.1f} s"
        )


# ----------------------------------------------------------------------------------------------------------- checks


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise MergeError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    if not isinstance(data, dict):
        raise MergeError(f"{path}: expected a JSON object")
    return data


def check_base(base: Path) -> dict[str, Any]:
    """Refuse bases that cannot take a merge: GGUF files, quantized checkpoints, pickle-only weights."""
    if base.is_file() and base.suffix == ".gguf":
        raise MergeError(
            f"{base}: is a GGUF file; merge needs the Hugging Face (safetensors) model the adapter was trained on"
        )
    if not base.is_dir():
        raise MergeError(f"{base}: base model directory not found")
    config_file = base / "config.json"
    if not config_file.is_file():
        raise MergeError(f"{config_file}: missing; the base must be a Hugging Face model directory")
    config = _read_json(config_file)
    quant = config.get("quantization_config")
    if quant:
        method = quant.get("quant_method", "unknown") if isinstance(quant, dict) else "unknown"
        raise MergeError(
            f"{config_file}: base model is quantized ({method}); merging a LoRA into quantized weights loses the "
            "adapter's precision — merge into the original unquantized model, then quantize the merged one"
        )
    if not any(base.glob("*.safetensors")):
        found = ", ".join(sorted(p.name for p in base.glob("*.bin"))) or "no weight files"
        raise MergeError(f"{base}: no .safetensors weights ({found}); tooltune loads weights only from safetensors")
    return config


def check_adapter(adapter: Path) -> dict[str, Any]:
    if not adapter.is_dir():
        raise MergeError(f"{adapter}: adapter directory not found")
    config_file = adapter / "adapter_config.json"
    if not config_file.is_file():
        raise MergeError(f"{config_file}: missing; --adapter_name_or_path must be a PEFT LoRA output directory")
    config = _read_json(config_file)
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type != "LORA":
        raise MergeError(f"{config_file}: peft_type is {peft_type or 'missing'}; only LoRA adapters can be merged")
    if not (adapter / "adapter_model.safetensors").is_file():
        reason = "only a pickle adapter_model.bin" if (adapter / "adapter_model.bin").is_file() else "no weights"
        raise MergeError(
            f"{adapter}: adapter_model.safetensors not found ({reason}); re-save the adapter as safetensors"
        )
    return config


COMPARED_CONFIG_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "vocab_size", "intermediate_size")


def check_recorded_base(adapter_config: dict[str, Any], base_config: dict[str, Any], adapter: Path) -> None:
    """When the adapter names a base that exists here, it must be the same architecture as the one given."""
    recorded = adapter_config.get("base_model_name_or_path")
    if not isinstance(recorded, str) or not recorded:
        return
    recorded_config_file = Path(recorded) / "config.json"
    if not recorded_config_file.is_file():
        return
    recorded_config = _read_json(recorded_config_file)
    for key in COMPARED_CONFIG_KEYS:
        if key in recorded_config and key in base_config and recorded_config[key] != base_config[key]:
            raise MergeError(
                f"{adapter}: adapter was trained on {recorded} ({key}={recorded_config[key]!r}) but the base given "
                f"has {key}={base_config[key]!r}; pass the base model the adapter was trained on"
            )


def skeleton(base: Path, trust_remote_code: bool) -> torch.nn.Module:
    """The base's module tree on the meta device: shapes without reading (or allocating) any weights."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(base, trust_remote_code=trust_remote_code)
    with init_empty_weights():
        return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)


def check_adapter_shapes(model: torch.nn.Module, adapter: Path) -> int:
    """Every LoRA tensor must target a module of the base with matching in/out features. Returns the number checked."""
    from safetensors import safe_open

    weights_file = adapter / "adapter_model.safetensors"
    modules = dict(model.named_modules())
    checked = 0
    with safe_open(str(weights_file), framework="pt") as handle:
        for key in handle.keys():  # noqa: SIM118 - safe_open handles are not iterable
            for marker, axis in ((".lora_A.", 1), (".lora_B.", 0)):
                if marker not in key:
                    continue
                module_name = key.split(marker)[0].removeprefix("base_model.model.")
                module = modules.get(module_name)
                if module is None:
                    raise MergeError(
                        f"{weights_file}: tensor {key} targets module {module_name!r}, which the base model does not "
                        "have; the adapter was trained on a different architecture"
                    )
                weight = getattr(module, "weight", None)
                if weight is None or weight.dim() != 2:
                    continue
                expected = weight.shape[0] if axis == 0 else weight.shape[1]
                got = handle.get_slice(key).get_shape()[axis]
                if got != expected:
                    side = "out" if axis == 0 else "in"
                    raise MergeError(
                        f"{weights_file}: tensor {key} has {side}_features {got} but the base's {module_name} has "
                        f"{expected}; the adapter was trained on a different base model"
                    )
                checked += 1
    if checked == 0:
        raise MergeError(f"{weights_file}: no LoRA tensors (lora_A/lora_B) found")
    return checked


# ------------------------------------------------------------------------------------------------- chat template/EOS


def named_template_jinja(name: str, tokenizer: Any = None) -> str | None:
    """The Jinja chat template that renders training template ``name`` (e.g. ``qwen``); None if unknown.

    ``tokenizer`` is needed only by templates that derive from it (``jinja``: the tokenizer's own template).
    """
    from tooltune.templates import TemplateError, get_template

    try:
        return get_template(name, tokenizer).jinja_chat_template
    except (TemplateError, AttributeError, TypeError):
        return None


def choose_chat_template(
    base: Path, adapter: Path, template: str | None, tokenizer: Any, warnings: list[str]
) -> tuple[str | None, str]:
    """Adapter tokenizer's template (what training saved) > the named template's Jinja > the base's own."""
    adapter_template = load_from_tokenizer_dir(adapter)
    named = named_template_jinja(template, tokenizer) if template else None
    if template and named is None:
        warnings.append(f"template {template!r} has no known Jinja equivalent; keeping the tokenizer's chat template")
    if adapter_template:
        if named and named.strip() != adapter_template.strip():
            warnings.append(
                f"{adapter}: the adapter's chat template differs from template {template!r}; using the adapter's "
                "(it is what training rendered)"
            )
        return adapter_template, "adapter"
    if named:
        return named, f"template:{template}"
    base_template = load_from_tokenizer_dir(base)
    return base_template, ("base" if base_template else "none")


def end_of_turn_token(chat_template: str, tokenizer: Any) -> str | None:
    """The special token the template writes right after an assistant message (``<|im_end|>`` for Qwen/ChatML);
    the families layer's one detector (``tooltune.families.stops``)."""
    from tooltune.families.stops import end_of_turn_token as detect_end_of_turn

    specials = set(tokenizer.all_special_tokens) | set(tokenizer.get_added_vocab())
    return detect_end_of_turn(chat_template, specials, bos_token=tokenizer.bos_token or "",
                              eos_token=tokenizer.eos_token or "")


def eos_ids_for(end_of_turn: str | None, tokenizer: Any, existing: Any) -> list[int]:
    """End-of-turn first, then whatever EOS ids the base already had, without duplicates."""
    ids: list[int] = []
    if end_of_turn is not None:
        token_id = tokenizer.convert_tokens_to_ids(end_of_turn)
        if isinstance(token_id, int) and token_id != getattr(tokenizer, "unk_token_id", None):
            ids.append(token_id)
    for value in existing if isinstance(existing, (list, tuple)) else [existing]:
        if isinstance(value, int) and value not in ids:
            ids.append(value)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


# ------------------------------------------------------------------------------------------------------ verification

VERIFY_TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "description": "City name"}},
                "required": ["city"],
            },
        },
    }
]
VERIFY_CONVERSATIONS: list[list[dict[str, Any]]] = [
    [
        {"role": "user", "content": "What's the weather in Paris?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
        },
        {"role": "tool", "content": '{"temperature_c": 18, "sky": "cloudy"}'},
        {"role": "assistant", "content": "It is 18 °C and cloudy in Paris."},
    ],
    [
        {"role": "user", "content": "新增时讯消息：明天中午12点公司放假！"},
        {"role": "assistant", "content": "好的，已为您新增。"},
    ],
    [
        {"role": "system", "content": "You are a concise assistant."},
        {"role": "user", "content": "Write one sentence about rivers."},
        {"role": "assistant", "content": "Rivers carry water from the hills to the sea."},
    ],
]


def verification_inputs(chat_template: str | None, tokenizer: Any, count: int) -> list[torch.Tensor]:
    """Token ids of a few conversations rendered the way the model will be prompted (tools included)."""
    inputs: list[torch.Tensor] = []
    for messages in VERIFY_CONVERSATIONS[:count]:
        text = None
        if chat_template:
            for tools in (VERIFY_TOOLS, None):
                try:
                    text = render(chat_template, messages, tools=tools, bos_token=tokenizer.bos_token or "",
                                  eos_token=tokenizer.eos_token or "")
                    break
                except ChatTemplateError:
                    continue
        if text is None:
            text = "\n".join(f"{m['role']}: {m['content']}" for m in messages)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][:VERIFY_MAX_TOKENS]
        inputs.append(torch.tensor([ids], dtype=torch.long))
    return inputs


@torch.no_grad()
def logits_on(model: torch.nn.Module, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    device = next(model.parameters()).device
    return [model(input_ids=ids.to(device)).logits.float().cpu() for ids in inputs]


def compare_logits(reference: list[torch.Tensor], merged: list[torch.Tensor]) -> tuple[float, float]:
    """Max abs difference and the largest reference magnitude (to scale the tolerance)."""
    diff = max(float((a - b).abs().max()) for a, b in zip(reference, merged, strict=True))
    scale = max(float(a.abs().max()) for a in reference)
    return diff, scale


# ------------------------------------------------------------------------------------------------------------ output


def resolve_dtype(export_dtype: str | None, base_config: dict[str, Any]) -> torch.dtype:
    if export_dtype and export_dtype.lower() != "auto":
        try:
            return DTYPES[export_dtype.lower()]
        except KeyError:
            raise MergeError(
                f"--export_dtype {export_dtype!r}: expected one of float32, float16, bfloat16 (or auto)"
            ) from None
    declared = base_config.get("dtype") or base_config.get("torch_dtype") or "float32"
    return DTYPES.get(str(declared).removeprefix("torch."), torch.float32)


def weight_files(directory: Path) -> list[Path]:
    """Shards listed by the index (in order), or the single weights file."""
    for index_name, single in (("model.safetensors.index.json", "model.safetensors"),
                               ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        index = directory / index_name
        if index.is_file():
            names = sorted(set(_read_json(index)["weight_map"].values()))
            return [directory / name for name in names]
        if (directory / single).is_file():
            return [directory / single]
    return []


def convert_to_legacy_bin(directory: Path) -> None:
    """Rewrite safetensors shards as ``pytorch_model*.bin`` with the same grouping and a matching index."""
    from safetensors.torch import load_file

    index_file = directory / "model.safetensors.index.json"
    renames: dict[str, str] = {}
    for shard in weight_files(directory):
        new_name = shard.name.replace("model", "pytorch_model", 1).replace(".safetensors", ".bin")
        torch.save(load_file(str(shard)), directory / new_name)
        shard.unlink()
        renames[shard.name] = new_name
    if index_file.is_file():
        index = _read_json(index_file)
        index["weight_map"] = {key: renames[name] for key, name in index["weight_map"].items()}
        (directory / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
        index_file.unlink()


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Our own progress replaces transformers' tqdm bars and info chatter for the duration of the merge."""
    from transformers.utils import logging as hf_logging

    bars_were_enabled = hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        if bars_were_enabled:
            hf_logging.enable_progress_bar()
        hf_logging.set_verbosity(verbosity)


def export_merged(
    base: str | Path,
    adapter: str | Path,
    export_dir: str | Path,
    export_size: float = 2,
    export_dtype: str | None = None,
    legacy_format: bool = False,
    template: str | None = None,
    trust_remote_code: bool = False,
    verify_samples: int = 3,
    verify_tolerance: float | None = None,
    device: str = "cpu",
    console: Console | None = None,
) -> ExportResult:
    """Merge ``adapter`` into ``base`` and write the result to ``export_dir`` (shards of at most ``export_size`` GB).

    ``export_size`` is in GB of 10⁹ bytes like LLaMA-Factory's, but fractional values are accepted (0.01 = 10 MB).
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from tooltune.train.model import peft_quietly

    console = console or Console(stderr=True)
    started = time.perf_counter()
    base, adapter, export_dir = Path(base), Path(adapter), Path(export_dir)
    if export_size <= 0:
        raise MergeError(f"--export_size must be positive, got {export_size}")
    for source in (base, adapter):
        if export_dir.resolve() == source.resolve() or source.resolve().is_relative_to(export_dir.resolve()):
            raise MergeError(f"--export_dir {export_dir}: would replace the input {source}; choose a new directory")
    warnings: list[str] = []
    base_config = check_base(base)
    adapter_config = check_adapter(adapter)
    check_recorded_base(adapter_config, base_config, adapter)
    check_adapter_shapes(skeleton(base, trust_remote_code), adapter)
    dtype = resolve_dtype(export_dtype, base_config)
    declared = resolve_dtype(None, base_config)
    # Merge in the more precise of the base's and the export dtype, then cast once when saving.
    work_dtype = torch.float32 if torch.float32 in (dtype, declared) else dtype
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if legacy_format:
        warnings.append("export_legacy_format writes pickle .bin weights (loading them can run code); "
                        "prefer safetensors unless a tool needs .bin")

    tokenizer_source = adapter if any((adapter / name).is_file() for name in TOKENIZER_FILES) else base
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source, trust_remote_code=trust_remote_code)
    chat_template, template_source = choose_chat_template(base, adapter, template, tokenizer, warnings)
    max_shard_size = f"{max(1, round(export_size * 1000))}MB"

    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/"
                        "{task.total}"), TimeElapsedColumn(), console=console, transient=True)
    steps = 6 if verify_samples > 0 else 4
    with _quiet_transformers(), progress, atomic_dir(export_dir) as tmp:
        task = progress.add_task("loading base model", total=steps)
        model = AutoModelForCausalLM.from_pretrained(
            base, dtype=work_dtype, use_safetensors=True, trust_remote_code=trust_remote_code
        ).to(device)
        model.eval()

        progress.update(task, advance=1, description="loading adapter")
        try:
            with peft_quietly():
                peft_model = PeftModel.from_pretrained(model, adapter, is_trainable=False)
        except (RuntimeError, ValueError, KeyError) as exc:
            raise MergeError(f"{adapter}: adapter does not fit base {base}: {str(exc).splitlines()[0]}") from exc
        peft_model.eval()

        inputs = verification_inputs(chat_template, tokenizer, verify_samples) if verify_samples > 0 else []
        reference: list[torch.Tensor] = []
        if inputs:
            progress.update(task, advance=1, description="base + adapter logits")
            reference = logits_on(peft_model, inputs)

        progress.update(task, advance=1, description="merging")
        merged = peft_model.merge_and_unload(safe_merge=True).to(dtype)  # safe_merge: refuse NaNs

        progress.update(task, advance=1, description=f"writing shards ≤ {max_shard_size}")
        end_of_turn = end_of_turn_token(chat_template, tokenizer) if chat_template else tokenizer.eos_token
        if end_of_turn and end_of_turn != tokenizer.eos_token and end_of_turn in tokenizer.get_vocab():
            # The tokenizer's EOS is what GGUF conversion and most servers stop on, so it must end a turn too.
            warnings.append(
                f"tokenizer eos_token {tokenizer.eos_token!r} → {end_of_turn!r} (the template's end of turn)"
            )
            tokenizer.eos_token = end_of_turn
        generation_config = merged.generation_config or GenerationConfig()
        eos_ids = eos_ids_for(end_of_turn, tokenizer, generation_config.eos_token_id)
        generation_config.eos_token_id = eos_ids if len(eos_ids) > 1 else eos_ids[0]
        if generation_config.pad_token_id is None and tokenizer.pad_token_id is not None:
            generation_config.pad_token_id = tokenizer.pad_token_id
        merged.generation_config = generation_config
        merged.config.eos_token_id = eos_ids[0]
        merged.save_pretrained(tmp, max_shard_size=max_shard_size)
        if chat_template is not None:
            tokenizer.chat_template = chat_template
        tokenizer.save_pretrained(tmp)
        if legacy_format:
            convert_to_legacy_bin(tmp)
        del merged, peft_model, model
        gc.collect()

        max_abs_diff = tolerance = None
        if inputs:
            progress.update(task, advance=1, description="reloading shards and comparing logits")
            reloaded = AutoModelForCausalLM.from_pretrained(
                tmp, dtype=dtype, use_safetensors=not legacy_format, trust_remote_code=trust_remote_code
            ).to(device)
            reloaded.eval()
            max_abs_diff, scale = compare_logits(reference, logits_on(reloaded, inputs))
            del reloaded
            gc.collect()
            tolerance = (
                verify_tolerance
                if verify_tolerance is not None
                else ABSOLUTE_TOLERANCE + RELATIVE_TOLERANCE.get(dtype, 4e-2) * scale
            )
            if not max_abs_diff <= tolerance:
                raise MergeError(
                    f"{export_dir}: merged logits differ from base + adapter by {max_abs_diff:.3e} "
                    f"(tolerance {tolerance:.1e}); nothing was written"
                )
        progress.update(task, completed=steps, description="done")

    shards = weight_files(export_dir)
    limit_bytes = export_size * 1e9
    for shard in shards:
        if shard.stat().st_size > limit_bytes * 1.01 and len(shards) > 1:
            warnings.append(f"{shard.name} is {shard.stat().st_size / 1e6:.1f} MB: one tensor is larger than "
                            f"--export_size {export_size} GB and cannot be split")
    result = ExportResult(
        export_dir=export_dir,
        shards=shards,
        total_bytes=sum(p.stat().st_size for p in shards),
        dtype=str(dtype).removeprefix("torch."),
        max_abs_diff=max_abs_diff,
        tolerance=tolerance,
        verified_samples=len(inputs),
        end_of_turn_token=end_of_turn,
        eos_token_ids=eos_ids,
        chat_template_source=template_source,
        legacy_format=legacy_format,
        seconds=time.perf_counter() - started,
        warnings=warnings,
    )
    for warning in warnings:
        console.print(f"[yellow]warning:[/yellow] {escape(warning)}", soft_wrap=True)
    console.print(result.summary(), soft_wrap=True, markup=False, highlight=False)
    return result
