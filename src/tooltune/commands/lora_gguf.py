"""``tooltune lora-gguf``: PEFT LoRA adapter → llama.cpp LoRA GGUF (Ollama ``ADAPTER``, llama.cpp ``--lora``), like
llama.cpp's ``convert_lora_to_gguf.py``, optionally checked against the merged model's logits."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command(name="lora-gguf", help="Convert a PEFT LoRA adapter to a llama.cpp LoRA GGUF (one base, many "
                                        "small adapters; like convert_lora_to_gguf.py).")
    def lora_gguf_command(
        adapter_dir: Path = typer.Argument(..., help="PEFT LoRA adapter directory (adapter_config.json + "
                                                     "adapter_model.safetensors)."),
        base: Path = typer.Option(..., "--base", "--model-name-or-path", "--model_name_or_path",
                                  help="The base: its Hugging Face directory or its GGUF (names and shapes are "
                                       "checked against it)."),
        outfile: Path = typer.Option(None, "--outfile", "--out-file", "--out_file", "-o",
                                     help="Output .gguf (default: ADAPTER_DIR/<name>-lora-<type>.gguf)."),
        outtype: str = typer.Option("f16", "--outtype", "--out-type", "--out_type", help="f16 | bf16 | f32 | q8_0"),
        check_merged: Path = typer.Option(None, "--check-merged", "--check_merged",
                                          help="Merged GGUF to compare logits with (needs --base to be the base "
                                               "GGUF): base + adapter must give the merged model's logits."),
        tolerance: float = typer.Option(None, "--tolerance", help="Max abs logit difference for --check-merged "
                                                                  "(default: 1% of the logit scale)."),
    ) -> None:
        from rich.console import Console

        from tooltune.gguf.adapter import AdapterGGUFError, convert_adapter

        console = Console()
        target = outfile or adapter_dir / f"{adapter_dir.name}-lora-{outtype.upper()}.gguf"
        if check_merged is not None and not base.is_file():
            raise AdapterGGUFError(f"--check-merged compares GGUF against GGUF: --base {base} must be the base .gguf")
        result = convert_adapter(adapter_dir, base, target, outtype.lower())
        console.print(result.summary())
        if check_merged is not None:
            from tooltune.gguf.adapter_check import AdapterCheckError, check_adapter_logits

            with console.status("comparing base + adapter with the merged model through llama.cpp"):
                check = check_adapter_logits(base, result.path, check_merged, tolerance)
            console.print(check.summary())
            if not check.passed:
                raise AdapterCheckError(f"{result.path}: base + adapter logits differ from {check_merged} by "
                                        f"{check.max_abs_diff:.3g} > {check.tolerance:.3g}; the adapter GGUF does "
                                        "not reproduce the merged model")
