"""``tooltune preprocess ... --out FILE.jsonl``: the encoded samples, one JSON row each, for inspection and reuse."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    from tooltune.cli import lf_command
    from tooltune.data.args import DataArguments, ModelPathArguments
    from tooltune.data.preprocess import PreprocessArguments, run_preprocess

    lf_command(
        app,
        "preprocess",
        (DataArguments, ModelPathArguments, PreprocessArguments),
        run_preprocess,
        help="Encode a dataset and write one {index, input_ids, labels} row per sample to --out FILE.jsonl.",
    )
