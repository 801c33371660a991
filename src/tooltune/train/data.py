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

    @property
    def tokens(self) -> int:
        return sum(len(s.input_ids) for s in self.train)

    @property
    def trained_tokens(self) -> int:
        return sum(sum(1 for label in s.labels if label != -100) for s in self.train)


def prepare_data(data_args: Any, tokenizer: Any) -> PreparedData:
    from tooltune.data import load_conversations, split_train_val
    from tooltune.encode import encode_dataset
    from tooltune.templates import get_template

    if not data_args.dataset:
        raise TrainDataError("--dataset is required (a name in dataset_info.json or a .json/.jsonl path)")
    report = load_conversations(data_args)
    if not report.conversations:
        raise TrainDataError(f"--dataset {data_args.dataset}: no usable records ({len(report.rejected)} rejected)")
    template = get_template(data_args.template, tokenizer, default_system=data_args.default_system,
                            thinking=getattr(data_args, "thinking", "keep"),
                            tool_view=getattr(data_args, "tool_view", "as_given"))
    train_convs, eval_convs = split_train_val(report.conversations, data_args.val_size, data_args.seed)
    options = {
        "cutoff_len": data_args.cutoff_len,
        "policy": data_args.cutoff_policy,
        "train_on_prompt": data_args.train_on_prompt,
        "mask_history": data_args.mask_history,
    }
    train_report = encode_dataset(train_convs, template, packing=data_args.packing,
                                  share_prefix=getattr(data_args, "share_prefix", False),
                                  share_prefix_samples=getattr(data_args, "share_prefix_samples", 0),
                                  share_prefix_trained_tokens=getattr(data_args, "share_prefix_trained_tokens", 0),
                                  **options)
    eval_report = encode_dataset(eval_convs, template, **options) if eval_convs else None
    # Packed rows carry per-sample position and segment ids; the collator passes them on.
    train = list(train_report.blocks) if train_report.blocks is not None else list(train_report.samples)
    if not train:
        raise TrainDataError(f"--dataset {data_args.dataset}: every sample was skipped by the encoder")
    return PreparedData(
        train=train,
        eval=list(eval_report.samples) if eval_report else [],
        chat_template=template.jinja_chat_template,
        rejected=[_describe(r) for r in report.rejected],
        skipped=[_describe(s) for s in [*train_report.skipped, *(eval_report.skipped if eval_report else [])]],
        sharing=train_report.sharing_summary() if train_report.shared_prefixes else None,
        packed_samples=len(train_report.samples) if train_report.blocks is not None else 0,
    )


def _describe(item: Any) -> str:
    """``file record N: reason`` for a loader rejection or an encoder skip."""
    source = getattr(item, "source", None) or getattr(item, "file", None)
    index = getattr(item, "record", None)
    if index is None:
        index = getattr(item, "index", None)
    reason = getattr(item, "reason", str(item))
    where = f"{source} record {index}" if source is not None else f"record {index}"
    return f"{where}: {reason}"
