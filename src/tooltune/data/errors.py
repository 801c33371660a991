"""Errors and rejections of the data layer: every record left out is reported with file, index and reason."""

from __future__ import annotations

from dataclasses import dataclass

from tooltune.errors import TooltuneError


class DataError(TooltuneError, ValueError):
    """A dataset that cannot be read at all (missing file, unknown name, bad dataset_info.json, --strict rejection)."""


@dataclass(frozen=True)
class Rejection:
    """A record left out of the dataset. ``index`` is the 0-based position of the record in ``file``."""

    file: str
    index: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file} record {self.index}: {self.reason}"
