"""``tooltune check-backends``: the release gate — training, HF, GGUF and Modelfile renders identical, and every
parser path reading the same calls, per conversation of a dataset (``tooltune.backend_check``)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

console = Console()


def register(app: typer.Typer) -> None:
    @app.command("check-backends", help="Check that training, HF (apply_chat_template), the GGUF's chat template "
                 "and the Ollama Modelfile TEMPLATE render every conversation identically and that every parser "
                 "path reads the same calls; exits 1 on any mismatch.")
    def check_backends_command(
        model: Path | None = typer.Option(None, "--model_name_or_path", "--model-name-or-path", "--model",
                                          help="HF model folder (its tokenizer and chat template); a .gguf works too."),
        gguf: Path | None = typer.Option(None, "--gguf", help="The GGUF (its embedded tokenizer.chat_template)."),
        modelfile: Path | None = typer.Option(None, "--modelfile",
                                              help="A Modelfile whose TEMPLATE to check (default: the one "
                                                   "`tooltune modelfile` writes)."),
        dataset: str = typer.Option("glaive_toolcall_en_demo", "--dataset",
                                    help="Dataset names or .json/.jsonl paths (comma-separated)."),
        dataset_dir: str | None = typer.Option(None, "--dataset_dir", "--dataset-dir",
                                               help="Folder with dataset_info.json (default: the bundled data)."),
        template: str | None = typer.Option(None, "--template",
                                            help="Training template (default: the family's: qwen, a family name, "
                                                 "or jinja)."),
        family: str | None = typer.Option(None, "--family", help="Family whose parser reads replies (default: "
                                          "detected from the template)."),
        thinking: str = typer.Option("keep", "--thinking", help="keep | empty | off, as in training."),
        tool_view: str = typer.Option("as_given", "--tool_view", "--tool-view", help="as_given | ollama, as in "
                                      "training."),
        max_samples: int | None = typer.Option(None, "--max_samples", "--max-samples",
                                               help="Check only the first N records of each dataset."),
        out: Path | None = typer.Option(None, "--out", help="Also write the report as JSON here."),
    ) -> None:
        from tooltune.backend_check import open_backends, print_report, run_check
        from tooltune.data.args import DataArguments
        from tooltune.data.loader import load_conversations

        data = DataArguments(dataset=dataset, max_samples=max_samples)
        if dataset_dir is not None:
            data.dataset_dir = dataset_dir
        loaded = load_conversations(data)
        for rejected in loaded.rejected:
            console.print(f"[yellow]skipped:[/yellow] {rejected}")
        backends = open_backends(model, gguf, modelfile, template=template, family=family, thinking=thinking,
                                 tool_view=tool_view)
        with console.status(f"checking {len(loaded.conversations)} conversations"):
            report = run_check(loaded.conversations, backends)
        print_report(report, console)
        if out is not None:
            report.write_json(out)
            console.print(f"wrote {out}")
        if report.mismatches:
            raise typer.Exit(1)
