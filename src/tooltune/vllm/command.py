"""Build the ``vllm serve`` command line for a checkpoint so tool calls come back structured.

vLLM only returns ``tool_calls`` when it is started with ``--enable-auto-tool-choice`` and the parser that matches
the way the model writes a call; a merged, a quantized and an adapter checkpoint each need slightly different flags.
Everything here is pure inspection of files on disk (no vLLM import), so the command can be built on a laptop and
run on the GPU box.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tooltune.atomic import write_text
from tooltune.chat_template import load_from_tokenizer_dir
from tooltune.default_model import cache_dir
from tooltune.errors import TooltuneError


class VllmCommandError(TooltuneError, ValueError):
    pass


# vLLM accepts only these values for --max-lora-rank (vllm/config/lora.py); an adapter's rank is rounded up.
VLLM_LORA_RANKS: tuple[int, ...] = (1, 8, 16, 32, 64, 128, 256, 320, 512)

# How a family writes a tool call, recognised in its chat template, and the vLLM parser that reads it back.
# Order matters: the first marker found wins, so the more specific markers come first.
TEMPLATE_MARKERS: tuple[tuple[str, str], ...] = (
    ("<function=", "qwen3_coder"),  # Qwen3-Coder's XML-ish calls (also contains <tool_call>)
    ("<｜tool▁calls▁begin｜>", "deepseek_v3"),
    ("<|action_start|><|plugin|>", "internlm"),
    ("[TOOL_CALLS]", "mistral"),
    ("<|tool_call|>", "granite"),
    ("functools[", "phi4_mini_json"),
    ("<|python_start|>", "llama4_pythonic"),
    ("<tool_call>", "hermes"),  # Qwen2.5 / Qwen3 / Hermes / the tooltune `qwen` template
    ("<|python_tag|>", "llama3_json"),  # Llama 3.1 / 3.2 / 3.3
    ('"parameters": dictionary of argument name and its value', "llama3_json"),
)

# Fallback when the chat template has no recognisable tool syntax: the family's usual parser.
MODEL_TYPE_PARSERS: dict[str, str] = {
    "qwen2": "hermes",
    "qwen2_moe": "hermes",
    "qwen3": "hermes",
    "qwen3_moe": "hermes",
    "llama": "llama3_json",
    "llama4": "llama4_pythonic",
    "mistral": "mistral",
    "mixtral": "mistral",
    "granite": "granite",
    "internlm2": "internlm",
    "jamba": "jamba",
    "deepseek_v3": "deepseek_v3",
    "phi3": "phi4_mini_json",
}

KNOWN_PARSERS: frozenset[str] = frozenset(MODEL_TYPE_PARSERS.values()) | {p for _, p in TEMPLATE_MARKERS} | {
    "pythonic",
    "xlam",
    "kimi_k2",
    "glm45",
    "minimax",
    "hunyuan_a13b",
    "openai",
    "qwen3_xml",
    "llama4_json",
    "deepseek_v31",
}


@dataclass
class VllmCommand:
    """A ``vllm serve`` invocation, plus the files it refers to that tooltune had to write."""

    argv: list[str]
    notes: list[str] = field(default_factory=list)
    written_files: list[Path] = field(default_factory=list)

    def shell(self, multiline: bool = True) -> str:
        """The command as a shell line, one flag per line so it reads like the seed's commands."""
        if not multiline:
            return shlex.join(self.argv)
        # Group each flag with its value(s) so a line never splits a pair.
        lines: list[list[str]] = [self.argv[:3]]
        for token in self.argv[3:]:
            if token.startswith("--"):
                lines.append([token])
            else:
                lines[-1].append(token)
        return " \\\n    ".join(shlex.join(parts) for parts in lines)

    def script(self) -> str:
        body = "\n".join(f"# {note}" for note in self.notes)
        header = "#!/usr/bin/env bash\n# Written by `tooltune vllm-command`.\n"
        return f"{header}{body}\nset -euo pipefail\nexec {self.shell()} \"$@\"\n"


