"""``tooltune modelfile MODEL.gguf --out Modelfile``: a Modelfile real Ollama loads, with a Go TEMPLATE that renders
what the model was trained on and returns structured tool calls."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

console = Console(stderr=True)


def register(app: typer.Typer) -> None:
    @app.command("modelfile", help="Write an Ollama Modelfile (FROM, Go TEMPLATE, stops, defaults) for a GGUF.")
    def modelfile_command(
        model: Path = typer.Argument(..., help="The GGUF file."),
        adapter: Path | None = typer.Option(None, "--adapter",
                                            help="A LoRA GGUF for MODEL (`tooltune lora-gguf`): adds an ADAPTER line."),
        out: Path = typer.Option(Path("Modelfile"), "--out", "-o", help="Where to write the Modelfile."),
        name: str | None = typer.Option(None, "--name", help="Model name for the header's `ollama create` line."),
        chat_template: str | None = typer.Option(None, "--chat-template", "--chat_template",
                                                 help="Jinja template to match instead of the GGUF's (name or file)."),
        template: Path | None = typer.Option(None, "--template", help="Use this Go TEMPLATE file as is."),
        no_template: bool = typer.Option(False, "--no-template",
                                         help="Write no TEMPLATE: Ollama 0.30+ renders the GGUF's Jinja template."),
        system: str | None = typer.Option(None, "--system", help="SYSTEM prompt."),
        temperature: float = typer.Option(0.1, "--temperature"),
        top_p: float = typer.Option(0.9, "--top-p", "--top_p"),
    ) -> None:
        from tooltune.families.registry import resolve_text
        from tooltune.serve.modelfile import write_modelfile

        go_template = template.read_text(encoding="utf-8") if template else None
        written = write_modelfile(model, out, name=name, chat_template=resolve_text(chat_template),
                                  system=system, params={"temperature": temperature, "top_p": top_p},
                                  go_template=go_template, include_template=not no_template, adapter=adapter)
        size = written.stat().st_size
        console.print(f"wrote {written} ({size} bytes) — then: ollama create {name or model.stem} -f {written}")
