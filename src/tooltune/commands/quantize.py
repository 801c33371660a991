"""``tooltune quantize``: quantize a GGUF with llama.cpp's own quantizer (every llama-quantize type)."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command(name="quantize", help="Quantize IN.gguf to OUT.gguf as TYPE (Q4_K_M, Q5_K_M, Q6_K, Q8_0, Q4_0, …) "
                                       "with llama.cpp. `tooltune quantize IN.gguf TYPE` names the output for you.")
    def quantize_command(
        inp: Path = typer.Argument(..., metavar="IN.gguf", help="F16/BF16/F32 GGUF (e.g. from `tooltune gguf`)."),
        out_or_type: str = typer.Argument(..., metavar="OUT.gguf", help="Output file (or the TYPE)."),
        qtype: str = typer.Argument(None, metavar="TYPE", help="Quantization type, e.g. Q4_K_M."),
        threads: int = typer.Option(None, "--threads", "--nthread", "-t", help="CPU threads (default: all)."),
        allow_requantize: bool = typer.Option(False, "--allow-requantize", "--allow_requantize",
                                              help="Allow an already-quantized input (loses quality)."),
        list_types: bool = typer.Option(False, "--list-types", help="Print the accepted types and exit."),
    ) -> None:
        from rich.console import Console

        from tooltune.gguf.quantize import QUANT_TYPES, normalise_type, quantize_gguf

        if list_types:
            typer.echo(" ".join(QUANT_TYPES))
            raise typer.Exit()
        if qtype is None:
            qtype = normalise_type(out_or_type)
            stem = inp.stem
            for suffix in ("-F16", "-BF16", "-F32", "-f16", "-bf16", "-f32", ".f16", ".F16"):
                stem = stem.removesuffix(suffix)
            out = inp.with_name(f"{stem}-{qtype}.gguf")
        else:
            out = Path(out_or_type)
        result = quantize_gguf(inp, out, qtype, threads=threads, allow_requantize=allow_requantize)
        Console().print(result.summary())