@dataclass
class CheckpointInfo:
    """What a checkpoint directory is: full weights or a PEFT adapter, and the template it carries."""

    path: Path
    is_adapter: bool
    model_type: str | None
    chat_template: str | None
    chat_template_file: Path | None
    adapter_rank: int | None = None
    adapter_base: str | None = None
    quantization: str | None = None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise VllmCommandError(f"{path}: cannot read JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise VllmCommandError(f"{path}: expected a JSON object")
    return data


def inspect_checkpoint(path: str | Path) -> CheckpointInfo:
    """Read config / adapter_config / tokenizer files; fail with the reason when the directory is not servable."""
    path = Path(path)
    if not path.is_dir():
        raise VllmCommandError(f"{path}: not a directory (vLLM serves a Hugging Face checkpoint directory)")
    if any(path.glob("*.gguf")) and not (path / "config.json").is_file():
        raise VllmCommandError(f"{path}: holds GGUF files; vLLM needs safetensors (run `tooltune vllm-export` first)")
    template = load_from_tokenizer_dir(path)
    template_file = path / "chat_template.jinja"
    adapter_config = path / "adapter_config.json"
    if adapter_config.is_file():
        cfg = _read_json(adapter_config)
        rank = cfg.get("r")
        if not isinstance(rank, int) or rank <= 0:
            raise VllmCommandError(f"{adapter_config}: 'r' (the LoRA rank) is missing or not a positive integer")
        return CheckpointInfo(
            path=path,
            is_adapter=True,
            model_type=None,
            chat_template=template,
            chat_template_file=template_file if template_file.is_file() else None,
            adapter_rank=rank,
            adapter_base=cfg.get("base_model_name_or_path") or None,
        )
    config_file = path / "config.json"
    if not config_file.is_file():
        raise VllmCommandError(f"{path}: no config.json or adapter_config.json: not a model or adapter directory")
    config = _read_json(config_file)
    quant = config.get("quantization_config")
    return CheckpointInfo(
        path=path,
        is_adapter=False,
        model_type=config.get("model_type"),
        chat_template=template,
        chat_template_file=template_file if template_file.is_file() else None,
        quantization=quant.get("quant_method") if isinstance(quant, dict) else None,
    )


def tool_call_parser_for(chat_template: str | None, model_type: str | None) -> str | None:
    """The vLLM ``--tool-call-parser`` for how this template writes calls: the family's (``tooltune.families``) when
    the template is one tooltune knows, else by call marker, the model type only as a fallback."""
    from tooltune.families import detect

    family = detect.from_template(chat_template)
    if family is not None and family.vllm_tool_parser:
        return family.vllm_tool_parser
    if chat_template:
        for marker, parser in TEMPLATE_MARKERS:
            if marker in chat_template:
                return parser
    if model_type:
        return MODEL_TYPE_PARSERS.get(model_type)
    return None


def reasoning_parser_for(chat_template: str | None) -> str | None:
    """vLLM's ``--reasoning-parser`` for a family that writes ``<think>`` blocks (Qwen3, SmolLM3), else None."""
    from tooltune.families import detect

    family = detect.from_template(chat_template)
    return family.vllm_reasoning_parser if family is not None else None


def lora_rank_for_vllm(rank: int) -> int:
    for allowed in VLLM_LORA_RANKS:
        if rank <= allowed:
            return allowed
    raise VllmCommandError(f"LoRA rank {rank} exceeds vLLM's largest --max-lora-rank ({VLLM_LORA_RANKS[-1]})")


def _template_file_for(template: str, existing: Path | None, beside: Path | None, stem: str) -> tuple[Path, bool]:
    """A file holding ``template``: the checkpoint's own file when it matches, else one tooltune writes."""
    if existing is not None and existing.read_text(encoding="utf-8") == template:
        return existing, False
    digest = hashlib.sha256(template.encode("utf-8")).hexdigest()[:12]
    if beside is not None:
        target = beside / f"{stem}.chat_template.jinja"
    else:
        target = cache_dir() / "vllm" / f"chat_template.{digest}.jinja"
    write_text(target, template)
    return target, True


def build_vllm_command(
    model: str | Path,
    *,
    base: str | Path | None = None,
    served_model_name: str | None = None,
    chat_template: str | None = None,
    tool_call_parser: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_model_len: int | None = None,
    tensor_parallel_size: int | None = None,
    gpu_memory_utilization: float | None = None,
    extra_args: list[str] | None = None,
    script_path: Path | None = None,
    executable: str = "vllm",
) -> VllmCommand:
    """The ``vllm serve`` command for a merged/quantized checkpoint or an unmerged LoRA adapter.

    ``chat_template`` is the fine-tune's template text when the caller knows it (e.g. from ``--template qwen``);
    otherwise the one the checkpoint carries is taken as the fine-tune's. ``--chat-template`` is passed only when
    vLLM would otherwise render with a different one (the base model's), so the served prompt equals the trained one.
    ``script_path`` tells where a ``--write`` script goes, so a template file tooltune must write sits beside it.
    """
    info = inspect_checkpoint(model)
    notes: list[str] = []
    written: list[Path] = []
    beside = script_path.parent if script_path else None
    stem = script_path.stem if script_path else "vllm"

    if info.is_adapter:
        base_ref = str(base) if base else info.adapter_base
        if not base_ref:
            raise VllmCommandError(
                f"{info.path}/adapter_config.json names no base_model_name_or_path: pass --base MODEL_DIR_OR_ID"
            )
        base_path = Path(base_ref)
        base_template = load_from_tokenizer_dir(base_path) if base_path.is_dir() else None
        base_model_type = (
            _read_json(base_path / "config.json").get("model_type") if (base_path / "config.json").is_file() else None
        )
        serve_target = base_ref
        default_template = base_template  # vLLM renders with the *base* tokenizer's template for a LoRA request
        finetune_template = chat_template or info.chat_template
        template_existing = info.chat_template_file if chat_template is None else None
        model_type = base_model_type
        if not base_path.is_dir():
            notes.append(f"base {base_ref} is not a local directory: vLLM will fetch it from the Hub")
    else:
        serve_target = str(info.path)
        default_template = info.chat_template
        finetune_template = chat_template or info.chat_template
        template_existing = info.chat_template_file if chat_template is None else None
        model_type = info.model_type
        if base is not None:
            # A merged checkpoint normally carries the training template already; pin it explicitly when the
            # base's differs, so a tokenizer re-saved without it can never make vLLM fall back to the base layout.
            base_template = load_from_tokenizer_dir(Path(base)) if Path(base).is_dir() else None
            if finetune_template and finetune_template != base_template:
                default_template = base_template

    if finetune_template is None:
        raise VllmCommandError(
            f"{info.path}: no chat template found (chat_template.jinja or tokenizer_config.json); "
            "pass --template NAME or --chat-template FILE"
        )

    parser = tool_call_parser or tool_call_parser_for(finetune_template, model_type)
    if parser is None:
        raise VllmCommandError(
            f"{info.path}: cannot tell how this model writes tool calls (model_type {model_type!r}, no known marker "
            "in its chat template): pass --tool-call-parser NAME (see `vllm serve --help=tool-call-parser`)"
        )
    if tool_call_parser and tool_call_parser not in KNOWN_PARSERS:
        notes.append(f"tool-call parser {tool_call_parser!r} is not one tooltune knows; vLLM will check it")

    # For an adapter the name clients ask for is the LoRA module's; the base answers under its own name.
    name = served_model_name or info.path.name
    argv = [executable, "serve", serve_target, "--host", host, "--port", str(port)]
    if info.is_adapter:
        base_name = Path(serve_target).name
        if base_name == name:
            base_name = f"{base_name}-base"
        argv += ["--served-model-name", base_name]
        rank = lora_rank_for_vllm(info.adapter_rank or 0)
        argv += ["--enable-lora", "--lora-modules", f"{name}={info.path}", "--max-lora-rank", str(rank)]
        if rank != info.adapter_rank:
            notes.append(f"adapter rank {info.adapter_rank} rounded up to vLLM's --max-lora-rank {rank}")
        notes.append(f"request the fine-tune with model={name!r}; {base_name!r} is the bare base model")
    else:
        argv += ["--served-model-name", name]
    argv += ["--enable-auto-tool-choice", "--tool-call-parser", parser]
    reasoning = reasoning_parser_for(finetune_template)
    if reasoning:
        # Reasoning families: vLLM returns <think> text as reasoning_content, not as content or calls.
        argv += ["--reasoning-parser", reasoning]
    if finetune_template != default_template:
        template_path, created = _template_file_for(finetune_template, template_existing, beside, stem)
        if created:
            written.append(template_path)
        argv += ["--chat-template", str(template_path)]
        notes.append("the fine-tune's chat template differs from the one vLLM would use by default: pinned")
    if max_model_len:
        argv += ["--max-model-len", str(max_model_len)]
    if tensor_parallel_size:
        argv += ["--tensor-parallel-size", str(tensor_parallel_size)]
    if gpu_memory_utilization:
        argv += ["--gpu-memory-utilization", str(gpu_memory_utilization)]
    if info.quantization:
        notes.append(f"weights are {info.quantization}-quantized; vLLM reads the scheme from config.json")
    argv += list(extra_args or [])
    return VllmCommand(argv=argv, notes=notes, written_files=written)


def write_script(command: VllmCommand, path: str | Path) -> Path:
    """Save the command as an executable bash script (atomically)."""
    path = Path(path)
    write_text(path, command.script())
    path.chmod(0o755)
    return path
