"""``tooltune gguf-report``: the size/quality/speed table of GGUF variants, measured with llama.cpp."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command(name="gguf-report", help="Compare GGUF files against the first (the F16 reference): size, "
                                          "bits/weight, perplexity, mean KL divergence, decode tokens/s.")
    def gguf_report_command(
        files: list[Path] = typer.Argument(..., help="Reference GGUF first, then the quantized ones."),
        text_file: Path = typer.Option(None, "--text-file", "--text_file",
                                       help="Held-out text (default: the bundled English tool-calling demo)."),
        max_tokens: int = typer.Option(1024, "--tokens", help="Tokens of the text to score."),
        chunk_size: int = typer.Option(256, "--chunk", "--ctx-size", help="Context per scored chunk."),
        decode_tokens: int = typer.Option(64, "--decode-tokens", help="Greedy tokens timed for decode speed."),
        threads: int = typer.Option(None, "--threads", "-t", help="CPU threads (default: all)."),
        json_out: Path = typer.Option(None, "--json", help="Also write the report as JSON here."),
        markdown_out: Path = typer.Option(None, "--markdown", "--md", help="Also write the Markdown table here."),
    ) -> None:
        from rich.console import Console

        from tooltune.atomic import write_text
        from tooltune.gguf.report import gguf_report

        report = gguf_report(files, text_file=text_file, max_tokens=max_tokens, chunk_size=chunk_size,
                             decode_tokens=decode_tokens, threads=threads)
        markdown = report.to_markdown()
        typer.echo(markdown)
        if json_out is not None:
            write_text(json_out, report.to_json())
        if markdown_out is not None:
            write_text(markdown_out, markdown)
        worst = max((r.mean_kl for r in report.rows if r.mean_kl is not None), default=None)
        worst_text = f" · largest mean KL {worst:.4f}" if worst is not None else ""
        Console().print(f"measured {len(report.rows)} files on {report.n_tokens_scored} tokens{worst_text}")
