"""Benchmark: serving a LoRA as its own GGUF on a base vs the merged GGUF, on the demo model, with llama-cpp-python.

Builds, on the embedded SmolLM2-135M-Instruct (imported to HF): a random-initialised LoRA (rank 16 on every attention
and MLP projection, B drawn non-zero so the adapter really changes the output), the base and merged GGUFs (F16 and
Q4_K_M) and the adapter GGUF with ``tooltune lora-gguf``'s code. Then measures:

* decode tokens/s of base + adapter applied vs the merged model (same type), best of --repeat (goal ≥ 0.9×);
* the cost of switching adapters on one context, as a server switching per request would: apply + clear through
  ``llama_set_adapters_lora`` timed directly, and one decoded token right after a switch vs one without (goal ≤ 5 ms);
* the same switch through ``tooltune serve BASE --lora tool=ADAPTER`` (real HTTP, the runner subprocess): latency of
  one-token ``/api/generate`` requests whose model differs from the previous request's (the runner switches
  adapters) vs requests for the same model as the previous one, interleaved; the difference of the medians is what
  a per-request switch costs a client (goal ≤ 5 ms). Prompts differ from their first word, so no request reuses
  another's cached prompt either way (a switch also drops the runner's prompt-prefix cache: for chats that share a
  long prefix, that costs the prefix's re-evaluation on top);
* file sizes: what one more tool set costs to ship either way.

    python bench/adapters.py [--tokens 128] [--repeat 3] [--rank 16] [--threads 2] [--switches 200]
                             [--server-requests 80]
"""

from __future__ import annotations

import argparse
import ctypes
import shutil
import sys
import tempfile
import time
from pathlib import Path

# bench/gguf.py sits next to this file: drop this folder from the import path so `import gguf` finds gguf-py.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402


def build_files(work: Path, rank: int) -> dict[str, Path]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tooltune.gguf.adapter import convert_adapter
    from tooltune.gguf.convert import convert
    from tooltune.gguf.import_gguf import ensure_default_model
    from tooltune.gguf.quantize import quantize_gguf

    model_dir = ensure_default_model()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    peft_model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 2e-3)
    adapter_dir, merged_dir = work / "adapter", work / "merged"
    peft_model.save_pretrained(adapter_dir)
    shutil.copytree(model_dir, merged_dir)
    peft_model.merge_and_unload().save_pretrained(merged_dir, safe_serialization=True)
    files = {
        "base_f16": convert(model_dir, work / "base-F16.gguf", "f16", show_progress=False).path,
        "merged_f16": convert(merged_dir, work / "merged-F16.gguf", "f16", show_progress=False).path,
    }
    files["adapter"] = convert_adapter(adapter_dir, files["base_f16"], work / "adapter-F16.gguf", "f16").path
    for name in ("base", "merged"):
        files[f"{name}_q4"] = quantize_gguf(files[f"{name}_f16"], work / f"{name}-Q4_K_M.gguf", "q4_k_m",
                                            show_progress=False).output
    return files


def load(model: Path, threads: int, lora: Path | None = None):  # noqa: ANN201 - llama_cpp.Llama
    from llama_cpp import Llama

    kwargs = {"lora_path": str(lora)} if lora else {}
    return Llama(model_path=str(model), n_ctx=512, n_batch=512, n_threads=threads, n_threads_batch=threads,
                 verbose=False, seed=0, **kwargs)


def decode_speed(llm, prompt: list[int], n_tokens: int) -> float:  # noqa: ANN001
    """Greedy tokens/s after the prompt (prompt time excluded, like llama-bench's tg)."""
    llm.reset()
    llm.eval(prompt)
    start = time.perf_counter()
    for _ in range(n_tokens):
        llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])
    return n_tokens / (time.perf_counter() - start)


def switch_costs(llm, prompt: list[int], switches: int) -> tuple[float, float, float]:  # noqa: ANN001
    """(apply+clear ms, one token right after a switch ms, one token without a switch ms), medians."""
    import llama_cpp

    ctx = llm._ctx.ctx
    adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(llm._lora_adapter)
    scales = (ctypes.c_float * 1)(1.0)

    def apply() -> None:
        if llama_cpp.llama_set_adapters_lora(ctx, adapters, 1, scales):
            raise SystemExit("llama_set_adapters_lora failed")

    def clear() -> None:
        llama_cpp.llama_set_adapters_lora(ctx, None, 0, None)

    pairs = []
    for _ in range(switches):
        start = time.perf_counter()
        apply()
        clear()
        pairs.append(time.perf_counter() - start)

    # Per request: a server sets the request's adapter (or none) before decoding. Tokens decoded right after a
    # switch (base → adapter or back) are interleaved with tokens decoded with no switch, so a drifting machine load
    # hits both alike; the difference of the medians is what a switch costs a request.
    llm.reset()
    llm.eval(prompt)
    apply()
    switched, steady = [], []
    for step in range(2 * switches):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        start = time.perf_counter()
        if step % 4 == 0:
            clear()
        elif step % 4 == 1:
            apply()
        llm.eval([token])
        (switched if step % 4 < 2 else steady).append(time.perf_counter() - start)
        if llm.n_tokens > 400:
            llm.reset()
            llm.eval(prompt)
    return float(np.median(pairs)) * 1e3, float(np.median(switched)) * 1e3, float(np.median(steady)) * 1e3


