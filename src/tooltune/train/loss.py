"""Causal-LM loss computed only where a label is trained.

Most tokens of a tool-calling sample are prompt (system prompt with tool schemas, user turns, tool results), yet a
stock causal LM projects every position through the vocabulary-sized LM head and materialises ``batch × seq × vocab``
fp32 logits. A forward pre-hook on the LM head hands it only the hidden states whose *next* token is trained, so the
head's matmul, the logits memory and the softmax shrink to the trained share. The hook sits inside the model's own
forward, so DDP/FSDP wrappers, gradient checkpointing and PEFT see an ordinary forward pass.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tooltune.train.batching import IGNORE_INDEX


def next_token_targets(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mask over positions whose next token is trained, those next tokens)`` — the usual shift by one."""
    shifted = torch.full_like(labels, IGNORE_INDEX)
    shifted[:, :-1] = labels[:, 1:]
    mask = shifted != IGNORE_INDEX
    return mask, shifted[mask]


class TrainedPositionsHead:
    """Forward pre-hook that gathers the LM head's input at the positions in ``self.mask`` (set per batch)."""

    def __init__(self, lm_head: nn.Module) -> None:
        self.lm_head = lm_head
        self.mask: torch.Tensor | None = None
        self._handle = lm_head.register_forward_pre_hook(self._select)

    def _select(self, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        if self.mask is None:
            return None
        hidden = args[0]
        if hidden.shape[:2] != self.mask.shape:
            raise RuntimeError(
                f"trained-positions LM head: hidden states {tuple(hidden.shape)} do not match the label mask "
                f"{tuple(self.mask.shape)}; this architecture slices positions itself — train with the full head"
            )
        return (hidden[self.mask], *args[1:])

    def remove(self) -> None:
        self._handle.remove()


def find_lm_head(model: nn.Module) -> nn.Module | None:
    """The CausalLM's output projection (PEFT models forward ``get_output_embeddings`` to the base model)."""
    while isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    getter = getattr(model, "get_output_embeddings", None)
    return getter() if getter is not None else None


def lm_head_is_frozen(lm_head: nn.Module) -> bool:
    return not any(p.requires_grad for p in lm_head.parameters())


def causal_lm_loss(
    model: nn.Module,
    inputs: dict[str, torch.Tensor],
    head: TrainedPositionsHead | None,
    num_items_in_batch: int | torch.Tensor | None = None,
) -> tuple[torch.Tensor, Any, int]:
    """Sum of next-token cross-entropy over trained positions, divided by ``num_items_in_batch`` (the trained tokens
    across the accumulated batch, as transformers counts them) or by this batch's count.

    Returns ``(loss, model outputs, trained tokens in this batch)``. With ``head`` None the full logits are computed
    (the reference path, and the fallback for architectures the hook cannot serve).
    """
    labels = inputs["labels"]
    model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
    mask, targets = next_token_targets(labels)
    if head is not None:
        head.mask = mask
        try:
            outputs = model(**model_inputs)
        finally:
            head.mask = None
        logits = outputs.logits
        if logits.dim() != 2 or logits.shape[0] != targets.shape[0]:
            raise RuntimeError(
                f"trained-positions LM head: got logits {tuple(logits.shape)} for {targets.shape[0]} trained tokens"
            )
    else:
        outputs = model(**model_inputs)
        logits = outputs.logits[mask]
    trained = int(targets.numel())
    total = F.cross_entropy(logits.float(), targets, reduction="sum")
    if num_items_in_batch is not None:
        denominator = num_items_in_batch
        if isinstance(denominator, torch.Tensor):
            # An accumulated batch with no trained token contributes zero, not NaN.
            denominator = denominator.to(total.device).clamp(min=1)
        loss = total / max(denominator, 1) if isinstance(denominator, int) else total / denominator
    else:
        loss = total / max(trained, 1)
    return loss, outputs, trained
