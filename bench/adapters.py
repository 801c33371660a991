"""Benchmark: serving a LoRA as its own GGUF on a base vs the merged GGUF, on the demo model, with llama-cpp-python.

Builds, on the embedded SmolLM2-135M-Instruct (imported to HF): a random-initialised LoRA (rank 16 on every attention
and MLP projection, B drawn non-zero so the adapter really changes the output), the base and merged GGUFs (F16 and
Q4_K_M) and the adapter GGUF with ``tooltune lora-gguf``'s code. Then measures:

* decode tokens/s of base + adapter applied vs the merged model of the same type (base F16 + adapter vs merged F16,
  base Q4_K_M + adapter vs merged-then-quantized Q4_K_M), a token each in turn, median token (goal ≥ 0.9×); with
  ``--threads 1`` also the ratio of CPU time, which holds on a loaded machine;
* the cost of switching adapters on one context, as a server switching per request would: apply + clear through
  ``llama_set_adapters_lora`` timed directly, and one decoded token right after a switch vs one without, paired by
  model (below; goal ≤ 5 ms);
* the same switch through ``tooltune serve BASE --lora tool=ADAPTER`` (real HTTP, the runner subprocess): one-token
  ``/api/generate`` requests for tool, tool, base, base, ..., so each model is asked for right after the other one
  (the runner switches adapters) and right after itself. A request with the adapter is slower than one without, so
  each model is compared with itself: (tool after base) − (tool after tool) and (base after tool) − (base after
  base), medians; their mean is what a per-request switch costs a client (goal ≤ 5 ms). Prompts differ from their
  first word, so no request reuses another's cached prompt either way (a switch also drops the runner's
  prompt-prefix cache: for chats that share a long prefix, that costs the prefix's re-evaluation on top);
* file sizes: what one more tool set costs to ship either way.

* with ``--sweep``: where the decode gap comes from — the same ratio with one thing changed at a time (adapter
  tensor type, rank, target modules, threads), next to llama.cpp's graph node counts with and without the adapter.

With ``--shape NAME`` (repeatable) it measures instead the decode ratio vs model size: on a random-weight model of
that shape (SmolLM2's architecture, tokenizer and vocabulary; Qwen2.5-0.5B's or -1.5B's widths and depths) it builds
a random LoRA on all seven projections and one on q_proj,v_proj, the merged model and their GGUFs with the same code,
and prints one table row per shape, target set and type: parameters, graph nodes base → with adapter, tokens/s of
the merged model and of base + adapter, and their ratio (of CPU time too with ``--threads 1``).

    python bench/adapters.py [--tokens 128] [--repeat 3] [--rank 16] [--threads 2] [--switches 200]
                             [--server-requests 80] [--sweep] [--work DIR]
    python bench/adapters.py --threads 1 --shape smollm2-135m --shape qwen2.5-0.5b [--shape qwen2.5-1.5b]
                             [--shape-types f16,q4] [--shape-tokens 48] [--shape-repeat 2] [--work DIR]
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


def make_adapter(model_dir: Path, out_dir: Path, rank: int, targets: tuple[str, ...], merged_dir: Path | None = None,
                 dtype: str = "float32") -> Path:
    """A random LoRA (B drawn non-zero, so it really changes the output) saved as PEFT; merged into a copy of the
    model at ``merged_dir`` when given. ``dtype``: the base's weights while merging (and the merged copy's)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype))
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
    """``model`` with ``lora`` applied the way the serve engine applies one: the base memory-mapped, the adapter
    loaded onto it and set on the context. (llama-cpp-python's own ``lora_path`` would load the base without mmap,
    which is not what ``tooltune serve`` runs.)"""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(model), n_ctx=512, n_batch=512, n_threads=threads,
                          n_threads_batch=threads, verbose=False, seed=0)
    if lora is not None:
        handle = llama_cpp.llama_adapter_lora_init(llm.model, str(lora).encode("utf-8"))
        if not handle:
            raise SystemExit(f"{lora}: llama.cpp could not load this adapter")
        llm._lora_adapter = handle  # what switch_costs applies and clears
        llm._stack.callback(llama_cpp.llama_adapter_lora_free, handle)  # runs before the model is freed
        adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(handle)
        if llama_cpp.llama_set_adapters_lora(llm.ctx, adapters, 1, (ctypes.c_float * 1)(1.0)):
            raise SystemExit(f"{lora}: llama.cpp could not apply this adapter")
    return llm


