"""One engine, many clients: a FIFO queue in front of a single decode thread.

Why a queue and not batching: llama-cpp-python's ``Llama`` owns one context with one KV cache and is not thread-safe,
so two requests cannot decode at the same time without a second copy of the model in memory. On a CPU the decode of
one sequence already uses every core, so batching would buy little; a queue keeps memory flat, keeps llama.cpp's
prompt-prefix cache useful (a multi-turn chat reuses the previous turn's KV), and makes interleaving bugs impossible:
each request's tokens are produced by one thread into that request's own asyncio queue.

A client that disconnects sets its job's cancel flag; the decode thread checks it between tokens (and before
starting a queued job), so the slot is freed within one token.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from tooltune.engines import Chunk, Engine, Result, SamplingParams


class QueueFullError(Exception):
    pass


_DONE = object()


@dataclass
class Job:
    prompt: str
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    cancel: threading.Event = field(default_factory=threading.Event)
    submitted_at: float = field(default_factory=time.perf_counter)
    started_at: float | None = None
    result: Result | None = None


class Scheduler:
    def __init__(self, engine: Engine, max_waiting: int = 64) -> None:
        self.engine = engine
        self.max_waiting = max_waiting
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tooltune-engine")
        self._counter_lock = threading.Lock()
        self.waiting = 0
        self.running = 0
        self.completed = 0
        self.cancelled = 0

    async def stream(self, prompt: str, params: SamplingParams) -> AsyncIterator[Chunk | Job]:
        """Yield the request's chunks, then the finished ``Job`` (with ``result`` and timing) as the last item.

        Closing the iterator early (client gone) cancels the job.
        """
        with self._counter_lock:
            if self.waiting >= self.max_waiting:
                raise QueueFullError(f"{self.waiting} requests already waiting; try again later")
            self.waiting += 1
        job = Job(prompt=prompt, params=params, loop=asyncio.get_running_loop())
        future = self._executor.submit(self._run, job)
        finished = False
        try:
            while True:
                item = await job.queue.get()
                if item is _DONE:
                    finished = True
                    yield job
                    return
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                yield item
        finally:
            if not finished:
                job.cancel.set()
                future.cancel()  # never started: the executor drops it
                if future.cancelled():
                    with self._counter_lock:
                        self.waiting -= 1
                        self.cancelled += 1

    def _put(self, job: Job, item: Any) -> None:
        job.loop.call_soon_threadsafe(job.queue.put_nowait, item)

    def _run(self, job: Job) -> None:
        with self._counter_lock:
            self.waiting -= 1
            if job.cancel.is_set():
                self.cancelled += 1
                return
            self.running += 1
        job.started_at = time.perf_counter()
        try:
            with contextlib.closing(self.engine.stream(job.prompt, job.params)) as chunks:  # type: ignore[arg-type]
                for chunk in chunks:
                    if job.cancel.is_set():
                        break
                    self._put(job, chunk)
            job.result = self.engine.last_result
            self._put(job, _DONE)
        except BaseException as exc:  # delivered to the request's coroutine, which turns it into an HTTP error
            self._put(job, exc)
        finally:
            with self._counter_lock:
                self.running -= 1
                if job.cancel.is_set():
                    self.cancelled += 1
                else:
                    self.completed += 1

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
