"""The end of ``tooltune demo --example seed-tools``: serve the tuned, quantized model as a user would
(``tooltune serve --modelfile``, a real process on 127.0.0.1) and send it the seed guide's own curl body."""

from __future__ import annotations

import importlib.resources
import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

from tooltune.errors import TooltuneError


def seed_curl_body() -> bytes:
    resource = importlib.resources.files("tooltune") / "resources" / "examples" / "seed_tools" / "seed_curl_body.json"
    return Path(str(resource)).read_bytes()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def serve_and_send_seed_curl(modelfile: Path, name: str, console: Console, n_threads: int | None = None,
                             ) -> dict[str, Any]:
    """Start ``tooltune serve``, POST the seed's body to ``/api/chat``, stop the server; returns the reply's JSON."""
    port = _free_port()
    command = [sys.executable, "-m", "tooltune", "serve", "--modelfile", str(modelfile), "--name", name,
               "--port", str(port), "--n-ctx", "2048",
               # The seed's body sets no num_predict; an answer is ~45 tokens, so an untrained ramble stops early.
               "--max-tokens-limit", "128"]
    if n_threads:
        command += ["--n-threads", str(n_threads)]
    log = modelfile.parent / "serve.log"
    with log.open("w", encoding="utf-8") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise TooltuneError(f"tooltune serve exited (status {process.returncode}); see {log}")
            try:
                if httpx.get(url, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TooltuneError(f"tooltune serve did not answer within 120 s; see {log}")
            time.sleep(0.2)
        console.print(f"served {name} at {url}; sending the seed's curl body to /api/chat", highlight=False)
        started = time.perf_counter()
        try:
            response = httpx.post(f"{url}/api/chat", content=seed_curl_body(),
                                  headers={"Content-Type": "application/json"}, timeout=300)
        except httpx.HTTPError as exc:
            raise TooltuneError(f"the served model did not answer the seed's curl body ({type(exc).__name__}: "
                                f"{exc}); see {log}") from None
        seconds = time.perf_counter() - started
    finally:
        process.terminate()
        process.wait(30)
    if response.status_code != 200:
        raise TooltuneError(f"the served model answered {response.status_code}: {response.text[:300]}")
    reply = response.json()
    message = reply.get("message", {})
    calls = message.get("tool_calls") or []
    console.print(json.dumps(message, ensure_ascii=False, indent=2), highlight=False, markup=False)
    expected = {"operation": "ADD", "type": "通告", "content": "今天中午12点公司放假"}
    got = calls[0]["function"] if calls else None
    verdict = ("structured call, as the seed expects" if got and got.get("name") == "HandleTongzhiTonggao"
               and got.get("arguments") == expected else "not the seed's expected call")
    console.print(f"seed curl: {verdict} ({seconds:.1f}s)", highlight=False)
    return reply
