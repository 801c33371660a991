"""``tooltune export`` (alias ``merge``): the seed's ``llamafactory-cli export`` with only the program name changed."""

from __future__ import annotations

from dataclasses import dataclass, field

import typer

from tooltune.errors import TooltuneError


@dataclass
class ExportArgs:
    """Merge a LoRA adapter into its base model (LLaMA-Factory ``export`` flags)."""

    model_name_or_path: str | None = field(default=None, metadata={"help": "Base model directory (safetensors)."})
    adapter_name_or_path: str | None = field(
        default=None, metadata={"help": "LoRA adapter directory (training output)."}
    )
    template: str | None = field(
        default=None, metadata={"help": "Training template (e.g. qwen); its Jinja template goes into the tokenizer."}
    )
    finetuning_type: str = field(default="lora", metadata={"help": "Only lora can be merged."})
    export_dir: str | None = field(default=None, metadata={"help": "Output directory for the merged model."})
    export_size: float = field(
        default=2, metadata={"help": "Max shard size in GB (10^9 bytes); fractions allowed, e.g. 0.5."}
    )
    export_legacy_format: bool = field(
        default=False, metadata={"help": "Write pickle .bin shards instead of safetensors (not recommended)."}
    )
    export_dtype: str | None = field(
        default=None, metadata={"help": "float32 | float16 | bfloat16 | auto (default: the base's dtype)."}
    )
    export_device: str = field(default="cpu", metadata={"help": "cpu | auto (GPU if available)."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow model code shipped with the base."})
    verify_samples: int = field(
        default=3, metadata={"help": "Rendered conversations used to compare merged vs base+adapter logits (0: skip)."}
    )
    verify_tolerance: float | None = field(
        default=None, metadata={"help": "Max abs logit difference allowed (default: scaled to the export dtype)."}
    )


class ExportArgumentError(TooltuneError, ValueError):
    pass


def run_export(args: ExportArgs) -> None:
    from tooltune.merge import export_merged

    missing = [name for name in ("model_name_or_path", "adapter_name_or_path", "export_dir") if not getattr(args, name)]
    if missing:
        raise ExportArgumentError(f"export needs {', '.join('--' + name for name in missing)}")
    if args.finetuning_type != "lora":
        raise ExportArgumentError(
            f"--finetuning_type {args.finetuning_type}: only LoRA adapters are merged; a {args.finetuning_type} "
            "fine-tune's output directory already is a complete model"
        )
    if args.export_device not in ("cpu", "auto"):
        raise ExportArgumentError(f"--export_device must be cpu or auto, got {args.export_device!r}")
    adapters = [part.strip() for part in str(args.adapter_name_or_path).split(",") if part.strip()]
    if len(adapters) != 1:
        raise ExportArgumentError("--adapter_name_or_path: give one adapter (merge several one after another)")
    export_merged(
        base=str(args.model_name_or_path),
        adapter=adapters[0],
        export_dir=str(args.export_dir),
        export_size=args.export_size,
        export_dtype=args.export_dtype,
        legacy_format=args.export_legacy_format,
        template=args.template,
        trust_remote_code=args.trust_remote_code,
        verify_samples=args.verify_samples,
        verify_tolerance=args.verify_tolerance,
        device=args.export_device,
    )


def register(app: typer.Typer) -> None:
    from tooltune.cli import lf_command

    lf_command(
        app,
        "export",
        (ExportArgs,),
        run_export,
        help="Merge a LoRA adapter into its base: sharded safetensors, tokenizer + chat template, EOS at end of turn, "
        "verified logits.",
        aliases=("merge",),
    )
