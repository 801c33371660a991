"""Start ``vllm serve`` for a checkpoint and wait until its OpenAI API answers (``tooltune serve --engine vllm``).

vLLM is not a tooltune dependency (it needs a GPU and pins its own torch): this only runs where the user installed
it. The command line is the one ``tooltune vllm-command`` prints, so what the user reads is what runs.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import deque
from pathlib import Path
from threading import Thread

from tooltune.errors import TooltuneError
from tooltune.vllm.command import VllmCommand, build_vllm_command


class VllmLaunchError(TooltuneError, RuntimeError):
    pass


def is_vllm_available() -> bool:
    """True when ``vllm`` can be imported in this environment (the package is found, not imported: that is slow)."""
    return importlib.util.find_spec("vllm") is not None


def vllm_executable() -> list[str]:
    """How to run the vLLM CLI: its console script next to this python, else the module entry point."""
    beside = Path(sys.executable).with_name("vllm")
    if beside.is_file():
        return [str(beside)]
    found = shutil.which("vllm")
    if found:
        return [found]
    return [sys.executable, "-m", "vllm.entrypoints.cli.main"]


def _pump(stream, sink: deque[str], log) -> None:  # type: ignore[no-untyped-def]
    for line in stream:
        sink.append(line)
        if log is not None:
            log.write(line)
            log.flush()


def wait_until_ready(base_url: str, process: subprocess.Popen | None, timeout: float, poll: float = 1.0) -> float:
    """Poll ``{base_url}/v1/models`` until it answers 200; fail fast when ``process`` exits. Returns seconds waited."""
    started = time.monotonic()
    url = base_url.rstrip("/") + "/v1/models"
    while True:
        if process is not None and process.poll() is not None:
            raise VllmLaunchError(f"vllm exited with code {process.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return time.monotonic() - started
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        if time.monotonic() - started > timeout:
            raise VllmLaunchError(f"vllm did not answer {url} within {timeout:.0f} s")
        time.sleep(poll)


def start_vllm(
    model: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    served_model_name: str | None = None,
    base: str | Path | None = None,
    chat_template: str | None = None,
    tool_call_parser: str | None = None,
    max_model_len: int | None = None,
    extra_args: list[str] | None = None,
    log_file: str | Path | None = None,
    wait: bool = True,
    timeout: float = 900.0,
) -> subprocess.Popen:
    """Start vLLM's OpenAI server for ``model`` (merged/quantized dir or LoRA adapter) with tool-call parsing on.

    Returns the running process once ``/v1/models`` answers (or at once with ``wait=False``); the caller owns it
    (``process.terminate()``). On failure the process is stopped and the error carries vLLM's last output lines.
    """
    if not is_vllm_available():
        raise VllmLaunchError(
            "vllm is not installed in this environment (it needs a CUDA GPU): `pip install vllm` there, or run "
            "`tooltune vllm-command MODEL` and start the printed command on the GPU machine"
        )
    command: VllmCommand = build_vllm_command(
        model,
        base=base,
        served_model_name=served_model_name,
        chat_template=chat_template,
        tool_call_parser=tool_call_parser,
        host=host,
        port=port,
        max_model_len=max_model_len,
        extra_args=extra_args,
    )
    argv = vllm_executable() + command.argv[1:]
    tail: deque[str] = deque(maxlen=40)
    log = open(log_file, "a", encoding="utf-8") if log_file else None  # noqa: SIM115 - closed by the pump's owner
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    Thread(target=_pump, args=(process.stdout, tail, log), daemon=True).start()
    if not wait:
        return process
    client_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    try:
        wait_until_ready(f"http://{client_host}:{port}", process, timeout)
    except VllmLaunchError as exc:
        stop(process)
        raise VllmLaunchError(f"{exc}; last output:\n{''.join(tail)[-3000:]}") from None
    return process


def stop(process: subprocess.Popen, grace: float = 20.0) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
