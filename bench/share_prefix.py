"""LoRA training on the seed's own tools with and without ``--share_prefix``, in the same run.

The seed-tools demo's samples (``tooltune demo --example seed-tools``: the spec's offline synth with the demo's
overrides) are ~88% prompt, and the prompt of every sample that offers the same tools begins with the same system
prompt and tool schemas. ``--share_prefix`` trains such samples in rows that hold that beginning once; each sample
attends to it and to itself only, so the loss and gradients are the samples' own (tests/test_train_loss.py) and only
the work changes. Both sides train the same samples for one epoch — the first ``--samples`` of the demo's training
set, SmolLM2-135M-Instruct (the embedded default model, imported), LoRA on every linear layer at rank 16, batch 1,
no gradient checkpointing, fp32: the demo's settings — each in its own process (peak RSS = that process's
``ru_maxrss``). Time is the trainer's ``train_runtime``.

    python bench/share_prefix.py [--samples 48] [--threads 2] [--cutoff 1536]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(REPO / "src"))
CONFIG = REPO / "src" / "tooltune" / "resources" / "configs" / "seed_tools.yaml"


def demo_data(out: Path) -> str:
    """The seed-tools demo's synth output (its config's `synth:` block), written to ``out``; returns the name."""
    import yaml
    from rich.console import Console

    from tooltune.synth.build import prepare, synthesize, write_outputs
    from tooltune.synth.spec import load_spec

    block = dict(yaml.safe_load(CONFIG.read_text(encoding="utf-8"))["synth"])
    spec = load_spec(CONFIG.parent / block.pop("spec"), block)
    plan, offline = prepare(spec)
    result = synthesize(spec, plan, offline=offline)
    write_outputs(spec, result, out)
    Console(stderr=True).print(result.summary(), highlight=False, markup=False)
    return spec.name


def worker(model: str, data_dir: str, dataset: str, samples: int, cutoff: int, shared: bool, out: str) -> dict:
    from tooltune.args import parse_into
    from tooltune.data import DataArguments
    from tooltune.train import train
    from tooltune.train.args import FinetuningArguments, ModelArguments, TrainArguments

    argv = [
        "--model_name_or_path", model, "--dataset", dataset, "--dataset_dir", data_dir, "--template", "qwen",
        "--cutoff_len", str(cutoff), "--max_samples", str(samples), "--finetuning_type", "lora",
        "--lora_target", "all", "--lora_rank", "16", "--per_device_train_batch_size", "1",
        "--gradient_accumulation_steps", "1", "--num_train_epochs", "1", "--learning_rate", "1e-3",
        "--logging_steps", "1", "--save_steps", "100000", "--disable_gradient_checkpointing", "true",
        "--output_dir", out, "--overwrite_output_dir", "true", "--share_prefix", str(shared).lower(),
    ]
    result = train(*parse_into((ModelArguments, DataArguments, FinetuningArguments, TrainArguments), argv))
    return {
        "rows": result.plan.samples,
        "tokens": result.plan.tokens,
        "trained_tokens": result.plan.trained_tokens,
        "seconds": result.metrics["train_runtime"],
        "train_loss": result.metrics.get("train_loss"),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def spawn(args: argparse.Namespace, model: str, data_dir: str, dataset: str, shared: bool, out: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), TOOLTUNE_THREADS=str(args.threads))
    command = [sys.executable, __file__, "--worker", "--model", model, "--data-dir", data_dir, "--dataset", dataset,
               "--samples", str(args.samples), "--cutoff", str(args.cutoff), "--out", out]
    if shared:
        command.append("--shared")
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{'shared' if shared else 'plain'} run failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=48, help="training samples of the demo's set (one epoch)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cutoff", type=int, default=1536, help="cutoff_len: the longest sample and row")
    parser.add_argument("--model", default=None, help="HF dir (default: the embedded SmolLM2-135M, imported)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--shared", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", help=argparse.SUPPRESS)
    parser.add_argument("--dataset", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        import contextlib

        with contextlib.redirect_stdout(sys.stderr):  # the trainer's progress goes to stderr; stdout carries JSON
            figures = worker(args.model, args.data_dir, args.dataset, args.samples, args.cutoff, args.shared,
                             args.out)
        print(json.dumps(figures))
        return
    if args.model is None:
        from tooltune.gguf.import_gguf import ensure_default_model

        args.model = str(ensure_default_model())
    with tempfile.TemporaryDirectory(prefix="tooltune-share-bench-") as tmp:
        data_dir = Path(tmp) / "data"
        dataset = demo_data(data_dir)
        plain = spawn(args, args.model, str(data_dir), dataset, False, str(Path(tmp) / "plain"))
        shared = spawn(args, args.model, str(data_dir), dataset, True, str(Path(tmp) / "shared"))
    print(f"seed-tools demo data, first {args.samples} training samples, one epoch, {args.threads} threads, "
          f"cutoff {args.cutoff}")
    print(f"{'':10} {'rows':>5} {'tokens':>8} {'trained':>8} {'seconds':>8} {'trained/s':>10} {'peak MB':>8} "
          f"{'mean loss':>9}")
    for name, run in (("plain", plain), ("shared", shared)):
        print(f"{name:10} {run['rows']:>5} {run['tokens']:>8,} {run['trained_tokens']:>8,} {run['seconds']:>8.1f} "
              f"{run['trained_tokens'] / run['seconds']:>10.1f} {run['peak_rss_mb']:>8.0f} {run['train_loss']:>9.4f}")
    print(f"shared / plain: {plain['seconds'] / shared['seconds']:.2f}x samples per second "
          f"({plain['tokens'] / shared['tokens']:.2f}x fewer tokens computed), "
          f"{shared['peak_rss_mb'] / plain['peak_rss_mb']:.2f}x peak memory")


if __name__ == "__main__":
    main()
