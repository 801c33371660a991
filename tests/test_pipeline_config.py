"""The pipeline YAML: seed/LLaMA-Factory keys parse as-is, pipeline keys have defaults, mistakes are named."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tooltune.args import ArgumentError
from tooltune.commands.demo import demo_config_path
from tooltune.commands.run import RunArgumentError, split_stage_flags
from tooltune.pipeline.config import PipelineConfigError, default_serve_name, load_pipeline_config

# The seed's training command as a LLaMA-Factory YAML (model path shortened), plus two pipeline keys.
SEED_TRAIN_YAML = {
    "stage": "sft",
    "do_train": True,
    "model_name_or_path": "/root/autodl-tmp/model/Qwen/Qwen2.5-7B-Instruct",
    "dataset": "glaive_toolcall_en_demo",
    "template": "qwen",
    "finetuning_type": "lora",
    "lora_target": "q_proj,v_proj",
    "output_dir": "/root/autodl-tmp/tool_call_full",
    "overwrite_output_dir": True,
    "per_device_train_batch_size": 2,
    "gradient_accumulation_steps": 8,
    "cutoff_len": 4096,
    "num_train_epochs": 5,
    "warmup_steps": 20,
    "learning_rate": 5e-6,
    "logging_steps": 10,
    "save_steps": 30,
    "gradient_checkpointing": True,
    "bf16": True,
    "export_size": 2,
    "quantize": "q4_k_m, Q8_0",
}


def test_seed_training_yaml_is_a_pipeline_config(tmp_path: Path) -> None:
    path = tmp_path / "seed.yaml"
    path.write_text(yaml.safe_dump(SEED_TRAIN_YAML))
    config = load_pipeline_config([str(path), "--learning_rate", "1e-4", "val_size=0.1"])
    assert config.finetune.lora_target == ["q_proj", "v_proj"]
    assert config.training.learning_rate == 1e-4  # command line wins over the file
    assert config.training.bf16 is True and config.training.gradient_accumulation_steps == 8
    assert config.data.cutoff_len == 4096 and config.data.val_size == 0.1
    assert config.pipeline.quantize == ["Q4_K_M", "Q8_0"]
    assert config.pipeline.gguf_outtype == "f16"
    assert config.run_dir == Path("runs") / "seed"
    assert default_serve_name(config) == "toolcall-qwen2.5-7b-instruct"
    assert any("output_dir" in note for note in config.notes)  # said out loud, not silently ignored
    record = config.record()
    assert record["lora_target"] == ["q_proj", "v_proj"] and record["config_file"] == str(path)


def test_demo_config_parses_with_held_out_split() -> None:
    config = load_pipeline_config([str(demo_config_path())])
    assert config.model.model_name_or_path is None  # the embedded default model
    assert config.data.dataset == "glaive_toolcall_en_demo" and config.data.template == "qwen"
    assert config.data.val_size >= 20
    assert config.pipeline.quantize == ["Q4_K_M"]
    assert config.notes == []


def test_demo_can_ship_the_adapter_with_a_choice_of_scored_rows() -> None:
    demo = str(demo_config_path())
    assert load_pipeline_config([demo]).pipeline.ship_adapter is False  # each scored row costs one eval's time
    config = load_pipeline_config([demo, "--ship_adapter", "true", "--adapter-eval", "quant"])
    assert config.pipeline.ship_adapter is True and config.pipeline.adapter_eval == "quant"
    assert load_pipeline_config([demo, "--ship_adapter", "true"]).pipeline.adapter_eval == "all"
    with pytest.raises(ArgumentError, match="adapter_eval"):
        load_pipeline_config([demo, "--adapter_eval", "some"])


def test_unknown_key_is_an_error_with_a_suggestion(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("dataset: x\nlearning_rat: 1e-3\n")
    with pytest.raises(ArgumentError, match="did you mean --learning_rate"):
        load_pipeline_config([str(path)])
    with pytest.raises(PipelineConfigError, match="not found"):
        load_pipeline_config([str(tmp_path / "missing.yaml")])
    empty = tmp_path / "empty.yaml"
    empty.write_text("template: qwen\n")
    with pytest.raises(PipelineConfigError, match="`dataset` is required"):
        load_pipeline_config([str(empty)])


def test_stage_flags_are_taken_out_of_argv() -> None:
    flags, rest = split_stage_flags(["p.yaml", "--from", "gguf", "--learning_rate", "1e-3"])
    assert flags == {"from": "gguf"} and rest == ["p.yaml", "--learning_rate", "1e-3"]
    flags, rest = split_stage_flags(["--only=report", "p.yaml"])
    assert flags == {"only": "report"} and rest == ["p.yaml"]
    with pytest.raises(RunArgumentError, match="--from needs a stage name"):
        split_stage_flags(["p.yaml", "--from"])


def test_cli_reports_a_bad_stage_name_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(f"dataset: glaive_toolcall_en_demo\nrun_dir: {tmp_path / 'run'}\n")
    result = subprocess.run(
        [sys.executable, "-m", "tooltune", "run", str(path), "--only", "quantise"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "400"},
    )
    assert result.returncode == 1
    assert "--only quantise: no such stage (did you mean 'quantize'?)" in result.stderr
    assert "Traceback" not in result.stderr
