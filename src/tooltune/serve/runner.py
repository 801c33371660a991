"""The runner: one process that owns the engine (llama.cpp or transformers) and decodes what the server sends it.

As Ollama keeps llama.cpp in a runner subprocess, ``tooltune serve`` keeps every native inference library out of the
process that speaks HTTP: a crash in native code (a grammar that overflows a stack, a bad kernel) kills this process
only, and the server answers the requests it held with a 503 and starts another one.

Protocol: JSON lines over two pipes (file descriptors given on the command line, so nothing a native library prints
on stdout can corrupt it). The server's first line is the load request; the runner answers ``{"hello": {...}}`` with
what the server needs to render prompts and describe the model. Then:

    server → runner   {"op": "generate", "id": 7, "prompt": "...", "params": {...SamplingParams}}
                      {"op": "cancel", "id": 7}
    runner → server   {"id": 7, "chunks": ["text", ...]} ... then {"id": 7, "done": {...Result}}
                      or {"id": 7, "error": "why", "kind": "request" | "internal"}

Tokens are sent in bunches (``"chunks"``, one string per token, so each still becomes its own streamed event): the
first at once, then at most one message per request every ``stream_interval`` seconds (the server's own hand-over
interval, from the load request), and whatever is left together with the end. Every message wakes a thread in the
server process, and on a small CPU each wake-up takes a core from the decode (llama.cpp's threads wait for each
other at every layer, so one preempted thread stalls them all); one message per token cost ~5% of decode speed.

The runner exits when its command pipe closes (the server went away, however it went).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import queue
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, BinaryIO

from tooltune.engines import Engine, EngineError, LlamaCppEngine, SamplingParams, load_engine


class _Writer:
    """Lines to the server; one lock so the decode loop and the command reader never interleave bytes."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.lock = threading.Lock()

    def send(self, message: dict[str, Any]) -> None:
        self.send_many([message])

    def send_many(self, messages: list[dict[str, Any]]) -> None:
        """Several messages in one write: the server's reader takes them all in one wake-up."""
        data = b"".join(json.dumps(m, ensure_ascii=False).encode("utf-8", errors="replace") + b"\n"
                        for m in messages)
        with self.lock:
            self.stream.write(data)
            self.stream.flush()


class ChunkBatcher:
    """Holds a request's streamed pieces until they are due: the first at once, then every ``interval`` seconds."""

    def __init__(self, job_id: int, interval: float) -> None:
        self.job_id, self.interval = job_id, interval
        self.pieces: list[str] = []
        self.sent_any = False
        self.last_sent = 0.0

    def add(self, piece: str, now: float) -> dict[str, Any] | None:
        """The message to send now, if one is due."""
        self.pieces.append(piece)
        if self.sent_any and now - self.last_sent < self.interval:
            return None
        return self.take(now)

    def take(self, now: float) -> dict[str, Any] | None:
        if not self.pieces:
            return None
        message = {"id": self.job_id, "chunks": self.pieces}
        self.pieces, self.sent_any, self.last_sent = [], True, now
        return message


def describe(engine: Engine) -> dict[str, Any]:
    """What the server process needs to know about the loaded model (it never loads the model itself)."""
    metadata = getattr(engine, "metadata", {}) or {}
    return {
        "kind": engine.__class__.__name__,
        "name": engine.name,
        "path": str(getattr(engine, "path", engine.name)),
        "chat_template": engine.chat_template,
        "bos_token": engine.bos_token,
        "eos_token": engine.eos_token,
        "stop_tokens": list(engine.stop_tokens),
        "context_length": engine.context_length,
        "train_context_length": engine.train_context_length,
        "supports_grammar": engine.supports_grammar,
        "load_seconds": engine.load_seconds,
        "metadata": {k: v for k, v in metadata.items() if isinstance(v, (str, int, float, bool))},
        "pid": os.getpid(),
        "adapters": sorted(getattr(engine, "adapter_paths", {})),
    }


