"""`tooltune run` end to end on a tiny random model: every stage for real, a re-run that skips everything, and a
training run killed with SIGKILL that the next `tooltune run` resumes from its last checkpoint."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tooltune.pipeline.manifest import read_manifest
from tooltune.pipeline.stages import STAGE_NAMES

# Wide lines: rich wraps at 80 columns when not on a terminal, which would split the messages asserted on.
ENV = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "COLUMNS": "400"}


def write_config(path: Path, model_dir: Path, run_dir: Path, **overrides: object) -> Path:
    config = {
        "model_name_or_path": str(model_dir),
        "dataset": "glaive_toolcall_en_demo",
        "template": "qwen",
        "cutoff_len": 512,
        "max_samples": 24,
        "val_size": 4,
        "lora_target": "all",
        "lora_rank": 4,
        "per_device_train_batch_size": 1,
        "gradient_accumulation_steps": 1,
        "max_steps": 6,
        "learning_rate": 1.0e-3,
        "logging_steps": 1,
        "save_steps": 3,
        "gradient_checkpointing": False,
        "quantize": "Q8_0,Q4_K_M",
        "serve_name": "tiny-toolcall",
        "eval_max_new_tokens": 24,
        "eval_max_cases": 4,
        "gguf_report_tokens": 256,
        "ship_adapter": True,
        "run_dir": str(run_dir),
    } | overrides
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def tooltune(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tooltune", *args], capture_output=True, text=True, timeout=timeout, env=ENV
    )


def test_run_end_to_end_then_rerun_skips_every_stage(tiny_llama_dir: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    config = write_config(tmp_path / "pipeline.yaml", tiny_llama_dir, run_dir)
    first = tooltune("run", str(config))
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]

    manifest = read_manifest(run_dir)
    stages = manifest["stages"]
    assert list(stages) == STAGE_NAMES
    for name, record in stages.items():
        assert record["status"] == "done", (name, record.get("error"))
        assert record["wall_seconds"] > 0 and record["peak_rss_bytes"] > 0
    assert manifest["config"]["learning_rate"] == 1.0e-3
    assert {"torch", "transformers", "tooltune"} <= set(manifest["versions"])

    # The outputs every later step of the seed needs, each in its stage's directory.
    preview = (run_dir / "preview" / "preview.txt").read_text()
    assert "Input tokens: [" in preview and "Labels: [" in preview and "<|im_start|>assistant" in preview
    assert (run_dir / "train" / "adapter_model.safetensors").is_file()
    assert (run_dir / "export" / "model" / "config.json").is_file()
    assert (run_dir / "gguf" / "model-f16.gguf").stat().st_size > 1_000_000
    for qtype in ("Q8_0", "Q4_K_M"):
        assert (run_dir / "quantize" / f"model-{qtype}.gguf").is_file()
    modelfile = (run_dir / "modelfile" / "Modelfile").read_text()
    assert "FROM" in modelfile and "model-Q8_0.gguf" in modelfile and "PARAMETER stop" in modelfile
    # A Go TEMPLATE only where one is proven equal to the GGUF's chat template; otherwise the report says why.
    assert "TEMPLATE" in modelfile or stages["modelfile"]["metrics"]["warnings"]
    # The unmerged way: base Q8_0 + LoRA GGUF, a Modelfile with ADAPTER that `tooltune serve` accepts.
    from tooltune.gguf.adapter import check_adapter_gguf
    from tooltune.serve.modelfile import parse_modelfile

    unmerged = parse_modelfile(run_dir / "adapter_gguf" / "Modelfile")
    assert unmerged.from_.name == "base-Q8_0.gguf" and [a.name for a in unmerged.adapters] == ["adapter-f16.gguf"]
    assert check_adapter_gguf(unmerged.adapters[0], unmerged.from_).n_pairs > 0
    adapter_rows = stages["adapter_gguf"]["metrics"]["rows"]  # the report's adapter-vs-merged rows
    assert [row["model"] for row in adapter_rows] == ["adapter + base F16", "adapter + base Q8_0"]
    assert all(row["all_cases"] == 4 for row in adapter_rows)
    assert [(c["type"], c["merged_row"]) for c in stages["adapter_gguf"]["metrics"]["compare"]] == [
        ("F16", "tuned f16"), ("Q8_0", "tuned Q8_0")]

    models = [row["model"] for row in stages["eval"]["metrics"]["rows"] + stages["eval_quants"]["metrics"]["rows"]]
    assert len(models) == 4  # base, tuned f16, Q8_0, Q4_K_M
    for row in stages["eval"]["metrics"]["rows"] + stages["eval_quants"]["metrics"]["rows"]:
        assert row["all_cases"] == 4  # every model scored on the same held-out turns

    report = (run_dir / "report.md").read_text()
    for heading in (
        "## Stages",
        "## Training",
        "## Tool-calling accuracy",
        "## GGUF files",
        "## Modelfile",
        "## Serve",
        "## Adapter (unmerged)",
    ):
        assert heading in report
    assert "tooltune serve" in report and "ollama create tiny-toolcall" in report
    for kind in ("F16", "Q8_0"):  # adapter vs merged, each row with its eval figures and size
        for shipped in ("merged", "base + adapter"):
            assert re.search(rf"\| {kind} \| {re.escape(shipped)} \| \d+% \(\d+/\d+\)", report), (kind, shipped)
    assert (run_dir / "loss.png").stat().st_size > 1000 and (run_dir / "eval.png").stat().st_size > 1000
    for name in STAGE_NAMES[:-1]:
        assert f"| {name} | done |" in report

    second = tooltune("run", str(config))
    assert second.returncode == 0, second.stderr[-4000:]
    after = read_manifest(run_dir)["stages"]
    assert second.stdout.count("skipped, inputs unchanged") == len(STAGE_NAMES)
    assert "0 stage(s) ran" in second.stdout
    for name in STAGE_NAMES:
        assert after[name]["started"] == stages[name]["started"]  # not touched at all

    # A changed quantization list re-runs only the stages that depend on it.
    third = tooltune("run", str(config), "--quantize", "Q8_0")
    assert third.returncode == 0, third.stderr[-4000:]
    redone = {n for n, r in read_manifest(run_dir)["stages"].items() if r["started"] != stages[n]["started"]}
    assert redone == {"quantize", "eval_quants", "modelfile", "report"}

    # Scoring only the quantized base + adapter (half the adapter stage's eval time) re-runs that stage alone.
    fourth = tooltune("run", str(config), "--quantize", "Q8_0", "--adapter_eval", "quant")
    assert fourth.returncode == 0, fourth.stderr[-4000:]
    adapter_stage = read_manifest(run_dir)["stages"]["adapter_gguf"]["metrics"]
    assert [row["model"] for row in adapter_stage["rows"]] == ["adapter + base Q8_0"]
    assert [(c["type"], c["merged_row"]) for c in adapter_stage["compare"]] == [("Q8_0", "tuned Q8_0")]
    report = (run_dir / "report.md").read_text()
    assert re.search(r"\| Q8_0 \| base \+ adapter \| \d+% ", report) and "| F16 | base + adapter |" not in report


def test_failed_stage_stops_with_its_error_and_keeps_earlier_outputs(tiny_llama_dir: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    broken = tmp_path / "my_eval.json"
    broken.write_text('[{"conversations": [{"from": "human", "value": "hi"}', encoding="utf-8")  # cut off
    config = write_config(
        tmp_path / "pipeline.yaml",
        tiny_llama_dir,
        run_dir,
        max_steps=2,
        val_size=0,
        quantize="",
        eval_dataset=str(broken),
    )
    result = tooltune("run", str(config))
    assert result.returncode == 1
    assert "stage 'eval' failed" in result.stderr and "my_eval.json" in result.stderr
    assert "Traceback" not in result.stderr
    stages = read_manifest(run_dir)["stages"]
    assert [stages[n]["status"] for n in ("preview", "train", "export", "gguf", "eval")] == [
        "done",
        "done",
        "done",
        "done",
        "failed",
    ]
    assert "modelfile" not in stages and "report" not in stages
    assert (run_dir / "gguf" / "model-f16.gguf").is_file()
    assert "Traceback" in (run_dir / "eval" / "error.log").read_text()


def test_config_typos_fail_before_training(tiny_llama_dir: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / "pipeline.yaml", tiny_llama_dir, tmp_path / "run", gguf_outtype="q3_nonsense")
    result = tooltune("run", str(config))
    assert result.returncode == 1 and "gguf_outtype 'q3_nonsense' is not one of" in result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_training_killed_mid_run_resumes_from_last_checkpoint(tiny_llama_dir: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    config = write_config(
        tmp_path / "pipeline.yaml", tiny_llama_dir, run_dir, max_steps=12, save_steps=2, val_size=0, quantize=""
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "tooltune", "run", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=ENV,
    )
    checkpoint = run_dir / "train" / "checkpoint-2"
    deadline = time.monotonic() + 240
    while not checkpoint.is_dir() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)  # no chance to clean up: the worst case
    process.wait()
    assert checkpoint.is_dir(), "training never reached its first checkpoint"
    at_kill = read_manifest(run_dir)["stages"]
    killed = at_kill["train"]
    assert killed["status"] == "running"
    assert not (run_dir / "train" / "adapter_model.safetensors").exists(), "training finished before the kill"

    result = tooltune("run", str(config))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    stages = read_manifest(run_dir)["stages"]
    train = stages["train"]
    assert train["status"] == "done" and train["attempts"] == 2
    assert train["metrics"]["resumed_from"].startswith("checkpoint-")
    assert "resuming training from checkpoint-" in result.stdout
    assert stages["preview"]["started"] == at_kill["preview"]["started"]  # preview was skipped, not redone
    steps = [point[0] for point in train["metrics"]["loss"]]
    assert steps == sorted(set(steps)) and steps[-1] == 12  # one curve across both attempts, no step twice
    state = json.loads((run_dir / "train" / "checkpoint-12" / "trainer_state.json").read_text())
    assert state["global_step"] == 12
