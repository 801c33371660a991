"""The pipeline YAML: the seed's LLaMA-Factory keys plus the few the later steps need, in one flat file.

A LLaMA-Factory training YAML is already a valid pipeline config (``model_name_or_path``, ``dataset``, ``template``,
``lora_target``, ``learning_rate`` ...); the keys below add what the seed did by hand after training: the merge's
``export_size``, the converter's ``gguf_outtype``, ``llama-quantize``'s types, the Ollama name and the eval data.
Every key can be overridden on the command line (``tooltune run pipeline.yaml --learning_rate 1e-3``).
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tooltune.args import parse_into
from tooltune.data.args import DataArguments
from tooltune.errors import TooltuneError
from tooltune.train.args import FinetuningArguments, ModelArguments, TrainArguments

DEFAULT_RUNS_DIR = "runs"
# Keys the pipeline decides itself, because every output must live in the run directory to be tracked.
PIPELINE_OWNED_KEYS = ("output_dir", "export_dir", "overwrite_output_dir", "resume_from_checkpoint")


class PipelineConfigError(TooltuneError, ValueError):
    pass


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class PipelineArguments:
    """Pipeline: where the run goes and what the steps after training produce."""

    run_dir: str | None = field(
        default=None, metadata=_help("run directory (default: runs/<config file name>); holds every stage's output")
    )
    export_size: float = field(default=2, metadata=_help("merge: max shard size of the merged safetensors in GB"))
    export_dtype: str | None = field(
        default=None, metadata=_help("merge: float32 | float16 | bfloat16 (default: the base model's dtype)")
    )
    export_dir: str | None = field(default=None, metadata=_help("ignored: the merged model goes to <run_dir>/export"))
    gguf_outtype: str = field(default="f16", metadata=_help("convert_hf_to_gguf --outtype: f16 | bf16 | f32 | q8_0"))
    quantize: list[str] = field(
        default_factory=lambda: ["Q4_K_M"], metadata=_help("llama-quantize types, e.g. Q4_K_M,Q8_0 (empty: none)")
    )
    gguf_report_tokens: int = field(
        default=1024, metadata=_help("text tokens scored per GGUF file for the size/quality table (0: skip it)")
    )
    serve_name: str | None = field(
        default=None, metadata=_help("model name for `tooltune serve --name` and `ollama create` (default: derived)")
    )
    eval_dataset: str | None = field(
        default=None,
        metadata=_help("held-out eval data (dataset name or .json path); default: the val_size split of the data"),
    )
    eval_categories: list[str] | None = field(
        default=None,
        metadata=_help("only these case kinds: simple,multiple,parallel,parallel_multiple,no_call (default: all)"),
    )
    eval_max_cases: int | None = field(default=None, metadata=_help("score at most N held-out cases per model"))
    eval_max_new_tokens: int = field(default=256, metadata=_help("generation budget per eval case"))
    eval_base: bool = field(default=True, metadata=_help("also score the base model, for the before/after table"))
    eval_constrain_calls: bool = field(
        default=True,
        metadata=_help("a call the model opens is held to the tools' schemas (llama.cpp grammar), as `tooltune serve` "
                       "serves it; false scores the calls as the model writes them"),
    )
    eval_engine: Literal["gguf", "hf"] = field(
        default="gguf",
        metadata=_help("score the tuned model through its F16 GGUF with llama.cpp (fast) or the merged HF dir"),
    )
    ship_adapter: bool = field(
        default=False,
        metadata=_help("also ship the LoRA unmerged: base GGUF (+ first quantize type) and a LoRA GGUF, with a "
                       "Modelfile using ADAPTER and the `tooltune serve BASE --lora NAME=ADAPTER` command"),
    )
    adapter_eval: Literal["all", "quant", "none"] = field(
        default="all",
        metadata=_help("with ship_adapter, score base + adapter on the held-out cases next to the merged files: all "
                       "(the F16 base and the first quantize type), quant (only the quantized base, the one served), "
                       "none (files, sizes and Modelfile only; each scored row costs about one eval stage's time)"),
    )
    preview_samples: int = field(default=2, metadata=_help("samples the preview stage prints (the seed's debug view)"))
    synth: dict[str, Any] | None = field(
        default=None,
        metadata=_help("generate the dataset first: {spec: synth.yaml, ...overrides} (see docs/synth.md); fills "
                       "dataset, dataset_dir and eval_dataset"),
    )


@dataclass
class PipelineConfig:
    """The parsed config, one dataclass per concern, as the stage functions receive it."""

    source: Path | None
    pipeline: PipelineArguments
    model: ModelArguments
    data: DataArguments
    finetune: FinetuningArguments
    training: TrainArguments
    notes: list[str] = field(default_factory=list)

    @property
    def run_dir(self) -> Path:
        return Path(self.pipeline.run_dir) if self.pipeline.run_dir else Path(DEFAULT_RUNS_DIR) / self.name

    @property
    def name(self) -> str:
        return self.source.stem if self.source else "run"

    def record(self) -> dict[str, Any]:
        """Every resolved key, for the manifest (so a run says exactly what it was)."""
        merged: dict[str, Any] = {}
        for part in (self.model, self.data, self.finetune, self.training, self.pipeline):
            merged.update(dataclasses.asdict(part))
        merged["config_file"] = str(self.source) if self.source else None
        return merged


CONFIG_CLASSES = (PipelineArguments, ModelArguments, DataArguments, FinetuningArguments, TrainArguments)


def load_pipeline_config(argv: list[str]) -> PipelineConfig:
    """Parse ``[config.yaml] [--key value ...] [key=value ...]`` into a ``PipelineConfig``."""
    source = next((Path(a) for a in argv if a.endswith((".yaml", ".yml", ".json")) and not a.startswith("-")), None)
    if source is not None and not source.is_file():
        raise PipelineConfigError(f"{source}: config file not found")
    pipeline, model, data, finetune, training = parse_into(CONFIG_CLASSES, argv)
    config = PipelineConfig(source, pipeline, model, data, finetune, training)
    _check(config, argv)
    return config


def _check(config: PipelineConfig, argv: list[str]) -> None:
    where = str(config.source) if config.source else "command line"
    if not config.data.dataset and not config.pipeline.synth:
        raise PipelineConfigError(f"{where}: `dataset` is required (a name in dataset_info.json or a .json path)")
    if not config.finetune.lora_target:
        raise PipelineConfigError(f"{where}: `lora_target` is empty")
    if not config.pipeline.eval_dataset and not config.data.val_size and not config.pipeline.synth:
        config.notes.append("no eval data: set val_size (held-out split) or eval_dataset to get the eval stages")
    given = _given_keys(config.source, argv)
    for key in PIPELINE_OWNED_KEYS:
        if key in given:
            config.notes.append(f"`{key}` is ignored by `tooltune run`: every output goes under {config.run_dir}")
    config.pipeline.quantize = [q.strip().upper() for q in config.pipeline.quantize if q.strip()]
    _check_gguf_types(config, where)


def _check_gguf_types(config: PipelineConfig, where: str) -> None:
    """Catch a typo in ``gguf_outtype``/``quantize`` before an hour of training, not after it."""
    from tooltune.gguf.convert import OUTTYPES

    outtype = config.pipeline.gguf_outtype.lower()
    if outtype not in OUTTYPES:
        raise PipelineConfigError(f"{where}: gguf_outtype {outtype!r} is not one of {', '.join(OUTTYPES)}")
    try:
        from tooltune.gguf.quantize import QUANT_TYPES
    except ImportError:
        return  # without the quantizer module the quantize stage reports it
    unknown = [q for q in config.pipeline.quantize if q not in QUANT_TYPES]
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(QUANT_TYPES), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise PipelineConfigError(f"{where}: quantize type {unknown[0]!r} is unknown{hint}")


def _given_keys(source: Path | None, argv: list[str]) -> set[str]:
    from tooltune.args import load_config_file, normalize_key

    keys = set(load_config_file(source)) if source else set()
    keys |= {normalize_key(a.split("=", 1)[0]) for a in argv if a.startswith("--")}
    return keys


def default_serve_name(config: PipelineConfig) -> str:
    if config.pipeline.serve_name:
        return config.pipeline.serve_name
    base = Path(config.model.model_name_or_path or "smollm2-135m").name.lower()
    for suffix in (".gguf",):
        base = base.removesuffix(suffix)
    cleaned = "".join(ch if ch.isalnum() or ch in "-._" else "-" for ch in base)
    return f"toolcall-{cleaned}"