def server_switch_cost(base: Path, adapter: Path, threads: int, requests: int) -> tuple[float, float, int]:
    """(median ms of a request right after a model switch, median ms of one without, requests) through the server."""
    import os
    import socket
    import subprocess

    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "tooltune", "serve", str(base), "--name", "base", "--lora",
                                f"tool={adapter}", "--port", str(port), "--n-ctx", "512", "--n-threads", str(threads)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if process.poll() is not None:
                raise SystemExit(f"tooltune serve exited with code {process.returncode}")
            try:
                if httpx.get(url, timeout=1).text == "Ollama is running":
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("tooltune serve did not come up")
            time.sleep(0.3)
        words = ["apple", "river", "stone", "cloud", "maple", "tiger", "ocean", "piano", "lemon", "castle"]
        switched, steady = [], []
        previous = "base"
        with httpx.Client(base_url=url, timeout=60) as client:
            for i in range(requests + 4):
                model = "tool" if (i // 2) % 2 == 0 else "base"  # tool, tool, base, base, ...: half are switches
                prompt = (f"<|im_start|>user\n{words[i % 10]} {i}: name a tool for this.<|im_end|>\n"
                          "<|im_start|>assistant\n")
                start = time.perf_counter()
                reply = client.post("/api/generate", json={"model": model, "prompt": prompt, "raw": True,
                                                           "stream": False,
                                                           "options": {"temperature": 0, "num_predict": 1}})
                elapsed = time.perf_counter() - start
                reply.raise_for_status()
                if i >= 4:  # the first requests warm the runner up
                    (switched if model != previous else steady).append(elapsed)
                previous = model
        return float(np.median(switched)) * 1e3, float(np.median(steady)) * 1e3, len(switched) + len(steady)
    finally:
        process.terminate()
        process.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--switches", type=int, default=200)
    parser.add_argument("--server-requests", type=int, default=80,
                        help="requests through tooltune serve for the per-request switch cost (0: skip)")
    parser.add_argument("--keep", action="store_true", help="keep the built files (their folder is printed)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-adapters-"))
    try:
        print("building the adapter, the merged model and their GGUFs ...", flush=True)
        files = build_files(work, args.rank)
        mib = {name: path.stat().st_size / 2**20 for name, path in files.items()}
        print(f"files ({work}): adapter F16 {mib['adapter']:.2f} MiB · base F16 {mib['base_f16']:.1f} MiB · "
              f"base Q4_K_M {mib['base_q4']:.1f} MiB · merged Q4_K_M {mib['merged_q4']:.1f} MiB")
        print(f"one more tool set ships as {mib['adapter']:.2f} MiB (adapter) instead of {mib['merged_q4']:.1f} MiB "
              f"(merged Q4_K_M): {mib['merged_q4'] / mib['adapter']:.0f}x smaller")
        ratios = {}
        for kind in ("f16", "q4"):
            label = "F16" if kind == "f16" else "Q4_K_M"
            print(f"decoding {label}: base + adapter and merged, alternated, best of {args.repeat} ...", flush=True)
            with_adapter = load(files[f"base_{kind}"], args.threads, files["adapter"])
            merged = load(files[f"merged_{kind}"], args.threads)
            prompt = with_adapter.tokenize(b"<|im_start|>user\nWrite a short story about a robot.<|im_end|>\n"
                                           b"<|im_start|>assistant\n", add_bos=True, special=True)
            ours = theirs = 0.0
            for _ in range(args.repeat):  # alternated so a changing machine load hits both alike
                ours = max(ours, decode_speed(with_adapter, prompt, args.tokens))
                theirs = max(theirs, decode_speed(merged, prompt, args.tokens))
            merged.close()
            if kind == "f16":
                print("switching adapters ...", flush=True)
                apply_ms, switched_ms, steady_ms = switch_costs(with_adapter, prompt, args.switches)
            with_adapter.close()
            ratios[kind] = ours / theirs
            print(f"decode {label:6s}: base + adapter {ours:6.1f} tok/s · merged {theirs:6.1f} tok/s · "
                  f"ratio {ours / theirs:.3f}x (goal ≥ 0.9x)", flush=True)
        print(f"adapter switch: apply + clear {apply_ms:.3f} ms · token right after a switch {switched_ms:.2f} ms vs "
              f"{steady_ms:.2f} ms without → {switched_ms - steady_ms:+.2f} ms per switch (goal ≤ 5 ms)")
        served = ""
        if args.server_requests > 0:
            print(f"switching per request through tooltune serve ({args.server_requests} one-token requests) ...",
                  flush=True)
            after_switch, same_model, count = server_switch_cost(files["base_f16"], files["adapter"], args.threads,
                                                                 args.server_requests)
            print(f"served: request after a model switch {after_switch:.2f} ms vs same model {same_model:.2f} ms "
                  f"(medians of {count}) → {after_switch - same_model:+.2f} ms per switch (goal ≤ 5 ms)")
            served = f", served {after_switch - same_model:+.2f} ms"
        print(f"summary: decode ratio F16 {ratios['f16']:.3f}x, Q4_K_M base {ratios['q4']:.3f}x · switch "
              f"{apply_ms:.3f} ms set/clear, {switched_ms - steady_ms:+.2f} ms per request{served} · adapter "
              f"{mib['adapter']:.2f} MiB vs merged Q4_K_M {mib['merged_q4']:.1f} MiB · rank {args.rank}, "
              f"{args.threads} threads")
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
