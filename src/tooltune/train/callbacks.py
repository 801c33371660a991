"""What a user sees and keeps during training: a rich progress bar (loss, lr, tokens/s) and a JSONL log.

Both run on the main process only. The JSONL log (``trainer_log.jsonl``, LLaMA-Factory's name) gets one line per
logging step; after a resume it is cut back to the checkpoint's step first, so the steps that are redone are not
logged twice.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Protocol

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

LOG_FILE = "trainer_log.jsonl"


class TokenCounter(Protocol):
    """What the callbacks read from the trainer: tokens processed by this process and the last micro-batch loss."""

    tokens_seen: int
    trained_tokens_seen: int
    last_loss: float | None


def read_log(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            records.append(json.loads(line))
    return records


class JsonlLogCallback(TrainerCallback):
    """Append every ``Trainer.log`` call (train and eval) as one JSON line."""

    def __init__(self, output_dir: str | Path) -> None:
        self.path = Path(output_dir) / LOG_FILE
        self.start = time.monotonic()

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        if not state.is_world_process_zero:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Resumed at step N: drop what the interrupted run logged after N, since those steps run again.
        kept = [r for r in read_log(self.path) if r.get("step", 0) <= state.global_step]
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
        os.replace(tmp, self.path)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kw: Any,
    ) -> None:
        if not state.is_world_process_zero or not logs:
            return
        record = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4)} | {
            k: v for k, v in logs.items() if isinstance(v, (int, float, str)) and k not in ("epoch",)
        }
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()
            os.fsync(fh.fileno())


class RichProgressCallback(TrainerCallback):
    """A progress bar over optimizer steps showing the latest loss, learning rate and tokens/s."""

    def __init__(self, counter: TokenCounter, console: Console | None = None) -> None:
        self.counter = counter
        self.console = console or Console()
        self.progress: Progress | None = None
        self.task: Any = None
        self.start_time = 0.0
        self.start_tokens = 0
        self.lr: float | None = None
        self.last_train_loss: float | None = None

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        if not state.is_world_process_zero:
            return
        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=state.max_steps, completed=state.global_step, stats="")
        self.start_time = time.monotonic()
        self.start_tokens = self.counter.tokens_seen

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        if self.progress is None:
            return
        elapsed = max(time.monotonic() - self.start_time, 1e-9)
        tokens_per_s = (self.counter.tokens_seen - self.start_tokens) / elapsed
        loss = self.counter.last_loss
        parts = []
        if loss is not None:
            parts.append(f"loss {loss:.4f}")
        if self.lr is not None:
            parts.append(f"lr {self.lr:.2e}")
        parts.append(f"{tokens_per_s:,.0f} tok/s")
        stats = " · ".join(parts)
        self.progress.update(self.task, completed=state.global_step, stats=stats)
        if not self.console.is_terminal:
            # Logs and CI cannot redraw a bar: print a plain line about every 10% of the run instead.
            every = max(1, state.max_steps // 10)
            if state.global_step % every == 0 or state.global_step == state.max_steps:
                self.console.print(f"train {state.global_step}/{state.max_steps} · {stats}", highlight=False)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kw: Any,
    ) -> None:
        if logs and "learning_rate" in logs:
            self.lr = float(logs["learning_rate"])
        if logs and "loss" in logs:
            self.last_train_loss = float(logs["loss"])

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
