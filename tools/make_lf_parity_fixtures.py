"""One-off: produce LLaMA-Factory 0.9.5's own input_ids/labels for glaive_toolcall_en_demo (the parity fixture).

Run with the interpreter of a separate venv that has ``llamafactory==0.9.5`` (never the tooltune environment: it pins
other versions)::

    python -m venv /tmp/lfenv
    /tmp/lfenv/bin/pip install /path/to/torch-2.13.0+cpu.whl && /tmp/lfenv/bin/pip install llamafactory==0.9.5
    /tmp/lfenv/bin/python tools/make_lf_parity_fixtures.py

It goes through LLaMA-Factory's real data path (argument parsing, ``get_template_and_fix_tokenizer``,
``get_dataset`` with the dataset_info.json registry, converter and SupervisedDatasetProcessor) with the Qwen2.5
tokenizer fixture, at cutoff_len 2048 and 512, and writes ``tests/fixtures/lf_parity/glaive_en_qwen_<cutoff>.json.gz``:
``{"meta": ..., "samples": [{"input_ids": [...], "label_runs": [...]}]}``. In LLaMA-Factory's qwen layout every label
is either -100 or the input id at the same position, so labels are stored as alternating run lengths starting with a
masked run (the script checks that property before writing).
"""

from __future__ import annotations

import gzip
import json
import sys
import tempfile
import time
import types
from importlib.machinery import ModuleSpec
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TOKENIZER_DIR = ROOT / "tests" / "fixtures" / "tokenizers" / "qwen2.5"
DATA_DIR = ROOT / "src" / "tooltune" / "resources" / "data"
OUT_DIR = ROOT / "tests" / "fixtures" / "lf_parity"
DATASET = "glaive_toolcall_en_demo"
CUTOFFS = (2048, 512)
IGNORE_INDEX = -100


def stub_torchaudio() -> None:
    """LLaMA-Factory imports torchaudio at import time; no build matches torch 2.13 and text never uses it."""
    module = types.ModuleType("torchaudio")
    module.__spec__ = ModuleSpec("torchaudio", None)
    sys.modules["torchaudio"] = module


def llamafactory_samples(cutoff_len: int, output_dir: str) -> tuple[list[dict[str, list[int]]], float]:
    """LLaMA-Factory's end-to-end dataset preparation, as ``llamafactory-cli train`` runs it; returns samples and
    seconds spent (tokenizer load + template + get_dataset)."""
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer

    args = {
        "stage": "sft",
        "do_train": True,
        "model_name_or_path": str(TOKENIZER_DIR),
        "dataset": DATASET,
        "dataset_dir": str(DATA_DIR),
        "template": "qwen",
        "cutoff_len": cutoff_len,
        "finetuning_type": "lora",
        "output_dir": output_dir,
        "overwrite_cache": True,
        "report_to": "none",
    }
    started = time.perf_counter()
    model_args, data_args, training_args, _, _ = get_train_args(args)
    tokenizer_module = load_tokenizer(model_args)
    template = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
    module = get_dataset(template, model_args, data_args, training_args, stage="sft", **tokenizer_module)
    dataset = module["train_dataset"]
    samples = [{"input_ids": row["input_ids"], "labels": row["labels"]} for row in dataset]
    return samples, time.perf_counter() - started


def label_runs(input_ids: list[int], labels: list[int]) -> list[int]:
    if len(input_ids) != len(labels):
        raise ValueError("labels and input_ids differ in length")
    runs: list[int] = []
    masked = True
    count = 0
    for token, label in zip(input_ids, labels, strict=True):
        if label != IGNORE_INDEX and label != token:
            raise ValueError("a label is neither -100 nor its input id: run-length storage would lose it")
        is_masked = label == IGNORE_INDEX
        if is_masked != masked:
            runs.append(count)
            masked, count = is_masked, 0
        count += 1
    runs.append(count)
    return runs


def main() -> None:
    stub_torchaudio()
    import llamafactory

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for cutoff_len in CUTOFFS:
        with tempfile.TemporaryDirectory() as output_dir:
            samples, seconds = llamafactory_samples(cutoff_len, output_dir)
        payload: dict[str, Any] = {
            "meta": {
                "generator": "tools/make_lf_parity_fixtures.py",
                "llamafactory": llamafactory.__version__,
                "dataset": DATASET,
                "template": "qwen",
                "tokenizer": "tests/fixtures/tokenizers/qwen2.5",
                "cutoff_len": cutoff_len,
                "labels": "alternating run lengths, first run masked (-100), others equal to input_ids",
            },
            "samples": [
                {"input_ids": s["input_ids"], "label_runs": label_runs(s["input_ids"], s["labels"])} for s in samples
            ],
        }
        out = OUT_DIR / f"glaive_en_qwen_{cutoff_len}.json.gz"
        tmp = out.with_suffix(".tmp")
        with gzip.open(tmp, "wt", encoding="utf-8", compresslevel=9) as handle:
            json.dump(payload, handle, separators=(",", ":"))
        tmp.replace(out)
        print(f"cutoff_len {cutoff_len}: {len(samples)} samples in {seconds:.1f} s -> {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
