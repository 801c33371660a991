"""Bit parity with LLaMA-Factory 0.9.5: our ``qwen`` template with ``cutoff_policy lf`` reproduces LLaMA-Factory's own
input_ids and labels for all 300 glaive_toolcall_en_demo samples (fixtures made by tools/make_lf_parity_fixtures.py
with LLaMA-Factory itself), and the seed's printed sample 1."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from tooltune.data import DataArguments, load_conversations, load_tokenizer
from tooltune.encode import IGNORE_INDEX, encode_dataset
from tooltune.templates import get_template

PARITY_DIR = Path(__file__).parent / "fixtures" / "lf_parity"


def expand_labels(input_ids: list[int], runs: list[int]) -> list[int]:
    labels: list[int] = []
    masked = True
    for run in runs:
        start = len(labels)
        labels += [IGNORE_INDEX] * run if masked else input_ids[start : start + run]
        masked = not masked
    assert len(labels) == len(input_ids)
    return labels


@pytest.fixture(scope="module")
def qwen_template(qwen_tokenizer_dir: Path):
    return get_template("qwen", load_tokenizer(qwen_tokenizer_dir))


@pytest.fixture(scope="module")
def glaive_en():
    return load_conversations(DataArguments(dataset="glaive_toolcall_en_demo")).conversations


@pytest.mark.parametrize("cutoff_len", [2048, 512])
def test_qwen_lf_policy_is_bit_identical_to_llamafactory(cutoff_len: int, qwen_template, glaive_en) -> None:
    with gzip.open(PARITY_DIR / f"glaive_en_qwen_{cutoff_len}.json.gz", "rt", encoding="utf-8") as handle:
        expected = json.load(handle)
    assert expected["meta"]["llamafactory"] == "0.9.5" and expected["meta"]["cutoff_len"] == cutoff_len
    report = encode_dataset(glaive_en, qwen_template, cutoff_len=cutoff_len, policy="lf")
    assert report.skipped == [] and len(report.samples) == len(expected["samples"]) == 300
    mismatched = []
    for sample, row in zip(report.samples, expected["samples"], strict=True):
        if sample.input_ids != row["input_ids"] or sample.labels != expand_labels(row["input_ids"], row["label_runs"]):
            mismatched.append(sample.record)
    assert mismatched == []
    if cutoff_len == 512:  # the design note's figure: LLaMA-Factory cuts 129 of the 300 samples at 512
        assert report.truncated == 129


def test_seed_sample_1_ids_and_labels(qwen_template, glaive_en) -> None:
    seed = json.loads((PARITY_DIR / "seed_sample1.json").read_text(encoding="utf-8"))
    for policy in ("lf", "safe"):
        sample = encode_dataset(glaive_en[:1], qwen_template, cutoff_len=2048, policy=policy).samples[0]
        assert sample.input_ids[:100] == seed["input_tokens_first_100"]
        assert sample.labels == seed["labels"] and len(sample.labels) == 584
