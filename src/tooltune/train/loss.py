"""Causal-LM loss computed only where a label is trained, without ever holding the logits.

Most tokens of a tool-calling sample are prompt (system prompt with tool schemas, user turns, tool results), yet a
stock causal LM projects every position through the vocabulary-sized LM head and materialises ``batch × seq × vocab``
fp32 logits — three times over at the start of the backward pass (the logits' log-softmax, its gradient and the
logits' gradient). Two steps remove that:

1. A forward pre-hook on the LM head hands it only the hidden states whose *next* token is trained, so the head's
   matmul and softmax shrink to the trained share.
2. With a frozen head (LoRA never trains it) the head's forward is replaced by a fused cross-entropy: it walks the
   trained positions in chunks, computes each chunk's logits, its loss and — right away — the gradient with respect
   to the hidden states (``(softmax - onehot) @ W``), and keeps only that ``positions × hidden`` gradient for the
   backward pass. Same arithmetic as the unfused path (one matmul forward, one backward), no ``× vocab`` tensor
   beyond one chunk. The model's forward then returns the summed loss where the logits would be.

Both live inside the model's own forward, so DDP/FSDP wrappers, gradient checkpointing and PEFT see an ordinary
forward pass.

With ``cache_prompt`` a third step cuts the prompt's backward pass: the tokens before the batch's first trained
position run once without gradients, and the rest of the sample attends to their cached keys and values. The loss is
the same number; the gradient leaves out the path through the prompt's own activations (the prompt is read as in
inference, and the LoRA weights learn from the trained part only). A tool-calling prompt is mostly tool schemas —
88% of the tokens of the seed's tools, 43% of glaive's — so that is where the time goes; docs/train.md has what the
approximation costs in accuracy (it is off by default).

Rows that hold several samples (``--packing``, ``--share_prefix``) arrive with ``segment_ids``; ``segment_attention``
turns them into the 4D attention mask that keeps each sample to its own tokens and the prefix its row shares, which
transformers then uses as given (a 2D mask would let every sample read the ones packed before it).

A model that post-processes its logits (soft-capping, scaling) would turn the fused loss into nonsense, so
``fused_head_matches`` compares both paths on a short input before the fused one is used.
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


# Rows of logits computed at once by the fused head: 32 MiB of fp32 logits per chunk at a 32k vocabulary.
FUSED_CHUNK_BYTES = 32 * 2**20


class _FrozenHeadCrossEntropy(torch.autograd.Function):
    """Summed next-token cross-entropy of ``hidden @ weight.T (+ bias)`` against ``targets``, chunked.

    The gradient with respect to ``hidden`` is computed during the forward, chunk by chunk, so no full logits tensor
    is ever saved; ``weight`` and ``bias`` are frozen (no gradient).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor,
        token_weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        rows = hidden.shape[0]
        chunk = max(1, FUSED_CHUNK_BYTES // (4 * weight.shape[0]))
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        for start in range(0, rows, chunk):
            stop = min(rows, start + chunk)
            logits = F.linear(hidden[start:stop], weight, bias).float()
            target = targets[start:stop]
            target_logit = logits.gather(1, target[:, None]).squeeze(1)
            log_normaliser = torch.logsumexp(logits, dim=-1)
            scale = None if token_weights is None else token_weights[start:stop].float()
            losses = log_normaliser - target_logit
            total += (losses if scale is None else losses * scale).sum()
            if grad_hidden is not None:
                probs = logits.sub_(log_normaliser[:, None]).exp_()  # softmax, in the logits' own memory
                probs[torch.arange(stop - start, device=probs.device), target] -= 1.0
                if scale is not None:
                    probs.mul_(scale[:, None])
                grad_hidden[start:stop] = probs.to(weight.dtype) @ weight
        ctx.save_for_backward(grad_hidden if grad_hidden is not None else hidden.new_empty(0))
        return total

    @staticmethod
    def backward(ctx: Any, grad_total: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None, None]:
        (grad_hidden,) = ctx.saved_tensors
        return grad_hidden * grad_total.to(grad_hidden.dtype), None, None, None, None


class TrainedPositionsHead:
    """Gathers the LM head's input at the positions in ``self.mask`` (set per batch); with ``fused`` and
    ``self.targets`` set, the head returns the summed cross-entropy instead of logits."""

    def __init__(self, lm_head: nn.Module, fused: bool = False) -> None:
        self.lm_head = lm_head
        self.mask: torch.Tensor | None = None
        self.targets: torch.Tensor | None = None
        self.token_weights: torch.Tensor | None = None  # per target, with ``decision_weight``
        self.fused = fused
        self._handle = lm_head.register_forward_pre_hook(self._select)
        self._original_forward = None
        if fused:
            # An instance attribute shadows the class's forward; module hooks (FSDP/DeepSpeed gathers) still wrap it.
            self._original_forward = lm_head.forward
            lm_head.forward = self._forward  # type: ignore[method-assign]

    def _forward(self, hidden: torch.Tensor) -> torch.Tensor:
        assert self._original_forward is not None
        if self.targets is None:
            return self._original_forward(hidden)
        bias = getattr(self.lm_head, "bias", None)
        return _FrozenHeadCrossEntropy.apply(hidden, self.lm_head.weight, bias, self.targets, self.token_weights)

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
        if self._original_forward is not None:
            del self.lm_head.forward  # back to the class's forward
            self._original_forward = None


def find_lm_head(model: nn.Module) -> nn.Module | None:
    """The CausalLM's output projection (PEFT models forward ``get_output_embeddings`` to the base model)."""
    while isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    getter = getattr(model, "get_output_embeddings", None)
    return getter() if getter is not None else None


def lm_head_is_frozen(lm_head: nn.Module) -> bool:
    return not any(p.requires_grad for p in lm_head.parameters())


def segment_attention(segment_ids: torch.Tensor, eager: bool, dtype: torch.dtype) -> torch.Tensor:
    """``(batch, 1, seq, seq)`` attention mask from per-token segment ids: a token reads earlier tokens of its own
    segment and of segment 0 (the row's shared prefix); padding (-1) reads only padding, so no row is empty. Boolean
    (True = attend) for SDPA; additive (0 / the dtype's minimum) for the eager kernel, which adds it to the scores."""
    length = segment_ids.shape[1]
    causal = torch.ones((length, length), dtype=torch.bool, device=segment_ids.device).tril()
    query = segment_ids[:, :, None]
    key = segment_ids[:, None, :]
    allowed = causal & ((query == key) | ((key == 0) & (query > 0)))
    allowed = allowed[:, None]
    if not eager:
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


def with_segment_attention(model: nn.Module, model_inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Replace ``segment_ids`` (and the 2D padding mask) with the 4D mask ``segment_attention`` builds."""
    segment_ids = model_inputs.pop("segment_ids", None)
    if segment_ids is None:
        return model_inputs
    while isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    config = getattr(model, "config", None)
    kernel = getattr(config, "_attn_implementation", None) or "sdpa"
    if "flash" in kernel or "flex" in kernel:
        raise RuntimeError(f"rows holding several samples need a 4D attention mask, which the {kernel} kernel does "
                           "not take: train them with --flash_attn sdpa or eager")
    embeddings = model.get_input_embeddings()
    model_inputs["attention_mask"] = segment_attention(segment_ids, kernel == "eager", embeddings.weight.dtype)
    return model_inputs


# A prompt shorter than this is not worth a second forward call.
MIN_CACHED_PROMPT = 16


def untrained_prefix(mask: torch.Tensor) -> int:
    """Positions before the first one (over the whole batch) whose next token is trained."""
    rows = mask.any(dim=1)
    if not bool(rows.any()):
        return 0
    return int(mask[rows].int().argmax(dim=1).min())


def _cache_keyword(model: nn.Module) -> str:
    """transformers 5 names the KV cache argument ``cache``; earlier releases ``past_key_values``."""
    import inspect

    while isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    parameters = inspect.signature(base.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def run_prompt_cached(
    model: nn.Module, model_inputs: dict[str, torch.Tensor], mask: torch.Tensor, head: TrainedPositionsHead | None
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Run the batch's untrained prefix without gradients and return the inputs for the rest (attending to the
    prefix's cached keys/values) with the trained-position mask cut to match. Nothing to cut: inputs unchanged."""
    prefix = untrained_prefix(mask)
    if prefix < MIN_CACHED_PROMPT or "position_ids" in model_inputs or "inputs_embeds" in model_inputs:
        return model_inputs, mask
    input_ids = model_inputs["input_ids"]
    attention_mask = model_inputs.get("attention_mask")
    if attention_mask is not None and not bool(attention_mask[:, :prefix].all()):
        return model_inputs, mask  # left padding: positions would need the mask; run the sample whole
    keyword = _cache_keyword(model)
    if head is not None:
        head.mask = torch.zeros((input_ids.shape[0], prefix), dtype=torch.bool, device=input_ids.device)
    try:
        with torch.no_grad():
            prefix_inputs = {"input_ids": input_ids[:, :prefix], "use_cache": True}
            if attention_mask is not None:
                prefix_inputs["attention_mask"] = attention_mask[:, :prefix]
            outputs = model(**prefix_inputs)
    finally:
        if head is not None:
            head.mask = None
    cache = getattr(outputs, "cache", None)
    if cache is None:
        cache = getattr(outputs, "past_key_values", None)
    if cache is None:
        raise RuntimeError("cache_prompt: the model returned no key/value cache for the prompt")
    rest = {"input_ids": input_ids[:, prefix:], keyword: cache, "use_cache": True}
    if attention_mask is not None:
        rest["attention_mask"] = attention_mask  # prefix + rest: the model masks the rest's padding with it
    return rest, mask[:, prefix:]


def decision_positions(labels: torch.Tensor, marker: list[int]) -> torch.Tensor:
    """Where a trained label follows a whole ``marker`` run of trained labels (the call-close marker: the label after
    it decides between another call and the end of the turn), as a mask shaped like ``labels``."""
    span = len(marker)
    length = labels.shape[1]
    after = torch.zeros(labels.shape, dtype=torch.bool, device=labels.device)
    if span and length > span:
        found = torch.ones((labels.shape[0], length - span), dtype=torch.bool, device=labels.device)
        for offset, token in enumerate(marker):
            found &= labels[:, offset:length - span + offset] == token
        after[:, span:] = found
        after &= labels != IGNORE_INDEX
    return after


def decision_token_weights(labels: torch.Tensor, marker: list[int], weight: float,
                           mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per trained target (in ``next_token_targets`` order, whose ``mask`` the caller may pass): ``weight`` at the
    ``decision_positions``, 1 elsewhere."""
    if mask is None:
        mask, _ = next_token_targets(labels)
    shifted = torch.zeros(labels.shape, dtype=torch.bool, device=labels.device)
    shifted[:, :-1] = decision_positions(labels, marker)[:, 1:]
    weights = torch.ones(labels.shape, dtype=torch.float32, device=labels.device)
    weights[shifted] = weight
    return weights[mask]


def causal_lm_loss(
    model: nn.Module,
    inputs: dict[str, torch.Tensor],
    head: TrainedPositionsHead | None,
    num_items_in_batch: int | torch.Tensor | None = None,
    cache_prompt: bool = False,
    decision: tuple[list[int], float] | None = None,
) -> tuple[torch.Tensor, Any, int]:
    """Sum of next-token cross-entropy over trained positions, divided by ``num_items_in_batch`` (the trained tokens
    across the accumulated batch, as transformers counts them) or by this batch's count.

    Returns ``(loss, model outputs, trained tokens in this batch)``. With ``head`` None the full logits are computed
    (the reference path, and the fallback for architectures the hook cannot serve). ``cache_prompt``: the untrained
    prefix runs without gradients (module docstring). Rows holding several samples run under the 4D mask of
    ``segment_attention``.
    """
    labels = inputs["labels"]
    model_inputs = with_segment_attention(model, {k: v for k, v in inputs.items() if k != "labels"})
    mask, targets = next_token_targets(labels)
    token_weights = decision_token_weights(labels, *decision, mask=mask) if decision and model.training else None
    if cache_prompt and model.training:
        model_inputs, mask = run_prompt_cached(model, model_inputs, mask, head)
    if head is not None:
        head.mask = mask
        head.targets = targets if head.fused else None
        head.token_weights = token_weights if head.fused else None
        try:
            outputs = model(**model_inputs)
        finally:
            head.mask = None
            head.targets = None
            head.token_weights = None
        logits = outputs.logits
        if head.fused:
            if logits.dim() != 0:
                raise RuntimeError(f"fused LM head: expected the summed loss, got a tensor of {tuple(logits.shape)}")
        elif logits.dim() != 2 or logits.shape[0] != targets.shape[0]:
            raise RuntimeError(
                f"trained-positions LM head: got logits {tuple(logits.shape)} for {targets.shape[0]} trained tokens"
            )
    else:
        outputs = model(**model_inputs)
        logits = outputs.logits[mask]
    trained = int(targets.numel())
    if head is not None and head.fused:
        total = outputs.logits.float()
    else:
        losses = F.cross_entropy(logits.float(), targets, reduction="none")
        total = (losses if token_weights is None else losses * token_weights).sum()
    if num_items_in_batch is not None:
        denominator = num_items_in_batch
        if isinstance(denominator, torch.Tensor):
            # An accumulated batch with no trained token contributes zero, not NaN.
            denominator = denominator.to(total.device).clamp(min=1)
        loss = total / max(denominator, 1) if isinstance(denominator, int) else total / denominator
    else:
        loss = total / max(trained, 1)
    return loss, outputs, trained


def fused_head_matches(model: nn.Module, lm_head: nn.Module, vocab_size: int, device: torch.device | str) -> bool:
    """Whether the fused head's loss equals the plain head's on a short random input (a model that transforms its
    logits after the head — soft-capping, scaling — would not)."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab_size, (1, 12), generator=generator)
    labels = ids.clone()
    labels[:, :4] = IGNORE_INDEX
    inputs = {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)}
    inputs = {name: tensor.to(device) for name, tensor in inputs.items()}
    was_training = model.training
    model.eval()
    plain = TrainedPositionsHead(lm_head)
    try:
        with torch.no_grad():
            expected, _, _ = causal_lm_loss(model, inputs, plain)
    finally:
        plain.remove()
    fused = TrainedPositionsHead(lm_head, fused=True)
    try:
        with torch.no_grad():
            got, _, _ = causal_lm_loss(model, inputs, fused)
    except RuntimeError:
        return False
    finally:
        fused.remove()
        model.train(was_training)
    return bool(torch.isfinite(got)) and abs(float(got) - float(expected)) <= 1e-3 * max(1.0, abs(float(expected)))
