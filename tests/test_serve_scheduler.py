"""The scheduler's hand-over of streamed tokens: first token at once, the rest in batches, nothing lost or reordered.

A scripted engine stands in for the model here because the property under test is *when* the decode thread hands
tokens to the request: the script decides when each token is "decoded" (it waits on events the test sets), so the
batches are deterministic on any machine. The real engines run through the same scheduler in test_serve_api.py.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest

from tooltune.engines import Chunk, Engine, Result, SamplingParams
from tooltune.serve.scheduler import Job, Scheduler


class ScriptedEngine(Engine):
    """Yields ``tokens``; before token ``i`` it waits for ``gates[i]`` when the test installed one."""

    name = "scripted"
    chat_template = ""
    stop_tokens: list[str] = []
    context_length = 1024

    def __init__(self, tokens: list[str], gates: dict[int, threading.Event] | None = None) -> None:
        self.tokens = tokens
        self.gates = gates or {}
        self._lock = threading.Lock()

    def _stream_locked(self, prompt: str, params: SamplingParams) -> Iterator[Chunk]:
        for i, token in enumerate(self.tokens):
            gate = self.gates.get(i)
            if gate is not None:
                assert gate.wait(30), f"test never opened gate {i}"
            yield Chunk(token)
        self.last_result = Result("".join(self.tokens), "stop", 3, len(self.tokens), 0.0, 0.0, 0.0)


async def collect(scheduler: Scheduler) -> list[list[Chunk | Job]]:
    return [batch async for batch in scheduler.batches("prompt", SamplingParams())]


def texts(batch: list[Chunk | Job]) -> list[str]:
    return [item.text for item in batch if isinstance(item, Chunk)]


def test_first_token_alone_then_the_rest_together_with_the_end() -> None:
    """With an interval longer than the whole generation, only the first token and the end are handed over."""
    tokens = [f"t{i} " for i in range(40)]
    first_sent = threading.Event()
    engine = ScriptedEngine(tokens, gates={1: first_sent})
    scheduler = Scheduler(engine, stream_interval=60.0)

    async def run() -> list[list[Chunk | Job]]:
        batches = []
        async for batch in scheduler.batches("prompt", SamplingParams()):
            batches.append(batch)
            first_sent.set()  # token 1 is decoded only after the client has token 0
        return batches

    batches = asyncio.run(run())
    assert texts(batches[0]) == ["t0 "]
    assert len(batches) == 2, [texts(b) for b in batches]
    assert texts(batches[1]) == tokens[1:] and isinstance(batches[1][-1], Job)
    assert batches[1][-1].result is not None and batches[1][-1].result.completion_tokens == 40
    scheduler.shutdown()


def test_zero_interval_hands_over_every_token() -> None:
    tokens = ["a", "b", "c", "d"]
    # Each token is decoded only after the previous one reached the client, so none can share a batch.
    gates = {i: threading.Event() for i in range(1, len(tokens))}
    engine = ScriptedEngine(tokens, gates=gates)
    scheduler = Scheduler(engine, stream_interval=0.0)

    async def run() -> list[list[str]]:
        seen = []
        async for batch in scheduler.batches("prompt", SamplingParams()):
            seen.append(texts(batch))
            if len(seen) in gates:
                gates[len(seen)].set()
        return seen

    seen = asyncio.run(run())
    # "d" and the end may share the last batch (the engine finishes right after "d") or not.
    assert seen[:4] == [["a"], ["b"], ["c"], ["d"]] and all(not rest for rest in seen[4:])
    scheduler.shutdown()


def test_a_token_held_back_is_delivered_while_the_decode_stalls() -> None:
    """Token 1 comes right after token 0 has reached the request (inside the interval, so the decode thread does not
    wake the request for it); then decoding stalls until the request has token 1. Without the interval timer that
    collects held-back tokens this would wait for the gate forever (and fail after 30 s)."""
    release = threading.Event()
    first_seen = threading.Event()
    engine = ScriptedEngine(["first", "second", "third"], gates={1: first_seen, 2: release})
    scheduler = Scheduler(engine, stream_interval=0.05)

    async def run() -> list[list[str]]:
        seen = []
        async for batch in scheduler.batches("prompt", SamplingParams()):
            seen.append(texts(batch))
            first_seen.set()
            if "second" in seen[-1]:
                release.set()  # only now may the engine decode "third"
        return seen

    seen = asyncio.run(run())
    assert [t for batch in seen for t in batch] == ["first", "second", "third"]
    assert seen[0] == ["first"]
    scheduler.shutdown()


@pytest.mark.parametrize("interval", [0.0, 0.02])
def test_many_tokens_arrive_in_order_and_complete(interval: float) -> None:
    tokens = [f"{i}," for i in range(500)]
    scheduler = Scheduler(ScriptedEngine(tokens), stream_interval=interval)
    batches = asyncio.run(collect(scheduler))
    assert [t for b in batches for t in texts(b)] == tokens
    assert isinstance(batches[-1][-1], Job)
    assert scheduler.completed == 1 and scheduler.running == 0 and scheduler.waiting == 0
    scheduler.shutdown()


def test_closing_the_stream_early_cancels_the_job() -> None:
    stall = threading.Event()
    engine = ScriptedEngine(["x", "y", "z"], gates={1: stall})
    scheduler = Scheduler(engine, stream_interval=0.0)

    async def run() -> None:
        batches = scheduler.batches("prompt", SamplingParams())
        first = await batches.__anext__()
        assert texts(first) == ["x"]
        await batches.aclose()  # the client went away

    asyncio.run(run())
    stall.set()
    deadline = time.monotonic() + 10
    while scheduler.running or scheduler.cancelled != 1:
        assert time.monotonic() < deadline, "the cancelled job kept running"
        time.sleep(0.01)
    scheduler.shutdown()
