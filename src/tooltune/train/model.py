"""Load the base model (safetensors only) and wrap it in a LoRA adapter with LLaMA-Factory's target semantics."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tooltune.errors import TooltuneError
from tooltune.train.args import FinetuningArguments, ModelArguments, TrainConfigError, resolve_lora_alpha
from tooltune.train.device import Precision


class ModelLoadError(TooltuneError):
    pass


ATTENTION_KERNELS = {"auto": None, "sdpa": "sdpa", "eager": "eager", "fa2": "flash_attention_2", "disabled": "eager"}


def resolve_model_path(model_args: ModelArguments) -> Path:
    """The user's model, or the embedded SmolLM2-135M-Instruct imported once from its GGUF."""
    if model_args.model_name_or_path:
        path = Path(model_args.model_name_or_path)
        if not path.is_dir():
            raise ModelLoadError(
                f"--model_name_or_path {path}: not a local model directory (tooltune never downloads weights; "
                f"give a folder with config.json + *.safetensors, or import a GGUF with `tooltune import-gguf`)"
            )
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"--model_name_or_path {path}: no config.json in this folder")
        return path
    try:
        from tooltune.gguf.import_gguf import ensure_default_model
    except ImportError as exc:
        raise ModelLoadError(
            "no --model_name_or_path given and the embedded default model cannot be imported in this install "
            f"(tooltune.gguf.import_gguf is unavailable: {exc}); pass --model_name_or_path DIR"
        ) from exc
    return Path(ensure_default_model())


def load_base_model(path: Path, model_args: ModelArguments, precision: Precision) -> nn.Module:
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {
        "dtype": precision.load_dtype,
        "use_safetensors": True,  # never unpickle weights
        "trust_remote_code": model_args.trust_remote_code,
    }
    kernel = ATTENTION_KERNELS.get(model_args.flash_attn)
    if model_args.flash_attn not in ATTENTION_KERNELS:
        raise TrainConfigError(
            f"--flash_attn must be one of {', '.join(ATTENTION_KERNELS)}, got {model_args.flash_attn!r}"
        )
    if kernel is not None:
        kwargs["attn_implementation"] = kernel
    if model_args.quantization_bit is not None:
        kwargs.update(_quantization_kwargs(model_args.quantization_bit, precision))
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot load the model ({exc}); tooltune loads safetensors weights only") from exc
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise ModelLoadError(f"{path}: this model needs its own code; pass --trust_remote_code true") from exc
        raise ModelLoadError(f"{path}: {exc}") from exc
    if model_args.quantization_bit is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return model


def _quantization_kwargs(bits: int, precision: Precision) -> dict[str, Any]:
    """QLoRA through bitsandbytes; imported here so CPU installs never need it."""
    if bits not in (4, 8):
        raise TrainConfigError(f"--quantization_bit must be 4 or 8, got {bits}")
    if precision.device != "cuda":
        raise TrainConfigError("--quantization_bit (QLoRA) needs a CUDA GPU with bitsandbytes; drop it to train on CPU")
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError as exc:
        raise TrainConfigError("--quantization_bit needs bitsandbytes: pip install bitsandbytes") from exc
    compute = torch.bfloat16 if precision.bf16 else torch.float16
    if bits == 4:
        config = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute
        )
    else:
        config = BitsAndBytesConfig(load_in_8bit=True)
    return {"quantization_config": config, "device_map": {"": torch.cuda.current_device()}}


def linear_module_names(model: nn.Module) -> list[str]:
    """Leaf names of every linear layer except the LM head (LLaMA-Factory's ``lora_target all``)."""
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names: set[str] = set()
    for full_name, module in model.named_modules():
        if isinstance(module, nn.Linear) and module is not output and "lm_head" not in full_name:
            names.add(full_name.rsplit(".", 1)[-1])
    return sorted(names)


def resolve_lora_targets(model: nn.Module, requested: list[str]) -> list[str]:
    available = linear_module_names(model)
    if [t.lower() for t in requested] == ["all"]:
        return available
    missing = [t for t in requested if t not in available]
    if missing:
        raise TrainConfigError(
            f"--lora_target {','.join(missing)}: no such linear layer in {type(model).__name__} "
            f"(it has: {', '.join(available)}; or use `all`)"
        )
    return list(requested)


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Non-reentrant checkpointing: gradients reach the LoRA weights inside a checkpointed block without the
    embeddings' output requiring grad (the reentrant variant needs that, and it would run the frozen layers below
    ``--lora_layers`` backward for nothing)."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise TrainConfigError(f"{type(model).__name__} does not support gradient checkpointing; pass it as false")
    # transformers 5 renamed it; older releases only have the gradient_* spelling.
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if hasattr(model, "disable_input_require_grads"):
        model.disable_input_require_grads()  # transformers sets it for the reentrant variant (and peft again later)
    model.config.use_cache = False