def decode_pair(models: tuple, prompt: list[int], n_tokens: int, rounds: int) -> list[tuple[float, float]]:  # noqa: ANN001
    """Greedy decoding after the prompt (prompt time excluded, like llama-bench's tg) by two (or more) models, one
    token each in turn, so a changing machine load hits all alike. Per model: (wall tokens/s, CPU tokens/s) of the
    median token.

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


def switch_pools() -> dict[tuple[str, str], list[float]]:
    """Empty (model, previous model) pools of request times, for ``paired_switch_cost``."""
    return {(model, previous): [] for model in ("tool", "base") for previous in ("tool", "base")}


def paired_switch_cost(latencies: dict[tuple[str, str], list[float]]) -> dict[str, float]:
    """Medians (ms) of each (model, previous model) pool and the per-switch cost paired by model.

    A request with the adapter applied is slower than one without (more graph nodes), so a pool of "after a switch"
    requests mixing both models against a "same model" pool mixing both has two modes and an unstable median. Each
    model is compared with itself instead: (tool after base) − (tool after tool) and (base after tool) − (base after
    base); their mean is the cost of one switch."""
    medians = {key: float(np.median(values)) * 1e3 for key, values in latencies.items()}
    to_tool = medians[("tool", "base")] - medians[("tool", "tool")]
    to_base = medians[("base", "tool")] - medians[("base", "base")]
    return {"to_tool": to_tool, "to_base": to_base, "per_switch": (to_tool + to_base) / 2,
            "tool": medians[("tool", "tool")], "base": medians[("base", "base")],
            "count": sum(len(values) for values in latencies.values())}


def switch_costs(llm, prompt: list[int], switches: int) -> dict[str, float]:  # noqa: ANN001
    """Set + clear through ``llama_set_adapters_lora`` (median ms), the per-switch cost of one decoded token paired
    by model (``paired_switch_cost``), and llama.cpp's own re-reservation time per switch from its log (ms)."""
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

    # Per request: a server sets the request's adapter (or none) before decoding. Tokens go tool, tool, base, base,
    # ...: each model's token right after a switch and right after its own, interleaved so a drifting machine load
    # hits all four alike.
    llm.reset()
    llm.eval(prompt)
    clear()
    log = ReserveLog()
    latencies = switch_pools()
    cpu_times = switch_pools()
    try:
        previous = "base"
        for step in range(2 * switches):
            model = "tool" if step % 4 < 2 else "base"
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            start, cpu = time.perf_counter(), time.thread_time()
            if model == "tool" and previous == "base":
                apply()
            elif model == "base" and previous == "tool":
                clear()
            llm.eval([token])
            latencies[(model, previous)].append(time.perf_counter() - start)
            cpu_times[(model, previous)].append(time.thread_time() - cpu)
            previous = model
            if llm.n_tokens > 400:
                llm.reset()
                llm.eval(prompt)
    finally:
        log.close()
    return paired_switch_cost(latencies) | {
        "cpu": paired_switch_cost(cpu_times)["per_switch"],  # one llama.cpp thread: its work is this thread's
        "set_clear": float(np.median(pairs)) * 1e3,
        "reserve": float(np.median(log.reserve_ms)) if log.reserve_ms else float("nan"),
        "reserves": len(log.reserve_ms), "nodes": sorted(set(log.nodes))}


