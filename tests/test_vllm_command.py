"""`tooltune vllm-command`: the `vllm serve` line for merged, adapter and custom-template checkpoints."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tooltune.chat_template import load_from_tokenizer_dir
from tooltune.cli import app
from tooltune.vllm.command import (
    VllmCommandError,
    build_vllm_command,
    inspect_checkpoint,
    lora_rank_for_vllm,
    tool_call_parser_for,
    write_script,
)

REPO_TEMPLATES = Path(__file__).parent.parent / "src" / "tooltune" / "resources" / "templates"


def _flag(argv: list[str], name: str) -> str:
    assert name in argv, f"{name} missing from {argv}"
    return argv[argv.index(name) + 1]


def _make_adapter(base_dir: Path, out: Path, rank: int, tokenizer_source: Path, template: str | None = None) -> Path:
    """A real PEFT LoRA adapter on the tiny base, saved as training saves it (with its tokenizer)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base_dir, use_safetensors=True)
    peft_model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj"]))
    peft_model.save_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    if template is not None:
        tokenizer.chat_template = template
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def qwen_template() -> str:
    return (REPO_TEMPLATES / "qwen.jinja").read_text(encoding="utf-8")


def test_merged_qwen_checkpoint_gets_hermes_parser_and_no_template_override(tiny_qwen2_dir: Path) -> None:
    command = build_vllm_command(tiny_qwen2_dir, served_model_name="my-agent", port=8123)
    argv = command.argv
    assert argv[:3] == ["vllm", "serve", str(tiny_qwen2_dir)]
    assert "--enable-auto-tool-choice" in argv
    assert _flag(argv, "--tool-call-parser") == "hermes"
    assert _flag(argv, "--served-model-name") == "my-agent"
    assert _flag(argv, "--host") == "127.0.0.1"
    assert _flag(argv, "--port") == "8123"
    assert "--chat-template" not in argv  # vLLM already renders with the checkpoint's own (training) template
    assert "--enable-lora" not in argv


def test_default_served_name_is_the_directory_name(tiny_qwen2_dir: Path) -> None:
    argv = build_vllm_command(tiny_qwen2_dir).argv
    assert _flag(argv, "--served-model-name") == tiny_qwen2_dir.name


def test_adapter_gets_enable_lora_with_rank_rounded_to_vllm_values(tiny_qwen2_dir: Path, tmp_path: Path) -> None:
    adapter = _make_adapter(tiny_qwen2_dir, tmp_path / "adapter", rank=12, tokenizer_source=tiny_qwen2_dir)
    command = build_vllm_command(adapter, served_model_name="agent")
    argv = command.argv
    assert argv[2] == str(tiny_qwen2_dir)  # the base is what vLLM loads; the adapter rides on it
    assert "--enable-lora" in argv
    assert _flag(argv, "--lora-modules") == f"agent={adapter}"
    assert _flag(argv, "--max-lora-rank") == "16"
    assert _flag(argv, "--tool-call-parser") == "hermes"
    assert _flag(argv, "--served-model-name") != "agent"  # the bare base must not shadow the fine-tune's name
    assert "--chat-template" not in argv  # adapter and base carry the same template
    assert any("rounded up" in note for note in command.notes)


def test_adapter_trained_with_another_template_pins_it(tiny_llama_dir: Path, tmp_path: Path,
                                                       qwen_template: str) -> None:
    # SmolLM2's own template has no tools; the fine-tune was trained with the qwen layout.
    assert "<tool_call>" not in (load_from_tokenizer_dir(tiny_llama_dir) or "")
    adapter = _make_adapter(tiny_llama_dir, tmp_path / "adapter", rank=8, tokenizer_source=tiny_llama_dir,
                            template=qwen_template)
    argv = build_vllm_command(adapter).argv
    pinned = Path(_flag(argv, "--chat-template"))
    assert pinned == adapter / "chat_template.jinja"  # the adapter's own file, not a copy
    assert pinned.read_text(encoding="utf-8") == qwen_template
    assert _flag(argv, "--tool-call-parser") == "hermes"  # from the template's <tool_call>, not llama's default
    assert _flag(argv, "--max-lora-rank") == "8"


def test_merged_with_custom_template_writes_it_beside_the_script(tiny_llama_dir: Path, tmp_path: Path,
                                                                 qwen_template: str) -> None:
    script = tmp_path / "serve_agent.sh"
    command = build_vllm_command(tiny_llama_dir, chat_template=qwen_template, script_path=script)
    pinned = Path(_flag(command.argv, "--chat-template"))
    assert pinned == tmp_path / "serve_agent.chat_template.jinja"
    assert pinned.read_text(encoding="utf-8") == qwen_template
    assert command.written_files == [pinned]
    assert _flag(command.argv, "--tool-call-parser") == "hermes"


