"""The model in its own runner process: crashes and hangs cost the held requests a 503, never the server.

Real runner subprocesses (llama.cpp on the embedded GGUF; transformers on a tiny HF model), real HTTP, the official
clients. The runner is killed with SIGKILL mid-stream and frozen with SIGSTOP, as a native crash or a wedged kernel
would leave it.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import httpx
import ollama
import openai
import pytest
from test_serve_api import MODEL, QWEN_JINJA, RunningServer  # noqa: E402  (tests/ is on sys.path)

from tooltune.engines import SamplingParams
from tooltune.serve.app import create_app
from tooltune.serve.runner_client import RunnerEngine

LONG = {"temperature": 0, "num_predict": 400}
STORY = [{"role": "user", "content": "Write a very long story about the sea."}]


@pytest.fixture(scope="module")
def runner_server(default_gguf: Path):
    engine = RunnerEngine(default_gguf, n_ctx=1024, n_threads=1, chat_template=QWEN_JINJA)
    server = RunningServer(create_app(engine, MODEL, stream_interval=0))
    yield server
    server.stop()
    engine.close()


def wait_for_fresh_runner(engine: RunnerEngine, old_pid: int, restarts: int) -> None:
    deadline = time.monotonic() + 60
    while engine.restarts == restarts or engine.runner_pid == old_pid:
        assert time.monotonic() < deadline, "no fresh runner"
        time.sleep(0.05)


def maps(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def test_the_server_process_never_loads_native_inference_code(runner_server) -> None:
    engine = runner_server.state.engine
    assert "libllama" in maps(engine.runner_pid)
    # This test process hosts the API (uvicorn thread): llama.cpp must not be mapped here unless another test
    # module of the same session loaded it in-process.
    assert engine.kind == "LlamaCppEngine" and engine.supports_grammar
    reply = ollama.Client(host=runner_server.url).chat(model=MODEL, messages=STORY, options={**LONG,
                                                                                            "num_predict": 4})
    assert reply.done and reply.eval_count == 4


def test_sigkill_mid_stream_ends_the_stream_with_an_error_and_the_next_request_succeeds(runner_server) -> None:
    engine = runner_server.state.engine
    client = ollama.Client(host=runner_server.url)
    for api in ("ollama", "openai"):
        pid, restarts = engine.runner_pid, engine.restarts
        received = []
        with pytest.raises((ollama.ResponseError, openai.APIError)) as info:
            if api == "ollama":
                for part in client.chat(model=MODEL, messages=STORY, options=LONG, stream=True):
                    received.append(part.message.content)
                    if len(received) == 3:
                        os.kill(pid, signal.SIGKILL)
            else:
                oa = openai.OpenAI(base_url=f"{runner_server.url}/v1", api_key="unused", max_retries=0)
                for chunk in oa.chat.completions.create(model=MODEL, messages=STORY, max_tokens=400, temperature=0,
                                                        stream=True):
                    received.append(chunk)
                    if len(received) == 3:
                        os.kill(pid, signal.SIGKILL)
        assert "killed by SIGKILL" in str(info.value), info.value
        assert 3 <= len(received) < 400
        wait_for_fresh_runner(engine, pid, restarts)
        after = client.chat(model=MODEL, messages=STORY, options={**LONG, "num_predict": 3})
        assert after.done and after.eval_count == 3


def test_held_requests_get_503_with_retry_after_in_each_apis_shape(runner_server) -> None:
    engine = runner_server.state.engine
    for path, body in (("/api/chat", {"model": MODEL, "messages": STORY, "stream": False, "options": LONG}),
                       ("/v1/chat/completions", {"model": MODEL, "messages": STORY, "max_tokens": 400})):
        pid, restarts = engine.runner_pid, engine.restarts
        killer = threading.Timer(1.0, os.kill, (pid, signal.SIGKILL))
        killer.start()
        response = httpx.post(f"{runner_server.url}{path}", json=body, timeout=120)
        killer.join()
        assert response.status_code == 503 and response.headers["retry-after"].isdigit(), response.text
        error = response.json()["error"]
        if path.startswith("/v1"):
            assert error["type"] == "server_error" and error["code"] == "runner_unavailable", error
            assert "killed by SIGKILL" in error["message"]
        else:
            assert isinstance(error, str) and "killed by SIGKILL" in error
        wait_for_fresh_runner(engine, pid, restarts)


def test_a_wedged_runner_is_killed_and_replaced(runner_server) -> None:
    engine = runner_server.state.engine
    pid, restarts = engine.runner_pid, engine.restarts
    os.kill(pid, signal.SIGSTOP)  # alive but silent, as a runner stuck in native code
    engine.wedge_seconds = 2.0  # (--runner-timeout; the default leaves room for long prompts on slow CPUs)
    started = time.perf_counter()
    try:
        response = httpx.post(f"{runner_server.url}/api/generate", json={
            "model": MODEL, "prompt": "hi", "stream": False, "options": {"num_predict": 2}}, timeout=60)
    finally:
        engine.wedge_seconds = 120.0
    waited = time.perf_counter() - started
    assert response.status_code == 503 and "killed by SIGKILL" in response.json()["error"], response.text
    assert 2.0 <= waited < 20, waited
    wait_for_fresh_runner(engine, pid, restarts)
    assert httpx.post(f"{runner_server.url}/api/generate", json={
        "model": MODEL, "prompt": "hi", "stream": False, "options": {"num_predict": 2}}, timeout=60).status_code == 200


def test_num_ctx_grammar_and_disconnect_work_through_the_runner(runner_server) -> None:
    url = runner_server.url
    long_prompt = "Tell me about the weather in Paris. " * 20
    small = httpx.post(f"{url}/api/chat", json={"model": MODEL, "stream": False, "options": {"num_ctx": 64},
                                                "messages": [{"role": "user", "content": long_prompt}]}, timeout=60)
    assert small.status_code == 400 and "the context holds 64" in small.json()["error"]
    reply = ollama.Client(host=url).chat(model=MODEL, messages=[{"role": "user", "content": long_prompt}],
                                         options={"temperature": 0, "num_predict": 4, "num_ctx": 512})
    assert reply.done and reply.prompt_eval_count > 64
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    chat = ollama.Client(host=url).chat(model=MODEL, messages=[{"role": "user", "content": "Pick a number"}],
                                        format=schema, options={"temperature": 0, "num_predict": 30})
    assert isinstance(__import__("json").loads(chat.message.content)["n"], int)

    scheduler = runner_server.state.scheduler
    cancelled = scheduler.cancelled
    with httpx.stream("POST", f"{url}/api/generate", json={"model": MODEL, "prompt": "Tell a long story",
                                                           "options": LONG}, timeout=60) as response:
        next(response.iter_lines())
    deadline = time.monotonic() + 10
    while scheduler.cancelled == cancelled:
        assert time.monotonic() < deadline, "the abandoned request was not cancelled"
        time.sleep(0.05)
    assert ollama.Client(host=url).generate(model=MODEL, prompt="hi", options={"num_predict": 2}).done


def test_transformers_engine_runs_in_the_runner_too(tiny_qwen2_dir: Path) -> None:
    engine = RunnerEngine(tiny_qwen2_dir, n_ctx=512)
    try:
        assert engine.kind == "TransformersEngine" and not engine.supports_grammar
        server = RunningServer(create_app(engine, "tiny-qwen"))
        try:
            reply = ollama.Client(host=server.url).chat(model="tiny-qwen", messages=[{"role": "user", "content": "hi"}],
                                                        options={"temperature": 0, "num_predict": 4})
            assert reply.done and reply.eval_count <= 4 and reply.prompt_eval_count > 5
            refused = httpx.post(f"{server.url}/api/chat", json={
                "model": "tiny-qwen", "messages": [{"role": "user", "content": "hi"}], "format": "json"})
            assert refused.status_code == 400 and "GGUF" in refused.json()["error"]
        finally:
            server.stop()
    finally:
        engine.close()


def test_parallel_slots_decode_concurrent_requests_together(default_gguf: Path) -> None:
    """--parallel 4: four requests with their own sampling, grammar and stops decode in one batch, interleaved."""
    import json
    from concurrent.futures import ThreadPoolExecutor

    # Tokens leave the runner bunched (stream_interval), as `tooltune serve` runs it; each is still its own line.
    engine = RunnerEngine(default_gguf, n_ctx=512, n_threads=1, chat_template=QWEN_JINJA, parallel=4,
                          stream_interval=0.05)
    server = RunningServer(create_app(engine, MODEL, stream_interval=0.05))
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    requests = [
        {"messages": [{"role": "user", "content": "Write a long story about the sea."}],
         "options": {"temperature": 0, "num_predict": 40}},
        {"messages": [{"role": "user", "content": "Pick a number"}], "format": schema,
         "options": {"temperature": 0, "num_predict": 30}},
        {"messages": [{"role": "user", "content": "Count from one to twenty in words, comma separated."}],
         # A comma list or a numbered one, whichever this batch's logits give (they differ in the last bits with
         # the batch's make-up): either stops at its first separator.
         "options": {"temperature": 0, "num_predict": 40, "stop": [",", "\n"]}},
        {"messages": [{"role": "user", "content": "Tell me about mountains."}],
         "options": {"temperature": 0.9, "top_k": 20, "top_p": 0.8, "seed": 7, "num_predict": 40}},
    ]

    def run(body: dict) -> tuple[float, float, dict]:
        first = None
        parts = []
        with httpx.stream("POST", f"{server.url}/api/chat", json={"model": MODEL, **body}, timeout=300) as r:
            for line in r.iter_lines():
                item = json.loads(line)
                assert "error" not in item, item
                first = first or time.perf_counter()
                parts.append(item)
        return first, time.perf_counter(), {"text": "".join(p["message"]["content"] for p in parts), **parts[-1]}

    try:
        assert engine.parallel == 4
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(run, requests))
        story, number, counting, sampled = (r[2] for r in results)
        assert story["eval_count"] == 40 and story["done_reason"] == "length"
        assert isinstance(json.loads(number["text"])["n"], int)
        assert not {",", "\n"} & set(counting["text"]) and counting["done_reason"] == "stop", counting["text"]
        assert sampled["eval_count"] >= 1 and sampled["text"]
        # Decoded together, not queued: every request had its first token before the story finished.
        story_end = results[0][1]
        assert all(first < story_end for first, _, _ in results[1:]), results
        # A seeded request is reproducible: its sampler is its own (alone twice: same text; next to other requests
        # the logits of a batch may differ in the last bits, as in llama.cpp's server).
        assert run(requests[3])[2]["text"] == run(requests[3])[2]["text"]
    finally:
        server.stop()
        engine.close()


@pytest.mark.parametrize("parallel", [1, 2])
def test_bunched_tokens_arrive_as_the_same_chunks_in_fewer_messages(runner_server, default_gguf: Path,
                                                                    parallel: int) -> None:
    """The runner sends a request's tokens in bunches (one message per stream interval): the chunks the server
    streams are exactly those of one message per token, on the one-at-a-time path and the batched one."""
    params = SamplingParams(temperature=0.0, max_tokens=48)
    prompt = "<|im_start|>user\nWrite a long story about the sea.<|im_end|>\n<|im_start|>assistant\n"
    reference = [chunk.text for chunk in runner_server.state.engine.stream(prompt, params)]  # interval 0
    engine = RunnerEngine(default_gguf, n_ctx=1024, n_threads=1, chat_template=QWEN_JINJA, parallel=parallel,
                          stream_interval=10.0)  # longer than the decode: the first token, then the rest at the end
    try:
        before = engine._runner.messages
        bunched = [chunk.text for chunk in engine.stream(prompt, params)]
        assert engine.last_result is not None and engine.last_result.completion_tokens == 48
        assert "".join(bunched) == engine.last_result.text and len(bunched) > 40  # still one chunk per token
        if parallel == 1:  # same context as the reference (the batched one's logits may differ in the last bits)
            assert bunched == reference
        assert engine._runner.messages - before <= 3, engine._runner.messages - before  # first, rest, done
    finally:
        engine.close()
