"""`tooltune serve` as a process: no native inference code in it, and SIGTERM/SIGINT stop it cleanly and soon.

Timings are printed (run with -s to see them), not asserted tightly: the CPU is shared.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

TESTS = Path(__file__).parent


def start_server(model: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "tooltune", "serve", str(model), "--chat-template", "qwen", "--name", "m",
               "--port", str(port), "--n-ctx", "1024", "--n-threads", "1", *extra]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "NO_COLOR": "1"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        assert process.poll() is None, process.stdout.read()
        try:
            if httpx.get(url, timeout=1).text == "Ollama is running":
                return process, url
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "server did not come up"
        time.sleep(0.2)


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if Path(entry, "stat").read_text().rsplit(")", 1)[1].split()[1] == str(pid):
                    found.append(int(entry.name))
            except (OSError, IndexError):
                pass
    return found


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_a_busy_server_within_seconds_with_status_0(default_gguf: Path, signum: int) -> None:
    process, url = start_server(default_gguf, "--shutdown-timeout", "2")
    [runner] = children(process.pid)
    # The API process never maps llama.cpp; its runner does.
    assert "libllama" not in Path(f"/proc/{process.pid}/maps").read_text()
    assert "libllama" in Path(f"/proc/{runner}/maps").read_text()

    lines: list[str] = []
    first_token = threading.Event()

    def long_stream() -> None:
        try:
            with httpx.stream("POST", f"{url}/api/generate", timeout=60, json={
                    "model": "m", "prompt": "Write a very long story.", "options": {"num_predict": 1000}}) as r:
                for line in r.iter_lines():
                    lines.append(line)
                    first_token.set()
        except httpx.HTTPError as exc:
            lines.append(f"transport: {exc}")
        first_token.set()

    client = threading.Thread(target=long_stream)
    client.start()
    assert first_token.wait(60)
    started = time.perf_counter()
    process.send_signal(signum)
    time.sleep(0.3)
    with pytest.raises(httpx.ConnectError):  # no longer accepting
        httpx.get(url, timeout=2)
    code = process.wait(30)
    took = time.perf_counter() - started
    client.join(30)
    output = process.stdout.read()
    print(f"\n{signal.Signals(signum).name} with a stream in flight: exit {code} after {took:.2f} s "
          f"(--shutdown-timeout 2); the stream got {len(lines)} lines, last: {lines[-1][:200]}")
    assert code == 0, output
    assert len(lines) > 1 and '"error"' not in lines[0], lines[:2]  # the request was running when the signal came
    assert took < 15, output
    assert "stopping" in output and "stopped in" in output
    assert not Path(f"/proc/{runner}").exists() or "zombie" in Path(f"/proc/{runner}/status").read_text().lower()
