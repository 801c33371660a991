"""Batches of tokenized samples: padded only to the longest sample in the batch, optionally grouped by length.

LLaMA-Factory pads to a multiple of 8 over random pairs; grouping similar lengths cuts the padded tokens the model
computes on and throws away (measured in ``bench/train.py``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler

IGNORE_INDEX = -100


class EncodedDataset(Dataset):
    """Samples as ``{"input_ids": [...], "labels": [...]}`` (plus ``position_ids`` and ``segment_ids`` for rows that
    hold several samples: ``--packing``, ``--share_prefix``)."""

    def __init__(self, samples: Sequence[Any]) -> None:
        self.samples = list(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        sample = self.samples[index]
        item = {"input_ids": list(sample.input_ids), "labels": list(sample.labels)}
        position_ids = getattr(sample, "position_ids", None)
        if position_ids:
            item["position_ids"] = list(position_ids)
        segment_ids = getattr(sample, "segment_ids", None)
        if segment_ids:
            item["segment_ids"] = list(segment_ids)
        return item

    def lengths(self) -> list[int]:
        return [len(sample.input_ids) for sample in self.samples]


def holds_several(feature: dict[str, list[int]]) -> bool:
    """Whether a row holds more than one sample (its tokens name more than one segment)."""
    segments = feature.get("segment_ids")
    return bool(segments) and min(segments) != max(segments)


@dataclass
class PadToLongestCollator:
    """Right-pad a batch to its longest sample: labels with -100, attention mask 0, positions continue.

    When a row holds several samples the batch also carries ``segment_ids`` (-1 on padding; a row of one sample is
    all 1), from which ``tooltune.train.loss`` builds the attention mask that keeps each sample to itself and the
    prefix it shares (segment 0)."""

    pad_token_id: int

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        longest = max(len(f["input_ids"]) for f in features)
        input_ids = torch.full((len(features), longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(features), longest), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(features), longest), dtype=torch.long)
        # A row with its own positions (several samples in it) needs positions for the whole batch; a plain sample's
        # are 0, 1, 2, ... as the model would number them.
        has_positions = any("position_ids" in f for f in features)
        position_ids = torch.zeros((len(features), longest), dtype=torch.long) if has_positions else None
        needs_segments = any(holds_several(f) for f in features)
        segment_ids = torch.full((len(features), longest), -1, dtype=torch.long) if needs_segments else None
        for row, feature in enumerate(features):
            n = len(feature["input_ids"])
            input_ids[row, :n] = torch.tensor(feature["input_ids"], dtype=torch.long)
            labels[row, :n] = torch.tensor(feature["labels"], dtype=torch.long)
            attention_mask[row, :n] = 1
            if position_ids is not None:
                positions = feature.get("position_ids") or list(range(n))
                position_ids[row, :n] = torch.tensor(positions, dtype=torch.long)
            if segment_ids is not None:
                segments = feature.get("segment_ids") or [1] * n
                segment_ids[row, :n] = torch.tensor(segments, dtype=torch.long)
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        if position_ids is not None:
            batch["position_ids"] = position_ids
        if segment_ids is not None:
            batch["segment_ids"] = segment_ids
        return batch


class LengthGroupedSampler(Sampler[int]):
    """Shuffle, then sort within "mega-batches" of ``group`` × batch size so neighbours have similar lengths.

    The order depends only on ``(seed, epoch)`` — never on the global RNG — so a resumed run skips exactly the
    batches it already trained on and sees the same ones after.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, group: int = 50) -> None:
        self.lengths = list(lengths)
        self.batch_size = max(1, batch_size)
        self.seed = seed
        self.group = group
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        mega = self.batch_size * self.group
        grouped: list[int] = []
        for start in range(0, len(order), mega):
            chunk = sorted(order[start : start + mega], key=lambda i: -self.lengths[i])
            grouped.extend(chunk)
        # Shuffle whole batches so an epoch does not run longest-to-shortest inside each mega-batch.
        batches = [grouped[i : i + self.batch_size] for i in range(0, len(grouped), self.batch_size)]
        batch_order = torch.randperm(len(batches), generator=generator).tolist()
        for b in batch_order:
            yield from batches[b]


def padding_waste(lengths: Sequence[int], order: Sequence[int], batch_size: int) -> float:
    """Share of computed tokens that are padding when ``order`` is cut into batches (for the bench and the plan)."""
    padded = real = 0
    for start in range(0, len(order), batch_size):
        batch = [lengths[i] for i in order[start : start + batch_size]]
        padded += max(batch) * len(batch)
        real += sum(batch)
    return 1.0 - real / padded if padded else 0.0
