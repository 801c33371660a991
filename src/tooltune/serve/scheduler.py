"""One engine, many clients: a FIFO queue in front of a single decode thread.

Why a queue and not batching: llama-cpp-python's ``Llama`` owns one context with one KV cache and is not thread-safe,
so two requests cannot decode at the same time without a second copy of the model in memory. On a CPU the decode of
one sequence already uses every core, so batching would buy little; a queue keeps memory flat, keeps llama.cpp's
prompt-prefix cache useful (a multi-turn chat reuses the previous turn's KV), and makes interleaving bugs impossible:
each request's tokens are produced by one thread into that request's own buffer.

Why tokens are handed over in batches: every hand-off wakes the event loop, which then serialises and writes to the
socket — work that competes for the very cores the decode is using (measured on 2 cores: ~0.5 ms of event-loop CPU per
wake-up, 3–6% of decode speed at one wake per token). The first token, the end and errors are handed over at once;
tokens in between are handed over at most every ``stream_interval`` seconds (default 50 ms: 20 updates a second, each
token still its own NDJSON line / SSE event). ``stream_interval=0`` hands over every token as it is made.

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

from tooltune.engines import Chunk, Engine, EngineError, Result, SamplingParams

DEFAULT_STREAM_INTERVAL = 0.05


class QueueFullError(Exception):
    pass


class ServerStopping(EngineError):
    """The server is shutting down: a request still running when its grace period ends gets this, in-band."""


_DONE = object()


@dataclass(eq=False)  # identity: jobs are kept in a set
class Job:
    prompt: str
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    cancel: threading.Event = field(default_factory=threading.Event)
    submitted_at: float = field(default_factory=time.perf_counter)
    started_at: float | None = None
    result: Result | None = None
    # Hand-over buffer between the decode thread and the request's coroutine, guarded by ``lock``.
    lock: threading.Lock = field(default_factory=threading.Lock)
    pending: list[Any] = field(default_factory=list)
    waiter: asyncio.Future[None] | None = None  # set while the coroutine waits for items
    handed_over: int = 0  # items handed over so far (the first goes at once)
    last_hand_over: float = 0.0


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Scheduler:
    def __init__(self, engine: Engine, max_waiting: int = 64,
                 stream_interval: float = DEFAULT_STREAM_INTERVAL) -> None:
        self.engine = engine
        self.max_waiting = max_waiting
        self.stream_interval = max(0.0, stream_interval)
        # One worker per request the engine can decode at once (the runner's --parallel slots; 1 in-process).
        self._executor = ThreadPoolExecutor(max_workers=max(1, int(getattr(engine, "parallel", 1))),
                                            thread_name_prefix="tooltune-engine")
        self._counter_lock = threading.Lock()
        self.waiting = 0
        self.running = 0
        self.completed = 0
        self.cancelled = 0
        self._jobs: set[Job] = set()  # queued or running, for cancel_all

    async def batches(self, prompt: str, params: SamplingParams) -> AsyncIterator[list[Chunk | Job]]:
        """Yield the request's chunks in batches; the last batch ends with the finished ``Job`` (``result``, timing).

        Closing the iterator early (client gone) cancels the job.
        """
        with self._counter_lock:
            if self.waiting >= self.max_waiting:
                raise QueueFullError(f"{self.waiting} requests already waiting; try again later")
            self.waiting += 1
        loop = asyncio.get_running_loop()
        job = Job(prompt=prompt, params=params, loop=loop)
        with self._counter_lock:
            self._jobs.add(job)
        future = self._executor.submit(self._run, job)
        finished = False
        try:
            while True:
                with job.lock:
                    items, job.pending = job.pending, []
                    if not items:
                        waiter: asyncio.Future[None] = loop.create_future()
                        job.waiter = waiter
                if not items:
                    # Tokens the decode thread did not hand over (too soon after the last batch) are collected
                    # one interval after this wait began at the latest.
                    timer = loop.call_later(self.stream_interval, self._collect_stragglers, job, waiter) \
                        if self.stream_interval > 0 and job.handed_over else None
                    try:
                        await waiter
                    finally:
                        if timer is not None:
                            timer.cancel()
                        with job.lock:
                            if job.waiter is waiter:
                                job.waiter = None
                    continue
                job.last_hand_over = time.perf_counter()
                batch: list[Chunk | Job] = []
                for item in items:
                    if item is _DONE:
                        finished = True
                        batch.append(job)
                        yield batch
                        return
                    if isinstance(item, BaseException):
                        finished = True
                        if batch:
                            yield batch
                        raise item
                    batch.append(item)
                yield batch
        finally:
            with self._counter_lock:
                self._jobs.discard(job)
            if not finished:
                job.cancel.set()
                future.cancel()  # never started: the executor drops it
                if future.cancelled():
                    with self._counter_lock:
                        self.waiting -= 1
                        self.cancelled += 1

    @staticmethod
    def _collect_stragglers(job: Job, waiter: asyncio.Future[None]) -> None:
        with job.lock:
            if not job.pending or job.waiter is not waiter:
                return
            job.waiter = None
        _wake(waiter)

    def _put(self, job: Job, item: Any) -> None:
        """Called on the decode thread: buffer ``item`` and wake the request's coroutine when it is time."""
        urgent = item is _DONE or isinstance(item, BaseException)
        with job.lock:
            job.pending.append(item)
            job.handed_over += 1
            waiter = job.waiter
            if waiter is None:
                return  # the coroutine is busy and will look at the buffer before it waits again
            due = job.handed_over == 1 or time.perf_counter() - job.last_hand_over >= self.stream_interval
            if not (urgent or due):
                return
            job.waiter = None
        job.loop.call_soon_threadsafe(_wake, waiter)

    def _run(self, job: Job) -> None:
        with self._counter_lock:
            self.waiting -= 1
            if job.cancel.is_set():
                self.cancelled += 1
                return
            self.running += 1
        job.started_at = time.perf_counter()
        final: Any = _DONE
        try:
            # An engine that takes the cancel flag (the runner client) stops waiting on it even before a token.
            stream = self.engine.stream(job.prompt, job.params, cancel=job.cancel) \
                if getattr(self.engine, "supports_cancel", False) else self.engine.stream(job.prompt, job.params)
            with contextlib.closing(stream) as chunks:  # type: ignore[arg-type]
                for chunk in chunks:
                    if job.cancel.is_set():
                        break
                    self._put(job, chunk)
            job.result = self.engine.last_result
        except BaseException as exc:  # delivered to the request's coroutine, which turns it into an HTTP error
            final = exc
        finally:
            # Counted before the last hand-over, so whoever sees the end also sees the counters updated.
            with self._counter_lock:
                self.running -= 1
                if job.cancel.is_set():
                    self.cancelled += 1
                else:
                    self.completed += 1
        self._put(job, final)

    def cancel_all(self) -> None:
        """Cancel every queued and running job (shutdown): each decode stops within one token."""
        with self._counter_lock:
            jobs = list(self._jobs)
        for job in jobs:
            job.cancel.set()

    def end_streams(self, reason: str) -> None:
        """Shutdown's deadline: every queued and running request ends now with ``ServerStopping``.

        Handed over ahead of the decode thread's own end, so a stream whose headers are sent ends with an error
        event in its API's shape instead of being cut when the server closes its connection."""
        with self._counter_lock:
            jobs = list(self._jobs)
        for job in jobs:
            job.cancel.set()
            self._put(job, ServerStopping(reason))

    def shutdown(self) -> None:
        self.cancel_all()
        self._executor.shutdown(wait=False, cancel_futures=True)
