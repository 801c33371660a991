"""Training arguments under LLaMA-Factory's key names, so the seed's ``python src/train.py ...`` flags port unchanged.

Three dataclasses split the keys the way LLaMA-Factory does: the model to load (``ModelArguments``), what to train
(``FinetuningArguments``) and how to run the loop (``TrainArguments``). Data keys (``dataset``, ``template``,
``cutoff_len``, ``val_size``, ...) live in ``tooltune.data.DataArguments``. A key present in several classes (``seed``)
is given to each.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from tooltune.errors import TooltuneError


class TrainConfigError(TooltuneError, ValueError):
    """A training setting that cannot work as given (bad value, unsupported on this machine)."""


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class ModelArguments:
    """Model: the base checkpoint to fine-tune and how to load it."""

    model_name_or_path: str | None = field(
        default=None, metadata=_help("HF model directory (safetensors); default: the embedded SmolLM2-135M-Instruct")
    )
    adapter_name_or_path: str | None = field(
        default=None, metadata=_help("an existing LoRA adapter to keep training instead of a fresh one")
    )
    trust_remote_code: bool = field(default=False, metadata=_help("run Python code shipped with the model (off)"))
    quantization_bit: int | None = field(default=None, metadata=_help("4 or 8: QLoRA via bitsandbytes (CUDA only)"))
    flash_attn: str = field(default="auto", metadata=_help("attention kernel: auto | sdpa | eager | fa2"))
    cache_dir: str | None = field(default=None, metadata=_help("accepted for LLaMA-Factory compatibility (no hub)"))


@dataclass
class FinetuningArguments:
    """Finetuning: which weights LoRA trains."""

    stage: Literal["sft"] = field(default="sft", metadata=_help("training stage; tooltune trains sft"))
    finetuning_type: Literal["lora"] = field(default="lora", metadata=_help("lora (the adapter format vLLM serves)"))
    lora_target: list[str] = field(
        default_factory=lambda: ["all"],
        metadata=_help("comma list of module names (q_proj,v_proj) or `all` for every linear layer but the LM head"),
    )
    lora_rank: int = field(default=8, metadata=_help("LoRA rank r"))
    lora_alpha: int | None = field(default=None, metadata=_help("LoRA alpha (default: 2 × rank, as LLaMA-Factory)"))
    lora_dropout: float = field(default=0.0, metadata=_help("dropout on the LoRA input"))
    use_rslora: bool = field(default=False, metadata=_help("rank-stabilised LoRA scaling alpha/sqrt(r)"))
    loraplus_lr_ratio: float | None = field(
        default=None, metadata=_help("LoRA+: the B matrices learn at this many times the learning rate (e.g. 16)")
    )
    lora_layers: int | None = field(
        default=None,
        metadata=_help("LoRA on the last N decoder layers only (negative: the first N; default: all). The layers below "
                       "the first adapted one run forward only, so each step skips their backward pass"),
    )
    additional_target: list[str] | None = field(
        default=None, metadata=_help("extra modules trained in full and saved with the adapter (e.g. embed_tokens)")
    )
    plot_loss: bool = field(default=True, metadata=_help("write training_loss.png at the end"))


@dataclass
class TrainArguments:
    """Training loop: batch, schedule, precision, logging and checkpoints."""

    output_dir: str = field(default="saves/lora", metadata=_help("where the adapter, logs and checkpoints go"))
    do_train: bool = field(default=True, metadata=_help("train (false: print the plan and stop)"))
    do_eval: bool = field(default=False, metadata=_help("evaluate on the val_size split at the end"))
    overwrite_output_dir: bool = field(default=False, metadata=_help("start over even if output_dir has checkpoints"))
    per_device_train_batch_size: int = field(default=1, metadata=_help("samples per device per forward pass"))
    per_device_eval_batch_size: int = field(default=1, metadata=_help("samples per device per eval pass"))
    gradient_accumulation_steps: int = field(default=1, metadata=_help("forward passes per optimizer step"))
    num_train_epochs: float = field(default=3.0, metadata=_help("passes over the training samples"))
    max_steps: int = field(default=-1, metadata=_help("stop after this many optimizer steps (overrides epochs)"))
    learning_rate: float = field(default=5e-5, metadata=_help("peak learning rate"))
    lr_scheduler_type: str = field(
        default="linear", metadata=_help("linear | cosine | constant | constant_with_warmup")
    )
    warmup_steps: int = field(default=0, metadata=_help("optimizer steps of linear warmup (wins over warmup_ratio)"))
    warmup_ratio: float = field(default=0.0, metadata=_help("warmup as a share of total steps"))
    weight_decay: float = field(default=0.0, metadata=_help("AdamW weight decay"))
    neftune_noise_alpha: float | None = field(
        default=None, metadata=_help("NEFTune: uniform noise of this scale on the input embeddings while training")
    )
    max_grad_norm: float = field(default=1.0, metadata=_help("gradient clipping norm"))
    optim: str = field(default="adamw_torch", metadata=_help("optimizer name as transformers spells it"))
    seed: int = field(default=42, metadata=_help("seed for LoRA init, data order and dropout"))
    bf16: bool = field(default=False, metadata=_help("bf16 mixed precision (fails clearly where unsupported)"))
    fp16: bool = field(default=False, metadata=_help("fp16 mixed precision (CUDA only)"))
    gradient_checkpointing: bool = field(
        default=True, metadata=_help("recompute activations in backward to save memory (LLaMA-Factory's default)")
    )
    disable_gradient_checkpointing: bool = field(default=False, metadata=_help("LLaMA-Factory's switch to turn it off"))
    checkpoint_layers: str = field(
        default="auto",
        metadata=_help(
            "with gradient checkpointing: `all` decoder layers, a number of them, or `auto` (as many as keep memory "
            "at what a stock LM head would need; the fused head's savings buy the rest)"
        ),
    )
    group_by_length: bool = field(
        default=False, metadata=_help("batch samples of similar length together (less padding, faster)")
    )
    full_logits: bool = field(
        default=False,
        metadata=_help("run the LM head on every position, not just trained ones (slower; for comparison)"),
    )
    cache_prompt: bool = field(
        default=False,
        metadata=_help(
            "run each batch's prompt (the tokens before its first trained one) without gradients and attend to its "
            "cached keys/values: same loss, 1.3-1.9x faster on tool prompts, but the gradient skips the prompt's "
            "activations (measured: fewer right arguments at the same steps; docs/train.md). Needs gradient "
            "checkpointing off"
        ),
    )
    decision_weight: float = field(
        default=1.0,
        metadata=_help(
            "loss weight of the token trained right after each tool call's closing marker (</tool_call>): it decides "
            "between another call and the end of the turn, one token against the whole call, so a set rich in "
            "single calls teaches the model to stop after one call of a parallel request (docs/train.md). 1 = plain "
            "SFT; needs a template whose calls close with a marker (qwen and the Hermes-style families)"
        ),
    )
    logging_steps: int = field(default=10, metadata=_help("log loss/lr every N optimizer steps"))
    save_steps: int = field(default=500, metadata=_help("write a checkpoint every N optimizer steps"))
    save_total_limit: int | None = field(default=None, metadata=_help("keep only the newest N checkpoints"))
    save_only_model: bool = field(default=False, metadata=_help("checkpoints without optimizer state (no resume)"))
    eval_steps: int | None = field(default=None, metadata=_help("eval loss every N steps when val_size is set"))
    eval_strategy: str | None = field(default=None, metadata=_help("no | steps | epoch (default: steps if val_size)"))
    resume_from_checkpoint: str | None = field(
        default=None, metadata=_help("a checkpoint dir, or `true`/`last` for the newest in output_dir")
    )
    report_to: str = field(default="none", metadata=_help("none | tensorboard"))
    logging_dir: str | None = field(default=None, metadata=_help("tensorboard directory (default output_dir/runs)"))
    deepspeed: str | None = field(default=None, metadata=_help("DeepSpeed JSON config (configs/deepspeed/*.json)"))
    ddp_timeout: int = field(default=1800, metadata=_help("seconds before a stuck distributed step fails"))
    dataloader_num_workers: int = field(default=0, metadata=_help("worker processes for batching"))
    preprocessing_num_workers: int | None = field(
        default=None, metadata=_help("accepted for LLaMA-Factory compatibility (encoding is single-process)")
    )
    overwrite_cache: bool = field(default=False, metadata=_help("accepted for LLaMA-Factory compatibility (no cache)"))
    use_cpu: bool = field(default=False, metadata=_help("train on CPU even when a GPU is present"))


def resolve_lora_alpha(finetune: FinetuningArguments) -> int:
    return finetune.lora_alpha if finetune.lora_alpha is not None else finetune.lora_rank * 2


def validate(finetune: FinetuningArguments, training: TrainArguments) -> None:
    """Reject settings that would fail deep inside transformers with a message a user can act on."""
    checks = [
        (training.per_device_train_batch_size >= 1, "--per_device_train_batch_size must be at least 1"),
        (training.gradient_accumulation_steps >= 1, "--gradient_accumulation_steps must be at least 1"),
        (training.num_train_epochs > 0 or training.max_steps > 0, "--num_train_epochs must be > 0 (or set max_steps)"),
        (training.learning_rate > 0, "--learning_rate must be > 0"),
        (training.decision_weight > 0, "--decision_weight must be > 0 (1 = plain SFT)"),
        (training.warmup_steps >= 0, "--warmup_steps must be >= 0"),
        (0.0 <= training.warmup_ratio < 1.0, "--warmup_ratio must be in [0, 1)"),
        (training.logging_steps >= 1, "--logging_steps must be at least 1"),
        (training.save_steps >= 1, "--save_steps must be at least 1"),
        (finetune.lora_rank >= 1, "--lora_rank must be at least 1"),
        (0.0 <= finetune.lora_dropout < 1.0, "--lora_dropout must be in [0, 1)"),
        (finetune.loraplus_lr_ratio is None or finetune.loraplus_lr_ratio > 0, "--loraplus_lr_ratio must be > 0"),
        (training.neftune_noise_alpha is None or training.neftune_noise_alpha > 0,
         "--neftune_noise_alpha must be > 0"),
        (not (training.bf16 and training.fp16), "--bf16 and --fp16 are exclusive: pick one"),
        (
            not training.cache_prompt
            or training.disable_gradient_checkpointing
            or not training.gradient_checkpointing,
            "--cache_prompt needs gradient checkpointing off (--disable_gradient_checkpointing true): a recomputed "
            "layer cannot attend to the cached prompt",
        ),
        (bool(finetune.lora_target), "--lora_target is empty: give module names or `all`"),
        (
            training.report_to in ("none", "tensorboard"),
            f"--report_to: none or tensorboard, not {training.report_to!r}",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise TrainConfigError(message)