def process_tree_cpu_seconds(pid: int) -> float:
    """CPU time so far of process ``pid``, its threads and its descendants (the server and its runner), from the
    scheduler's nanosecond counters in /proc: unlike wall time, it does not count other jobs' time slices."""
    total, pending = 0, [pid]
    while pending:
        tasks = Path(f"/proc/{pending.pop()}/task")
        for task in tasks.iterdir() if tasks.is_dir() else ():
            try:
                total += int((task / "schedstat").read_text().split()[0])
                pending.extend(int(child) for child in (task / "children").read_text().split())
            except (FileNotFoundError, ProcessLookupError):
                continue  # a thread that ended meanwhile
    return total / 1e9


def server_switch_cost(base: Path, adapter: Path, threads: int, requests: int) -> dict[str, float]:
    """The per-request switch cost through the server, paired by model (``paired_switch_cost``); under "cpu" the
    same from the server's CPU time (Linux /proc; NaN elsewhere), which holds on a loaded machine with one thread."""
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
        latencies = switch_pools()
        cpu_times = switch_pools()
        has_proc = Path(f"/proc/{process.pid}/task").is_dir()
        previous = "base"
        with httpx.Client(base_url=url, timeout=60) as client:
            for i in range(requests + 4):
                model = "tool" if (i // 2) % 2 == 0 else "base"  # tool, tool, base, base, ...: half are switches
                # Distinct from the first token: neither a switch nor a same-model request reuses a cached prefix.
                # A few tokens only: the switch is a few ms on top of the request, and a short request varies less.
                prompt = f"{words[i % 10]} {i}:"
                cpu = process_tree_cpu_seconds(process.pid) if has_proc else 0.0
                start = time.perf_counter()
                reply = client.post("/api/generate", json={"model": model, "prompt": prompt, "raw": True,
                                                           "stream": False,
                                                           "options": {"temperature": 0, "num_predict": 1}})
                elapsed = time.perf_counter() - start
                used = process_tree_cpu_seconds(process.pid) - cpu if has_proc else float("nan")
                reply.raise_for_status()
                if i >= 4:  # the first requests warm the runner up
                    latencies[(model, previous)].append(elapsed)
                    cpu_times[(model, previous)].append(used)
                previous = model
        return paired_switch_cost(latencies) | {"cpu": paired_switch_cost(cpu_times)["per_switch"]}
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


# Model shapes for the decode ratio vs model size (--shape). Every one keeps SmolLM2's architecture (Llama), tokenizer
# and 49152-token vocabulary, so prompts tokenize alike and only the matmul sizes change; the larger ones take their
# widths and depths from Qwen2.5-0.5B and -1.5B (whose own 151k vocabulary would only enlarge the LM head, which no
# LoRA here touches). None: the embedded model itself.
SHAPES: dict[str, dict[str, int] | None] = {
    "smollm2-135m": None,
    "qwen2.5-0.5b": {"hidden_size": 896, "num_hidden_layers": 24, "intermediate_size": 4864,
                     "num_attention_heads": 14, "num_key_value_heads": 2, "head_dim": 64},
    "qwen2.5-1.5b": {"hidden_size": 1536, "num_hidden_layers": 28, "intermediate_size": 8960,
                     "num_attention_heads": 12, "num_key_value_heads": 2, "head_dim": 128},
}
QV = ("q_proj", "v_proj")
TARGETS = {"all": ALL_LINEAR, "q,v": QV}


def random_model(shape: dict[str, int], out_dir: Path) -> Path:
    """A random-weight checkpoint of ``shape`` (F16 safetensors) with the embedded model's config and tokenizer."""
    import json

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from tooltune.gguf.import_gguf import ensure_default_model

    source = ensure_default_model()
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    for path in source.iterdir():
        if path.name not in ("model.safetensors", "config.json"):
            shutil.copy2(path, partial / path.name)
    config = json.loads((source / "config.json").read_text()) | shape | {"torch_dtype": "float16",
                                                                         "dtype": "float16"}
    (partial / "config.json").write_text(json.dumps(config, indent=2))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(partial), dtype=torch.float16)
    model.save_pretrained(partial, safe_serialization=True)
    partial.rename(out_dir)  # complete, so a later run may reuse it
    return out_dir


