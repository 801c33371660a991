"""``dataset_info.json``: LLaMA-Factory's registry that maps a dataset name to a file, its format and its columns.

Only the keys that describe local files are honoured (``file_name``, ``formatting``, ``columns``, ``tags``,
``num_samples`` is ignored); hub entries are refused with a message, because tooltune never downloads data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tooltune.data.errors import DataError

REGISTRY_FILE = "dataset_info.json"
FORMATTINGS = ("sharegpt", "openai", "alpaca")

# LLaMA-Factory's defaults for columns and sharegpt tags.
DEFAULT_COLUMNS = {
    "messages": "conversations",
    "system": None,
    "tools": None,
    "prompt": "instruction",
    "query": "input",
    "response": "output",
    "history": None,
}
SHAREGPT_TAGS = {
    "role_tag": "from",
    "content_tag": "value",
    "user_tag": "human",
    "assistant_tag": "gpt",
    "observation_tag": "observation",
    "function_tag": "function_call",
    "system_tag": "system",
}
OPENAI_TAGS = {
    "role_tag": "role",
    "content_tag": "content",
    "user_tag": "user",
    "assistant_tag": "assistant",
    "observation_tag": "tool",
    "function_tag": "function_call",
    "system_tag": "system",
}


@dataclass
class DatasetSpec:
    """Where one dataset lives and how its records are laid out."""

    name: str
    path: Path
    formatting: str  # sharegpt | openai | alpaca | auto (decided from the first record)
    columns: dict[str, str | None] = field(default_factory=lambda: dict(DEFAULT_COLUMNS))
    tags: dict[str, str] = field(default_factory=lambda: dict(SHAREGPT_TAGS))
    explicit_tags: bool = False


def read_registry(dataset_dir: Path) -> dict[str, Any]:
    registry_path = dataset_dir / REGISTRY_FILE
    try:
        data = json.loads(registry_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{registry_path}: not found (pass --dataset_dir, or give a .json/.jsonl path)") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{registry_path}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    if not isinstance(data, dict):
        raise DataError(f"{registry_path}: must map dataset names to entries")
    return data


def spec_from_entry(name: str, entry: Any, dataset_dir: Path) -> DatasetSpec:
    where = f"{dataset_dir / REGISTRY_FILE} entry {name!r}"
    if not isinstance(entry, dict):
        raise DataError(f"{where}: must be an object")
    if "file_name" not in entry:
        remote = [
            key for key in ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name") if key in entry
        ]
        if remote:
            raise DataError(
                f"{where}: {remote[0]} datasets are not downloaded by tooltune; save the file and use file_name"
            )
        raise DataError(f"{where}: has no file_name")
    formatting = entry.get("formatting", "alpaca")
    if formatting not in FORMATTINGS:
        raise DataError(f"{where}: formatting {formatting!r} is not one of {', '.join(FORMATTINGS)}")
    if entry.get("ranking"):
        raise DataError(f"{where}: ranking (preference) datasets are not supported for supervised tool-call training")
    columns = dict(DEFAULT_COLUMNS)
    if formatting == "openai":
        columns["messages"] = "messages"
    raw_columns = entry.get("columns") or {}
    if not isinstance(raw_columns, dict):
        raise DataError(f"{where}: columns must be an object")
    columns.update({key: value for key, value in raw_columns.items() if key in DEFAULT_COLUMNS})
    tags = dict(SHAREGPT_TAGS)
    raw_tags = entry.get("tags") or {}
    if not isinstance(raw_tags, dict):
        raise DataError(f"{where}: tags must be an object")
    tags.update({key: value for key, value in raw_tags.items() if key in SHAREGPT_TAGS})
    path = Path(entry["file_name"])
    if not path.is_absolute():
        path = dataset_dir / path
    return DatasetSpec(
        name=name, path=path, formatting=formatting, columns=columns, tags=tags, explicit_tags=bool(raw_tags)
    )


def resolve_dataset(name: str, dataset_dir: str | Path) -> DatasetSpec:
    """A registry name (looked up in ``dataset_dir/dataset_info.json``) or a path to a data file."""
    dataset_dir = Path(dataset_dir)
    as_path = Path(name)
    if as_path.suffix in (".json", ".jsonl") and (as_path.is_file() or (dataset_dir / as_path).is_file()):
        path = as_path if as_path.is_file() else dataset_dir / as_path
        return DatasetSpec(name=name, path=path, formatting="auto")
    registry = read_registry(dataset_dir)
    if name not in registry:
        import difflib

        close = difflib.get_close_matches(name, list(registry), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        known = "" if close else f"; known: {', '.join(sorted(registry)) or 'none'}"
        raise DataError(f"dataset {name!r} is not in {dataset_dir / REGISTRY_FILE}{hint}{known}")
    return spec_from_entry(name, registry[name], dataset_dir)