def adapted_layers(model: nn.Module, lora_layers: int | None) -> list[int] | None:
    """The decoder layers ``--lora_layers`` names (the last N, or with a negative N the first N); None: all of them."""
    if lora_layers is None:
        return None
    total = int(getattr(model.config, "num_hidden_layers", 0) or 0)
    if lora_layers == 0 or total == 0 or abs(lora_layers) > total:
        raise TrainConfigError(f"--lora_layers {lora_layers}: {type(model).__name__} has {total} decoder layers; "
                               f"give 1..{total} (the last N) or -1..-{total} (the first N)")
    return list(range(total - lora_layers, total)) if lora_layers > 0 else list(range(-lora_layers))


@contextlib.contextmanager
def peft_quietly() -> Iterator[None]:
    """Wrapping a model in peft reads transformers' deprecated ``is_gradient_checkpointing`` (peft 0.21 with
    transformers 5.x), which printed a FutureWarning into every training and merge log; it is theirs to change, and
    nothing a user can act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def attach_lora(model: nn.Module, model_args: ModelArguments, finetune: FinetuningArguments) -> nn.Module:
    with peft_quietly():
        return _attach_lora(model, model_args, finetune)


def _attach_lora(model: nn.Module, model_args: ModelArguments, finetune: FinetuningArguments) -> nn.Module:
    from peft import LoraConfig, PeftModel, TaskType, get_peft_model

    if model_args.adapter_name_or_path:
        adapter = Path(model_args.adapter_name_or_path)
        if not (adapter / "adapter_config.json").is_file():
            raise ModelLoadError(f"--adapter_name_or_path {adapter}: no adapter_config.json")
        if finetune.lora_layers is not None:
            raise TrainConfigError(f"--lora_layers shapes a new adapter; {adapter} keeps training on the layers its "
                                   "adapter_config.json names (layers_to_transform): drop one of the two")
        peft_model = PeftModel.from_pretrained(model, str(adapter), is_trainable=True)
    else:
        config = LoraConfig(
            task_type=TaskType.CAUSAL_LM,
            r=finetune.lora_rank,
            lora_alpha=resolve_lora_alpha(finetune),
            lora_dropout=finetune.lora_dropout,
            target_modules=resolve_lora_targets(model, finetune.lora_target),
            use_rslora=finetune.use_rslora,
            modules_to_save=finetune.additional_target,
            layers_to_transform=adapted_layers(model, finetune.lora_layers),
        )
        peft_model = get_peft_model(model, config)
    if hasattr(model, "disable_input_require_grads"):
        # peft (new or loaded adapter) makes the embeddings' output require grad when checkpointing is on, for the
        # reentrant checkpoint; ours is non-reentrant, and that flag alone would make autograd run every frozen layer
        # below the first adapted one backward too (under --lora_layers, half the model's backward for nothing).
        model.disable_input_require_grads()
    return peft_model


def adapted_layers_label(peft_model: nn.Module) -> str:
    """Which decoder layers the attached adapter trains, for the plan ("15-29 of 30"); empty when it trains them all.
    Read from the adapter's own config, so a loaded adapter (--adapter_name_or_path) is described the same way."""
    layers = next(iter(peft_model.peft_config.values())).layers_to_transform
    if layers is None:
        return ""
    layers = sorted([layers] if isinstance(layers, int) else layers)
    if len(layers) > 1 and layers == list(range(layers[0], layers[-1] + 1)):
        span = f"{layers[0]}-{layers[-1]}"
    else:
        span = ",".join(map(str, layers))
    return f"{span} of {peft_model.config.num_hidden_layers}"


def count_parameters(model: nn.Module) -> tuple[int, int]:
    trainable = total = 0
    for param in model.parameters():
        n = param.numel()
        if param.__class__.__name__ == "Params4bit":
            n *= 2  # two 4-bit values per stored byte
        total += n
        if param.requires_grad:
            trainable += n
    return trainable, total