def build_shape_files(name: str, work: Path, rank: int, kinds: tuple[str, ...], threads: int) -> dict[str, Path]:
    """For shape ``name`` under ``work``: base and merged GGUFs of each kind (f16, q4) and one adapter GGUF per target
    set, reusing whatever an earlier run left. One merged model (all seven projections) serves as the reference for
    both target sets: merging any LoRA leaves the same tensors, types and graph, so the same speed."""
    from tooltune.gguf.adapter import convert_adapter
    from tooltune.gguf.convert import convert
    from tooltune.gguf.import_gguf import ensure_default_model
    from tooltune.gguf.quantize import quantize_gguf

    work.mkdir(parents=True, exist_ok=True)
    shape = SHAPES[name]
    model_dir = ensure_default_model() if shape is None else work / "model"
    dtype = "float32" if shape is None else "float16"
    if shape is not None and not model_dir.is_dir():
        print(f"  {name}: random-weight model ...", flush=True)
        random_model(shape, model_dir)
    files: dict[str, Path] = {}
    for label, targets in TARGETS.items():
        key = "all" if targets == ALL_LINEAR else "qv"
        adapter_dir = work / f"adapter-{key}"
        merged_dir = work / "merged" if key == "all" else None
        if not (adapter_dir / "complete").is_file():
            print(f"  {name}: rank-{rank} LoRA on {label}{' and the merged model' if merged_dir else ''} ...",
                  flush=True)
            for stale in (adapter_dir, merged_dir):
                if stale is not None:
                    shutil.rmtree(stale, ignore_errors=True)
            make_adapter(model_dir, adapter_dir, rank, targets, merged_dir, dtype)
            (adapter_dir / "complete").touch()  # the adapter and its merged copy are whole: a later run reuses them
        files[f"adapter_{key}"] = adapter_dir
    for role, source in (("base", model_dir), ("merged", work / "merged")):
        out = work / f"{role}-F16.gguf"
        if not out.is_file():
            print(f"  {name}: {role} F16 GGUF ...", flush=True)
            convert(source, out, "f16", show_progress=False)
        files[f"{role}_f16"] = out
    for key in ("all", "qv"):
        out = work / f"adapter-{key}-F16.gguf"
        if not out.is_file():
            convert_adapter(files[f"adapter_{key}"], files["base_f16"], out, "f16")
        files[f"adapter_{key}"] = out
    if "q4" in kinds:
        for role in ("base", "merged"):
            out = work / f"{role}-Q4_K_M.gguf"
            if not out.is_file():
                print(f"  {name}: {role} Q4_K_M ...", flush=True)
                quantize_gguf(files[f"{role}_f16"], out, "q4_k_m", threads=threads, show_progress=False)
            files[f"{role}_q4"] = out
    return files


def parameter_count(gguf_path: Path) -> int:
    from gguf import GGUFReader

    return sum(int(tensor.n_elements) for tensor in GGUFReader(gguf_path).tensors)


def shape_rows(name: str, files: dict[str, Path], kind: str, args: argparse.Namespace) -> list[dict]:
    """Base + each adapter vs the merged model, all three decoding a token each in turn; graph nodes per model from
    llama.cpp's log (read after its first decode, when the adapter's graph has been reserved)."""
    log = ReserveLog()
    models, nodes = [], []
    try:
        for key in ("all", "qv", None):
            log.nodes.clear()
            llm = load(files[f"merged_{kind}"], args.threads) if key is None else \
                load(files[f"base_{kind}"], args.threads, files[f"adapter_{key}"])
            prompt = llm.tokenize(PROMPT, add_bos=True, special=True)
            llm.eval(prompt[:1])
            models.append(llm)
            nodes.append(log.nodes[-1] if log.nodes else 0)
        speeds = decode_pair(tuple(models), prompt, args.shape_tokens, args.shape_repeat)
    finally:
        for llm in models:
            llm.close()
        log.close()
    merged = speeds[2]
    pick = 1 if args.threads == 1 else 0
    return [{"shape": name, "targets": label, "kind": "F16" if kind == "f16" else "Q4_K_M",
             "nodes": (nodes[2], nodes[i]), "merged": merged[0], "adapter": speeds[i][0],
             "ratio": speeds[i][0] / merged[0],
             # what the adapter adds to each token (CPU time with one thread, wall time otherwise)
             "added_ms": 1e3 * (1 / speeds[i][pick] - 1 / merged[pick]),
             "cpu_ratio": speeds[i][1] / merged[1] if args.threads == 1 else float("nan")}
            for i, label in enumerate(TARGETS)]


