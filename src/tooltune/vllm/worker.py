"""Quantize a checkpoint with llm-compressor and check it against the original. Runs INSIDE the isolated environment.

This file is executed as a script by ``tooltune.vllm.export`` with the llm-compressor environment's python, so it
imports only the standard library, torch, transformers, datasets and llmcompressor — never ``tooltune`` (which is
not installed there, and whose transformers would differ anyway).

Protocol: ``python worker.py REQUEST.json``. The request names the source and output directories, the scheme, and
JSONL files of pre-tokenized calibration / verification samples (rendered in the main process with the training
template). Progress goes to stdout as lines ``@@tooltune {json}``; library chatter goes to stderr; the result is
written as JSON to the request's ``result`` path.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

EVENT_PREFIX = "@@tooltune "

# Each scheme: the llm-compressor preset it uses and whether it needs calibration data.
SCHEMES: dict[str, dict[str, Any]] = {
    "fp8": {"preset": "FP8_DYNAMIC", "calibrate": False},
    "w4a16-gptq": {"preset": "W4A16", "calibrate": True},
    "w4a16-awq": {"preset": "W4A16_ASYM", "calibrate": True},
    "w8a8": {"preset": "W8A8", "calibrate": True},
}


def emit(event: str, **fields: Any) -> None:
    print(EVENT_PREFIX + json.dumps({"event": event, **fields}), flush=True)


def read_jsonl(path: str | None) -> list[dict[str, Any]]:
    if not path:
        return []
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def build_recipe(scheme: str) -> list[Any]:
    # lm_head stays in full precision: vLLM does not quantize it for these schemes and it is the most sensitive.
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier

    preset = SCHEMES[scheme]["preset"]
    common = {"targets": "Linear", "scheme": preset, "ignore": ["lm_head"]}
    if scheme == "fp8":
        return [QuantizationModifier(**common)]
    if scheme == "w4a16-gptq":
        return [GPTQModifier(**common)]
    if scheme == "w4a16-awq":
        from llmcompressor.modifiers.transform import AWQModifier

        # AWQ only rescales channels from activation statistics; the quantizer after it writes the int4 weights.
        return [AWQModifier(duo_scaling="both"), QuantizationModifier(**common)]
    if scheme == "w8a8":
        from llmcompressor.modifiers.transform import SmoothQuantModifier

        # SmoothQuant moves activation outliers into the weights first, so int8 activations lose less.
        return [SmoothQuantModifier(smoothing_strength=0.8), GPTQModifier(**common)]
    raise ValueError(f"unknown scheme {scheme!r}")


def allow_cpu_only_calibration() -> bool:
    """Let AWQ calibrate without an accelerator; returns whether the shim was needed.

    llm-compressor 0.14's AWQ pins cached activations (``tensor.pin_memory()``) to speed host-to-GPU copies, and
    pinning raises when no accelerator exists. With no GPU there is no copy to speed up, so pinning is skipped;
    the numbers computed are the same.
    """
    import torch

    if torch.accelerator.is_available():
        return False
    from llmcompressor.pipelines.cache import IntermediatesCache

    IntermediatesCache.pin_memory = lambda self, batch_index, input_names=None: None  # type: ignore[method-assign]
    return True


def calibration_dataset(samples: list[dict[str, Any]], max_seq_length: int) -> Any:
    from datasets import Dataset

    rows = []
    for sample in samples:
        ids = sample["input_ids"][:max_seq_length]
        rows.append({"input_ids": ids, "attention_mask": [1] * len(ids)})
    return Dataset.from_list(rows)


def quantize(request: dict[str, Any]) -> dict[str, Any]:
    import torch
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM, AutoTokenizer

    scheme = request["scheme"]
    emit("stage", name="load", detail=request["model"])
    remote_code = bool(request.get("trust_remote_code"))
    model = AutoModelForCausalLM.from_pretrained(
        request["model"], dtype="auto", use_safetensors=True, trust_remote_code=remote_code
    )
    tokenizer = AutoTokenizer.from_pretrained(request["model"], trust_remote_code=remote_code)
    kwargs: dict[str, Any] = {}
    samples = read_jsonl(request.get("calibration"))
    if SCHEMES[scheme]["calibrate"]:
        if not samples:
            raise ValueError(f"scheme {scheme} needs calibration samples")
        kwargs.update(
            dataset=calibration_dataset(samples, request["max_seq_length"]),
            num_calibration_samples=len(samples),
            max_seq_length=request["max_seq_length"],
        )
    emit("stage", name="quantize", detail=f"{scheme} on {len(samples) if kwargs else 0} calibration samples")
    started = time.monotonic()
    torch.manual_seed(0)
    cpu_only = allow_cpu_only_calibration()
    oneshot(model=model, tokenizer=tokenizer, recipe=build_recipe(scheme), **kwargs)
    quantize_seconds = time.monotonic() - started
    emit("stage", name="save", detail=request["out"])
    started = time.monotonic()
    model.save_pretrained(request["out"], save_compressed=True)
    return {
        "device": "cpu" if cpu_only else "accelerator",
        "quantize_seconds": round(quantize_seconds, 2),
        "save_seconds": round(time.monotonic() - started, 2),
    }


def _log_probs(model: Any, input_ids: list[int]) -> Any:
    import torch

    with torch.no_grad():
        logits = model(torch.tensor([input_ids])).logits[0].float()
    return torch.log_softmax(logits, dim=-1)


def verify(request: dict[str, Any]) -> dict[str, Any]:
    """Next-token distributions of the quantized model (decompressed by transformers) against the original's."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, CompressedTensorsConfig

    samples = read_jsonl(request.get("verification"))
    if not samples:
        return {}
    emit("stage", name="verify", detail=f"{len(samples)} samples against the unquantized model")
    reference = AutoModelForCausalLM.from_pretrained(request["model"], dtype=torch.float32, use_safetensors=True)
    quantized = AutoModelForCausalLM.from_pretrained(
        request["out"],
        dtype=torch.float32,
        use_safetensors=True,
        quantization_config=CompressedTensorsConfig(dequantize=True),
    )
    reference.eval()
    quantized.eval()
    kl_total, positions, agree, max_kl = 0.0, 0, 0, 0.0
    per_sample = []
    for sample in samples:
        ids = sample["input_ids"][: request["verify_max_tokens"]]
        ref, quant = _log_probs(reference, ids), _log_probs(quantized, ids)
        # KL(reference || quantized) per position, in nats.
        kl = (ref.exp() * (ref - quant)).sum(dim=-1)
        same_top1 = (ref.argmax(dim=-1) == quant.argmax(dim=-1)).sum().item()
        kl_total += kl.sum().item()
        positions += len(ids)
        agree += same_top1
        max_kl = max(max_kl, kl.max().item())
        per_sample.append({"tokens": len(ids), "mean_kl": kl.mean().item(), "top1_agreement": same_top1 / len(ids)})
    tokenizer = AutoTokenizer.from_pretrained(request["out"])
    prompt_ids = samples[0].get("prompt_ids") or samples[0]["input_ids"][:32]
    with torch.no_grad():
        generated = quantized.generate(
            torch.tensor([prompt_ids]),
            attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
            max_new_tokens=request.get("generate_tokens", 8),
            do_sample=False,
        )
    new_ids = generated[0, len(prompt_ids):].tolist()
    return {
        "samples": len(samples),
        "positions": positions,
        "mean_kl": kl_total / positions,
        "max_kl": max_kl,
        "top1_agreement": agree / positions,
        "per_sample": per_sample,
        "generated_ids": new_ids,
        "generated_text": tokenizer.decode(new_ids),
        "finite": all(math.isfinite(s["mean_kl"]) for s in per_sample),
    }


def versions() -> dict[str, str]:
    from importlib import metadata

    return {p: metadata.version(p) for p in ("llmcompressor", "compressed-tensors", "transformers", "torch")}


def main(argv: list[str]) -> int:
    request = json.loads(Path(argv[1]).read_text(encoding="utf-8"))
    started = time.monotonic()
    emit("stage", name="import", detail="llm-compressor")
    import llmcompressor  # noqa: F401 - imported once here so its (slow) import time is reported apart

    result: dict[str, Any] = {"scheme": request["scheme"], "versions": versions()}
    result["import_seconds"] = round(time.monotonic() - started, 2)
    if request.get("quantize", True):
        result.update(quantize(request))
    started = time.monotonic()
    result["verification"] = verify(request)
    result["verify_seconds"] = round(time.monotonic() - started, 2)
    Path(request["result"]).write_text(json.dumps(result, indent=2), encoding="utf-8")
    emit("done")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
