"""The seed's hand arithmetic (effective batch, total steps, warmup share), done for the user before the first step.

The step counts follow transformers' Trainer exactly, so the plan printed is the run that happens: each device sees
``ceil(samples / (batch × devices))`` batches per epoch, an epoch ends with a (possibly short) optimizer step, and
``total = ceil(epochs × steps_per_epoch)`` unless ``max_steps`` is set.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

WARMUP_HIGH_SHARE = 0.5
WARMUP_LOW_SHARE = 0.01


@dataclass
class TrainPlan:
    samples: int
    eval_samples: int
    tokens: int
    trained_tokens: int
    per_device_batch: int
    gradient_accumulation: int
    world_size: int
    effective_batch: int
    batches_per_epoch: int
    steps_per_epoch: int
    epochs: float
    total_steps: int
    warmup_steps: int
    warmup_share: float
    trainable_params: int
    total_params: int
    device: str
    dtype: str
    adapted_layers: str = ""  # "15-29 of 30" under --lora_layers; empty: every layer
    packed_samples: int = 0  # samples held in the ``samples`` rows (--packing, --share_prefix); 0: a row per sample
    warnings: list[str] = field(default_factory=list)

    def samples_label(self) -> str:
        """``89 samples`` or, when rows hold several, ``23 rows (89 samples)``."""
        if self.packed_samples:
            return f"{self.samples:,} rows ({self.packed_samples:,} samples)"
        return f"{self.samples:,} samples"

    @property
    def trainable_share(self) -> float:
        return self.trainable_params / self.total_params if self.total_params else 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"trainable_share": self.trainable_share}

    def lines(self) -> list[str]:
        """The plan as ``label: value`` lines, in the order a user checks them."""
        per_step = f"{self.per_device_batch} × {self.gradient_accumulation}"
        if self.world_size > 1:
            per_step += f" × {self.world_size} devices"
        return [
            f"samples        {self.samples_label()} train"
            + (f" + {self.eval_samples:,} eval" if self.eval_samples else ""),
            f"tokens         {self.tokens:,} ({self.trained_tokens:,} trained, "
            f"{self.trained_tokens / max(self.tokens, 1):.0%})",
            f"effective batch {per_step} = {self.effective_batch}",
            f"steps          {self.steps_per_epoch:,}/epoch × {self.epochs:g} epochs = {self.total_steps:,} total",
            f"warmup         {self.warmup_steps:,} steps ({self.warmup_share:.0%} of total)",
            f"parameters     {self.trainable_params:,} trainable / {self.total_params:,} total "
            f"({self.trainable_share:.3%})" + (f" in layers {self.adapted_layers}" if self.adapted_layers else ""),
            f"device         {self.device}, {self.dtype}",
        ]


def steps_per_epoch(
    samples: int, per_device_batch: int, gradient_accumulation: int, world_size: int = 1
) -> tuple[int, int]:
    """``(batches per device per epoch, optimizer steps per epoch)`` as transformers' Trainer counts them."""
    batches = math.ceil(samples / (per_device_batch * world_size)) if samples else 0
    steps = max(batches // gradient_accumulation + int(batches % gradient_accumulation > 0), 1)
    return batches, steps


def resolve_warmup(total_steps: int, warmup_steps: int, warmup_ratio: float) -> int:
    """transformers' rule: explicit ``warmup_steps`` win, else ``ceil(ratio × total)``."""
    if warmup_steps > 0:
        return warmup_steps
    return math.ceil(total_steps * warmup_ratio)


def compute_plan(
    *,
    samples: int,
    per_device_batch: int,
    gradient_accumulation: int,
    epochs: float,
    world_size: int = 1,
    max_steps: int = -1,
    warmup_steps: int = 0,
    warmup_ratio: float = 0.0,
    eval_samples: int = 0,
    tokens: int = 0,
    trained_tokens: int = 0,
    trainable_params: int = 0,
    total_params: int = 0,
    device: str = "cpu",
    dtype: str = "float32",
    adapted_layers: str = "",
    packed_samples: int = 0,
) -> TrainPlan:
    batches, per_epoch = steps_per_epoch(samples, per_device_batch, gradient_accumulation, world_size)
    effective = per_device_batch * gradient_accumulation * world_size
    total = max_steps if max_steps > 0 else math.ceil(epochs * per_epoch)
    warmup = resolve_warmup(total, warmup_steps, warmup_ratio)
    share = warmup / total if total else 0.0
    warnings: list[str] = []
    if samples == 0:
        warnings.append("no training samples: check --dataset, --max_samples and --val_size")
    elif samples < effective:
        warnings.append(
            f"only {samples} samples for an effective batch of {effective}: each optimizer step sees fewer samples "
            f"than one batch; lower --per_device_train_batch_size/--gradient_accumulation_steps or add data"
        )
    if total and warmup >= total:
        warnings.append(
            f"warmup ({warmup} steps) lasts the whole run ({total} steps): the learning rate never reaches "
            f"--learning_rate; lower --warmup_steps"
        )
    elif share > WARMUP_HIGH_SHARE:
        warnings.append(
            f"warmup is {share:.0%} of the {total} steps (> {WARMUP_HIGH_SHARE:.0%}): most of the run trains below "
            f"the peak learning rate; ~10-20% is usual (e.g. --warmup_steps {max(1, round(total * 0.2))})"
        )
    elif total and share < WARMUP_LOW_SHARE and total >= 10:
        warnings.append(
            f"warmup is {share:.1%} of the {total} steps (< {WARMUP_LOW_SHARE:.0%}): the first updates hit the full "
            f"learning rate with fresh Adam statistics; consider --warmup_ratio 0.1"
        )
    return TrainPlan(
        samples=samples,
        packed_samples=packed_samples,
        eval_samples=eval_samples,
        tokens=tokens,
        trained_tokens=trained_tokens,
        per_device_batch=per_device_batch,
        gradient_accumulation=gradient_accumulation,
        world_size=world_size,
        effective_batch=effective,
        batches_per_epoch=batches,
        steps_per_epoch=per_epoch,
        epochs=epochs if max_steps <= 0 else total / per_epoch,
        total_steps=total,
        warmup_steps=warmup,
        warmup_share=share,
        trainable_params=trainable_params,
        total_params=total_params,
        device=device,
        dtype=dtype,
        adapted_layers=adapted_layers,
        warnings=warnings,
    )