def shapes_table(args: argparse.Namespace) -> None:
    """The decode ratio vs model size, all seven projections vs q,v only, per tensor type: whether the adapter's
    cost is a fixed per-node one (the ratio would rise toward 1 with size) or grows with the LoRA products (it does
    not, on a Q4_K_M base: docs/gguf.md)."""
    from tooltune.default_model import cache_dir

    root = args.work or cache_dir() / "bench" / "adapters-shapes"
    asked = {t.strip().lower().replace("q4_k_m", "q4") for t in args.shape_types.split(",")}
    if not asked or asked - {"f16", "q4"}:
        raise SystemExit(f"--shape-types {args.shape_types!r}: give f16 and/or q4 (Q4_K_M), comma-separated")
    kinds = tuple(k for k in ("f16", "q4") if k in asked)
    rows = []
    begun = time.perf_counter()
    for name in args.shape:
        started = time.perf_counter()
        print(f"{name}: building (or reusing) its files under {root / name} ...", flush=True)
        files = build_shape_files(name, root / name, args.rank, kinds, args.threads)
        params = parameter_count(files["base_f16"])
        print(f"{name}: {params / 1e6:.0f}M parameters; decoding {args.shape_repeat} x {args.shape_tokens} tokens, "
              f"{args.threads} thread(s) ...", flush=True)
        for kind in kinds:
            for row in shape_rows(name, files, kind, args):
                rows.append(row | {"params": params})
                print(f"  {row['kind']:6s} {row['targets']:3s}: ratio {row['ratio']:.3f}x, CPU-time "
                      f"{row['cpu_ratio']:.3f}x", flush=True)
        print(f"{name}: {time.perf_counter() - started:.0f} s", flush=True)
    print(f"decode ratio vs model size: base + rank-{args.rank} adapter (F16) vs merged, same type, "
          f"{args.shape_repeat} x {args.shape_tokens} tokens, median token, {args.threads} thread(s); tok/s are wall "
          "time; +ms/token: what the adapter adds to a token (CPU time with one thread)")
    print(f"  {'shape':14s} {'params':>7s} {'targets':7s} {'type':6s} {'graph nodes':>13s} {'merged':>8s} "
          f"{'adapter':>8s} {'ratio':>6s} {'CPU-time ratio':>14s} {'+ms/token':>9s}")
    for row in rows:
        nodes = f"{row['nodes'][0]} → {row['nodes'][1]}"
        print(f"  {row['shape']:14s} {row['params'] / 1e6:6.0f}M {row['targets']:7s} {row['kind']:6s} {nodes:>13s} "
              f"{row['merged']:8.1f} {row['adapter']:8.1f} {row['ratio']:6.3f} {row['cpu_ratio']:14.3f} "
              f"{row['added_ms']:+9.2f}")
    best = {row["shape"]: row["cpu_ratio" if args.threads == 1 else "ratio"] for row in rows
            if row["targets"] == "all" and row["kind"] == "F16"}
    print("summary: all-7 F16 " + ("CPU-time" if args.threads == 1 else "wall") + " ratio by shape: "
          + ", ".join(f"{name} {ratio:.3f}x" for name, ratio in best.items())
          + f" (goal ≥ 0.9x) · {time.perf_counter() - begun:.0f} s")


