"""The seed's training command on a CUDA GPU, at the sizes users train, with the variants side by side.

Random-weight models in the shapes of SmolLM2-135M (tooltune's embedded default), Qwen2.5-0.5B and Qwen2.5-7B (the
seed's model) with their real tokenizers from the test fixtures — no hub, so the shapes are built here — train with
the seed guide's own flags (`--lora_target q_proj,v_proj`, batch 2 × accumulation 8, `--cutoff_len 4096`,
`--gradient_checkpointing true`, `--bf16`) for one epoch of the first ``--samples`` glaive demo records; each run is its
own process (peak GPU memory = ``torch.cuda.max_memory_allocated`` of that process, time = the trainer's
``train_runtime``). Ratios: bf16 over fp32, ``--packing`` over plain, and — on the seed-tools demo's data, whose
samples share their prompt's start — ``--share_prefix`` over plain (the demo's settings: every linear layer, rank 16,
batch 1, no checkpointing).

    python bench/train_gpu.py [--models smollm2-135m,qwen2.5-0.5b,qwen2.5-7b] [--samples 96] [--seed-tools-dir DIR]
                              [--variants cudnn,more]

``--seed-tools-dir`` holds the seed-tools demo's synth output (``python bench/train_gpu.py --write-seed-tools DIR``
writes it; it needs the synth dependencies, which a bare GPU image may lack, so it can be written elsewhere and
carried). Weights are random, so losses say nothing about quality; the runs measure the work.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(REPO / "src"))
FIXTURES = REPO / "tests" / "fixtures" / "tokenizers"
DEMO_DATA = REPO / "src" / "tooltune" / "resources" / "data"

# The published shapes (config.json of each model); the vocabulary comes from the tokenizer when it is larger.
SHAPES = {
    "smollm2-135m": ("llama", "smollm2", dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                             num_attention_heads=9, num_key_value_heads=3, rope_theta=100000.0,
                                             tie_word_embeddings=True, rms_norm_eps=1e-5, vocab_size=49152)),
    "qwen2.5-0.5b": ("qwen2", "qwen2.5", dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                                             num_attention_heads=14, num_key_value_heads=2, rope_theta=1000000.0,
                                             tie_word_embeddings=True, rms_norm_eps=1e-6, vocab_size=151936)),
    "qwen2.5-7b": ("qwen2", "qwen2.5", dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                                           num_attention_heads=28, num_key_value_heads=4, rope_theta=1000000.0,
                                           tie_word_embeddings=False, rms_norm_eps=1e-6, vocab_size=152064)),
}

SEED_FLAGS = {  # the seed guide's training command (epochs and samples set by the bench)
    "stage": "sft", "do_train": "true", "template": "qwen", "finetuning_type": "lora", "lora_target": "q_proj,v_proj",
    "overwrite_output_dir": "true", "per_device_train_batch_size": "2", "gradient_accumulation_steps": "8",
    "cutoff_len": "4096", "warmup_steps": "2", "learning_rate": "5e-6", "logging_steps": "10",
    "save_steps": "100000", "gradient_checkpointing": "true",
}
DEMO_FLAGS = {  # the seed-tools demo's settings (src/tooltune/resources/configs/seed_tools.yaml)
    "stage": "sft", "do_train": "true", "template": "qwen", "finetuning_type": "lora", "lora_target": "all",
    "lora_rank": "16", "overwrite_output_dir": "true", "per_device_train_batch_size": "1",
    "gradient_accumulation_steps": "1", "cutoff_len": "1536", "learning_rate": "1e-3", "logging_steps": "10",
    "save_steps": "100000", "gradient_checkpointing": "false",
}


def build_model(shape: str, out: Path) -> Path:
    """A random-weight model of the named shape, saved as safetensors with its tokenizer (built on the GPU: fast)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    arch, tokenizer_name, dims = SHAPES[shape]
    tokenizer = AutoTokenizer.from_pretrained(FIXTURES / tokenizer_name)
    config_class, model_class = (LlamaConfig, LlamaForCausalLM) if arch == "llama" else (Qwen2Config, Qwen2ForCausalLM)
    config = config_class(**(dims | {"vocab_size": max(dims["vocab_size"], len(tokenizer))}),
                          max_position_embeddings=32768, bos_token_id=tokenizer.bos_token_id,
                          eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                          torch_dtype="bfloat16")
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = model_class(config).to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    del model
    return out


def worker(argv: list[str]) -> dict:
    import torch

    from tooltune.args import parse_into
    from tooltune.data import DataArguments
    from tooltune.train import train
    from tooltune.train.args import FinetuningArguments, ModelArguments, TrainArguments

    result = train(*parse_into((ModelArguments, DataArguments, FinetuningArguments, TrainArguments), argv))
    cuda = torch.cuda.is_available()
    return {
        "rows": result.plan.samples,
        "samples": result.plan.packed_samples or result.plan.samples,
        "tokens": result.plan.tokens,
        "trained_tokens": result.plan.trained_tokens,
        "steps": result.plan.total_steps,
        "seconds": result.metrics["train_runtime"],
        "train_loss": result.metrics.get("train_loss"),
        "peak_gb": torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan"),
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
    }


