"""``tooltune preview``: the seed's preprocessing debug print as a command (LLaMA-Factory flags, YAML config)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    from tooltune.cli import lf_command
    from tooltune.data.args import DataArguments, ModelPathArguments
    from tooltune.preview import PreviewArguments, run_preview

    def run(data_args: DataArguments, model_args: ModelPathArguments, preview_args: PreviewArguments) -> None:
        run_preview(data_args, model_args, preview_args)

    lf_command(
        app,
        "preview",
        (DataArguments, ModelPathArguments, PreviewArguments),
        run,
        help="Show the token ids, text and labels training will see (--format seed prints the seed's lines).",
    )
