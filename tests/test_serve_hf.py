"""Serving an HF directory through transformers: same APIs, same prompt rendering, grammar-only features refused."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import ollama
import openai
import pytest
from test_serve_api import WEATHER_TOOLS, RunningServer  # noqa: E402  (tests/ is on sys.path)

from tooltune.engines import load_engine
from tooltune.serve.app import create_app


@pytest.fixture(scope="module")
def hf_server(tiny_qwen2_dir: Path):
    engine = load_engine(tiny_qwen2_dir, n_ctx=512)
    server = RunningServer(create_app(engine, "tiny-qwen"))
    yield server
    server.stop()


def test_hf_directory_serves_both_apis(hf_server) -> None:
    reply = ollama.Client(host=hf_server.url).chat(
        model="tiny-qwen", messages=[{"role": "user", "content": "hi"}], tools=WEATHER_TOOLS, stream=False,
        options={"temperature": 0, "num_predict": 4})
    assert reply.done and reply.eval_count <= 4 and reply.prompt_eval_count > 50
    assert reply.message.content or reply.message.tool_calls
    client = openai.OpenAI(base_url=f"{hf_server.url}/v1", api_key="unused")
    chunks = list(client.chat.completions.create(model="tiny-qwen", messages=[{"role": "user", "content": "hi"}],
                                                 max_tokens=3, temperature=0, stream=True))
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert json.loads(httpx.get(f"{hf_server.url}/api/tags").text)["models"][0]["details"]["format"] == "safetensors"


def test_hf_directory_refuses_grammar_features_with_400(hf_server) -> None:
    response = httpx.post(f"{hf_server.url}/v1/chat/completions", json={
        "model": "tiny-qwen", "messages": [{"role": "user", "content": "hi"}], "tools": WEATHER_TOOLS,
        "tool_choice": "required"})
    assert response.status_code == 400 and "GGUF" in response.json()["error"]["message"]
    response = httpx.post(f"{hf_server.url}/api/chat", json={
        "model": "tiny-qwen", "messages": [{"role": "user", "content": "hi"}], "format": "json"})
    assert response.status_code == 400 and "GGUF" in response.json()["error"]