def spawn(name: str, flags: dict[str, str], out: Path, env: dict[str, str] | None = None) -> dict | None:
    argv = [a for key, value in flags.items() for a in (f"--{key}", value)] + ["--output_dir", str(out)]
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--worker", *argv], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        print(f"{name}: FAILED\n{proc.stderr[-4000:]}", flush=True)
        return None
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    figures["wall"] = time.perf_counter() - started
    print(f"{name:34} {figures['rows']:>5} {figures['samples']:>7} {figures['tokens']:>9,} {figures['steps']:>5} "
          f"{figures['seconds']:>8.1f} {figures['tokens'] / figures['seconds']:>9,.0f} "
          f"{figures['trained_tokens'] / figures['seconds']:>9,.0f} {figures['peak_gb']:>7.2f} "
          f"{figures['train_loss']:>8.4f} {figures['wall']:>6.0f}", flush=True)
    return figures


def ratio(label: str, faster: dict | None, slower: dict | None, memory: bool = True) -> None:
    if faster and slower:
        line = f"  {label}: {slower['seconds'] / faster['seconds']:.2f}x samples per second"
        if memory:
            line += f", {faster['peak_gb'] / slower['peak_gb']:.2f}x peak GPU memory"
        print(line, flush=True)


def write_seed_tools(out: Path) -> None:
    sys.path.insert(0, str(REPO / "bench"))
    from share_prefix import demo_data

    print(demo_data(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)  # the worker's training flags pass through untouched
    parser.add_argument("--models", default="smollm2-135m,qwen2.5-0.5b,qwen2.5-7b")
    parser.add_argument("--samples", type=int, default=96, help="glaive demo records per run (one epoch)")
    parser.add_argument("--variants", default="cudnn,more",
                        help="cudnn: bf16 with cuDNN attention kept on; more: --packing, fp32 and --share_prefix")
    parser.add_argument("--seed-tools-dir", type=Path, help="the seed-tools demo's synth output (for --share_prefix)")
    parser.add_argument("--write-seed-tools", type=Path, help="write the seed-tools demo's synth output there, exit")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.worker:
        import contextlib

        with contextlib.redirect_stdout(sys.stderr):  # progress goes to stderr; stdout carries the figures
            figures = worker(rest)
        print(json.dumps(figures))
        return
    if args.write_seed_tools:
        write_seed_tools(args.write_seed_tools)
        return
    import torch

    print(f"torch {torch.__version__}, cuda {torch.cuda.is_available()}"
          f"{', ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else ''}", flush=True)
    print(f"{'run':34} {'rows':>5} {'samples':>7} {'tokens':>9} {'steps':>5} {'train s':>8} {'tok/s':>9} "
          f"{'trained/s':>9} {'peak GB':>7} {'loss':>8} {'wall':>6}", flush=True)
    glaive = {"dataset": "glaive_toolcall_en_demo", "dataset_dir": str(DEMO_DATA), "num_train_epochs": "1",
              "max_samples": str(args.samples)}
    with tempfile.TemporaryDirectory(prefix="tooltune-gpu-bench-") as tmp:
        root = Path(tmp)
        for shape in args.models.split(","):
            started = time.perf_counter()
            model = build_model(shape, root / shape)
            print(f"{shape}: random weights built and saved in {time.perf_counter() - started:.0f} s", flush=True)
            try:
                run_shape(shape, model, root, glaive, args.seed_tools_dir, set(args.variants.split(",")))
            finally:
                shutil.rmtree(model, ignore_errors=True)  # the 7B's weights alone are 15 GB


def run_shape(shape: str, model: Path, root: Path, glaive: dict[str, str], seed_tools_dir: Path | None,
              variants: set[str]) -> None:
    import torch

    from tooltune.train.device import KEEP_CUDNN_ATTENTION_ENV

    seed = SEED_FLAGS | glaive | {"model_name_or_path": str(model)}
    bf16 = spawn(f"{shape} seed command bf16", seed | {"bf16": "true"}, root / "o1")
    if torch.cuda.is_available() and "cudnn" in variants:
        # Training turns cuDNN attention off for bf16 (tooltune.train.device.avoid_cudnn_attention); this is the
        # same command with it kept on, the way PyTorch would choose.
        cudnn = spawn(f"{shape} bf16, cuDNN attention kept", seed | {"bf16": "true"}, root / "o6",
                      env={KEEP_CUDNN_ATTENTION_ENV: "1"})
        ratio("bf16 cuDNN attention off / kept", bf16, cudnn, memory=False)
    if shape == "qwen2.5-7b":  # the seed's own size: its command, timed; the ratios come from the small ones
        return
    if "more" not in variants:
        return
    packed = spawn(f"{shape} seed command bf16 --packing", seed | {"bf16": "true", "packing": "true"}, root / "o2")
    ratio("--packing / plain", packed, bf16)
    fp32 = spawn(f"{shape} seed command fp32", seed, root / "o3")
    ratio("bf16 / fp32", bf16, fp32)
    if seed_tools_dir and shape == "smollm2-135m":
        demo = DEMO_FLAGS | {"model_name_or_path": str(model), "dataset": "seed_tools",
                             "dataset_dir": str(seed_tools_dir), "num_train_epochs": "1", "bf16": "true"}
        plain = spawn(f"{shape} seed-tools demo bf16", demo, root / "o4")
        shared = spawn(f"{shape} seed-tools --share_prefix", demo | {"share_prefix": "true"}, root / "o5")
        ratio("--share_prefix / plain", shared, plain)

if __name__ == "__main__":
    main()
