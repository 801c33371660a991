"""``tooltune train`` runs unchanged under ``torchrun``: two CPU processes with the gloo backend on a tiny model."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest
from test_train_support import cli_env, seed_argv, write_mini_dataset

from tooltune.train.callbacks import read_log


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_ddp_on_cpu(tmp_path, tiny_llama_dir):
    data_dir = write_mini_dataset(tmp_path / "data")
    out = tmp_path / "out"
    argv = seed_argv(
        tiny_llama_dir,
        data_dir,
        out,
        per_device_train_batch_size=1,
        gradient_accumulation_steps=2,
        num_train_epochs=1,
        save_steps=2,
    )
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        "-m",
        "tooltune",
        "train",
        *argv,
    ]
    proc = subprocess.run(command, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    # 12 samples over 2 processes × batch 1 → 6 batches each; accumulation 2 → 3 optimizer steps.
    assert "1 × 2 × 2 devices = 4" in proc.stdout
    assert "3/epoch × 1 epochs = 3 total" in proc.stdout
    assert proc.stdout.count("tooltune train ·") == 1  # the plan is printed by the main process only
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    assert (out / "checkpoint-2" / "rng_state_0.pth").is_file() and (out / "checkpoint-2" / "rng_state_1.pth").is_file()
    records = [r for r in read_log(out / "trainer_log.jsonl") if "loss" in r]
    assert [r["step"] for r in records] == [1, 2, 3]
    plan = json.loads((out / "train_results.json").read_text())["plan"]
    assert records[-1]["tokens"] == plan["tokens"]  # token counts summed over both processes: one epoch of data
    assert (out / "adapter_model.safetensors").is_file()
