"""Decode speed and first-token latency through `tooltune serve` vs llama-cpp-python called directly.

Same GGUF, same prompts, same greedy settings, same thread count, run one after the other (never at the same time, so
they do not share the CPU): llama-cpp-python in this process, and the real ``tooltune serve`` command in its own
process, reached over loopback HTTP with a kept-open client as ``ollama.Client`` and ``openai.OpenAI`` keep theirs.
Prints ratios; goals: >= 0.95x direct decode, <= 20 ms added TTFT.

    python bench/serve.py [--model X.gguf] [--quant Q4_K_M|as-is] [--tokens 128] [--runs 5] [--threads 2]

Without --model it measures the embedded default model in the type the demo serves (Q4_K_M, the seed's), made from
the shipped Q4_1 file by requantizing (fine for speed, not for quality): llama.cpp's CPU kernels batch Q4_K much
better than Q4_1 (on this 2-core machine, 8 sequences in one batch vs 1: ~2x for Q4_K_M, ~1.4x for Q4_1), so the
file type decides what --parallel can reach. ``--quant as-is`` measures the given file unchanged.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tooltune.default_model import default_gguf_path

TOPICS = ["the sea", "a lighthouse", "mountains", "a city at night", "an old library", "a forest", "the desert",
          "a train journey", "a small bakery", "a storm", "the moon", "a garden"]


def prompts(count: int, offset: int = 0) -> list[str]:
    # Different first words per prompt so llama.cpp's prefix cache cannot skip the prompt in either path.
    return [f"<|im_start|>user\n{i + offset}: Write a long, detailed story about {TOPICS[(i + offset) % len(TOPICS)]}."
            f"<|im_end|>\n<|im_start|>assistant\n" for i in range(count)]


def direct_llama(model: Path, threads: int):
    import llama_cpp

    # Same thread settings as tooltune's engine (decode and prompt batches), so only the serving layer differs.
    return llama_cpp.Llama(model_path=str(model), n_ctx=2048, n_threads=threads, n_threads_batch=threads,
                           verbose=False)


def engine_ceiling(llm, sequences: int, threads: int, steps: int = 32, prompt: int = 40) -> float:
    """Tokens/s of llama.cpp itself decoding ``sequences`` sequences in one ``llama_decode`` per step, no serving
    layer and no sampling: what --parallel can reach at best on this model and CPU (a batch of N costs more than
    one token when the matrix products are compute-bound, as Q4_1's are: llama.cpp has no batched kernel for it)."""
    import llama_cpp as lib

    params = lib.llama_context_default_params()
    params.n_ctx = 2048 * sequences
    params.n_batch = params.n_ubatch = 512
    params.n_seq_max = sequences
    params.kv_unified = True  # as tooltune's batched loop sets it
    params.n_threads = params.n_threads_batch = threads
    ctx = lib.llama_init_from_model(llm.model, params)
    batch = lib.llama_batch_init(512, 0, 1)
    try:
        n = 0
        for seq in range(sequences):
            for pos in range(prompt):
                batch.token[n], batch.pos[n], batch.n_seq_id[n] = 1000 + 7 * pos + seq, pos, 1
                batch.seq_id[n][0], batch.logits[n] = seq, pos == prompt - 1
                n += 1
        batch.n_tokens = n
        assert lib.llama_decode(ctx, batch) == 0
        started = time.perf_counter()
        for step in range(steps):
            for seq in range(sequences):
                batch.token[seq], batch.pos[seq], batch.n_seq_id[seq] = 2000 + step, prompt + step, 1
                batch.seq_id[seq][0], batch.logits[seq] = seq, True
            batch.n_tokens = sequences
            assert lib.llama_decode(ctx, batch) == 0
        return steps * sequences / (time.perf_counter() - started)
    finally:
        lib.llama_batch_free(batch)
        lib.llama_free(ctx)


def bench_direct(llm, texts: list[str], tokens: int) -> list[tuple[float, float, int]]:
    out = []
    for text in texts:
        started = time.perf_counter()
        first = None
        count = 0
        for _chunk in llm.create_completion(text, max_tokens=tokens, temperature=0.0, stream=True):
            if first is None:
                first = time.perf_counter()
            count += 1
        ended = time.perf_counter()
        out.append((first - started, ended - first, count))
    return out


class Server:
    """``tooltune serve`` in its own process, as users run it: the bench's client never shares its interpreter."""

    def __init__(self, model: Path, threads: int, parallel: int = 1) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        command = [sys.executable, "-m", "tooltune", "serve", str(model), "--name", "bench", "--port", str(port),
                   "--n-ctx", "2048", "--n-threads", str(threads), "--parallel", str(parallel)]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"tooltune serve exited: {self.process.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/api/version", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        self.close()
        raise RuntimeError("tooltune serve did not start within 120 s")

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def stream_one(client: httpx.Client, url: str, text: str, tokens: int) -> tuple[float, float, int]:
    """One raw /api/generate stream; returns (time to first token, decode seconds, tokens) as the client sees them.

    ``client`` stays open between requests, as real clients keep theirs (``ollama.Client``, ``openai.OpenAI``):
    building an httpx client loads the CA bundle into an SSL context (~30 ms here), a cost of the caller, not of the
    server."""
    body = {"model": "bench", "prompt": text, "raw": True, "stream": True,
            "options": {"temperature": 0, "num_predict": tokens}}
    started = time.perf_counter()
    first = None
    count = 0
    with client.stream("POST", f"{url}/api/generate", json=body) as response:
        for line in response.iter_lines():
            item = json.loads(line)
            if item["done"]:
                count = item["eval_count"]
                break
            if first is None:
                first = time.perf_counter()
    ended = time.perf_counter()
    return first - started, ended - first, count


def requantized(model: Path, quant: str) -> Path:
    """``model`` in another llama.cpp file type, cached next to the other benches' files (written under a temporary
    name, renamed when complete)."""
    import ctypes

    import llama_cpp

    ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant.upper()}", None)
    if ftype is None:
        raise SystemExit(f"--quant {quant}: not a llama.cpp file type (e.g. Q4_K_M, Q4_0, Q8_0, or as-is)")
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tooltune" / "bench"
    cache.mkdir(parents=True, exist_ok=True)
    out = cache / f"{model.stem}-{quant.upper()}.gguf"
    if not out.exists():
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype, params.allow_requantize = ftype, True
        partial = out.with_suffix(".partial")
        if llama_cpp.llama_model_quantize(str(model).encode(), str(partial).encode(), ctypes.byref(params)) != 0:
            raise SystemExit(f"could not requantize {model} to {quant}")
        partial.rename(out)
    print(f"model: {model.name} requantized to {quant.upper()} -> {out}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--parallel", type=int, default=8,
                        help="the server's --parallel for the 1/4/8-client part (the 1-client part uses 1)")
    parser.add_argument("--part", choices=["all", "single", "parallel"], default="all",
                        help="single: 1 client vs direct; parallel: 1/4/8 clients and llama.cpp's own ceiling")
    parser.add_argument("--quant", default=None,
                        help="requantize the model to this type first (default: Q4_K_M for the embedded model, "
                             "as-is for --model); 'as-is' keeps the file")
    args = parser.parse_args()
    quant = args.quant or ("as-is" if args.model else "Q4_K_M")
    model = args.model or default_gguf_path()
    if quant != "as-is":
        model = requantized(model, quant)
    texts = prompts(args.runs)
    client = httpx.Client(timeout=600)
    if args.part in ("all", "single"):
        bench_single(model, args, texts, client)
    if args.part in ("all", "parallel"):
        bench_parallel(model, args, client)


