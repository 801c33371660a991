"""The server's side of the runner (``tooltune.serve.runner``): an ``Engine`` whose decoding happens in a subprocess.

``RunnerEngine`` renders prompts itself (Jinja, from the chat template the runner reported) and streams completions
from the runner, so the APIs and the scheduler use it exactly like an in-process engine — nothing native is ever
imported here. It also watches the runner: when the process dies (a native crash, the OOM killer, a SIGKILL) or stops
answering while it holds requests (wedged: no message for ``wedge_seconds``), every request it held fails with
``RunnerUnavailable`` (the APIs answer 503 + Retry-After) and a fresh runner is started for the next request.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tooltune.engines import Chunk, Engine, EngineError, Result, SamplingParams

log = logging.getLogger("tooltune.serve.runner")

DEFAULT_WEDGE_SECONDS = 120.0  # no message at all while holding requests: a long prompt on a slow CPU stays under it
RETRY_AFTER_SECONDS = 2


class RunnerUnavailable(EngineError):
    """The runner died or stopped answering; the request may be retried once a fresh runner is up."""


class _Runner:
    """One runner process: its pipes, the requests it holds and the thread reading its replies."""

    def __init__(self, load: dict[str, Any], load_timeout: float) -> None:
        commands_read, self._commands = os.pipe()
        self._replies, replies_write = os.pipe()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tooltune.serve.runner", "--commands-fd", str(commands_read),
             "--replies-fd", str(replies_write)],
            pass_fds=(commands_read, replies_write),
            start_new_session=True,  # the server's signals (Ctrl-C to the group) are for the server to act on
        )
        os.close(commands_read)
        os.close(replies_write)
        self.commands = os.fdopen(self._commands, "wb")
        self.replies = os.fdopen(self._replies, "rb")
        self.lock = threading.Lock()
        self.pending: dict[int, queue.Queue[dict[str, Any]]] = {}
        self.alive = True
        self.messages = 0  # replies read (tokens come bunched: fewer messages than tokens)
        self.last_message = time.monotonic()
        self._send(load)
        self.hello = self._await_hello(load_timeout)
        self.reader = threading.Thread(target=self._read_replies, name="runner-replies", daemon=True)
        self.reader.start()

    def _await_hello(self, timeout: float) -> dict[str, Any]:
        box: list[bytes] = []
        reader = threading.Thread(target=lambda: box.append(self.replies.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        if not box or not box[0]:
            self.kill()
            raise EngineError(f"the model runner did not start within {timeout:.0f} s"
                              if not box else f"the model runner exited while loading (code {self.process.wait()})")
        message = json.loads(box[0])
        if "load_error" in message:
            self.process.wait(10)
            raise EngineError(message["load_error"])
        return message["hello"]

    def _send(self, message: dict[str, Any]) -> None:
        line = json.dumps(message, ensure_ascii=False).encode("utf-8") + b"\n"
        with self.lock:
            self.commands.write(line)
            self.commands.flush()

    def submit(self, job_id: int, prompt: str, params: SamplingParams) -> queue.Queue[dict[str, Any]]:
        replies: queue.Queue[dict[str, Any]] = queue.Queue()
        with self.lock:
            if not self.alive:
                raise RunnerUnavailable("the model runner is restarting")
            if not self.pending:
                self.last_message = time.monotonic()  # the wedge clock starts with the first held request
            self.pending[job_id] = replies
        try:
            self._send({"op": "generate", "id": job_id, "prompt": prompt, "params": asdict(params)})
        except OSError as exc:
            self.forget(job_id)
            raise RunnerUnavailable(f"the model runner is gone ({exc})") from exc
        return replies

    def cancel(self, job_id: int) -> None:
        if self.forget(job_id) and self.alive:
            with contextlib.suppress(OSError):  # it died meanwhile: the reader reports that
                self._send({"op": "cancel", "id": job_id})

    def forget(self, job_id: int) -> bool:
        with self.lock:
            return self.pending.pop(job_id, None) is not None

    def _read_replies(self) -> None:
        for line in self.replies:
            message = json.loads(line)
            with self.lock:
                self.messages += 1
                self.last_message = time.monotonic()
                target = self.pending.get(message.get("id"))
                if target is not None and ("done" in message or "error" in message):
                    del self.pending[message["id"]]
            if target is not None:
                target.put(message)
        self._fail_all(self._death_reason())

    def _death_reason(self) -> str:
        try:
            code = self.process.wait(5)
        except subprocess.TimeoutExpired:
            return "the model runner closed its pipe"
        if code < 0:
            return f"the model runner was killed by {signal.Signals(-code).name}"
        return f"the model runner exited with code {code}"

    def _fail_all(self, reason: str) -> None:
        with self.lock:
            self.alive = False
            held, self.pending = self.pending, {}
        for replies in held.values():
            replies.put({"error": reason, "kind": "unavailable"})

    def wedged(self, seconds: float) -> bool:
        with self.lock:
            return self.alive and bool(self.pending) and time.monotonic() - self.last_message > seconds

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()

    def close(self, timeout: float = 3.0) -> None:
        """Ask politely (close its command pipe: it exits), then kill."""
        with contextlib.suppress(OSError):
            self.commands.close()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            self.process.wait(5)


class RunnerEngine(Engine):
    """An ``Engine`` whose model lives in a runner subprocess, restarted whenever it dies."""

    supports_cancel = True  # stream() takes the scheduler's cancel flag, so a queued request can leave at once

    def __init__(self, model: str | Path, *, n_ctx: int = 4096, n_threads: int | None = None,
                 chat_template: str | None = None, trust_remote_code: bool = False,
                 wedge_seconds: float = DEFAULT_WEDGE_SECONDS, load_timeout: float = 600.0,
                 parallel: int = 1, adapters: dict[str, list[Path]] | None = None,
                 stream_interval: float = 0.0) -> None:
        # stream_interval: the runner bunches a request's tokens into one message per this many seconds (the
        # scheduler's own hand-over interval, so bunching adds no delay the client would not see anyway).
        self._load = {"model": str(model), "n_ctx": n_ctx, "n_threads": n_threads, "chat_template": chat_template,
                      "trust_remote_code": trust_remote_code, "parallel": parallel,
                      "stream_interval": max(0.0, stream_interval),
                      "adapters": {name: [str(p) for p in paths] for name, paths in (adapters or {}).items()}}
        self._load_timeout = load_timeout
        self.wedge_seconds = wedge_seconds
        self._results = threading.local()  # last_result per decoding thread
        self._ids = iter(range(1, 1 << 62))
        self._runner_lock = threading.Lock()
        self._ready = threading.Event()
        self._closed = False
        self.restarts = 0
        self._runner = _Runner(self._load, load_timeout)
        self._ready.set()
        hello = self._runner.hello
        self.name = hello["name"]
        self.path = Path(hello["path"])
        self.kind = hello["kind"]
        self.chat_template = hello["chat_template"]
        self.bos_token = hello["bos_token"]
        self.eos_token = hello["eos_token"]
        self.stop_tokens = hello["stop_tokens"]
        self.context_length = hello["context_length"]
        self.train_context_length = hello["train_context_length"]
        self.supports_grammar = hello["supports_grammar"]
        self.load_seconds = hello["load_seconds"]
        self.metadata = hello["metadata"]
        self.parallel = hello.get("parallel", 1)  # requests the runner decodes together (1: one at a time)
        self._watchdog = threading.Thread(target=self._watch, name="runner-watchdog", daemon=True)
        self._watchdog.start()

    # ---- the runner's life ----

    @property
    def runner_pid(self) -> int:
        return self._runner.process.pid

    def _watch(self) -> None:
        """Kill a wedged runner, replace a dead one (so the next request finds a fresh runner ready)."""
        while not self._closed:
            time.sleep(0.2)
            runner = self._runner
            if runner.wedged(self.wedge_seconds):
                log.error("model runner (pid %d) sent nothing for %.0f s while holding requests: killing it",
                          runner.process.pid, self.wedge_seconds)
                runner.kill()
            if not runner.alive and not self._closed:
                self._restart(runner)

    def _restart(self, dead: _Runner) -> None:
        with self._runner_lock:
            if self._runner is not dead or self._closed:
                return
            self._ready.clear()
            log.error("model runner (pid %d) is gone: starting a fresh one", dead.process.pid)
            dead.close(timeout=1.0)
            while not self._closed:
                try:
                    self._runner = _Runner(self._load, self._load_timeout)
                    self.restarts += 1
                    break
                except EngineError as exc:
                    log.error("model runner failed to start: %s (retrying)", exc)
                    time.sleep(RETRY_AFTER_SECONDS)
            self._ready.set()

    # ---- Engine interface ----

    @property
    def last_result(self) -> Result | None:  # type: ignore[override]
        return getattr(self._results, "value", None)

    @last_result.setter
    def last_result(self, value: Result | None) -> None:
        self._results.value = value

    def tokenize(self, text: str) -> list[int]:
        raise EngineError("tokenize runs in the model runner; the server process only renders prompts")

    def stream(self, prompt: str, params: SamplingParams,  # type: ignore[override]
               cancel: threading.Event | None = None) -> Iterator[Chunk]:
        self.last_result = None
        if not self._ready.wait(self._load_timeout):
            raise RunnerUnavailable("the model runner is still starting")
        runner = self._runner
        job_id = next(self._ids)
        replies = runner.submit(job_id, prompt, params)
        finished = False
        try:
            while True:
                try:
                    message = replies.get(timeout=0.1)
                except queue.Empty:
                    if cancel is not None and cancel.is_set():
                        return
                    continue
                if "chunks" in message:
                    for text in message["chunks"]:
                        yield Chunk(text)
                elif "done" in message:
                    finished = True
                    self.last_result = Result(**message["done"]) if message["done"] else None
                    return
                else:
                    finished = True
                    if message.get("kind") == "unavailable":
                        raise RunnerUnavailable(message["error"])
                    raise EngineError(message["error"])
        finally:
            if not finished:
                runner.cancel(job_id)

    def close(self) -> None:
        self._closed = True
        with self._runner_lock:
            self._runner.close()
