"""``tooltune import-gguf``: GGUF (llama/qwen2/qwen3) → fp32 Hugging Face checkpoint to fine-tune."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command(name="import-gguf", help="Turn a GGUF into a Hugging Face checkpoint (fp32 safetensors, config, "
                                          "tokenizer with chat template). Without FILE: the embedded SmolLM2-135M.")
    def import_gguf_command(
        file: Path = typer.Argument(None, metavar="FILE.gguf", help="GGUF to import (default: the embedded model)."),
        out_dir: Path = typer.Argument(None, metavar="OUT_DIR", help="Output directory (default: the cache)."),
    ) -> None:
        from rich.console import Console

        from tooltune.default_model import default_gguf_path
        from tooltune.gguf.import_gguf import default_model_dir, import_gguf_model

        source = file or default_gguf_path()
        target = out_dir or (default_model_dir() if file is None else Path(source.stem + "-hf"))
        Console().print(import_gguf_model(source, target).summary())
