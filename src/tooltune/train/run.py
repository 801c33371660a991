"""``train()``: the whole LoRA SFT stage as one typed function (the CLI and the pipeline both call it).

Order of work: check settings (precision first, so ``--bf16`` on an unsupported machine fails in a second, not after
loading data), decide fresh start vs resume, tokenize, load the model and wrap it in LoRA, print the plan, train, then
write the adapter + tokenizer (with the training layout as its chat template) + loss plot atomically into
``output_dir``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from rich.console import Console

from tooltune.errors import TooltuneError
from tooltune.train.args import FinetuningArguments, ModelArguments, TrainArguments, TrainConfigError, validate
from tooltune.train.callbacks import LOG_FILE, JsonlLogCallback, RichProgressCallback, read_log
from tooltune.train.checkpoints import (
    STAGING_DIR,
    checkpoint_step,
    checkpoints,
    clear_stale_staging,
    resolve_resume,
)
from tooltune.train.data import PreparedData, decision_marker, prepare_data
from tooltune.train.device import Precision, avoid_cudnn_attention, resolve_precision
from tooltune.train.plan import TrainPlan, compute_plan

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
RESULTS_FILE = "train_results.json"
PLOT_FILE = "training_loss.png"


@dataclass
class TrainResult:
    adapter_dir: Path | None  # None when --do_train false (plan only)
    plan: TrainPlan
    metrics: dict[str, Any] = field(default_factory=dict)
    log_file: Path | None = None
    plot_file: Path | None = None
    resumed_from: Path | None = None


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _distributed_state(training: TrainArguments, precision: Precision) -> Any:
    """Initialise the process group early (a no-op for one process) so output-dir decisions can be synchronised.

    accelerate only forms a CPU process group (gloo) when told it runs on CPU, so say so whenever there is no GPU.
    """
    from accelerate import PartialState

    on_cpu = training.use_cpu or precision.device == "cpu"
    return PartialState(timeout=timedelta(seconds=training.ddp_timeout), cpu=on_cpu)


def decide_start(output_dir: Path, training: TrainArguments) -> tuple[Path | None, bool]:
    """``(checkpoint to resume from, whether to clear old checkpoints first)``, following LLaMA-Factory: an explicit
    ``resume_from_checkpoint`` wins; ``overwrite_output_dir`` starts over; otherwise an interrupted run resumes."""
    explicit = resolve_resume(output_dir, training.resume_from_checkpoint)
    if explicit is not None:
        return explicit, False
    if training.overwrite_output_dir:
        return None, True
    found = checkpoints(output_dir)
    if found:
        return found[-1], False
    if (output_dir / ADAPTER_FILES[1]).is_file():
        raise TrainConfigError(
            f"{output_dir} already holds a trained adapter; pass --overwrite_output_dir to train again into it"
        )
    return None, False


def clear_previous_run(output_dir: Path) -> None:
    for path in checkpoints(output_dir):
        shutil.rmtree(path)
    for name in (LOG_FILE, RESULTS_FILE, PLOT_FILE):
        (output_dir / name).unlink(missing_ok=True)
    clear_stale_staging(output_dir)


def build_hf_arguments(training: TrainArguments, plan: TrainPlan, precision: Precision, has_eval: bool) -> Any:
    from transformers import TrainingArguments

    if training.report_to == "tensorboard":
        try:
            import tensorboard  # noqa: F401
        except ImportError as exc:
            raise TrainConfigError(
                "--report_to tensorboard needs the tensorboard package: pip install tensorboard"
            ) from exc
        if training.logging_dir:
            os.environ["TENSORBOARD_LOGGING_DIR"] = training.logging_dir
    eval_strategy = training.eval_strategy or ("steps" if has_eval else "no")
    if eval_strategy != "no" and not has_eval:
        raise TrainConfigError(f"--eval_strategy {eval_strategy} needs an eval split: set --val_size")
    return TrainingArguments(
        output_dir=training.output_dir,
        per_device_train_batch_size=training.per_device_train_batch_size,
        per_device_eval_batch_size=training.per_device_eval_batch_size,
        gradient_accumulation_steps=training.gradient_accumulation_steps,
        num_train_epochs=training.num_train_epochs,
        max_steps=training.max_steps,
        learning_rate=training.learning_rate,
        lr_scheduler_type=training.lr_scheduler_type,
        warmup_steps=plan.warmup_steps,
        weight_decay=training.weight_decay,
        neftune_noise_alpha=training.neftune_noise_alpha,
        max_grad_norm=training.max_grad_norm,
        optim=training.optim,
        seed=training.seed,
        data_seed=training.seed,
        bf16=precision.bf16,
        fp16=precision.fp16,
        logging_steps=training.logging_steps,
        save_strategy="steps",
        save_steps=training.save_steps,
        save_total_limit=training.save_total_limit,
        save_only_model=training.save_only_model,
        eval_strategy=eval_strategy,
        eval_steps=training.eval_steps or training.save_steps,
        prediction_loss_only=True,
        report_to=[] if training.report_to == "none" else [training.report_to],
        deepspeed=training.deepspeed,
        ddp_timeout=training.ddp_timeout,
        ddp_find_unused_parameters=False,
        dataloader_num_workers=training.dataloader_num_workers,
        remove_unused_columns=False,
        disable_tqdm=True,
        use_cpu=training.use_cpu or precision.device == "cpu",
    )


def print_plan(console: Console, plan: TrainPlan, model_path: Path, data: PreparedData) -> None:
    console.print(f"[bold]tooltune train[/bold] · {model_path}")
    for line in plan.lines():
        console.print(f"  {line}")
    if data.sharing:
        console.print(f"  shared        {data.sharing}")
    if data.rejected or data.skipped:
        console.print(
            f"  [yellow]left out[/yellow]   {len(data.rejected)} unreadable records, {len(data.skipped)} samples the "
            f"encoder could not fit (see `tooltune preview`)"
        )
        for item in (data.rejected + data.skipped)[:5]:
            console.print(f"    [yellow]·[/yellow] {item}")
    for warning in plan.warnings:
        console.print(f"  [yellow]warning:[/yellow] {warning}")


def _save_final(trainer: Any, tokenizer: Any, output_dir: Path, chat_template: str) -> None:
    """Adapter + tokenizer into a staging folder, then each file renamed into ``output_dir``."""
    staging = output_dir / f"{STAGING_DIR}-final"
    if trainer.is_world_process_zero():
        shutil.rmtree(staging, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(staging))  # every process: DeepSpeed ZeRO-3 / FSDP gather the adapter weights here
    if trainer.is_world_process_zero():
        tokenizer.chat_template = chat_template
        tokenizer.save_pretrained(str(staging))
        (staging / "training_args.bin").unlink(missing_ok=True)  # a pickle; the plan is in train_results.json
        missing = [name for name in ADAPTER_FILES if not (staging / name).is_file()]
        if missing:
            raise TooltuneError(f"saving the adapter failed: {', '.join(missing)} not written")
        for item in staging.iterdir():
            if item.is_file():
                item.chmod(0o644)  # temp-file writers create 0600; servers (vLLM, merge) run as other users
            target = output_dir / item.name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(item, target)
        shutil.rmtree(staging, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()


def train(
    model_args: ModelArguments,
    data_args: Any,
    finetune_args: FinetuningArguments,
    training_args: TrainArguments,
    *,
    console: Console | None = None,
) -> TrainResult:
    """LoRA SFT: returns the adapter directory, final metrics and the plan it printed."""
    from transformers import AutoTokenizer, PrinterCallback, set_seed

    from tooltune.train.activations import lean_swiglu, plan_checkpointing
    from tooltune.train.batching import EncodedDataset, PadToLongestCollator
    from tooltune.train.model import (
        adapted_layers_label,
        attach_lora,
        count_parameters,
        enable_gradient_checkpointing,
        load_base_model,
        resolve_model_path,
    )
    from tooltune.train.trainer import ToolTuneTrainer

    console = console or Console()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own bar is the one that matters; weight-loading bars are noise
    validate(finetune_args, training_args)
    precision = resolve_precision(training_args)
    avoid_cudnn_attention(precision)
    if data_args.cutoff_len < 2:
        raise TrainConfigError("--cutoff_len must be at least 2")
    several = [flag for flag in ("packing", "share_prefix") if getattr(data_args, flag, False)]
    if training_args.cache_prompt and several:
        raise TrainConfigError(f"--cache_prompt and --{several[0]} exclude each other: a row holding several samples "
                               "has one prompt per sample, and only the first could be cached")
    if several and model_args.flash_attn == "fa2":
        raise TrainConfigError(f"--{several[0]} needs a per-sample attention mask, which flash-attention 2 does not "
                               "take: use --flash_attn sdpa (or auto)")
    started = time.monotonic()
    state = _distributed_state(training_args, precision)
    main = state.is_main_process
    output_dir = Path(training_args.output_dir)
    resume_from, clear = decide_start(output_dir, training_args)
    state.wait_for_everyone()
    if main:
        output_dir.mkdir(parents=True, exist_ok=True)
        if clear:
            clear_previous_run(output_dir)
        clear_stale_staging(output_dir)
    state.wait_for_everyone()

    model_path = resolve_model_path(model_args)
    tokenizer = AutoTokenizer.from_pretrained(str(model_path), trust_remote_code=model_args.trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    data = prepare_data(data_args, tokenizer)
    decision = None
    if training_args.decision_weight != 1.0:
        marker, decisions = decision_marker(data, tokenizer, training_args.decision_weight, data_args.template)
        decision = (marker, training_args.decision_weight)

    set_seed(training_args.seed)  # LoRA init and dropout
    model = load_base_model(model_path, model_args, precision)
    gradient_checkpointing = training_args.gradient_checkpointing and not training_args.disable_gradient_checkpointing
    if gradient_checkpointing:
        enable_gradient_checkpointing(model)
    model = attach_lora(model, model_args, finetune_args)
    trainable, total = count_parameters(model)
    lean_swiglu(model)
    fused_head = use_fused_head(model, training_args)
    checkpointing_label = ""
    if gradient_checkpointing:
        kept, layers = plan_checkpointing(model, training_args.checkpoint_layers, model.config.vocab_size, fused_head)
        checkpointing_label = " + gradient checkpointing" + (f" ({kept} of {layers} layers)" if kept < layers else "")

    plan = compute_plan(
        samples=len(data.train),
        eval_samples=len(data.eval),
        tokens=data.tokens,
        trained_tokens=data.trained_tokens,
        per_device_batch=training_args.per_device_train_batch_size,
        gradient_accumulation=training_args.gradient_accumulation_steps,
        world_size=state.num_processes,
        epochs=training_args.num_train_epochs,
        max_steps=training_args.max_steps,
        warmup_steps=training_args.warmup_steps,
        warmup_ratio=training_args.warmup_ratio,
        trainable_params=trainable,
        total_params=total,
        device=precision.device_name,
        dtype=precision.label + checkpointing_label,
        adapted_layers=adapted_layers_label(model),
        packed_samples=data.packed_samples,
    )
    if main:
        print_plan(console, plan, model_path, data)
        if decision is not None:
            console.print(f"  decisions     {decisions} tokens after {data.call_close} weigh "
                          f"{training_args.decision_weight:g}x in the loss", highlight=False, markup=False)
        if resume_from is not None:
            console.print(f"  resuming      from {resume_from}")
    if not training_args.do_train:
        return TrainResult(adapter_dir=None, plan=plan)

    hf_args = build_hf_arguments(training_args, plan, precision, has_eval=bool(data.eval))
    trainer = ToolTuneTrainer(
        model=model,
        args=hf_args,
        train_dataset=EncodedDataset(data.train),
        eval_dataset=EncodedDataset(data.eval) if data.eval else None,
        data_collator=PadToLongestCollator(tokenizer.pad_token_id),
        group_by_length=training_args.group_by_length,
        trained_positions_only=not training_args.full_logits,
        fused_head=fused_head,
        loraplus_lr_ratio=finetune_args.loraplus_lr_ratio,
        cache_prompt=training_args.cache_prompt,
        decision=decision,
    )
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(JsonlLogCallback(output_dir))
    trainer.add_callback(RichProgressCallback(trainer, console))

    output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    metrics = dict(output.metrics)
    # A final eval loss when asked for (do_eval) or when evals are on; `eval_strategy: no` means none, as in
    # LLaMA-Factory — on the demo it was a 70 s pass over the held-out split that the pipeline scores by tool calls.
    evals_on = getattr(hf_args.eval_strategy, "value", hf_args.eval_strategy) != "no"
    if data.eval and (training_args.do_eval or evals_on):
        metrics.update(trainer.evaluate())
    _save_final(trainer, tokenizer, output_dir, data.chat_template)

    result = TrainResult(adapter_dir=output_dir, plan=plan, metrics=metrics, resumed_from=resume_from)
    if trainer.is_world_process_zero():
        records = read_log(output_dir / LOG_FILE)
        result.log_file = output_dir / LOG_FILE
        if finetune_args.plot_loss:
            from tooltune.train.plot import plot_loss

            result.plot_file = plot_loss(records, output_dir / PLOT_FILE, title=f"{model_path.name} LoRA")
        from tooltune.atomic import write_text

        summary = {
            "plan": plan.to_dict(),
            "metrics": metrics,
            "resumed_from": str(resume_from) if resume_from else None,
        }
        write_text(output_dir / RESULTS_FILE, json.dumps(summary, indent=2, default=str) + "\n")
        console.print(summary_line(trainer, metrics, time.monotonic() - started, output_dir, resume_from))
    trainer.accelerator.wait_for_everyone()
    if trainer.head is not None:
        trainer.head.remove()
    return result


def use_fused_head(model: Any, training_args: TrainArguments) -> bool:
    """The fused LM head + loss (``tooltune.train.loss``) when the head is frozen, the model returns its head's output
    untouched (checked on a short input), and no sharding engine manages the weights (DeepSpeed and FSDP gather them
    in their own hooks; there the plain trained-positions head is used)."""
    from tooltune.train.loss import find_lm_head, fused_head_matches, lm_head_is_frozen

    if training_args.full_logits or training_args.deepspeed or os.environ.get("ACCELERATE_USE_FSDP") == "true":
        return False
    lm_head = find_lm_head(model)
    if lm_head is None or not lm_head_is_frozen(lm_head) or getattr(lm_head, "weight", None) is None:
        return False
    return fused_head_matches(model, lm_head, model.config.vocab_size, lm_head.weight.device)


def summary_line(trainer: Any, metrics: dict[str, Any], seconds: float, output_dir: Path,
                 resumed_from: Path | None = None) -> str:
    runtime = max(float(metrics.get("train_runtime", seconds)), 1e-9)
    world = trainer.accelerator.num_processes
    tokens = trainer.tokens_seen * world
    trained = trainer.trained_tokens_seen * world
    loss = metrics.get("train_loss")
    initial = checkpoint_step(resumed_from)
    steps = f"{trainer.state.global_step} steps"
    if initial:
        steps = f"{trainer.state.global_step - initial} of {trainer.state.global_step} steps (resumed at {initial})"
    parts = [
        f"trained {steps} in {runtime:.0f}s",
        f"{tokens / runtime:,.0f} tokens/s ({trained / runtime:,.0f} trained/s)",
    ]
    if loss is not None:
        parts.append(f"mean loss {loss:.4f}")
    if "eval_loss" in metrics:
        parts.append(f"eval loss {metrics['eval_loss']:.4f}")
    parts.append(f"adapter → {output_dir}")
    return "[green]✓[/green] " + " · ".join(parts)
