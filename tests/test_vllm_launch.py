"""`tooltune serve --engine vllm` plumbing: availability, readiness polling against a real HTTP server, failures.

vLLM itself needs a CUDA GPU and is not installed here, so the launch is checked up to the point of starting it.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tooltune.vllm.launch import VllmLaunchError, is_vllm_available, start_vllm, stop, wait_until_ready


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _ModelsHandler(BaseHTTPRequestHandler):
    ready_after = 3  # answer 503 to the first requests, as vLLM does while loading weights
    calls = 0

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        type(self).calls += 1
        if self.path != "/v1/models" or type(self).calls <= self.ready_after:
            self.send_response(503)
            self.end_headers()
            return
        body = json.dumps({"object": "list", "data": [{"id": "agent", "object": "model"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_wait_until_ready_polls_until_v1_models_answers() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ModelsHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        waited = wait_until_ready(f"http://127.0.0.1:{server.server_port}", None, timeout=30, poll=0.05)
        assert _ModelsHandler.calls == _ModelsHandler.ready_after + 1
        assert waited >= 0
    finally:
        server.shutdown()


def test_wait_until_ready_times_out_on_a_silent_port() -> None:
    with pytest.raises(VllmLaunchError, match="did not answer .*/v1/models within"):
        wait_until_ready(f"http://127.0.0.1:{_free_port()}", None, timeout=0.5, poll=0.1)


def test_wait_until_ready_fails_fast_when_the_server_process_dies() -> None:
    process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    try:
        with pytest.raises(VllmLaunchError, match="exited with code 3"):
            wait_until_ready(f"http://127.0.0.1:{_free_port()}", process, timeout=60, poll=0.1)
    finally:
        stop(process)


@pytest.mark.skipif(is_vllm_available(), reason="vllm is installed here; this checks the message shown without it")
def test_start_vllm_without_vllm_says_what_to_do(tiny_qwen2_dir: Path) -> None:
    assert is_vllm_available() is False
    with pytest.raises(VllmLaunchError, match="vllm-command"):
        start_vllm(tiny_qwen2_dir, port=_free_port())


def test_serve_engine_vllm_without_vllm_says_how(tmp_path) -> None:
    """`tooltune serve --engine vllm` is wired to the launcher; without vLLM it explains what to do."""
    import importlib.util
    import subprocess
    import sys

    if importlib.util.find_spec("vllm") is not None:
        import pytest

        pytest.skip("vllm is installed here: the launch itself is covered by the GPU check")
    done = subprocess.run([sys.executable, "-m", "tooltune", "serve", str(tmp_path), "--engine", "vllm"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "needs the `vllm` package" in done.stderr
    assert "vllm-command" in done.stderr
