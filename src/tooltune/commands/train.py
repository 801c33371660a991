"""``tooltune train``: the seed's ``python src/train.py --stage sft ...`` command with only the program renamed."""

from __future__ import annotations

from typing import Any

import typer


def register(app: typer.Typer) -> None:
    from tooltune.cli import lf_command
    from tooltune.data import DataArguments
    from tooltune.train.args import FinetuningArguments, ModelArguments, TrainArguments

    def run(model_args: Any, data_args: Any, finetune_args: Any, training_args: Any) -> None:
        from tooltune.train import train

        train(model_args, data_args, finetune_args, training_args)

    lf_command(
        app,
        "train",
        (ModelArguments, DataArguments, FinetuningArguments, TrainArguments),
        run,
        help="LoRA fine-tune with LLaMA-Factory's flags (or a YAML config with the same keys); prints the plan first.",
        aliases=("sft",),
    )
