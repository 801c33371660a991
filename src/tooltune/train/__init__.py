"""LoRA fine-tuning (``tooltune train``): LLaMA-Factory's flags, transformers' Trainer + peft underneath.

Public API (the CLI and the pipeline call these):

    train(model_args, data_args, finetune_args, training_args) -> TrainResult(adapter_dir, plan, metrics, ...)
    compute_plan(samples=..., per_device_batch=..., gradient_accumulation=..., epochs=..., ...) -> TrainPlan
    ModelArguments, FinetuningArguments, TrainArguments      (dataclasses under LLaMA-Factory's key names)

Heavy imports (torch, transformers, peft) happen inside the functions that need them, so ``tooltune --help`` stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tooltune.train.args import FinetuningArguments, ModelArguments, TrainArguments, TrainConfigError
from tooltune.train.plan import TrainPlan, compute_plan

if TYPE_CHECKING:
    from tooltune.train.run import TrainResult


def train(
    model_args: ModelArguments,
    data_args: Any,
    finetune_args: FinetuningArguments,
    training_args: TrainArguments,
    **kwargs: Any,
) -> TrainResult:
    from tooltune.train.args import validate
    from tooltune.train.device import resolve_precision

    # Fail on impossible settings (e.g. --bf16 without bf16 hardware) before the slow imports and data loading.
    validate(finetune_args, training_args)
    resolve_precision(training_args)
    from tooltune.train.run import train as run_train

    return run_train(model_args, data_args, finetune_args, training_args, **kwargs)


__all__ = [
    "FinetuningArguments",
    "ModelArguments",
    "TrainArguments",
    "TrainConfigError",
    "TrainPlan",
    "compute_plan",
    "train",
]
