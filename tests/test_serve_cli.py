"""`tooltune serve` as a user runs it: a real process, a Modelfile, the seed's curl body on the untuned model."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tooltune.commands.serve import DEFAULT_HOST, DEFAULT_PORT, is_loopback
from tooltune.serve.modelfile import write_modelfile

TESTS = Path(__file__).parent
SEED_CURL_BODY = (TESTS / "fixtures" / "serve" / "seed_curl_body.json").read_bytes()
QWEN_JINJA = (TESTS.parent / "src" / "tooltune" / "resources" / "templates" / "qwen.jinja").read_text()


def test_defaults_are_the_seeds_address_and_loopback_only() -> None:
    assert (DEFAULT_HOST, DEFAULT_PORT) == ("127.0.0.1", 11434)
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")


@pytest.fixture(scope="module")
def served(default_gguf: Path, tmp_path_factory: pytest.TempPathFactory):
    workdir = tmp_path_factory.mktemp("serve_cli")
    modelfile = write_modelfile(default_gguf, workdir / "Modelfile", name="toolcall_qwen2.5_q4",
                                chat_template=QWEN_JINJA,
                                params={"temperature": 0.1, "top_p": 0.9, "num_predict": 64})
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "tooltune", "serve", "--modelfile", str(modelfile), "--chat-template", "qwen",
               "--name", "toolcall_qwen2.5_q4", "--port", str(port), "--n-ctx", "2048", "--n-threads", "1",
               "--stream-interval-ms", "0"]  # every token as made (the API tests cover the default batching)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "NO_COLOR": "1"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        assert process.poll() is None, process.stdout.read()
        try:
            if httpx.get(url, timeout=1).text == "Ollama is running":
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "server did not come up"
        time.sleep(0.2)
    yield url
    process.terminate()
    process.wait(20)


def test_seed_curl_body_against_tooltune_serve(served: str) -> None:
    """The seed's curl, verbatim, against the untuned model: every expected field, calls structured if emitted."""
    response = httpx.post(f"{served}/api/chat", content=SEED_CURL_BODY, headers={"Content-Type": "application/json"},
                          timeout=300)
    assert response.status_code == 200, response.text
    body = response.json()
    for name in ("model", "created_at", "message", "done_reason", "done", "total_duration", "load_duration",
                 "prompt_eval_count", "prompt_eval_duration", "eval_count", "eval_duration"):
        assert name in body, name
    assert body["model"] == "toolcall_qwen2.5_q4" and body["done"] is True
    message = body["message"]
    assert message["role"] == "assistant"
    if message.get("tool_calls"):
        assert all(isinstance(c["function"]["arguments"], dict) for c in message["tool_calls"])
        assert "<tool_call>" not in message["content"]
    else:
        assert message["content"].strip()


def test_modelfile_parameters_are_served(served: str) -> None:
    shown = httpx.post(f"{served}/api/show", json={"model": "toolcall_qwen2.5_q4"}).json()
    assert "temperature             0.1" in shown["parameters"]
    assert "num_predict             64" in shown["parameters"]
    assert 'stop                    "<|im_end|>"' in shown["parameters"]
    assert shown["modelfile"].startswith("# Modelfile for toolcall_qwen2.5_q4")
    assert httpx.get(f"{served}/api/tags").json()["models"][0]["name"] == "toolcall_qwen2.5_q4:latest"