def sampling_params(raw: dict[str, Any]) -> SamplingParams:
    known = {f.name for f in dataclasses.fields(SamplingParams)}
    return SamplingParams(**{k: v for k, v in raw.items() if k in known})


def serve_commands(engine: Engine, commands: BinaryIO, writer: _Writer, parallel: int = 1,
                   stream_interval: float = 0.0) -> None:
    """Decode requests until the command pipe closes: in arrival order, or ``parallel`` at a time in one batch."""
    jobs: queue.Queue[dict[str, Any] | None] = queue.Queue()
    cancelled: set[int] = set()
    cancel_lock = threading.Lock()

    def read_commands() -> None:
        for line in commands:
            command = json.loads(line)
            if command.get("op") == "cancel":
                with cancel_lock:
                    cancelled.add(command["id"])
            elif command.get("op") == "generate":
                jobs.put(command)
        # The server is gone: nobody is left to answer, and native code may be mid-call, so leave at once.
        os._exit(0)

    def is_cancelled(job_id: int) -> bool:
        with cancel_lock:
            return job_id in cancelled

    threading.Thread(target=read_commands, name="runner-commands", daemon=True).start()
    if parallel > 1 and isinstance(engine, LlamaCppEngine):
        from tooltune.serve.batched import serve_batched

        serve_batched(engine, parallel, jobs, is_cancelled, writer.send_many, stream_interval)
        return
    while True:
        command = jobs.get()
        if command is None:
            return
        job_id = command["id"]
        if is_cancelled(job_id):
            writer.send({"id": job_id, "error": "cancelled", "kind": "cancelled"})
            continue
        batcher = ChunkBatcher(job_id, stream_interval)
        try:
            stream = engine.stream(command["prompt"], sampling_params(command.get("params", {})))
            try:
                for chunk in stream:
                    message = batcher.add(chunk.text, time.perf_counter())
                    if message is not None:
                        writer.send(message)
                    if is_cancelled(job_id):
                        break
            finally:
                stream.close()
            result = engine.last_result
            final = {"id": job_id, "done": dataclasses.asdict(result) if result else None}
        except EngineError as exc:
            final = {"id": job_id, "error": str(exc), "kind": "request"}
        except Exception as exc:  # reported to the one request; the runner keeps serving the others
            traceback.print_exc(file=sys.stderr)
            final = {"id": job_id, "error": f"{type(exc).__name__}: {exc}", "kind": "internal"}
        held = batcher.take(time.perf_counter())
        writer.send_many([held, final] if held else [final])
        with cancel_lock:
            cancelled.discard(job_id)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tooltune.serve.runner", description=__doc__.splitlines()[0])
    parser.add_argument("--commands-fd", type=int, required=True)
    parser.add_argument("--replies-fd", type=int, required=True)
    args = parser.parse_args(argv)
    # Ctrl-C in a terminal reaches the whole process group: the server decides when the runner stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    commands = os.fdopen(args.commands_fd, "rb", buffering=0)
    writer = _Writer(os.fdopen(args.replies_fd, "wb"))
    load = json.loads(commands.readline() or b"{}")
    try:
        engine = load_engine(load["model"], n_ctx=load.get("n_ctx", 4096), n_threads=load.get("n_threads"),
                             chat_template=load.get("chat_template"),
                             trust_remote_code=bool(load.get("trust_remote_code", False)),
                             adapters={name: [Path(p) for p in paths]
                                       for name, paths in (load.get("adapters") or {}).items()})
    except Exception as exc:
        writer.send({"load_error": f"{type(exc).__name__}: {exc}"})
        return 1
    parallel = max(1, int(load.get("parallel", 1)))
    hello = describe(engine)
    hello["parallel"] = parallel if isinstance(engine, LlamaCppEngine) else 1
    writer.send({"hello": hello})
    serve_commands(engine, commands, writer, hello["parallel"], max(0.0, float(load.get("stream_interval", 0.0))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