def bench_single(model: Path, args: argparse.Namespace, texts: list[str], client: httpx.Client) -> None:

    server = Server(model, args.threads)  # --parallel 1: the single-request path, as before
    stream_one(client, server.url, prompts(1, offset=99)[0], 8)  # warm-up both paths the same way
    llm = direct_llama(model, args.threads)
    bench_direct(llm, prompts(1, offset=98), 8)

    # Interleave direct and served runs so machine load drifts affect both alike.
    direct, served = [], []
    for text in texts:
        direct += bench_direct(llm, [text], args.tokens)
        served.append(stream_one(client, server.url, text, args.tokens))

    def rate(rows: list[tuple[float, float, int]]) -> float:
        return sum(r[2] - 1 for r in rows) / sum(r[1] for r in rows)  # tokens after the first / decode time

    direct_rate, served_rate = rate(direct), rate(served)
    direct_ttft = statistics.median(r[0] for r in direct) * 1000
    served_ttft = statistics.median(r[0] for r in served) * 1000
    # Each prompt ran both ways back to back; the median of the per-prompt differences is robust to prompt length.
    added = statistics.median((s[0] - d[0]) * 1000 for s, d in zip(served, direct, strict=True))
    print(f"model {model.name}, {args.runs} prompts x {args.tokens} tokens, {args.threads} threads, greedy")
    ratio = served_rate / direct_rate
    print(f"decode   direct {direct_rate:7.1f} tok/s   served {served_rate:7.1f} tok/s   "
          f"ratio {ratio:.3f}x (goal >= 0.95x: {'met' if ratio >= 0.95 else 'NOT met'})")
    print(f"TTFT     direct {direct_ttft:7.1f} ms      served {served_ttft:7.1f} ms      "
          f"added {added:+.1f} ms (median of per-prompt differences; goal <= 20 ms: "
          f"{'met' if added <= 20 else 'NOT met'})")
    print(f"load average during the run: {os.getloadavg()[0]:.2f} (1 min)")
    server.close()


