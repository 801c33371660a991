"""Deterministic train/validation split shared by training and ``tooltune eval --split`` so evaluation never scores
a conversation the model was trained on."""

from __future__ import annotations

import random

from tooltune.conversation import Conversation
from tooltune.data.errors import DataError


def validation_count(total: int, val_size: float | int | None) -> int:
    """``val_size`` < 1 is a fraction of ``total``; >= 1 is a record count."""
    if not val_size:
        return 0
    if val_size < 0:
        raise DataError(f"val_size must be >= 0, got {val_size}")
    count = round(total * val_size) if val_size < 1 else int(val_size)
    if val_size < 1:
        count = max(count, 1)
    if count >= total:
        raise DataError(f"val_size {val_size} leaves no training records out of {total}")
    return count


def split_train_val(
    conversations: list[Conversation], val_size: float | int | None, seed: int = 42
) -> tuple[list[Conversation], list[Conversation]]:
    """(train, val), each in dataset order. The validation records are a seeded random sample, so the split depends
    only on the number of records, ``val_size`` and ``seed``."""
    count = validation_count(len(conversations), val_size)
    if count == 0:
        return list(conversations), []
    chosen = set(random.Random(seed).sample(range(len(conversations)), count))
    train = [conv for i, conv in enumerate(conversations) if i not in chosen]
    val = [conv for i, conv in enumerate(conversations) if i in chosen]
    return train, val
