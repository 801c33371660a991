"""Turn ``DataArguments`` into tokenized train/eval samples through the data layer, reporting what was left out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tooltune.errors import TooltuneError


class TrainDataError(TooltuneError):
    pass


@dataclass
class PreparedData:
    train: list[Any]  # Encoded(input_ids, labels, ...)
    eval: list[Any]
    chat_template: str  # the Jinja template that renders exactly the training layout
    rejected: list[str] = field(default_factory=list)  # records the loader could not read: "file record N: reason"
    skipped: list[str] = field(default_factory=list)  # conversations the encoder could not fit / encode
    sharing: str | None = None  # with share_prefix: samples, rows and tokens before → after
    packed_samples: int = 0  # samples held in the rows of ``train`` when rows hold several (packing, share_prefix)
    call_close: str | None = None  # the template's call-closing marker (``decision_weight``)

    @property
    def tokens(self) -> int:
        return sum(len(s.input_ids) for s in self.train)

    @property
    def trained_tokens(self) -> int:
        return sum(sum(1 for label in s.labels if label != -100) for s in self.train)


def prepare_data(data_args: Any, tokenizer: Any) -> PreparedData:
    """The trainer's view of ``prepare_dataset``: the one path ``preprocess``/``preview`` take too, so a data option
    reaches training without being passed twice."""
    from tooltune.data.prepare import prepare_dataset

    if not data_args.dataset:
        raise TrainDataError("--dataset is required (a name in dataset_info.json or a .json/.jsonl path)")
    prepared = prepare_dataset(data_args, tokenizer)
    load, train_report, eval_report = prepared.load, prepared.train, prepared.val
    if not load.conversations:
        raise TrainDataError(f"--dataset {data_args.dataset}: no usable records ({len(load.rejected)} rejected)")
    # Packed rows carry per-sample position and segment ids; the collator passes them on.
    train = list(train_report.blocks) if train_report.blocks is not None else list(train_report.samples)
    if not train:
        raise TrainDataError(f"--dataset {data_args.dataset}: every sample was skipped by the encoder")
    return PreparedData(
        train=train,
        eval=list(eval_report.samples) if eval_report else [],
        chat_template=prepared.template.jinja_chat_template,
        rejected=[_describe(r) for r in load.rejected],
        skipped=[_describe(s) for s in [*train_report.skipped, *(eval_report.skipped if eval_report else [])]],
        sharing=train_report.sharing_summary() if train_report.shared_prefixes else None,
        packed_samples=len(train_report.samples) if train_report.blocks is not None else 0,
        call_close=prepared.template.call_close,
    )


def decision_marker(data: PreparedData, tokenizer: Any, weight: float, template: str) -> tuple[list[int], int]:
    """The call-close marker's token ids and how many trained tokens follow it in ``data.train``; raises when the
    weight could not apply (no marker in this template, or none trained)."""
    if data.call_close is None:
        raise TrainDataError(f"--decision_weight {weight:g}: --template {template} writes tool calls without a "
                             "closing marker of their own (all calls in one list); use 1, or a template whose calls "
                             "close with </tool_call> (qwen, or a Hermes-style family such as qwen3 or smollm3)")
    import torch

    from tooltune.train.loss import decision_positions

    marker = tokenizer.encode(data.call_close, add_special_tokens=False)
    # The loss's own definition of the weighted positions, so the plan's count is what training weighs.
    found = sum(int(decision_positions(torch.tensor([list(sample.labels)]), marker).sum()) for sample in data.train)
    if not found:
        raise TrainDataError(f"--decision_weight {weight:g}: no trained token follows {data.call_close} "
                             f"(token ids {marker}) in the training data — no tool calls, or the tokenizer splits the "
                             "marker differently in context")
    return marker, found


def _describe(item: Any) -> str:
    """``file record N: reason`` for a loader rejection or an encoder skip."""
    source = getattr(item, "source", None) or getattr(item, "file", None)
    index = getattr(item, "record", None)
    if index is None:
        index = getattr(item, "index", None)
    reason = getattr(item, "reason", str(item))
    where = f"{source} record {index}" if source is not None else f"record {index}"
    return f"{where}: {reason}"
