"""``tooltune vllm-export`` and ``tooltune vllm-setup``: vLLM checkpoints (FP8 / W4A16 / W8A8) with llm-compressor."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command(
        name="vllm-export",
        help="Quantize a merged checkpoint for vLLM with llm-compressor (compressed-tensors safetensors), "
        "then compare its next-token distributions with the original's.",
    )
    def vllm_export_command(
        model_dir: str = typer.Argument(..., help="Merged Hugging Face checkpoint (the `tooltune export` output)."),
        out: str = typer.Option(..., "--out", "--export_dir", "--export-dir", help="Output directory."),
        scheme: str = typer.Option("fp8", "--scheme", help="fp8 (dynamic, no data) | w4a16-gptq | w4a16-awq | w8a8."),
        dataset: str = typer.Option(None, "--dataset", help="Training data to calibrate on (as in training)."),
        dataset_dir: str = typer.Option(None, "--dataset_dir", "--dataset-dir", help="Folder with dataset_info.json."),
        template: str = typer.Option(
            None, "--template", help="Training template (default: the checkpoint's own chat template, `jinja`)."
        ),
        calib_samples: int = typer.Option(256, "--calib-samples", "--calib_samples", help="Calibration samples."),
        max_seq_length: int = typer.Option(
            2048, "--max-seq-length", "--max_seq_length", "--cutoff_len", "--cutoff-len", help="Tokens per sample."
        ),
        verify_samples: int = typer.Option(
            4, "--verify-samples", "--verify_samples", help="Samples for the quantized-vs-original check (0: skip)."
        ),
        trust_remote_code: bool = typer.Option(False, "--trust_remote_code", "--trust-remote-code"),
    ) -> None:
        from tooltune.vllm.export import ExportOptions, vllm_export

        options = ExportOptions(
            scheme=scheme,
            dataset=dataset,
            dataset_dir=dataset_dir,
            template=template,
            calib_samples=calib_samples,
            max_seq_length=max_seq_length,
            verify_samples=verify_samples,
            verify=verify_samples > 0,
            trust_remote_code=trust_remote_code,
        )
        vllm_export(model_dir, out, options)

    @app.command(
        name="vllm-setup",
        help="Build (once) the isolated environment llm-compressor runs in; `vllm-export` does this on first use.",
    )
    def vllm_setup_command(
        rebuild: bool = typer.Option(False, "--rebuild", help="Delete and rebuild the environment."),
    ) -> None:
        from tooltune.vllm.env import ensure_env, env_dir, read_marker

        python = ensure_env(rebuild=rebuild)
        marker = read_marker(env_dir()) or {}
        versions = ", ".join(f"{k} {v}" for k, v in (marker.get("versions") or {}).items())
        typer.echo(f"llm-compressor environment: {python} ({versions})")
