"""LoRA SFT on transformers' Trainer + peft, with the loss on trained positions only and atomic checkpoints.

``ToolTuneTrainer`` changes a few things in the stock Trainer and nothing else, so ``accelerate launch`` /
``torchrun`` / DeepSpeed / FSDP work as they do upstream:

- ``compute_loss`` runs the LM head on trained positions only, fused with the loss (``tooltune.train.loss``);
- ``_save_checkpoint`` writes into a staging folder and renames the finished checkpoint into place;
- the train sampler can group samples by length with an order fixed by ``(seed, epoch)``;
- with ``cache_prompt`` each batch's untrained prompt runs without gradients (``tooltune.train.loss``);
- with ``decision`` the token after each call's closing marker weighs more in the loss (``decision_weight``);
- with ``loraplus_lr_ratio`` the optimizer gives the LoRA B matrices that multiple of the learning rate (LoRA+).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer

from tooltune.train.batching import EncodedDataset, LengthGroupedSampler
from tooltune.train.checkpoints import STAGING_DIR, promote
from tooltune.train.loss import TrainedPositionsHead, causal_lm_loss, find_lm_head, lm_head_is_frozen


class ToolTuneTrainer(Trainer):
    def __init__(self, *args: Any, trained_positions_only: bool = True, fused_head: bool = False,
                 group_by_length: bool = False, loraplus_lr_ratio: float | None = None, cache_prompt: bool = False,
                 decision: tuple[list[int], float] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.cache_prompt = cache_prompt
        self.decision = decision  # (call-close marker token ids, loss weight of the token after it), or None
        self.loraplus_lr_ratio = loraplus_lr_ratio
        self.group_by_length = group_by_length
        self.tokens_seen = 0  # input tokens (no padding) processed by this process
        self.trained_tokens_seen = 0  # tokens whose label is trained
        self.last_loss: float | None = None
        self._staging_root: Path | None = None
        self.head: TrainedPositionsHead | None = None
        lm_head = find_lm_head(self.model)
        if trained_positions_only and lm_head is not None and lm_head_is_frozen(lm_head):
            # A trainable head (e.g. --additional_target lm_head) must see every position for DDP to sync its grads.
            self.head = TrainedPositionsHead(lm_head, fused=fused_head)
        # Our compute_loss normalises by the trained tokens of the whole accumulated batch, so ask the Trainer to
        # count them (num_items_in_batch) and not to divide by the accumulation steps again.
        self.model_accepts_loss_kwargs = True

    # ---- loss -------------------------------------------------------------------------------------------------
    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        loss, outputs, trained = causal_lm_loss(model, inputs, self.head, num_items_in_batch, self.cache_prompt,
                                                self.decision)
        if model.training:
            self.tokens_seen += (
                int(inputs["attention_mask"].sum()) if "attention_mask" in inputs else inputs["input_ids"].numel()
            )
            self.trained_tokens_seen += trained
            scale = (num_items_in_batch / max(trained, 1)) if num_items_in_batch is not None else 1
            self.last_loss = float(loss.detach() * scale)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None and model.training:
            # num_items_in_batch counts trained tokens on every process; DDP averages gradients over processes.
            loss = loss * self.accelerator.num_processes
        return (loss, outputs) if return_outputs else loss

    # ---- LoRA+: B learns faster than A (Hayou et al. 2024; LLaMA-Factory's loraplus_lr_ratio) ------------------
    def create_optimizer(self) -> torch.optim.Optimizer:
        if self.loraplus_lr_ratio is None or self.optimizer is not None:
            return super().create_optimizer()
        lr = self.args.learning_rate
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        b_matrices = [p for n, p in named if "lora_B" in n]
        others = [p for n, p in named if "lora_B" not in n]
        groups = [{"params": others, "lr": lr, "weight_decay": self.args.weight_decay},
                  {"params": b_matrices, "lr": lr * self.loraplus_lr_ratio, "weight_decay": self.args.weight_decay}]
        optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(self.args, self.model)
        optimizer_kwargs.pop("lr", None)
        self.optimizer = optimizer_cls([g for g in groups if g["params"]], lr=lr, **optimizer_kwargs)
        return self.optimizer

    # ---- logging: add token throughput to every log record ----------------------------------------------------
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            counts = torch.tensor([self.tokens_seen, self.trained_tokens_seen], dtype=torch.float64)
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                counts = counts.to(self.args.device)
                torch.distributed.all_reduce(counts)
                counts = counts.cpu()
            logs = dict(logs)
            logs["tokens"] = int(counts[0])
            logs["trained_tokens"] = int(counts[1])
        super().log(logs, start_time)

    # ---- data order ------------------------------------------------------------------------------------------
    def _get_train_sampler(self, train_dataset: Any = None) -> torch.utils.data.Sampler | None:
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.group_by_length and isinstance(dataset, EncodedDataset):
            return LengthGroupedSampler(
                dataset.lengths(), self.args.per_device_train_batch_size * self.args.world_size, seed=self.args.seed
            )
        return super()._get_train_sampler(train_dataset)

    # ---- atomic checkpoints ----------------------------------------------------------------------------------
    def _get_output_dir(self, trial: Any) -> str:
        if self._staging_root is not None:
            return str(self._staging_root)
        return super()._get_output_dir(trial)

    def _save_checkpoint(self, model: torch.nn.Module, trial: Any) -> None:
        run_dir = Path(super()._get_output_dir(trial))
        self._staging_root = run_dir / STAGING_DIR
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging_root = None
        # Every process has written its RNG state into the staged folder before the rename.
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            from transformers.trainer_utils import rotate_checkpoints

            promote(run_dir / STAGING_DIR, run_dir, f"checkpoint-{self.state.global_step}")
            rotate_checkpoints(
                output_dir=str(run_dir),
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=False,
            )
        self.accelerator.wait_for_everyone()


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0
