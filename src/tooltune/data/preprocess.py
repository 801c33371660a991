"""Write encoded samples as JSON lines: ``{"index", "input_ids", "labels"}`` per sample, in dataset order.

``index`` is the sample's position in the loaded dataset (records of all --dataset names concatenated, rejected
records left out). With ``--packing`` or ``--share_prefix`` each row is a block and also carries ``position_ids``,
``segment_ids`` (each token's sample; 0 = a prefix the row's samples share) and the packed ``indices``. The file is
written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from tooltune.atomic import atomic_path
from tooltune.data.args import DataArguments, ModelPathArguments
from tooltune.data.errors import DataError
from tooltune.data.prepare import PreparedDataset, check_stage, prepare_dataset, summary_line
from tooltune.data.tokenizer import load_tokenizer
from tooltune.encode import EncodeReport


@dataclass
class PreprocessArguments:
    """Output options (plus --stage/--do_train, accepted so LLaMA-Factory commands run unchanged)."""

    out: str | None = field(default=None, metadata={"help": "Where to write the JSON lines (required)."})
    stage: str = field(default="sft", metadata={"help": "Accepted for LLaMA-Factory compatibility (only sft)."})
    do_train: bool = field(default=False, metadata={"help": "Accepted for LLaMA-Factory compatibility; ignored."})


def rows(report: EncodeReport) -> Iterator[dict[str, Any]]:
    if report.blocks is not None:
        for number, block in enumerate(report.blocks):
            yield {
                "index": number,
                "input_ids": block.input_ids,
                "labels": block.labels,
                "position_ids": block.position_ids,
                "segment_ids": block.segment_ids,
                "indices": block.sample_positions,
            }
        return
    for sample in report.samples:
        yield {"index": sample.position, "input_ids": sample.input_ids, "labels": sample.labels}


def write_jsonl(report: EncodeReport, out: str | Path) -> int:
    count = 0
    with atomic_path(out) as tmp, tmp.open("w", encoding="utf-8") as handle:
        for row in rows(report):
            handle.write(json.dumps(row, separators=(",", ":")) + "\n")
            count += 1
    return count


def prepare_with_progress(args: DataArguments, tokenizer: Any, console: Console) -> PreparedDataset:
    columns = (TextColumn("encoding"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as progress:
        task = progress.add_task("encode", total=None)

        def advance(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        return prepare_dataset(args, tokenizer, on_progress=advance)


def run_preprocess(
    data_args: DataArguments, model_args: ModelPathArguments, pre_args: PreprocessArguments
) -> PreparedDataset:
    check_stage(pre_args.stage)
    if not pre_args.out:
        raise DataError("--out FILE.jsonl is required")
    err = Console(stderr=True)
    tokenizer = load_tokenizer(model_args.model_name_or_path, model_args.trust_remote_code)
    prepared = prepare_with_progress(data_args, tokenizer, err)
    for problem in [*prepared.load.rejected, *prepared.train.skipped]:
        err.print(f"[yellow]left out[/yellow] {problem}", highlight=False, markup=True)
    written = write_jsonl(prepared.train, pre_args.out)
    what = "blocks" if prepared.train.blocks is not None else "rows"
    print(f"{summary_line(prepared)}; wrote {written} {what} to {pre_args.out}", file=sys.stdout)
    return prepared
