"""One call from arguments to encoded samples: load → split → template → encode. Preview, preprocess and training
use it so they all see the same samples for the same arguments."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tooltune.data.args import DataArguments
from tooltune.data.errors import DataError
from tooltune.data.loader import LoadReport, load_conversations
from tooltune.data.split import split_train_val
from tooltune.encode import EncodeReport, encode_dataset
from tooltune.templates import Template, get_template


@dataclass
class PreparedDataset:
    load: LoadReport
    template: Template
    train: EncodeReport
    val: EncodeReport | None  # None when val_size is 0


def prepare_dataset(
    args: DataArguments, tokenizer: Any, on_progress: Callable[[int, int], None] | None = None
) -> PreparedDataset:
    """Raises ``DataError`` (unreadable data, or rejections under ``strict``) or ``TemplateError``."""
    load = load_conversations(args)
    template = get_template(args.template, tokenizer, default_system=args.default_system,
                            thinking=args.thinking, tool_view=args.tool_view)
    train_convs, val_convs = split_train_val(load.conversations, args.val_size, args.seed)

    def encode(conversations: list[Any], packing: bool, share_prefix: bool = False) -> EncodeReport:
        return encode_dataset(
            conversations,
            template,
            cutoff_len=args.cutoff_len,
            policy=args.cutoff_policy,
            train_on_prompt=args.train_on_prompt,
            mask_history=args.mask_history,
            packing=packing,
            share_prefix=share_prefix,
            on_progress=on_progress,
            share_prefix_samples=args.share_prefix_samples,
            share_prefix_trained_tokens=args.share_prefix_trained_tokens,
        )

    train = encode(train_convs, args.packing, args.share_prefix)
    val = encode(val_convs, False) if val_convs else None  # evaluation scores samples one by one
    return PreparedDataset(load=load, template=template, train=train, val=val)


def check_stage(stage: str) -> None:
    if stage != "sft":
        raise DataError(f"--stage {stage}: tooltune trains supervised tool calling only (--stage sft)")


def summary_line(prepared: PreparedDataset) -> str:
    load = prepared.load
    return f"{load.kept} records kept, {len(load.rejected)} rejected; {prepared.train.summary()}"
