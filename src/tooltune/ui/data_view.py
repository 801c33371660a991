"""The data page's figures: a dataset encoded exactly as ``tooltune preview``/``preprocess`` encode it
(``prepare_dataset``), then served one page of samples at a time as decoded runs of trained / prompt tokens.

Encoding is done once per distinct set of arguments and kept (a few datasets at most), so paging and searching a
10,000-sample dataset only decode the 20 samples on screen.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tooltune.data.args import BUNDLED_DATA_DIR, DataArguments
from tooltune.data.prepare import PreparedDataset, prepare_dataset
from tooltune.data.registry import resolve_dataset
from tooltune.encode import POLICIES, Encoded
from tooltune.preview import label_runs
from tooltune.templates import TEMPLATES
from tooltune.ui.workspace import UIError, Workspace

PAGE_SIZE_MAX = 100
CACHED_DATASETS = 4
MAX_CUTOFF = 1 << 20
LISTED_PROBLEMS = 200


@dataclass(frozen=True)
class DataQuery:
    """The arguments that decide what the samples are (the page and search only pick among them)."""

    dataset: str
    dataset_dir: str = ""  # workspace-relative; empty: the bundled demo data
    template: str = "qwen"
    cutoff_len: int = 2048
    cutoff_policy: str = "safe"
    model: str = ""  # tokenizer folder or .gguf, workspace-relative; empty: the embedded default model

    @classmethod
    def from_params(cls, params: dict[str, str]) -> DataQuery:
        dataset = (params.get("dataset") or "").strip()
        if not dataset:
            raise UIError("dataset: required (a name in dataset_info.json or a .json/.jsonl file)")
        template = params.get("template") or "qwen"
        if template not in TEMPLATES:
            raise UIError(f"template {template!r}: not one of {', '.join(TEMPLATES)}")
        policy = params.get("cutoff_policy") or "safe"
        if policy not in POLICIES:
            raise UIError(f"cutoff_policy {policy!r}: not one of {', '.join(POLICIES)}")
        cutoff = parse_int(params.get("cutoff_len") or "2048", "cutoff_len", 1, MAX_CUTOFF)
        return cls(dataset, (params.get("dataset_dir") or "").strip(), template, cutoff, policy,
                   (params.get("model") or "").strip())


def parse_int(text: str, name: str, low: int, high: int) -> int:
    try:
        value = int(str(text).strip())
    except ValueError:
        raise UIError(f"{name}: {text!r} is not a whole number") from None
    if not low <= value <= high:
        raise UIError(f"{name}: {value} is outside {low}..{high}")
    return value


@dataclass
class LoadedDataset:
    prepared: PreparedDataset
    tokenizer: Any
    search_text: list[str] | None = None  # lower-cased conversation text per sample, built on the first search
    summary: dict[str, Any] | None = None  # built once: totals over every label of 10,000 samples are not free
    lock: threading.Lock = field(default_factory=threading.Lock)


class DataCache:
    """Encoded datasets by query, least recently used dropped first."""

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace
        self.entries: OrderedDict[DataQuery, LoadedDataset] = OrderedDict()
        self.loading: dict[DataQuery, threading.Lock] = {}
        self.lock = threading.Lock()

    def get(self, query: DataQuery) -> LoadedDataset:
        """The encoded dataset; concurrent requests for one query wait for a single encoding."""
        with self.lock:
            if query in self.entries:
                self.entries.move_to_end(query)
                return self.entries[query]
            loading = self.loading.setdefault(query, threading.Lock())
        with loading:
            with self.lock:
                if query in self.entries:  # another request finished it while this one waited
                    return self.entries[query]
            try:
                loaded = self._load(query)
            finally:
                with self.lock:
                    self.loading.pop(query, None)
            with self.lock:
                self.entries[query] = loaded
                while len(self.entries) > CACHED_DATASETS:
                    self.entries.popitem(last=False)
            return loaded

    def data_arguments(self, query: DataQuery) -> DataArguments:
        """The CLI's ``DataArguments`` for ``query``, with every file it names checked to lie in the workspace
        (or in the bundled demo data)."""
        dataset_dir = BUNDLED_DATA_DIR
        if query.dataset_dir:
            dataset_dir = self.workspace.resolve(query.dataset_dir, "dataset_dir")
        resolved = []
        for name in (n.strip() for n in query.dataset.split(",") if n.strip()):
            if Path(name).suffix in (".json", ".jsonl"):
                resolved.append(str(self._data_file(name, dataset_dir)))
                continue
            spec = resolve_dataset(name, dataset_dir)  # a registry entry may name any file: check where it points
            if not self._allowed(spec.path):
                raise UIError(f"dataset {name!r} points at {spec.path}, outside the workspace", status=403)
            resolved.append(name)
        return DataArguments(dataset=",".join(resolved), dataset_dir=str(dataset_dir), template=query.template,
                             cutoff_len=query.cutoff_len, cutoff_policy=query.cutoff_policy)  # type: ignore[arg-type]

    def _allowed(self, path: Path) -> bool:
        full = path.resolve()
        return any(full == root or root in full.parents for root in (self.workspace.root, BUNDLED_DATA_DIR.resolve()))

    def _data_file(self, name: str, dataset_dir: Path) -> Path:
        for candidate in (self.workspace.resolve(name, "dataset"), (dataset_dir / name).resolve()):
            if candidate.is_file() and self._allowed(candidate):
                return candidate
        raise UIError(f"dataset {name!r}: no such file in the workspace", status=404)

    def _load(self, query: DataQuery) -> LoadedDataset:
        from tooltune.data.tokenizer import load_tokenizer

        args = self.data_arguments(query)
        model = self.workspace.resolve(query.model, "model") if query.model else None
        tokenizer = load_tokenizer(model)
        return LoadedDataset(prepare_dataset(args, tokenizer), tokenizer)


def segments(sample: Encoded, tokenizer: Any) -> list[dict[str, Any]]:
    """Decoded runs of consecutive trained / prompt tokens, with the token count of each run."""
    return [{"text": tokenizer.decode(ids, skip_special_tokens=False), "trained": trained, "tokens": len(ids)}
            for ids, trained in label_runs(sample)]


def summary(loaded: LoadedDataset) -> dict[str, Any]:
    with loaded.lock:
        if loaded.summary is None:
            loaded.summary = _summary(loaded.prepared)
        return loaded.summary


def _summary(prepared: PreparedDataset) -> dict[str, Any]:
    report = prepared.train
    pct = report.length_percentiles()
    tokens, trained = report.tokens, report.trained_tokens
    return {
        "datasets": [{"name": d.name, "path": d.path, "kept": d.kept, "rejected": d.rejected}
                     for d in prepared.load.datasets],
        "template": prepared.template.name,
        "cutoff_len": report.cutoff_len,
        "policy": report.policy,
        "samples": len(report.samples),
        "skipped": len(report.skipped),
        "tokens": tokens,
        "trained_tokens": trained,
        "trained_share": trained / tokens if tokens else 0.0,
        "length": {"p50": pct[50], "p90": pct[90], "p99": pct[99], "max": pct[100]},
        "hit_cutoff": report.truncated,
        "rejected_records": [{"file": r.file, "record": r.index, "reason": r.reason}
                             for r in prepared.load.rejected[:LISTED_PROBLEMS]],
        "skipped_samples": [{"file": s.source, "record": s.record, "reason": s.reason}
                            for s in report.skipped[:LISTED_PROBLEMS]],
    }


def _search_text(loaded: LoadedDataset) -> list[str]:
    with loaded.lock:
        if loaded.search_text is None:
            conversations = {(c.source, c.index): c for c in loaded.prepared.load.conversations}
            texts = []
            for sample in loaded.prepared.train.samples:
                conv = conversations.get((sample.source, sample.record))
                texts.append(json.dumps(conv.to_openai(), ensure_ascii=False).lower() if conv else "")
            loaded.search_text = texts
        return loaded.search_text


def page(loaded: LoadedDataset, number: int, size: int, search: str = "") -> dict[str, Any]:
    """Samples ``number*size ..`` of those matching ``search`` (case-insensitive, over the conversation's text)."""
    samples = loaded.prepared.train.samples
    indices: list[int] | range = range(len(samples))
    if search.strip():
        needle = search.strip().lower()
        indices = [i for i, text in enumerate(_search_text(loaded)) if needle in text]
    chosen = indices[number * size : (number + 1) * size]
    rows = []
    for i in chosen:
        sample = samples[i]
        rows.append({
            "index": sample.position,
            "where": sample.where(),
            "source": sample.source,
            "record": sample.record,
            "tokens": len(sample.input_ids),
            "trained_tokens": sample.trained_tokens,
            "turns": sample.turns,
            "kept_turns": sample.kept_turns,
            "truncated": sample.truncated,
            "full_length": sample.full_length,
            "segments": segments(sample, loaded.tokenizer),
        })
    return {"total": len(samples), "matched": len(indices), "page": number, "size": size, "samples": rows}
