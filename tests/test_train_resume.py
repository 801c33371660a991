"""Resume after an interrupted run continues with the same data order and identical losses — including after
``kill -9`` in the middle of training (the newest complete checkpoint is the one resumed from)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_train_support import cli_env, seed_argv, write_mini_dataset
from transformers import TrainerCallback

from tooltune.args import parse_into
from tooltune.data import DataArguments
from tooltune.train import train
from tooltune.train.args import FinetuningArguments, ModelArguments, TrainArguments
from tooltune.train.callbacks import read_log
from tooltune.train.checkpoints import checkpoints

CLASSES = (ModelArguments, DataArguments, FinetuningArguments, TrainArguments)
STEPS = 8


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _argv(model_dir: Path, data_dir: Path, out: Path, **overrides: object) -> list[str]:
    # Dropout makes the loss depend on the RNG state too, so an exact match proves RNG and data order are restored.
    settings = {
        "per_device_train_batch_size": 1,
        "gradient_accumulation_steps": 2,
        "max_steps": STEPS,
        "save_steps": 1,
        "lora_dropout": 0.1,
        "plot_loss": "false",
    }
    return seed_argv(model_dir, data_dir, out, **(settings | overrides))


def _losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_log(out / "trainer_log.jsonl") if "loss" in r}


class StopAt(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True


@pytest.mark.parametrize("group_by_length", ["false", pytest.param("true", marks=pytest.mark.slow)])
def test_resume_from_checkpoint_gives_identical_losses(tmp_path, tiny_llama_dir, monkeypatch, group_by_length):
    data_dir = write_mini_dataset(tmp_path / "data")
    reference = tmp_path / "reference"
    train(*parse_into(CLASSES, _argv(tiny_llama_dir, data_dir, reference, group_by_length=group_by_length)))
    expected = _losses(reference)
    assert sorted(expected) == list(range(1, STEPS + 1))

    # Interrupt after step 3 (stopping from a callback, in-process), then resume with the checkpoint's path.
    interrupted = tmp_path / "interrupted"
    from tooltune.train import trainer as trainer_module

    original_init = trainer_module.ToolTuneTrainer.__init__

    def init_with_stop(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.add_callback(StopAt(3))

    monkeypatch.setattr(trainer_module.ToolTuneTrainer, "__init__", init_with_stop)
    train(*parse_into(CLASSES, _argv(tiny_llama_dir, data_dir, interrupted, group_by_length=group_by_length)))
    monkeypatch.setattr(trainer_module.ToolTuneTrainer, "__init__", original_init)
    assert sorted(_losses(interrupted)) == [1, 2, 3]

    resumed = train(
        *parse_into(
            CLASSES,
            _argv(
                tiny_llama_dir,
                data_dir,
                interrupted,
                group_by_length=group_by_length,
                overwrite_output_dir="false",
                resume_from_checkpoint=interrupted / "checkpoint-3",
            ),
        )
    )
    assert resumed.resumed_from == interrupted / "checkpoint-3"
    got = _losses(interrupted)
    assert sorted(got) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        assert got[step] == pytest.approx(expected[step], rel=1e-6, abs=1e-7), step


@pytest.mark.slow
def test_kill_minus_9_then_rerun_resumes_identically(tmp_path, tiny_llama_dir):
    data_dir = write_mini_dataset(tmp_path / "data")
    reference = tmp_path / "reference"
    train(*parse_into(CLASSES, _argv(tiny_llama_dir, data_dir, reference)))
    expected = _losses(reference)

    out = tmp_path / "killed"
    # Without --overwrite_output_dir a rerun of the same command resumes (LLaMA-Factory's behaviour).
    argv = _argv(tiny_llama_dir, data_dir, out, overwrite_output_dir="false")
    command = [sys.executable, "-m", "tooltune", "train", *argv]
    proc = subprocess.Popen(command, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / "checkpoint-3").is_dir():
                break
            time.sleep(0.05)
        assert proc.poll() is None, "training ended before it could be killed: " + proc.stderr.read().decode()[-2000:]
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    survived = [p.name for p in checkpoints(out)]
    assert "checkpoint-3" in survived and f"checkpoint-{STEPS}" not in survived

    rerun = subprocess.run(command, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    # The summary line says where it resumed (read from the checkpoint, so every transformers 5.x says it).
    assert "resumed at " in rerun.stdout, rerun.stdout[-3000:]
    resumed_at = int(rerun.stdout.split("resumed at ")[1].split(")")[0])
    assert 3 <= resumed_at < STEPS
    # Piped output (a log, CI) cannot redraw a bar: progress comes as plain lines, ending at the last step.
    assert f"train {STEPS}/{STEPS} · loss" in rerun.stdout
    got = _losses(out)
    assert sorted(got) == list(range(1, STEPS + 1))  # steps redone after the checkpoint are logged once
    for step in range(1, STEPS + 1):
        assert got[step] == pytest.approx(expected[step], rel=1e-6, abs=1e-7), step
    assert (out / "adapter_model.safetensors").is_file()


def test_resumed_step_comes_from_the_checkpoint_itself(tmp_path):
    """Where a run resumed is read from the checkpoint's trainer_state.json, not from Trainer internals (transformers
    5.17 has no _initial_global_step: the summary line lost "resumed at N" there)."""
    from tooltune.train.checkpoints import checkpoint_step

    checkpoint = tmp_path / "checkpoint-3"
    checkpoint.mkdir()
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": 3, "max_steps": 8}))
    assert checkpoint_step(checkpoint) == 3 and checkpoint_step(None) == 0
