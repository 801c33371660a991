"""Benchmark: serving a LoRA as its own GGUF on a base vs the merged GGUF, on the demo model, with llama-cpp-python.

Builds, on the embedded SmolLM2-135M-Instruct (imported to HF): a random-initialised LoRA (rank 16 on every attention
and MLP projection, B drawn non-zero so the adapter really changes the output), the base and merged GGUFs (F16 and
Q4_K_M) and the adapter GGUF with ``tooltune lora-gguf``'s code. Then measures:

* decode tokens/s of base + adapter applied vs the merged model of the same type (base F16 + adapter vs merged F16,
  base Q4_K_M + adapter vs merged-then-quantized Q4_K_M), a token each in turn, median token (goal ≥ 0.9×); with
  ``--threads 1`` also the ratio of CPU time, which holds on a loaded machine;
* the cost of switching adapters on one context, as a server switching per request would: apply + clear through
  ``llama_set_adapters_lora`` timed directly, and one decoded token right after a switch vs one without (goal ≤ 5 ms);
* the same switch through ``tooltune serve BASE --lora tool=ADAPTER`` (real HTTP, the runner subprocess): latency of
  one-token ``/api/generate`` requests whose model differs from the previous request's (the runner switches
  adapters) vs requests for the same model as the previous one, interleaved; the difference of the medians is what
  a per-request switch costs a client (goal ≤ 5 ms). Prompts differ from their first word, so no request reuses
  another's cached prompt either way (a switch also drops the runner's prompt-prefix cache: for chats that share a
  long prefix, that costs the prefix's re-evaluation on top);
* file sizes: what one more tool set costs to ship either way.

* with ``--sweep``: where the decode gap comes from — the same ratio with one thing changed at a time (adapter
  tensor type, rank, target modules, threads), next to llama.cpp's graph node counts with and without the adapter.

    python bench/adapters.py [--tokens 128] [--repeat 3] [--rank 16] [--threads 2] [--switches 200]
                             [--server-requests 80] [--sweep] [--work DIR]
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

ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def make_adapter(model_dir: Path, out_dir: Path, rank: int, targets: tuple[str, ...], merged_dir: Path | None = None
                 ) -> Path:
    """A random LoRA (B drawn non-zero, so it really changes the output) saved as PEFT; merged into a copy of the
    model at ``merged_dir`` when given."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(targets)))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 2e-3)
    peft_model.save_pretrained(out_dir)
    if merged_dir is not None:
        shutil.copytree(model_dir, merged_dir)
        peft_model.merge_and_unload().save_pretrained(merged_dir, safe_serialization=True)
    return out_dir