def test_merged_compared_with_base_pins_template_only_when_it_differs(tiny_llama_dir: Path, tiny_qwen2_dir: Path,
                                                                      tmp_path: Path, qwen_template: str) -> None:
    merged = tmp_path / "merged"
    shutil.copytree(tiny_llama_dir, merged)
    (merged / "chat_template.jinja").write_text(qwen_template, encoding="utf-8")
    argv = build_vllm_command(merged, base=tiny_llama_dir).argv
    assert _flag(argv, "--chat-template") == str(merged / "chat_template.jinja")
    same = build_vllm_command(tiny_qwen2_dir, base=tiny_qwen2_dir).argv
    assert "--chat-template" not in same


@pytest.mark.parametrize(
    ("marker_template", "model_type", "parser"),
    [
        ("{{ '<tool_call>' }}", "qwen2", "hermes"),
        ("<|start_header_id|>ipython<|python_tag|>{{ x }}", "llama", "llama3_json"),
        ("{{ '[TOOL_CALLS]' }}", "mistral", "mistral"),
        ("<tool_call>\n<function=name>", "qwen3_moe", "qwen3_coder"),
        ("<|tool_call|>", "granite", "granite"),
        ("no tool syntax", "qwen2", "hermes"),
        ("no tool syntax", "llama", "llama3_json"),
        (None, "gpt2", None),
    ],
)
def test_parser_detection(marker_template: str | None, model_type: str, parser: str | None) -> None:
    assert tool_call_parser_for(marker_template, model_type) == parser


def test_lora_rank_rounding() -> None:
    assert [lora_rank_for_vllm(r) for r in (1, 2, 8, 9, 64, 300, 512)] == [1, 8, 8, 16, 64, 320, 512]
    with pytest.raises(VllmCommandError, match="exceeds"):
        lora_rank_for_vllm(1024)


def test_errors_name_the_directory_and_reason(tmp_path: Path, tiny_qwen2_dir: Path) -> None:
    gguf_dir = tmp_path / "gguf"
    gguf_dir.mkdir()
    (gguf_dir / "model.Q4_K_M.gguf").write_bytes(b"GGUF")
    with pytest.raises(VllmCommandError, match="GGUF.*vllm-export"):
        build_vllm_command(gguf_dir)
    with pytest.raises(VllmCommandError, match="not a directory"):
        build_vllm_command(tmp_path / "missing")
    bad_adapter = tmp_path / "bad_adapter"
    bad_adapter.mkdir()
    (bad_adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "x"}))
    with pytest.raises(VllmCommandError, match="'r'"):
        inspect_checkpoint(bad_adapter)
    gpt2 = tmp_path / "gpt2"
    shutil.copytree(tiny_qwen2_dir, gpt2)
    config = json.loads((gpt2 / "config.json").read_text())
    (gpt2 / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    (gpt2 / "chat_template.jinja").write_text("{{ messages[0].content }}")
    with pytest.raises(VllmCommandError, match="--tool-call-parser"):
        build_vllm_command(gpt2)
    assert _flag(build_vllm_command(gpt2, tool_call_parser="pythonic").argv, "--tool-call-parser") == "pythonic"


def test_written_script_runs_the_exact_argv(tiny_qwen2_dir: Path, tmp_path: Path) -> None:
    """The script, executed by bash, hands vllm exactly the argv tooltune built (quoting survives)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    recorder = bin_dir / "vllm"
    recorder.write_text(f"#!{sys.executable}\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n")
    recorder.chmod(0o755)
    command = build_vllm_command(tiny_qwen2_dir, served_model_name="agent with space", max_model_len=4096)
    script = write_script(command, tmp_path / "serve.sh")
    assert os.access(script, os.X_OK)
    assert script.read_text().startswith("#!/usr/bin/env bash")
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    run = subprocess.run([str(script), "--seed", "1"], capture_output=True, text=True, env=env, check=True)
    assert json.loads(run.stdout) == command.argv[1:] + ["--seed", "1"]


def test_cli_prints_and_writes(tiny_llama_dir: Path, tmp_path: Path) -> None:
    script = tmp_path / "serve.sh"
    result = CliRunner().invoke(
        app,
        ["vllm-command", str(tiny_llama_dir), "--template", "qwen", "--served_model_name", "agent",
         "--port", "9000", "--write", str(script)],
    )
    assert result.exit_code == 0, result.output
    assert "vllm serve" in result.stdout
    assert "--tool-call-parser hermes" in result.stdout
    assert "--chat-template" in result.stdout
    assert script.is_file()
    assert (tmp_path / "serve.chat_template.jinja").read_text(encoding="utf-8").count("<tool_call>") >= 1


def test_cli_error_is_one_line(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "tooltune", "vllm-command", str(tmp_path / "nope")],
        capture_output=True, text=True, env={**os.environ, "COLUMNS": "300"},
    )
    assert run.returncode == 1
    assert "not a directory" in run.stderr
    assert "Traceback" not in run.stderr
