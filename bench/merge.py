"""Merge cost: ``tooltune export`` vs ``llamafactory-cli export`` on the same base and adapter, measured in one run.

The base is a random model with SmolLM2-135M's shape (30 layers, hidden 576, SmolLM2 tokenizer; fp32) and the adapter
a LoRA r=8 on q_proj,v_proj with non-zero B (as after training), both built here. Each side runs in its own process
(LLaMA-Factory in its own interpreter: ``--lf-python`` / ``$LF_PYTHON`` / ``/tmp/lfenv/bin/python``); we report wall
time, peak RSS, shard count, the EOS ids each writes, and the max abs difference between the two merged weight sets.
tooltune's time includes its verification (reference logits before the merge, reload + logits after): run with
``--no-verify`` to see the merge alone.

    python bench/merge.py [--layers 30] [--export-size 0.1] [--no-verify]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

LF_CHILD = r"""
import sys, types
from importlib.machinery import ModuleSpec
stub = types.ModuleType("torchaudio"); stub.__spec__ = ModuleSpec("torchaudio", None)
sys.modules.setdefault("torchaudio", stub)  # imported at import time, unused here; no build matches torch 2.13
from llamafactory.train.tuner import export_model
base, adapter, out, size = sys.argv[1:5]
export_model({"model_name_or_path": base, "adapter_name_or_path": adapter, "template": "qwen",
              "finetuning_type": "lora", "export_dir": out, "export_size": int(size),
              "export_legacy_format": False})
"""


def run_measured(argv: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of a child process."""
    wrapper = (
        "import resource, runpy, subprocess, sys, json\n"
        "p = subprocess.run(sys.argv[1:])\n"
        "r = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
        "print(json.dumps({'rc': p.returncode, 'maxrss_kb': r.ru_maxrss}), file=sys.stderr)\n"
    )
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", wrapper, *argv], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    last = proc.stderr.strip().splitlines()[-1]
    stats = json.loads(last)
    if stats["rc"] != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"command failed: {' '.join(argv[:3])}")
    return seconds, stats["maxrss_kb"] / 1024


def build_inputs(work: Path, layers: int) -> tuple[Path, Path]:
    import torch
    from peft import LoraConfig, get_peft_model
    from tiny_models import make_tiny_llama
    from transformers import AutoModelForCausalLM

    base = make_tiny_llama(work / "base", hidden_size=576, intermediate_size=1536, num_hidden_layers=layers,
                           num_attention_heads=9, num_key_value_heads=3)
    model = AutoModelForCausalLM.from_pretrained(base, use_safetensors=True)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)
    adapter = work / "adapter"
    model.save_pretrained(adapter)
    return base, adapter


def shard_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.safetensors"))


def max_weight_diff(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    left = {k: v for f in shard_files(a) for k, v in load_file(str(f)).items()}
    right = {k: v for f in shard_files(b) for k, v in load_file(str(f)).items()}
    shared = sorted(set(left) & set(right))
    if set(left) != set(right):
        print(f"  note: tensor names differ: {sorted(set(left) ^ set(right))[:4]}")
    return max(float((left[k].float() - right[k].float()).abs().max()) for k in shared)


def eos_of(directory: Path) -> object:
    return json.loads((directory / "generation_config.json").read_text()).get("eos_token_id")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--export-size", type=int, default=1, help="GB per shard (LLaMA-Factory takes an int)")
    parser.add_argument("--no-verify", action="store_true")
    parser.add_argument("--lf-python", default=os.environ.get("LF_PYTHON", "/tmp/lfenv/bin/python"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_merge_") as tmp:
        work = Path(tmp)
        base, adapter = build_inputs(work, args.layers)
        size_mb = sum(f.stat().st_size for f in base.glob("*.safetensors")) / 1e6
        print(f"base: SmolLM2-135M shape, {args.layers} layers, {size_mb:.0f} MB fp32; adapter: LoRA r=8 q_proj,v_proj")

        ours = work / "tooltune"
        argv = [sys.executable, "-m", "tooltune", "export", "--model_name_or_path", str(base),
                "--adapter_name_or_path", str(adapter), "--template", "qwen", "--finetuning_type", "lora",
                "--export_dir", str(ours), "--export_size", str(args.export_size), "--export_legacy_format", "false"]
        if args.no_verify:
            argv += ["--verify_samples", "0"]
        ours_s, ours_mb = run_measured(argv)

        theirs = work / "llamafactory"
        lf_s, lf_mb = run_measured([args.lf_python, "-c", LF_CHILD, str(base), str(adapter), str(theirs),
                                    str(args.export_size)])

        diff = max_weight_diff(ours, theirs)
        print(f"{'':14}{'wall s':>10}{'peak RSS MB':>14}{'shards':>8}  eos_token_id")
        print(f"{'tooltune':14}{ours_s:10.1f}{ours_mb:14.0f}{len(shard_files(ours)):8}  {eos_of(ours)}")
        print(f"{'LLaMA-Factory':14}{lf_s:10.1f}{lf_mb:14.0f}{len(shard_files(theirs)):8}  {eos_of(theirs)}")
        print(f"ratio tooltune/LLaMA-Factory: time {ours_s / lf_s:.2f}x, peak memory {ours_mb / lf_mb:.2f}x; "
              f"max abs weight difference between the two merges {diff:.2e}"
              f"{' (tooltune verification included)' if not args.no_verify else ''}")


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    main()
