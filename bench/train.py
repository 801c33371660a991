"""LoRA training throughput and peak memory: tooltune against LLaMA-Factory's own trainer, in the same run.

SmolLM2-135M-Instruct (the embedded default model, imported to an fp32 HF checkpoint), LoRA on q_proj,v_proj,
glaive_toolcall_en_demo with the qwen template at cutoff 512, batch 2 × accumulation 8, gradient checkpointing on
(LLaMA-Factory's default), fp32, one epoch over the first ``--samples`` records. Both sides train on the same
samples: tooltune uses ``--cutoff_policy lf`` here, which reproduces LLaMA-Factory's truncation bit for bit, so the
trained tokens are identical and tokens/s compare like for like.

Each configuration runs in its own process (peak RSS = that process's ``ru_maxrss``); time is the trainer's
``train_runtime`` (model loading and tokenization excluded on both sides). Variants:

    llamafactory      LLaMA-Factory 0.9.5 (run from the venv given by --lf-python; skipped when absent)
    tooltune-before   tooltune with the full-vocabulary LM head and random batches (what LLaMA-Factory computes)
    tooltune          tooltune's defaults: the LM head fused with the loss on trained positions only, the lean SwiGLU,
                      checkpointing of only as many layers as memory needs (``--checkpoint_layers auto``; set
                      BENCH_CHECKPOINT_LAYERS to try a number), length-grouped batches, THP-backed allocations
    tooltune-nogc     the same without gradient checkpointing (faster, more memory; only with --variants)
    tooltune-cached   tooltune-nogc plus ``--cache_prompt``: each batch's prompt runs once without gradients (an
                      approximation of the gradient, docs/train.md; only with --variants)
    tooltune-half     tooltune with ``--lora_layers 15``: LoRA on the last half of SmolLM2's 30 layers, the first
                      half forward only (BENCH_LORA_LAYERS to try another count; only with --variants)

Usage: python bench/train.py [--samples 32] [--threads 1] [--lf-python /tmp/lfenv/bin/python]
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

# The environment as the user started the bench: `import tooltune` sets THP_MEM_ALLOC_ENABLE for its own runs, and
# that must not leak into LLaMA-Factory's (each side runs as it runs by default).
BASE_ENV = dict(os.environ)
REPO = Path(__file__).resolve().parent.parent
# Python puts this script's folder first on sys.path, where sibling benches (bench/gguf.py) would shadow packages.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
DATA_DIR = REPO / "src" / "tooltune" / "resources" / "data"
DATASET = "glaive_toolcall_en_demo"
CUTOFF = 512
BATCH, ACCUM = 2, 8


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


TRAIN_TIMES: dict[str, float] = {}


def _time_trainer_train() -> None:
    """Wrap ``transformers.Trainer.train`` (both sides subclass it) to record its wall and CPU seconds. CPU seconds of
    a one-thread run are the work done, and stay comparable when other jobs share the machine."""
    import transformers

    original = transformers.Trainer.train

    def timed(self, *args, **kwargs):
        TRAIN_TIMES["peak_rss_before_train_mb"] = _peak_rss_mb()
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            return original(self, *args, **kwargs)
        finally:
            TRAIN_TIMES["train_wall_s"] = time.perf_counter() - wall
            TRAIN_TIMES["train_cpu_s"] = time.process_time() - cpu

    transformers.Trainer.train = timed


# ---- workers (run in their own process) -------------------------------------------------------------------------
def worker_tooltune(model: str, samples: int, out: str, variant: str) -> dict:
    sys.path.insert(0, str(REPO / "src"))
    from rich.console import Console

    from tooltune.args import parse_into
    from tooltune.data import DataArguments
    from tooltune.train import train
    from tooltune.train.args import FinetuningArguments, ModelArguments, TrainArguments
    from tooltune.train.callbacks import read_log

    _time_trainer_train()
    fast = variant in ("tooltune", "tooltune-nogc", "tooltune-cached", "tooltune-half")
    checkpointing = variant in ("tooltune", "tooltune-half")
    layers = ["--lora_layers", os.environ.get("BENCH_LORA_LAYERS", "15")] if variant == "tooltune-half" else []
    cached = variant == "tooltune-cached"
    argv = [
        "--model_name_or_path",
        model,
        "--dataset",
        DATASET,
        "--dataset_dir",
        str(DATA_DIR),
        "--template",
        "qwen",
        "--cutoff_len",
        str(CUTOFF),
        "--cutoff_policy",
        "lf",
        "--max_samples",
        str(samples),
        "--lora_target",
        "q_proj,v_proj",
        "--output_dir",
        out,
        "--overwrite_output_dir",
        "--per_device_train_batch_size",
        str(BATCH),
        "--gradient_accumulation_steps",
        str(ACCUM),
        "--num_train_epochs",
        "1",
        "--learning_rate",
        "5e-6",
        "--logging_steps",
        "1",
        "--save_steps",
        "100000",
        "--gradient_checkpointing",
        str(checkpointing).lower(),
        "--plot_loss",
        "false",
        "--group_by_length",
        str(fast).lower(),
        "--full_logits",
        str(not fast).lower(),
        "--checkpoint_layers",
        os.environ.get("BENCH_CHECKPOINT_LAYERS", "auto") if fast else "all",
        "--cache_prompt",
        str(cached).lower(),
        *layers,
    ]
    classes = (ModelArguments, DataArguments, FinetuningArguments, TrainArguments)
    result = train(*parse_into(classes, argv), console=Console(file=open(os.devnull, "w")))  # noqa: SIM115
    records = [r for r in read_log(Path(out) / "trainer_log.jsonl") if "loss" in r]
    return TRAIN_TIMES | {
        "train_runtime": result.metrics["train_runtime"],
        "tokens": records[-1]["tokens"],
        "trained_tokens": records[-1]["trained_tokens"],
        "steps": len(records),
        "peak_rss_mb": _peak_rss_mb(),
    }


def worker_llamafactory(model: str, samples: int, out: str) -> dict:
    import importlib.machinery
    import types

    # LLaMA-Factory 0.9.5 imports torchaudio at import time; no build matches torch 2.13 and text training never
    # uses it, so an empty stand-in module (with a spec, which transformers' availability probe reads) is enough.
    stand_in = types.ModuleType("torchaudio")
    stand_in.__spec__ = importlib.machinery.ModuleSpec("torchaudio", None)
    sys.modules.setdefault("torchaudio", stand_in)
    from llamafactory.train.tuner import run_exp

    _time_trainer_train()

    args = {
        "stage": "sft",
        "do_train": True,
        "model_name_or_path": model,
        "dataset": DATASET,
        "dataset_dir": str(DATA_DIR),
        "template": "qwen",
        "cutoff_len": CUTOFF,
        "max_samples": samples,
        "finetuning_type": "lora",
        "lora_target": "q_proj,v_proj",
        "output_dir": out,
        "overwrite_output_dir": True,
        "per_device_train_batch_size": BATCH,
        "gradient_accumulation_steps": ACCUM,
        "num_train_epochs": 1,
        "learning_rate": 5e-6,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "plot_loss": False,
        "overwrite_cache": True,
    }
    run_exp(args)
    metrics = json.loads((Path(out) / "train_results.json").read_text())
    return TRAIN_TIMES | {"train_runtime": metrics["train_runtime"], "peak_rss_mb": _peak_rss_mb()}


# ---- orchestration ----------------------------------------------------------------------------------------------
def dataset_tokens(model: str, samples: int) -> tuple[int, int]:
    """Tokens and trained tokens of the benchmark samples (LLaMA-Factory-compatible encoding, so both sides agree)."""
    sys.path.insert(0, str(REPO / "src"))
    from transformers import AutoTokenizer

    from tooltune.data import DataArguments, load_conversations
    from tooltune.encode import encode_dataset
    from tooltune.templates import get_template

    tokenizer = AutoTokenizer.from_pretrained(model)
    args = DataArguments(
        dataset=DATASET,
        dataset_dir=str(DATA_DIR),
        template="qwen",
        cutoff_len=CUTOFF,
        cutoff_policy="lf",
        max_samples=samples,
    )
    report = encode_dataset(
        load_conversations(args).conversations, get_template("qwen", tokenizer), cutoff_len=CUTOFF, policy="lf"
    )
    return sum(len(s.input_ids) for s in report.samples), sum(s.trained_tokens for s in report.samples)


def default_model() -> str:
    sys.path.insert(0, str(REPO / "src"))
    from tooltune.gguf.import_gguf import ensure_default_model

    return str(ensure_default_model())


def spawn(python: str, worker: str, model: str, samples: int, threads: int, variant: str = "") -> dict:
    env = dict(BASE_ENV, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false")
    with tempfile.TemporaryDirectory(prefix=f"bench-train-{worker}-") as out:
        command = [
            python,
            str(Path(__file__).resolve()),
            "--worker",
            worker,
            "--model",
            model,
            "--samples",
            str(samples),
            "--out",
            out,
            "--variant",
            variant,
        ]
        started = time.monotonic()
        proc = subprocess.run(command, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{worker} {variant} failed:\n{proc.stderr[-3000:]}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        result["wall_s"] = time.monotonic() - started
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=16, help="records of glaive_toolcall_en_demo (one epoch)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for every run (same on both sides)")
    parser.add_argument("--model", default=None, help="HF dir (default: the embedded SmolLM2-135M, imported)")
    parser.add_argument("--lf-python", default="/tmp/lfenv/bin/python", help="python of a venv with llamafactory")
    parser.add_argument(
        "--variants", default="tooltune-before,tooltune",
        help="tooltune runs (+ tooltune-nogc, tooltune-cached, tooltune-half)",
    )
    parser.add_argument("--no-lf", action="store_true", help="skip the LLaMA-Factory run")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of all runs (median time, worst peak memory)")
    parser.add_argument("--worker", choices=["tooltune", "llamafactory"], help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker == "tooltune":
        print(json.dumps(worker_tooltune(args.model, args.samples, args.out, args.variant)))
        return
    if args.worker == "llamafactory":
        print(json.dumps(worker_llamafactory(args.model, args.samples, args.out)))
        return

    model = args.model or default_model()
    tokens, trained = dataset_tokens(model, args.samples)
    print(
        f"model {model}\n{args.samples} samples of {DATASET}, cutoff {CUTOFF}: {tokens:,} tokens, {trained:,} "
        f"trained; batch {BATCH} × accumulation {ACCUM}; GC on (not -nogc); fp32; {args.threads} thread(s)\n"
    )
    runs: dict[str, dict] = {}
    lf_ok = (
        not args.no_lf
        and Path(args.lf_python).is_file()
        and subprocess.run(
            [
                args.lf_python,
                "-c",
                "import importlib.util,sys; sys.exit(importlib.util.find_spec('llamafactory') is None)",
            ]
        ).returncode
        == 0
    )
    if not lf_ok:
        reason = "--no-lf" if args.no_lf else f"llamafactory not installed at {args.lf_python}"
        print(f"({reason}: LLaMA-Factory run skipped)")
    names = (["llamafactory"] if lf_ok else []) + args.variants.split(",")
    trials: dict[str, list[dict]] = {name: [] for name in names}
    # Rounds interleave the runs, so a slow spell of a shared machine hits every side alike; the median is reported.
    for _ in range(args.repeat):
        for name in names:
            if name == "llamafactory":
                trials[name].append(spawn(args.lf_python, "llamafactory", model, args.samples, args.threads))
            else:
                trials[name].append(spawn(sys.executable, "tooltune", model, args.samples, args.threads, name))
    for name, results in trials.items():
        results.sort(key=lambda r: r["train_cpu_s"])
        runs[name] = dict(results[len(results) // 2])
        runs[name]["peak_rss_mb"] = max(r["peak_rss_mb"] for r in results)  # the worst peak of the rounds

    print("rates per second of the trainer's wall time, and per CPU second (robust on a shared machine)")
    print(
        f"{'run':<17}{'wall s':>8}{'CPU s':>8}{'tok/s':>8}{'trained tok/s':>15}{'per CPU s':>11}{'peak RSS MB':>13}"
        f"{'at train start':>16}"
    )
    for name, r in runs.items():
        if "tokens" in r:
            assert (r["tokens"], r["trained_tokens"]) == (tokens, trained), (name, r)  # same work on every side
        rate = tokens / r["train_wall_s"]
        trained_rate = trained / r["train_wall_s"]
        trained_cpu_rate = trained / r["train_cpu_s"]
        r.update(tokens_per_s=rate, trained_tokens_per_s=trained_rate, trained_tokens_per_cpu_s=trained_cpu_rate)
        print(
            f"{name:<17}{r['train_wall_s']:>8.1f}{r['train_cpu_s']:>8.1f}{rate:>8.1f}{trained_rate:>15.1f}"
            f"{trained_cpu_rate:>11.1f}{r['peak_rss_mb']:>13.0f}{r.get('peak_rss_before_train_mb', 0):>16.0f}"
        )
    # The baseline: LLaMA-Factory when it ran, else tooltune's own before/default run (for -nogc, -cached, -half).
    base_name = next((n for n in ("llamafactory", "tooltune-before", "tooltune") if n in runs), None)
    if base_name is None:
        return
    base = runs[base_name]
    for name in [n for n in runs if n != base_name]:
        r = runs[name]
        print(
            f"{name} vs {base_name}: {r['trained_tokens_per_cpu_s'] / base['trained_tokens_per_cpu_s']:.2f}× trained "
            f"tokens per CPU second, {r['peak_rss_mb'] / base['peak_rss_mb']:.2f}× peak RSS (wall-time ratio "
            f"{r['trained_tokens_per_s'] / base['trained_tokens_per_s']:.2f}×: on a shared machine it mostly measures "
            f"other jobs)"
        )


if __name__ == "__main__":
    main()