def cpu_note(cpu_ms: float, threads: int) -> str:
    return f"; from CPU time {cpu_ms:+.2f} ms" if threads == 1 else ""


PROMPT = b"<|im_start|>user\nWrite a short story about a robot.<|im_end|>\n<|im_start|>assistant\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--switches", type=int, default=200)
    parser.add_argument("--server-requests", type=int, default=200,
                        help="requests through tooltune serve for the per-request switch cost (0: skip)")
    parser.add_argument("--sweep", action="store_true",
                        help="also vary adapter tensor type, rank, target modules, threads (where the gap comes from)")
    parser.add_argument("--sweep-tokens", type=int, default=48)
    parser.add_argument("--shape", action="append", choices=sorted(SHAPES),
                        help="instead of the demo bench: the decode ratio vs model size on a random-weight model of "
                             "this shape (repeat the option for a table); files are cached under --work or "
                             "~/.cache/tooltune/bench/adapters-shapes")
    parser.add_argument("--shape-types", default="f16,q4", help="f16 and/or q4 (Q4_K_M) for --shape")
    parser.add_argument("--shape-tokens", type=int, default=48)
    parser.add_argument("--shape-repeat", type=int, default=2)
    parser.add_argument("--work", type=Path, help="build into (and reuse files from) this folder; kept")
    parser.add_argument("--keep", action="store_true", help="keep the built files (their folder is printed)")
    args = parser.parse_args()
    if args.shape:
        shapes_table(args)
        return

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
        per_switch = switch["per_switch"]
        print(f"adapter switch: set + clear {switch['set_clear']:.3f} ms · one token, paired by model: tool after "
              f"base − after tool {switch['to_tool']:+.2f} ms (tool {switch['tool']:.2f} ms), base after tool − after "
              f"base {switch['to_base']:+.2f} ms (base {switch['base']:.2f} ms) → {per_switch:+.2f} ms per switch "
              f"(goal ≤ 5 ms){cpu_note(switch['cpu'], args.threads)}")
        nodes = " → ".join(str(n) for n in switch["nodes"])
        print(f"  of which llama.cpp re-reserving its compute graph (sched_reserve, from its log): median "
              f"{switch['reserve']:.2f} ms over {switch['reserves']} switches; graph nodes base → with adapter: "
              f"{nodes}")
        served = ""
        if args.server_requests > 0:
            print(f"switching per request through tooltune serve ({args.server_requests} one-token requests) ...",
                  flush=True)
            cost = server_switch_cost(files["base_f16"], files["adapter"], args.threads, args.server_requests)
            print(f"served ({cost['count']} requests, medians paired by model): tool after base − after tool "
                  f"{cost['to_tool']:+.2f} ms (tool {cost['tool']:.2f} ms), base after tool − after base "
                  f"{cost['to_base']:+.2f} ms (base {cost['base']:.2f} ms) → {cost['per_switch']:+.2f} ms per switch "
                  f"(goal ≤ 5 ms){cpu_note(cost['cpu'], args.threads)}")
            served = f", served {cost['per_switch']:+.2f} ms" + (f" (CPU {cost['cpu']:+.2f})" if args.threads == 1
                                                                  else "")
        if args.sweep:
            sweep(work, files, args)
        cpu_switch = f" (CPU {switch['cpu']:+.2f})" if args.threads == 1 else ""
        print(f"summary: decode ratio F16 {ratios['f16']:.3f}x, Q4_K_M {ratios['q4']:.3f}x (goal ≥ 0.9x) · switch "
              f"{per_switch:+.2f} ms per request{cpu_switch}{served} (goal ≤ 5 ms; llama.cpp's re-reserve "
              f"{switch['reserve']:.2f} ms) · adapter {mib['adapter']:.2f} MiB vs merged Q4_K_M "
              f"{mib['merged_q4']:.1f} MiB · rank {args.rank}, {args.threads} threads · "
              f"{time.perf_counter() - started:.0f} s")
    finally:
        if args.keep or args.work:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
