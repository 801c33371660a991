"""Preprocessing speed: tooltune vs LLaMA-Factory's own dataset preparation, measured in the same run.

Both sides do the dataset preparation a training run starts with — read glaive_toolcall_en_demo
through the dataset_info.json registry, build the ``qwen`` template, tokenize and mask every sample at cutoff_len
2048 — in one process (LLaMA-Factory: ``preprocessing_num_workers`` unset), after one warm-up run each; the best of
``--repeat`` runs is reported. LLaMA-Factory runs in its own interpreter (it pins other library versions): the
current one if it has ``llamafactory``, else ``--lf-python`` / ``$LF_PYTHON`` / ``/tmp/lfenv/bin/python``.

    python bench/preprocess.py [--repeat 3] [--lf-python /tmp/lfenv/bin/python]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOKENIZER_DIR = ROOT / "tests" / "fixtures" / "tokenizers" / "qwen2.5"
DATA_DIR = ROOT / "src" / "tooltune" / "resources" / "data"
DATASET = "glaive_toolcall_en_demo"
CUTOFF_LEN = 2048

LF_CHILD = r"""
import json, sys, tempfile, time, types
from importlib.machinery import ModuleSpec
stub = types.ModuleType("torchaudio"); stub.__spec__ = ModuleSpec("torchaudio", None)
sys.modules.setdefault("torchaudio", stub)  # imported at import time, unused for text; no build matches torch 2.13
from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
from llamafactory.hparams import get_train_args
from llamafactory.model import load_tokenizer
tokenizer_dir, data_dir, dataset, cutoff_len, repeat = sys.argv[1:6]
result = {"prepare": [], "prepare_cpu": [], "tokenizer": []}
for run in range(int(repeat) + 1):  # run 0 warms caches (datasets' arrow cache, imports), as for tooltune
    with tempfile.TemporaryDirectory() as out:
        args = {"stage": "sft", "do_train": True, "model_name_or_path": tokenizer_dir, "dataset": dataset,
                "dataset_dir": data_dir, "template": "qwen", "cutoff_len": int(cutoff_len),
                "finetuning_type": "lora", "output_dir": out, "overwrite_cache": True, "report_to": "none"}
        model_args, _, _, _, _ = get_train_args(dict(args))
        started = time.perf_counter()
        tokenizer_module = load_tokenizer(model_args)
        tokenizer_seconds = time.perf_counter() - started
        started, cpu = time.perf_counter(), time.process_time()
        model_args, data_args, training_args, _, _ = get_train_args(dict(args))
        template = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
        train = get_dataset(template, model_args, data_args, training_args, "sft", **tokenizer_module)["train_dataset"]
        tokens = sum(len(ids) for ids in train["input_ids"])
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    if run:
        result["prepare"].append(elapsed)
        result["prepare_cpu"].append(cpu)
        result["tokenizer"].append(tokenizer_seconds)
result.update(samples=len(train), tokens=tokens)
print("RESULT " + json.dumps(result))
"""


def run_tooltune(repeat: int, policy: str) -> dict:
    from tooltune.data import DataArguments, load_tokenizer, prepare_dataset

    args = DataArguments(
        dataset=DATASET, dataset_dir=str(DATA_DIR), template="qwen", cutoff_len=CUTOFF_LEN, cutoff_policy=policy
    )
    result: dict = {"prepare": [], "prepare_cpu": [], "tokenizer": []}
    for run in range(repeat + 1):
        started = time.perf_counter()
        tokenizer = load_tokenizer(TOKENIZER_DIR)
        tokenizer_seconds = time.perf_counter() - started
        started, cpu = time.perf_counter(), time.process_time()
        prepared = prepare_dataset(args, tokenizer)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        if run:
            result["prepare"].append(elapsed)
            result["prepare_cpu"].append(cpu)
            result["tokenizer"].append(tokenizer_seconds)
    result.update(samples=len(prepared.train.samples), tokens=prepared.train.tokens)
    return result


def find_lf_python(explicit: str | None) -> str | None:
    if importlib.util.find_spec("llamafactory") is not None:
        return sys.executable
    for candidate in (explicit, os.environ.get("LF_PYTHON"), "/tmp/lfenv/bin/python"):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def run_llamafactory(python: str, repeat: int) -> dict:
    env = dict(os.environ, DISABLE_VERSION_CHECK="1", HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [python, "-c", LF_CHILD, str(TOKENIZER_DIR), str(DATA_DIR), DATASET, str(CUTOFF_LEN), str(repeat)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line.removeprefix("RESULT "))
    raise RuntimeError(f"LLaMA-Factory run failed:\n{proc.stderr[-3000:]}")


def describe(name: str, result: dict) -> str:
    best = min(result["prepare"])
    return (
        f"{name:<24} {best:7.3f} s  {result['samples'] / best:8.1f} samples/s  {result['tokens'] / best:9.0f} tokens/s"
        f"  (cpu {min(result['prepare_cpu']):6.3f} s; tokenizer load {min(result['tokenizer']):6.3f} s;"
        f" {result['samples']} samples, {result['tokens']} tokens)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--lf-python", default=None)
    opts = parser.parse_args()

    print(
        f"{DATASET}, qwen template, Qwen2.5 tokenizer, cutoff_len {CUTOFF_LEN}, single process, best of "
        f"{opts.repeat} after a warm-up; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
    )
    print("dataset preparation = read + convert + template + tokenize + mask, tokenizer already loaded")
    ours = run_tooltune(opts.repeat, "lf")
    print(describe("tooltune (policy lf)", ours))
    print(describe("tooltune (policy safe)", run_tooltune(opts.repeat, "safe")))
    lf_python = find_lf_python(opts.lf_python)
    if lf_python is None:
        print("LLaMA-Factory: not installed (pip install llamafactory==0.9.5 in a separate venv, pass --lf-python)")
        return
    lf = run_llamafactory(lf_python, opts.repeat)
    print(describe("LLaMA-Factory 0.9.5", lf))
    same = lf["samples"] == ours["samples"] and lf["tokens"] == ours["tokens"]
    print(f"same samples and tokens as LLaMA-Factory (policy lf): {'yes' if same else 'NO'}")
    ratio = min(lf["prepare"]) / min(ours["prepare"])
    cpu_ratio = min(lf["prepare_cpu"]) / min(ours["prepare_cpu"])
    with_load = (min(lf["prepare"]) + min(lf["tokenizer"])) / (min(ours["prepare"]) + min(ours["tokenizer"]))
    print(
        f"speed-up, dataset preparation (policy lf): {ratio:.1f}x wall, {cpu_ratio:.1f}x cpu; "
        f"including tokenizer load: {with_load:.1f}x wall"
    )


if __name__ == "__main__":
    main()
