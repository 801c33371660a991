"""``tooltune vllm-command``: print (or ``--write``) the ``vllm serve`` command that returns structured tool calls."""

from __future__ import annotations

from pathlib import Path

import typer


def _template_text(chat_template: str | None, template: str | None, model: str) -> str | None:
    """The fine-tune's chat template from --chat-template FILE or --template NAME (None: the checkpoint's own)."""
    from tooltune.errors import TooltuneError

    if chat_template:
        path = Path(chat_template)
        if not path.is_file():
            raise TooltuneError(f"--chat-template {chat_template}: no such file")
        return path.read_text(encoding="utf-8")
    if template:
        from tooltune.data import load_tokenizer
        from tooltune.templates import get_template

        if template == "jinja":
            return None  # the checkpoint's own chat template is already what it was trained with
        return get_template(template, load_tokenizer(model)).jinja_chat_template
    return None


def register(app: typer.Typer) -> None:
    @app.command(
        name="vllm-command",
        help="Print the `vllm serve` command for a merged/quantized checkpoint or a LoRA adapter, with tool-call "
        "parsing on; --write saves it as a script.",
    )
    def vllm_command(
        model: str = typer.Argument(..., help="Checkpoint directory: merged, vllm-export output, or LoRA adapter."),
        base: str = typer.Option(
            None, "--base", "--model_name_or_path", "--model-name-or-path",
            help="Base model (for an adapter: overrides adapter_config.json; for a merged model: compare templates).",
        ),
        served_model_name: str = typer.Option(
            None, "--served-model-name", "--served_model_name", "--name", help="Model name clients request."
        ),
        template: str = typer.Option(None, "--template", help="Training template name (e.g. qwen)."),
        chat_template: str = typer.Option(None, "--chat-template", "--chat_template", help="Jinja chat template file."),
        tool_call_parser: str = typer.Option(
            None, "--tool-call-parser", "--tool_call_parser", help="Override the detected vLLM tool-call parser."
        ),
        host: str = typer.Option("127.0.0.1", "--host"),
        port: int = typer.Option(8000, "--port"),
        max_model_len: int = typer.Option(None, "--max-model-len", "--max_model_len"),
        tensor_parallel_size: int = typer.Option(None, "--tensor-parallel-size", "--tensor_parallel_size"),
        gpu_memory_utilization: float = typer.Option(None, "--gpu-memory-utilization", "--gpu_memory_utilization"),
        write: str = typer.Option(None, "--write", help="Also save the command as an executable bash script."),
    ) -> None:
        from tooltune.vllm.command import build_vllm_command, write_script

        tokenizer_source = base if template and base and not Path(model, "config.json").is_file() else model
        command = build_vllm_command(
            model,
            base=base,
            served_model_name=served_model_name,
            chat_template=_template_text(chat_template, template, tokenizer_source),
            tool_call_parser=tool_call_parser,
            host=host,
            port=port,
            max_model_len=max_model_len,
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            script_path=Path(write) if write else None,
        )
        for note in command.notes:
            typer.echo(f"# {note}", err=True)
        typer.echo(command.shell())
        if write:
            path = write_script(command, write)
            extra = f" (+ {', '.join(str(p) for p in command.written_files)})" if command.written_files else ""
            typer.echo(f"wrote {path}{extra}", err=True)
