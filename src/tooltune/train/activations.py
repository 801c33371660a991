"""What the backward pass keeps, and how much of the model is recomputed instead.

Two levers, both exact (same loss, same gradients):

- **SwiGLU saves two tensors, not three.** A Llama-style MLP computes ``down(silu(gate(x)) * up(x))``; autograd keeps
  ``gate(x)``, ``silu(gate(x))`` and ``up(x)`` (each ``tokens × intermediate``, the largest activations of a block).
  ``SiluMul`` keeps ``gate(x)`` and ``up(x)`` and recomputes the SiLU in the backward pass — an elementwise op, noise
  next to the block's matmuls — cutting what a block keeps by about a fifth.
- **Checkpoint only as many blocks as memory needs.** Full gradient checkpointing recomputes every block's forward in
  the backward pass: a third more compute. The fused LM head (``tooltune.train.loss``) frees the three
  ``tokens × vocab`` fp32 tensors a stock head holds when the backward pass starts; ``plan_checkpointing`` spends
  that memory on blocks that keep their activations instead of recomputing them.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tooltune.train.args import TrainConfigError

# Share of the fused head's saving spent on un-checkpointed blocks. The rest absorbs the allocator's overhead on the
# many mid-sized activation tensors (measured on SmolLM2-135M: each un-checkpointed block raised peak RSS by ~1.35×
# the bytes autograd saves for it).
SPEND_SHARE = 0.75


class SiluMul(torch.autograd.Function):
    """``silu(gate) * up`` that saves only its two inputs."""

    @staticmethod
    def forward(ctx: Any, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(gate, up)
        return F.silu(gate) * up

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        gate, up = ctx.saved_tensors
        sigmoid = torch.sigmoid(gate)
        silu = gate * sigmoid
        grad_up = grad * silu if ctx.needs_input_grad[1] else None
        # d silu / d gate = sigmoid * (1 + gate * (1 - sigmoid)) = sigmoid + silu * (1 - sigmoid)
        grad_gate = grad * up * (sigmoid + silu * (1 - sigmoid)) if ctx.needs_input_grad[0] else None
        return grad_gate, grad_up


def _is_silu(act: Any) -> bool:
    return isinstance(act, nn.SiLU) or type(act).__name__ in ("SiLUActivation", "SiLU")


def lean_swiglu(model: nn.Module) -> int:
    """Route every Llama-style SwiGLU MLP (``gate_proj``, ``up_proj``, ``down_proj``, SiLU ``act_fn``) through
    ``SiluMul``; returns how many MLPs were changed. Other MLPs are left as they are."""
    changed = 0
    for module in model.modules():
        if not all(hasattr(module, name) for name in ("gate_proj", "up_proj", "down_proj", "act_fn")):
            continue
        if not _is_silu(module.act_fn) or "forward" in vars(module):
            continue

        def forward(x: torch.Tensor, _mlp: nn.Module = module, **_: Any) -> torch.Tensor:
            return _mlp.down_proj(SiluMul.apply(_mlp.gate_proj(x), _mlp.up_proj(x)))

        module.forward = forward  # instance attribute: hooks (PEFT, FSDP) still wrap the call
        changed += 1
    return changed


def checkpointed_layers(model: nn.Module) -> list[nn.Module]:
    """The repeated decoder blocks that checkpointing can switch on and off one by one (transformers' layers)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


def activation_bytes_per_token(model: nn.Module, vocab_size: int) -> float:
    """Bytes one decoder block keeps for the backward pass per token, measured: a 16-token training forward of the
    decoder with checkpointing off, counting the distinct non-parameter tensors autograd saves, per layer and token."""
    layers = checkpointed_layers(model)
    if not layers:
        return 0.0
    states = [layer.gradient_checkpointing for layer in layers]
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: set[int] = set()
    saved = 0

    def count(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters and storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            saved += storage.nbytes()
        return tensor

    tokens = 16
    device = next(model.parameters()).device
    ids = torch.randint(0, vocab_size, (1, tokens), generator=torch.Generator().manual_seed(0)).to(device)
    was_training = model.training
    try:
        for layer in layers:
            layer.gradient_checkpointing = False
        model.train()
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(count, lambda t: t):
            decoder = getattr(model, "get_decoder", None)
            # The decoder stack alone: the LM head's logits are not part of what a block keeps.
            (decoder() if decoder is not None else model)(input_ids=ids)
    finally:
        for layer, state in zip(layers, states, strict=True):
            layer.gradient_checkpointing = state
        model.train(was_training)
    return saved / (len(layers) * tokens)


def plan_checkpointing(model: nn.Module, requested: str, vocab_size: int, fused_head: bool) -> tuple[int, int]:
    """Switch checkpointing off for the last decoder blocks; returns ``(checkpointed, total)`` blocks.

    ``requested``: ``all``, a number of blocks to checkpoint, or ``auto``: with the fused head, the blocks whose
    activations fit in ``SPEND_SHARE`` of the ``12 × vocab`` bytes per token a stock head holds at the start of the
    backward pass (fp32 log-softmax, its gradient, the logits' gradient) keep them; the rest are checkpointed.
    Without the fused head, ``auto`` checkpoints every block.
    """
    layers = checkpointed_layers(model)
    total = len(layers)
    if requested == "all" or total == 0:
        return total, total
    if requested == "auto":
        if not fused_head:
            return total, total
        per_layer = activation_bytes_per_token(model, vocab_size)
        free = int(SPEND_SHARE * 12 * vocab_size // per_layer) if per_layer > 0 else 0
        keep = max(0, total - free)
    else:
        try:
            keep = int(requested)
        except ValueError:
            raise TrainConfigError(f"--checkpoint_layers must be auto, all or a number, got {requested!r}") from None
        if not 0 <= keep <= total:
            raise TrainConfigError(f"--checkpoint_layers {keep}: the model has {total} decoder layers")
    # Later blocks go without: their activations are the first the backward pass frees.
    for index, layer in enumerate(layers):
        layer.gradient_checkpointing = index < keep
    return keep, total