def build_files(work: Path, rank: int) -> dict[str, Path]:
    from tooltune.gguf.adapter import convert_adapter
    from tooltune.gguf.convert import convert
    from tooltune.gguf.import_gguf import ensure_default_model
    from tooltune.gguf.quantize import quantize_gguf

    model_dir = ensure_default_model()
    adapter_dir = make_adapter(model_dir, work / "adapter", rank, ALL_LINEAR, merged_dir=work / "merged")
    files = {
        "base_f16": convert(model_dir, work / "base-F16.gguf", "f16", show_progress=False).path,
        "merged_f16": convert(work / "merged", work / "merged-F16.gguf", "f16", show_progress=False).path,
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


def decode_pair(models: tuple, prompt: list[int], n_tokens: int, rounds: int) -> list[tuple[float, float]]:  # noqa: ANN001
    """Greedy decoding after the prompt (prompt time excluded, like llama-bench's tg) by two models, one token each
    in turn, so a changing machine load hits both alike. Per model: (wall tokens/s, CPU tokens/s) of the median token.

    The CPU figure is the calling thread's CPU time: with one llama.cpp thread all the work runs on it, so it holds on
    a loaded machine where wall time does not (other jobs' time slices are not counted)."""
    walls: list[list[float]] = [[] for _ in models]
    cpus: list[list[float]] = [[] for _ in models]
    for _ in range(rounds):
        for llm in models:
            llm.reset()
            llm.eval(prompt)
        for _ in range(n_tokens):
            for i, llm in enumerate(models):
                token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
                start, cpu = time.perf_counter(), time.thread_time()
                llm.eval([token])
                walls[i].append(time.perf_counter() - start)
                cpus[i].append(time.thread_time() - cpu)
    return [(1 / float(np.median(w)), 1 / max(float(np.median(c)), 1e-9)) for w, c in zip(walls, cpus, strict=True)]


class ReserveLog:
    """llama.cpp's own log lines about re-reserving the compute graph (``sched_reserve``), which it does before the
    first decode after any change of the adapter set: how long it took and how many graph nodes the model has."""

    def __init__(self) -> None:
        import llama_cpp

        self.reserve_ms: list[float] = []
        self.nodes: list[int] = []

        @llama_cpp.llama_log_callback
        def callback(level, text, user_data):  # noqa: ANN001, ANN202, ARG001 - llama.cpp's log signature
            line = text.decode("utf-8", errors="replace")
            if "reserve took" in line:
                self.reserve_ms.append(float(line.split("reserve took")[1].split("ms")[0]))
            elif "sched_reserve: graph" in line and "nodes = " in line:
                self.nodes.append(int(line.split("nodes = ")[1].split(",")[0].split(" ")[0]))

        self._callback = callback  # keep the ctypes callback alive while llama.cpp holds it
        llama_cpp.llama_log_set(callback, None)

    def close(self) -> None:
        import llama_cpp
        from llama_cpp._logger import llama_log_callback

        llama_cpp.llama_log_set(llama_log_callback, None)


def switch_costs(llm, prompt: list[int], switches: int) -> dict[str, float]:  # noqa: ANN001
    """Medians over ``switches``: set + clear through ``llama_set_adapters_lora`` (ms), one token right after a
    switch vs one without (ms), and llama.cpp's own re-reservation time per switch from its log (ms)."""
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
    log = ReserveLog()
    try:
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
    finally:
        log.close()
    return {"set_clear": float(np.median(pairs)) * 1e3, "switched": float(np.median(switched)) * 1e3,
            "steady": float(np.median(steady)) * 1e3,
            "reserve": float(np.median(log.reserve_ms)) if log.reserve_ms else float("nan"),
            "reserves": len(log.reserve_ms), "nodes": sorted(set(log.nodes))}


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
                # Distinct from the first token: neither a switch nor a same-model request reuses a cached prefix.
                prompt = (f"{words[i % 10]} {i}\n<|im_start|>user\nname a tool for this.<|im_end|>\n"
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


def sweep(work: Path, files: dict[str, Path], args: argparse.Namespace) -> None:
    """Where the decode gap comes from: base + adapter vs merged with one thing changed at a time. Runs with one
    llama.cpp thread and compares CPU time (it holds on a loaded machine), plus one row at --threads wall time."""
    from tooltune.gguf.adapter import convert_adapter
    from tooltune.gguf.import_gguf import ensure_default_model

    model_dir = ensure_default_model()
    adapter_dirs: dict[tuple[int, tuple[str, ...]], Path] = {(args.rank, ALL_LINEAR): work / "adapter"}

    def adapter_file(rank: int, targets: tuple[str, ...], outtype: str) -> Path:
        key = (rank, targets)
        if key not in adapter_dirs:
            adapter_dirs[key] = make_adapter(model_dir, work / f"adapter-r{rank}-{len(targets)}", rank, targets)
        out = work / f"adapter-r{rank}-{len(targets)}-{outtype}.gguf"
        if not out.is_file():
            convert_adapter(adapter_dirs[key], files["base_f16"], out, outtype)
        return out

    qv = ("q_proj", "v_proj")
    variants = [  # label, base kind, rank, targets, adapter tensor type, threads
        (f"F16 base, all 7 linear, r{args.rank}, adapter F16", "f16", args.rank, ALL_LINEAR, "f16", 1),
        ("  adapter tensors F32", "f16", args.rank, ALL_LINEAR, "f32", 1),
        ("  adapter tensors Q8_0 (lora_a; lora_b stays F16)", "f16", args.rank, ALL_LINEAR, "q8_0", 1),
        ("  rank 4", "f16", 4, ALL_LINEAR, "f16", 1),
        ("  rank 64", "f16", 64, ALL_LINEAR, "f16", 1),
        ("  q_proj,v_proj only", "f16", args.rank, qv, "f16", 1),
        (f"Q4_K_M base, all 7 linear, r{args.rank}, adapter F16", "q4", args.rank, ALL_LINEAR, "f16", 1),
        ("  adapter tensors Q8_0", "q4", args.rank, ALL_LINEAR, "q8_0", 1),
        ("  q_proj,v_proj only", "q4", args.rank, qv, "f16", 1),
    ]
    if args.threads != 1:
        variants.insert(6, (f"  {args.threads} threads (wall time)", "f16", args.rank, ALL_LINEAR, "f16", args.threads))
    print(f"sweep: base + adapter vs merged (same type), {args.repeat} x {args.sweep_tokens} tokens, median token; "
          "one thread compares CPU time, more threads wall time", flush=True)
    print(f"  {'variant':52s} {'adapter':>8s} {'merged':>8s}  ratio  graph nodes (base → with adapter)")
    for label, kind, rank, targets, outtype, threads in variants:
        adapter = adapter_file(rank, targets, outtype)
        log = ReserveLog()
        try:
            with_adapter = load(files[f"base_{kind}"], threads, adapter)
            merged = load(files[f"merged_{kind}"], threads)
            prompt = with_adapter.tokenize(PROMPT, add_bos=True, special=True)
            pick = 1 if threads == 1 else 0
            ours, theirs = (speeds[pick] for speeds in decode_pair((with_adapter, merged), prompt,
                                                                   args.sweep_tokens, args.repeat))
            with_adapter.close()
            merged.close()
        finally:
            log.close()
        nodes = sorted(set(log.nodes))
        print(f"  {label:52s} {ours:8.1f} {theirs:8.1f}  {ours / theirs:.3f}  "
              f"{' → '.join(str(n) for n in nodes)}", flush=True)


PROMPT = b"<|im_start|>user\nWrite a short story about a robot.<|im_end|>\n<|im_start|>assistant\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--switches", type=int, default=200)
    parser.add_argument("--server-requests", type=int, default=80,
                        help="requests through tooltune serve for the per-request switch cost (0: skip)")
    parser.add_argument("--sweep", action="store_true",
                        help="also vary adapter tensor type, rank, target modules, threads (where the gap comes from)")
    parser.add_argument("--sweep-tokens", type=int, default=48)
    parser.add_argument("--work", type=Path, help="build into (and reuse files from) this folder; kept")
    parser.add_argument("--keep", action="store_true", help="keep the built files (their folder is printed)")
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-adapters-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        names = ("base-F16", "merged-F16", "adapter-F16", "base-Q4_K_M", "merged-Q4_K_M")
        if all((work / f"{n}.gguf").is_file() for n in names) and (work / "adapter").is_dir():
            files = dict(zip(("base_f16", "merged_f16", "adapter", "base_q4", "merged_q4"),
                             (work / f"{n}.gguf" for n in names), strict=True))
            print(f"reusing the GGUFs in {work}", flush=True)
        else:
            print("building the adapter, the merged model and their GGUFs ...", flush=True)
            files = build_files(work, args.rank)
        mib = {name: path.stat().st_size / 2**20 for name, path in files.items()}
        print(f"files ({work}): adapter F16 {mib['adapter']:.2f} MiB · base F16 {mib['base_f16']:.1f} MiB · "
              f"base Q4_K_M {mib['base_q4']:.1f} MiB · merged Q4_K_M {mib['merged_q4']:.1f} MiB")
        print(f"one more tool set ships as {mib['adapter']:.2f} MiB (adapter) instead of {mib['merged_q4']:.1f} MiB "
              f"(merged Q4_K_M): {mib['merged_q4'] / mib['adapter']:.0f}x smaller")
        ratios: dict[str, float] = {}
        cpu_ratios: dict[str, float] = {}
        for kind in ("f16", "q4"):
            # Fair pairs: base F16 + adapter vs merged F16; base Q4_K_M + adapter vs merged-then-quantized Q4_K_M.
            label = "F16" if kind == "f16" else "Q4_K_M"
            print(f"decoding {label}: base {label} + adapter F16 vs merged {label}, a token each in turn, "
                  f"{args.repeat} x {args.tokens} tokens ...", flush=True)
            with_adapter = load(files[f"base_{kind}"], args.threads, files["adapter"])
            merged = load(files[f"merged_{kind}"], args.threads)
            prompt = with_adapter.tokenize(PROMPT, add_bos=True, special=True)
            ours, theirs = decode_pair((with_adapter, merged), prompt, args.tokens, args.repeat)
            merged.close()
            if kind == "f16":
                print("switching adapters on one context ...", flush=True)
                switch = switch_costs(with_adapter, prompt, args.switches)
            with_adapter.close()
            ratios[kind] = ours[0] / theirs[0]
            cpu_ratios[kind] = ours[1] / theirs[1]
            cpu = f" · CPU-time ratio {cpu_ratios[kind]:.3f}x" if args.threads == 1 else ""
            print(f"decode {label:6s}: base + adapter {ours[0]:6.1f} tok/s · merged {theirs[0]:6.1f} tok/s · "
                  f"ratio {ratios[kind]:.3f}x (goal ≥ 0.9x){cpu}", flush=True)
        per_switch = switch["switched"] - switch["steady"]
        print(f"adapter switch: set + clear {switch['set_clear']:.3f} ms · token right after a switch "
              f"{switch['switched']:.2f} ms vs {switch['steady']:.2f} ms without → {per_switch:+.2f} ms per switch "
              f"(goal ≤ 5 ms)")
        nodes = " → ".join(str(n) for n in switch["nodes"])
        print(f"  of which llama.cpp re-reserving its compute graph (sched_reserve, from its log): median "
              f"{switch['reserve']:.2f} ms over {switch['reserves']} switches; graph nodes base → with adapter: "
              f"{nodes}")
        served = ""
        if args.server_requests > 0:
            print(f"switching per request through tooltune serve ({args.server_requests} one-token requests) ...",
                  flush=True)
            after_switch, same_model, count = server_switch_cost(files["base_f16"], files["adapter"], args.threads,
                                                                 args.server_requests)
            print(f"served: request after a model switch {after_switch:.2f} ms vs same model {same_model:.2f} ms "
                  f"(medians of {count}) → {after_switch - same_model:+.2f} ms per switch (goal ≤ 5 ms)")
            served = f", served {after_switch - same_model:+.2f} ms"
        if args.sweep:
            sweep(work, files, args)
        print(f"summary: decode ratio F16 {ratios['f16']:.3f}x, Q4_K_M {ratios['q4']:.3f}x (goal ≥ 0.9x) · switch "
              f"{per_switch:+.2f} ms per request{served} (goal ≤ 5 ms; llama.cpp's re-reserve {switch['reserve']:.2f} "
              f"ms) · adapter {mib['adapter']:.2f} MiB vs merged Q4_K_M {mib['merged_q4']:.1f} MiB · rank "
              f"{args.rank}, {args.threads} threads · {time.perf_counter() - started:.0f} s")
    finally:
        if args.keep or args.work:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
