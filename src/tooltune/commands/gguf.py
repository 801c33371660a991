"""``tooltune gguf``: Hugging Face checkpoint → GGUF (F16/BF16/F32/Q8_0), no llama.cpp checkout needed."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command(name="gguf", help="Convert a Hugging Face model dir (Llama, Qwen2, Qwen3) to GGUF, like llama.cpp's "
                                   "convert_hf_to_gguf.py.")
    def gguf_command(
        model_dir: Path = typer.Argument(..., help="Merged Hugging Face model directory (safetensors)."),
        outfile: Path = typer.Option(None, "--outfile", "--out-file", "--out_file", "-o",
                                     help="Output .gguf (default: MODEL_DIR/<name>-<type>.gguf)."),
        outtype: str = typer.Option("f16", "--outtype", "--out-type", "--out_type",
                                    help="f16 | bf16 | f32 | q8_0 | auto (the checkpoint's 16-bit type)."),
        chat_template: Path = typer.Option(None, "--chat-template", "--chat_template",
                                           help="Jinja file to store as tokenizer.chat_template instead of the "
                                                "tokenizer's own."),
        tokenizer_pre: str = typer.Option(None, "--tokenizer-pre", "--tokenizer_pre",
                                          help="llama.cpp pre-tokenizer name when the tokenizer is not recognised."),
        model_name: str = typer.Option(None, "--model-name", "--model_name", help="general.name in the file."),
    ) -> None:
        from rich.console import Console

        from tooltune.gguf.convert import convert

        template = chat_template.read_text(encoding="utf-8") if chat_template is not None else None
        target = outfile or model_dir / f"{model_dir.name}-{outtype.upper()}.gguf"
        result = convert(model_dir, target, outtype.lower(), chat_template=template, model_name=model_name,
                         tokenizer_pre=tokenizer_pre)
        Console().print(result.summary())
