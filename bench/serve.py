"""Decode speed and first-token latency through `tooltune serve` vs llama-cpp-python called directly.

Same GGUF, same prompts, same greedy settings, same thread count, run one after the other in this process (never at
the same time, so they do not share the CPU). Prints ratios; goals: >= 0.95x direct decode, <= 20 ms added TTFT.

    python bench/serve.py [--model X.gguf] [--tokens 128] [--runs 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import uvicorn

from tooltune.default_model import default_gguf_path
from tooltune.engines import load_engine
from tooltune.serve.app import create_app

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
    def __init__(self, model: Path, threads: int) -> None:
        engine = load_engine(model, n_ctx=2048, n_threads=threads)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(create_app(engine, "bench"), host="127.0.0.1", port=port,
                                                    log_level="warning", lifespan="off"))
        threading.Thread(target=self.server.run, daemon=True).start()
        while not self.server.started:
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{port}"


def stream_one(url: str, text: str, tokens: int) -> tuple[float, float, int]:
    """One raw /api/generate stream; returns (time to first token, decode seconds, tokens) as the client sees them."""
    body = {"model": "bench", "prompt": text, "raw": True, "stream": True,
            "options": {"temperature": 0, "num_predict": tokens}}
    started = time.perf_counter()
    first = None
    count = 0
    with httpx.stream("POST", f"{url}/api/generate", json=body, timeout=600) as response:
        for line in response.iter_lines():
            item = json.loads(line)
            if item["done"]:
                count = item["eval_count"]
                break
            if first is None:
                first = time.perf_counter()
    ended = time.perf_counter()
    return first - started, ended - first, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    model = args.model or default_gguf_path()
    texts = prompts(args.runs)

    server = Server(model, args.threads)
    stream_one(server.url, prompts(1, offset=99)[0], 8)  # warm-up both paths the same way
    llm = direct_llama(model, args.threads)
    bench_direct(llm, prompts(1, offset=98), 8)

    # Interleave direct and served runs so machine load drifts affect both alike.
    direct, served = [], []
    for text in texts:
        direct += bench_direct(llm, [text], args.tokens)
        served.append(stream_one(server.url, text, args.tokens))

    def rate(rows: list[tuple[float, float, int]]) -> float:
        return sum(r[2] - 1 for r in rows) / sum(r[1] for r in rows)  # tokens after the first / decode time

    direct_rate, served_rate = rate(direct), rate(served)
    direct_ttft = statistics.median(r[0] for r in direct) * 1000
    served_ttft = statistics.median(r[0] for r in served) * 1000
    print(f"model {model.name}, {args.runs} prompts x {args.tokens} tokens, {args.threads} threads, greedy")
    print(f"decode   direct {direct_rate:7.1f} tok/s   served {served_rate:7.1f} tok/s   "
          f"ratio {served_rate / direct_rate:.3f}x")
    print(f"TTFT     direct {direct_ttft:7.1f} ms      served {served_ttft:7.1f} ms      "
          f"added {served_ttft - direct_ttft:+.1f} ms")

    base = None
    for clients in (1, 4, 8):
        batch = prompts(clients, offset=200 + clients * 10)
        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            rows = list(pool.map(lambda t: stream_one(server.url, t, args.tokens // 2), batch))
        wall = time.perf_counter() - started
        throughput = sum(r[2] for r in rows) / wall
        base = base or throughput
        worst_ttft = max(r[0] for r in rows) * 1000
        print(f"clients {clients}: {throughput:6.1f} tok/s total ({throughput / base:.2f}x of 1 client), "
              f"worst TTFT {worst_ttft:.0f} ms (queued behind the others: one decode at a time)")
    server.server.should_exit = True


if __name__ == "__main__":
    main()
