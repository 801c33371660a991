"""The teacher generator against a real ``tooltune serve`` of the embedded model (validity, not quality), and its
on-disk cache surviving a kill: the second run asks only for what the first did not get."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tooltune.synth.verify import REASONS

pytestmark = pytest.mark.slow

SPEC = {
    "name": "notes",
    "tools": [{"name": "add_note", "description": "Save a note", "parameters": [
        {"name": "text", "description": "the note", "required": True}]},
        {"name": "chat", "description": "fallback", "parameters": [{"name": "question", "required": True}]}],
    "fallback_tool": "chat",
    "languages": ["en"],
    "arguments": {"add_note": {"text": {"values": ["buy milk", "call mum", "water the plants"]}}},
    "templates": {"add_note": {"en": ["note: {text}"]}},
    "counts": {"single": 3, "clarify": 0, "result": 0, "parallel": 0, "no_call": 1},
    "test_size": 0,
}
N_REQUESTS = 4  # 3 single + 1 no-call


@pytest.fixture(scope="module")
def served_model(default_gguf: Path) -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "tooltune", "serve", str(default_gguf), "--port", str(port),
                                "--n-threads", "1", "--n-ctx", "1024", "--name", "teacher"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        assert process.poll() is None, process.stdout.read()
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "server did not come up"
        time.sleep(0.2)
    yield f"{url}/v1"
    process.terminate()
    process.wait(20)


def _synth(spec: Path, out: Path, url: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tooltune", "synth", str(spec), "--out", str(out), "--generator", "teacher",
         "--teacher-url", url, "--teacher-model", "teacher", "--concurrency", "1", "--teacher-max-tokens", "40"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "NO_COLOR": "1"})


def test_teacher_against_tooltune_serve_and_cache_resume(served_model: str, tmp_path: Path) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(SPEC))
    out = tmp_path / "out"
    cache = out / "teacher_cache"
    first = _synth(spec, out, served_model)
    deadline = time.monotonic() + 300
    while len(list(cache.glob("*/*.json"))) < 2:  # kill once two answers are paid for
        assert first.poll() is None, first.stdout.read()
        assert time.monotonic() < deadline
        time.sleep(0.1)
    first.send_signal(signal.SIGKILL)
    first.wait()
    paid = sorted(p.name for p in cache.glob("*/*.json"))
    assert 2 <= len(paid) < N_REQUESTS
    for entry in cache.glob("*/*.json"):  # written whole (temporary name, then rename), never half
        json.loads(entry.read_text(encoding="utf-8"))

    second = _synth(spec, out, served_model)
    output, _ = second.communicate(timeout=600)
    assert second.returncode == 0, output
    flat = " ".join(output.split())
    match = re.search(r"(\d+) requests \(.*?\) \+ (\d+) from cache, (\d+) failed .* output mode (\w+)", flat)
    assert match, output
    requests, cached, failed, mode = int(match[1]), int(match[2]), int(match[3]), match[4]
    assert cached == len(paid) and requests == N_REQUESTS - len(paid)  # nothing paid twice
    assert mode == "json_schema"  # tooltune serve takes response_format json_schema
    assert len(list(cache.glob("*/*.json"))) == N_REQUESTS
    # Validity: every answer was schema-shaped JSON or is rejected with its reason; kept samples pass verification.
    train = json.loads((out / "notes.json").read_text(encoding="utf-8"))
    rejected = [json.loads(line) for line in (out / "rejected.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(train) + len(rejected) == N_REQUESTS
    assert all(r["reason"] in REASONS and r["detail"] for r in rejected)
    for entry in cache.glob("*/*.json"):
        answer = json.loads(entry.read_text(encoding="utf-8"))
        assert "error" in answer or answer["mode"] == "json_schema"
    for record in train:
        assert [t["from"] for t in record["conversations"]] == ["human", "function_call"]
    assert failed == sum(r["reason"] == "generation" for r in rejected)
