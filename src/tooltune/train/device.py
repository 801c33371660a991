"""Pick the device and precision, and refuse a precision the hardware cannot run rather than silently switching.

A bf16 checkpoint on a CPU without native bf16 (no AVX512-BF16/AMX) trains at a crawl, so the weights are loaded in
fp32 there unless ``--bf16`` is given — and ``--bf16`` on such a machine is an error, not a quiet fallback.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from tooltune.train.args import TrainArguments, TrainConfigError


@dataclass(frozen=True)
class Precision:
    device: str  # "cuda" | "cpu" | "mps"
    device_name: str  # what the plan prints
    load_dtype: torch.dtype  # dtype of the frozen base weights
    bf16: bool  # mixed-precision flags handed to transformers
    fp16: bool

    @property
    def label(self) -> str:
        if self.bf16:
            return "bf16"
        if self.fp16:
            return "fp16 (mixed)"
        return "fp32"


def cuda_available(use_cpu: bool = False) -> bool:
    return not use_cpu and torch.cuda.is_available()


def cpu_has_native_bf16() -> bool:
    """True where the CPU computes bf16 in hardware (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slow."""
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def bf16_supported(use_cpu: bool = False) -> bool:
    if cuda_available(use_cpu):
        return torch.cuda.is_bf16_supported()
    return cpu_has_native_bf16()


def describe_device(use_cpu: bool = False) -> str:
    if cuda_available(use_cpu):
        count = torch.cuda.device_count()
        name = torch.cuda.get_device_name(0)
        return f"cuda ({name}{f' × {count}' if count > 1 else ''})"
    threads = torch.get_num_threads()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return f"cpu ({threads} threads{f', {world} processes' if world > 1 else ''})"


def resolve_precision(training: TrainArguments) -> Precision:
    on_cuda = cuda_available(training.use_cpu)
    device = "cuda" if on_cuda else "cpu"
    name = describe_device(training.use_cpu)
    if training.bf16:
        if not bf16_supported(training.use_cpu):
            where = (
                "this GPU has no bf16 (pre-Ampere)"
                if on_cuda
                else "this CPU has no native bf16 (no AVX512-BF16/AMX) and no CUDA GPU is available"
            )
            raise TrainConfigError(
                f"--bf16: {where}; training would be emulated or fail. Drop --bf16 to train in fp32"
                + (", or use --fp16" if on_cuda else "")
            )
        return Precision(device, name, torch.bfloat16, bf16=True, fp16=False)
    if training.fp16:
        if not on_cuda:
            raise TrainConfigError("--fp16: mixed fp16 training needs a CUDA GPU; drop --fp16 to train in fp32 on CPU")
        # fp16 autocast needs fp32 master weights for the trainable LoRA parameters; the frozen base can be fp16.
        return Precision(device, name, torch.float16, bf16=False, fp16=True)
    return Precision(device, name, torch.float32, bf16=False, fp16=False)


# Escape hatch for shapes that never change (cuDNN then builds its plan once and can be the fastest kernel).
KEEP_CUDNN_ATTENTION_ENV = "TOOLTUNE_CUDNN_ATTENTION"


def avoid_cudnn_attention(precision: Precision) -> bool:
    """Turn off PyTorch's cuDNN attention for a bf16/fp16 run on CUDA; True when it did.

    PyTorch prefers cuDNN's fused attention for half precision on recent GPUs (Hopper), and cuDNN builds an execution
    plan for every new sequence length. Training rows are padded to their batch's longest sample, so lengths keep
    changing and the plans are rebuilt all run long: on an H200 the seed's command on a SmolLM2-135M shape trained
    2.57x faster with it off, and bf16 went from 0.42x to above fp32's speed (docs/train.md, "On a CUDA GPU"). With it
    off SDPA takes the flash or memory-efficient kernel, which needs no plan."""
    if precision.device != "cuda" or not (precision.bf16 or precision.fp16):
        return False
    if os.environ.get(KEEP_CUDNN_ATTENTION_ENV, "") not in ("", "0"):
        return False
    enable = getattr(torch.backends.cuda, "enable_cudnn_sdp", None)
    if enable is None or not torch.backends.cuda.cudnn_sdp_enabled():
        return False
    enable(False)
    return True
