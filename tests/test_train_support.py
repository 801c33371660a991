"""Helpers for the training tests (no tests here): a small tool-calling dataset in the glaive/sharegpt shape the seed
uses, short enough that a tiny model trains on it in seconds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "description": "City name"}},
        "required": ["city"],
    },
}
CONVERT_TOOL = {
    "name": "convert_currency",
    "description": "Convert an amount between currencies",
    "parameters": {
        "type": "object",
        "properties": {"amount": {"type": "number"}, "from": {"type": "string"}, "to": {"type": "string"}},
        "required": ["amount", "from", "to"],
    },
}
CITIES = ["Paris", "Lima", "Oslo", "Tokyo", "Cairo", "Quito", "Perth", "Hanoi", "Dakar", "Riga", "Bern", "Doha"]


def mini_records(count: int = 12) -> list[dict]:
    records = []
    for i in range(count):
        city = CITIES[i % len(CITIES)]
        if i % 3 == 2:
            amount = 10 * (i + 1)
            conversations = [
                {"from": "human", "value": f"How much is {amount} USD in EUR?"},
                {
                    "from": "function_call",
                    "value": json.dumps(
                        {"name": "convert_currency", "arguments": {"amount": amount, "from": "USD", "to": "EUR"}}
                    ),
                },
                {"from": "observation", "value": json.dumps({"result": round(amount * 0.9, 2)})},
                {"from": "gpt", "value": f"{amount} USD is about {round(amount * 0.9, 2)} EUR."},
            ]
        else:
            conversations = [
                {"from": "human", "value": f"What's the weather in {city}?" + " Please be brief." * (i % 4)},
                {"from": "function_call", "value": json.dumps({"name": "get_weather", "arguments": {"city": city}})},
                {"from": "observation", "value": json.dumps({"temp_c": 10 + i, "sky": "clear"})},
                {"from": "gpt", "value": f"It is {10 + i} °C and clear in {city}."},
            ]
        records.append({"conversations": conversations, "tools": json.dumps([WEATHER_TOOL, CONVERT_TOOL])})
    return records


def write_mini_dataset(root: Path, count: int = 12) -> Path:
    """A dataset_info.json folder holding ``mini_tools`` (sharegpt, like the seed's glaive_toolcall_en_demo)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "mini_tools.json").write_text(json.dumps(mini_records(count), ensure_ascii=False), encoding="utf-8")
    info = {
        "mini_tools": {
            "file_name": "mini_tools.json",
            "formatting": "sharegpt",
            "columns": {"messages": "conversations", "tools": "tools"},
        }
    }
    (root / "dataset_info.json").write_text(json.dumps(info), encoding="utf-8")
    return root


def seed_argv(model_dir: Path, data_dir: Path, output_dir: Path, **overrides: object) -> list[str]:
    """The seed's training command, scaled down (tiny model, few samples, short cutoff)."""
    values: dict[str, object] = {
        "stage": "sft",
        "do_train": "true",
        "model_name_or_path": model_dir,
        "dataset": "mini_tools",
        "dataset_dir": data_dir,
        "template": "qwen",
        "finetuning_type": "lora",
        "lora_target": "q_proj,v_proj",
        "output_dir": output_dir,
        "overwrite_output_dir": "true",
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 2,
        "cutoff_len": 1024,
        "num_train_epochs": 2,
        "warmup_steps": 1,
        "learning_rate": 1e-2,
        "logging_steps": 1,
        "save_steps": 3,
        "gradient_checkpointing": "true",
    }
    values.update(overrides)
    argv: list[str] = []
    for key, value in values.items():
        if value is None:
            continue
        argv += [f"--{key}", str(value)]
    return argv


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    env.setdefault("OMP_NUM_THREADS", "1")
    env["COLUMNS"] = "160"
    return env


def run_cli(argv: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tooltune", "train", *argv],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=timeout,
    )
