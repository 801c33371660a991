"""Load datasets into Conversations, reporting every record that is left out.

``load_conversations(args)`` is what preview, preprocess, train and eval call: the same records in the same order
for the same arguments, so ``split_train_val`` can keep evaluation away from training samples.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tooltune.conversation import Conversation, ConversationError
from tooltune.data.alpaca import convert_alpaca
from tooltune.data.args import DataArguments
from tooltune.data.errors import DataError, Rejection
from tooltune.data.openai_format import convert_openai
from tooltune.data.registry import OPENAI_TAGS, DatasetSpec, resolve_dataset
from tooltune.data.sharegpt import convert_sharegpt
from tooltune.data.validate import validate_conversation

CONVERTERS: dict[str, Callable[[Any, DatasetSpec], Conversation]] = {
    "sharegpt": convert_sharegpt,
    "openai": convert_openai,
    "alpaca": convert_alpaca,
}


@dataclass
class DatasetCount:
    name: str
    path: str
    kept: int
    rejected: int


@dataclass
class LoadReport:
    conversations: list[Conversation] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    datasets: list[DatasetCount] = field(default_factory=list)

    @property
    def kept(self) -> int:
        return len(self.conversations)

    def summary(self) -> str:
        names = ", ".join(d.name for d in self.datasets)
        return f"{names}: {self.kept} records kept, {len(self.rejected)} rejected"


def read_records(path: Path) -> tuple[list[Any], list[Rejection]]:
    """Records of a .json (a list, or JSON lines) or .jsonl file; an unparsable JSON line is a rejection."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from exc
    if path.suffix != ".jsonl":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            if exc.msg != "Extra data":  # "Extra data" means JSON lines in a .json file
                raise DataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from exc
        else:
            if isinstance(data, list):
                return data, []
            if isinstance(data, dict):
                return [data], []
            raise DataError(f"{path}: expected a list of records, got {type(data).__name__}")
    records: list[Any] = []
    rejected: list[Rejection] = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            # Keep the slot so record indices stay line-aligned with the other records of the file.
            records.append(None)
            rejected.append(Rejection(str(path), len(records) - 1, f"line {line_number}: not valid JSON ({exc.msg})"))
    return records, rejected


def detect_formatting(records: list[Any], path: Path) -> tuple[str, dict[str, str | None], dict[str, str]]:
    """Format of a file given by path: sharegpt (``conversations`` with from/value) or OpenAI (``messages``)."""
    from tooltune.data.registry import DEFAULT_COLUMNS, SHAREGPT_TAGS

    columns = dict(DEFAULT_COLUMNS)
    columns["tools"] = "tools"
    columns["system"] = "system"
    for record in records:
        if not isinstance(record, dict):
            continue
        if isinstance(record.get("conversations"), list):
            return "sharegpt", columns, dict(SHAREGPT_TAGS)
        messages = record.get("messages")
        if isinstance(messages, list):
            first = messages[0] if messages else {}
            columns["messages"] = "messages"
            if isinstance(first, dict) and "from" in first:
                return "sharegpt", columns, dict(SHAREGPT_TAGS)
            return "openai", columns, dict(OPENAI_TAGS)
        if "instruction" in record and "output" in record:
            return "alpaca", columns, dict(SHAREGPT_TAGS)
        break
    raise DataError(
        f"{path}: cannot tell the format: records need 'conversations' (sharegpt) or 'messages' (OpenAI chat)"
    )


def load_dataset(spec: DatasetSpec, max_samples: int | None = None) -> tuple[list[Conversation], list[Rejection]]:
    records, rejected = read_records(spec.path)
    if max_samples is not None:
        records = records[:max_samples]
        rejected = [r for r in rejected if r.index < max_samples]
    if spec.formatting == "auto":
        spec.formatting, spec.columns, spec.tags = detect_formatting(records, spec.path)
    convert = CONVERTERS[spec.formatting]
    already_rejected = {r.index for r in rejected}
    conversations: list[Conversation] = []
    file_label = str(spec.path)
    for index, record in enumerate(records):
        if index in already_rejected:
            continue
        try:
            conv = convert(record, spec)
            validate_conversation(conv)
        except ConversationError as exc:
            rejected.append(Rejection(file_label, index, str(exc)))
            continue
        conv.source = file_label
        conv.index = index
        conversations.append(conv)
    rejected.sort(key=lambda r: r.index)
    return conversations, rejected


def load_conversations(args: DataArguments) -> LoadReport:
    """All datasets named in ``args.dataset``, concatenated in order; rejected records are listed, never dropped
    silently, and under ``args.strict`` any rejection raises ``DataError``."""
    names = args.dataset_names()
    if not names:
        raise DataError("no dataset given (--dataset NAME[,NAME...] or a .json/.jsonl path)")
    report = LoadReport()
    for name in names:
        spec = resolve_dataset(name, args.dataset_dir)
        conversations, rejected = load_dataset(spec, args.max_samples)
        report.conversations += conversations
        report.rejected += rejected
        report.datasets.append(DatasetCount(name, str(spec.path), len(conversations), len(rejected)))
    if args.strict and report.rejected:
        first = report.rejected[0]
        more = f" (and {len(report.rejected) - 1} more)" if len(report.rejected) > 1 else ""
        raise DataError(f"{first}{more}; --strict makes rejected records an error")
    return report