def bench_parallel(model: Path, args: argparse.Namespace, client: httpx.Client) -> None:
    """The same server with --parallel slots, decoding concurrent requests in one batch, next to llama.cpp's own
    batched decode of as many sequences (the ceiling no serving layer can beat)."""
    llm = direct_llama(model, args.threads)
    single = engine_ceiling(llm, 1, args.threads)
    batched = engine_ceiling(llm, args.parallel, args.threads)
    llm.close()
    print(f"llama.cpp alone: 1 sequence {single:6.1f} tok/s, {args.parallel} sequences in one batch "
          f"{batched:6.1f} tok/s total ({batched / single:.2f}x): the most --parallel can give on this model/CPU")
    server = Server(model, args.threads, parallel=args.parallel)
    stream_one(client, server.url, prompts(1, offset=97)[0], 8)
    base = None
    for clients in (1, 4, 8):
        batch = prompts(clients, offset=200 + clients * 10)
        connections = [httpx.Client(timeout=600) for _ in batch]
        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            rows = list(pool.map(lambda tc: stream_one(tc[1], server.url, tc[0], args.tokens // 2),
                                 zip(batch, connections, strict=True)))
        wall = time.perf_counter() - started
        throughput = sum(r[2] for r in rows) / wall
        base = base or throughput
        worst_ttft = max(r[0] for r in rows) * 1000
        goal = "" if clients == 1 else (
            f"; goal 8 clients >= 2x and worst TTFT < 1000 ms: "
            f"{'met' if throughput / base >= 2 and worst_ttft < 1000 else 'NOT met'}" if clients == 8 else "")
        print(f"clients {clients}: {throughput:6.1f} tok/s total ({throughput / base:.2f}x of 1 client), "
              f"worst TTFT {worst_ttft:.0f} ms (--parallel {args.parallel}){goal}")
    print(f"load average during the run: {os.getloadavg()[0]:.2f} (1 min)")
    server.close()

if __name__ == "__main__":
    main()
