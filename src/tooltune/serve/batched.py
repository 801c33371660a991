"""Continuous batching in the runner (``tooltune serve --parallel N``): N requests decoded together in one llama.cpp
context, as llama.cpp's server decodes its slots and Ollama its ``OLLAMA_NUM_PARALLEL`` requests.

Each request gets a slot: a llama.cpp sequence id (its cells in one unified KV buffer of ``N × n_ctx`` cells, each
request bounded to ``n_ctx`` of them), its own sampler chain (penalties, top-k, top-p, temperature, seeded dist —
and its grammar), its own stop matcher and UTF-8 decoder. One loop builds one ``llama_batch`` per step holding the
next token of every decoding slot plus as much of new prompts as fits, calls ``llama_decode`` once, and samples each
slot from its own logits row. New requests join between steps; finished or cancelled ones leave and free their
cells. LoRA adapters apply to a whole context, so one ``llama_decode`` serves one model: requests join only while
they ask for the adapter the running ones use; a request for another one waits (and holds back those behind it, so
nobody starves) until the batch drains, then the context switches adapters. On a CPU the weights are read once per
step for all slots instead of once per slot; how much that buys
depends on the model and the CPU (measured in ``docs/serve.md``: small on the 135M demo model, whose per-token cost
is compute, not memory).
"""

from __future__ import annotations

import codecs
import collections
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from tooltune.engines import (
    CallOpenerWatch,
    EngineError,
    LlamaCppEngine,
    SamplingParams,
    _StopMatcher,
    _timed_result,
)

PENALTY_LAST_N = 64  # llama-cpp-python's default window for repeat_penalty, prompt tokens included


@dataclass(eq=False)
class Slot:
    job_id: int
    seq: int
    tokens: list[int]  # the prompt
    max_tokens: int
    sampler: Any
    stop: _StopMatcher
    decoder: Any
    fed: int = 0  # prompt tokens already in the KV cache
    completion: list[int] = field(default_factory=list)
    text_parts: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    logits_index: int = -1  # row of this slot's logits in the last batch (-1: none)
    params: SamplingParams = field(default_factory=SamplingParams)
    opener: CallOpenerWatch = field(default_factory=lambda: CallOpenerWatch(None))


class BatchedLoop:
    """Runs in the runner process; owns a second llama.cpp context over the engine's loaded weights."""

    def __init__(self, engine: LlamaCppEngine, parallel: int, n_batch: int = 512) -> None:
        lib = engine._llama_cpp
        self.engine, self.lib, self.parallel, self.n_batch = engine, lib, parallel, n_batch
        self.slot_ctx = engine.context_length
        params = lib.llama_context_default_params()
        params.n_ctx = self.slot_ctx * parallel
        params.n_batch = params.n_ubatch = n_batch
        params.n_seq_max = parallel
        # One KV buffer for all sequences (each still limited to n_ctx by the budget check): measured on the demo
        # model, 8 slots decode at 38 tok/s total unified against 30 split per sequence.
        params.kv_unified = True
        params.n_threads = params.n_threads_batch = engine._threads
        self.ctx = lib.llama_init_from_model(engine.llm.model, params)
        if not self.ctx:
            raise EngineError(f"llama.cpp could not create a context for {parallel} parallel sequences")
        self.memory = lib.llama_get_memory(self.ctx)
        self.vocab = lib.llama_model_get_vocab(engine.llm.model)
        self.batch = lib.llama_batch_init(n_batch, 0, 1)
        self.free_seqs = list(range(parallel))
        self.slots: list[Slot] = []
        self.adapter: str | None = None  # the served model whose adapters this context has applied

    def can_admit(self, adapter: str | None) -> bool:
        """A request joins the running batch only if it uses the same adapters (one decode applies one set)."""
        return not self.slots or adapter == self.adapter

    def use_adapter(self, adapter: str | None) -> None:
        if adapter != self.adapter:
            assert not self.slots, "adapters switch only between batches"
            self.engine.set_adapter(self.ctx, adapter)
            self.adapter = adapter

    # ---- slots ----

    def _sampler(self, params: SamplingParams, prompt: list[int]) -> Any:
        lib = self.lib
        chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        if params.grammar:
            grammar = lib.llama_sampler_init_grammar(self.vocab, params.grammar.encode("utf-8"), b"root")
            if not grammar:
                lib.llama_sampler_free(chain)
                raise EngineError("invalid grammar: llama.cpp could not parse it (see its log above)")
            lib.llama_sampler_chain_add(chain, grammar)
        if params.repeat_penalty != 1.0:
            # This binding's signature leads with the vocabulary size (as llama-cpp-python's own sampler passes it).
            penalties = lib.llama_sampler_init_penalties(lib.llama_vocab_n_tokens(self.vocab), PENALTY_LAST_N,
                                                         params.repeat_penalty, 0.0, 0.0)
            for token in prompt[-PENALTY_LAST_N:]:
                lib.llama_sampler_accept(penalties, token)
            lib.llama_sampler_chain_add(chain, penalties)
        if params.temperature <= 0:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_greedy())
        else:
            if params.top_k > 0:
                lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_k(params.top_k))
            if params.top_p < 1.0:
                lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_p(params.top_p, 1))
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_temp(params.temperature))
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_dist(params.seed & 0xFFFFFFFF))
        return chain

    def admit(self, job_id: int, prompt: str, params: SamplingParams) -> None:
        engine = self.engine
        tokens = engine.tokenize(prompt)
        if params.n_ctx is not None and params.n_ctx > self.slot_ctx:
            raise EngineError(f"num_ctx {params.n_ctx} is above this server's per-request context of "
                              f"{self.slot_ctx} (--n-ctx with --parallel {self.parallel})")
        window = engine._check_budget(len(tokens), params)
        self.use_adapter(params.adapter)
        if params.constrains_calls:  # a call grammar that llama.cpp cannot parse fails the request now, not mid-reply
            self.lib.llama_sampler_free(self._sampler(replace(params, grammar=params.call_grammar), []))
        seq = self.free_seqs.pop()
        try:
            sampler = self._sampler(params, tokens)
        except EngineError:
            self.free_seqs.append(seq)
            raise
        self.lib.llama_memory_seq_rm(self.memory, seq, -1, -1)
        self.slots.append(Slot(job_id=job_id, seq=seq, tokens=tokens,
                               max_tokens=min(params.max_tokens, window - len(tokens)), sampler=sampler,
                               stop=_StopMatcher(engine._stops(params)),
                               decoder=codecs.getincrementaldecoder("utf-8")(errors="replace"), params=params,
                               opener=CallOpenerWatch(params.call_trigger if params.constrains_calls else None)))

    def release(self, slot: Slot) -> None:
        self.slots.remove(slot)
        self.lib.llama_sampler_free(slot.sampler)
        self.lib.llama_memory_seq_rm(self.memory, slot.seq, -1, -1)
        self.free_seqs.append(slot.seq)

    # ---- one step ----

    def step(self, emit: Callable[[Slot, str], None], finish: Callable[[Slot, Any], None]) -> None:
        """Decode one batch: every decoding slot's last token, then prompt tokens while room is left."""
        lib, batch = self.lib, self.batch
        n = 0

        def add(token: int, pos: int, seq: int, logits: bool) -> None:
            nonlocal n
            batch.token[n] = token
            batch.pos[n] = pos
            batch.n_seq_id[n] = 1
            batch.seq_id[n][0] = seq
            batch.logits[n] = logits
            n += 1

        for slot in self.slots:
            slot.logits_index = -1
            if slot.fed == len(slot.tokens) and slot.completion:
                add(slot.completion[-1], len(slot.tokens) + len(slot.completion) - 1, slot.seq, True)
                slot.logits_index = n - 1
        for slot in self.slots:
            while slot.fed < len(slot.tokens) and n < self.n_batch:
                last = slot.fed == len(slot.tokens) - 1
                add(slot.tokens[slot.fed], slot.fed, slot.seq, last)
                slot.fed += 1
                if last:
                    slot.logits_index = n - 1
        if n == 0:
            return
        batch.n_tokens = n
        status = lib.llama_decode(self.ctx, batch)
        if status != 0:
            for slot in list(self.slots):
                finish(slot, EngineError(f"llama_decode failed (status {status}): the context is full"))
            return
        engine = self.engine
        for slot in list(self.slots):
            if slot.logits_index < 0:
                continue
            token = lib.llama_sampler_sample(slot.sampler, self.ctx, slot.logits_index)
            if slot.first_token_at is None:
                slot.first_token_at = time.perf_counter()
            if engine._is_end_of_generation(token):
                finish(slot, "stop")
                continue
            slot.completion.append(token)
            piece = slot.decoder.decode(engine.llm.detokenize([token], prev_tokens=slot.tokens + slot.completion[:-1],
                                                              special=token in engine._preserved))
            text, stopped = slot.stop.push(piece)
            if text:
                slot.text_parts.append(text)
                emit(slot, text)
            if stopped:
                finish(slot, "stop")
            elif len(slot.completion) >= slot.max_tokens:
                finish(slot, "length")
            elif slot.opener.push(piece):
                # The model opened a call: from its next token on, the slot samples under the call grammar.
                lib.llama_sampler_free(slot.sampler)
                slot.sampler = self._sampler(replace(slot.params, grammar=slot.params.call_grammar),
                                             slot.tokens + slot.completion)

    def close(self) -> None:
        self.lib.llama_batch_free(self.batch)
        self.lib.llama_free(self.ctx)


def serve_batched(engine: LlamaCppEngine, parallel: int, jobs: queue.Queue[dict[str, Any] | None],
                  is_cancelled: Callable[[int], bool], send_many: Callable[[list[dict[str, Any]]], None],
                  stream_interval: float = 0.0) -> None:
    """The runner's decode loop with ``parallel`` slots; ``jobs`` holds generate commands in arrival order.

    What one step produces for all slots leaves in one write, each slot's tokens bunched as the runner's protocol
    describes (``tooltune.serve.runner``)."""
    from tooltune.serve.runner import ChunkBatcher, sampling_params

    loop = BatchedLoop(engine, parallel)
    outbox: list[dict[str, Any]] = []  # messages of this step
    batchers: dict[int, ChunkBatcher] = {}

    def send(message: dict[str, Any]) -> None:
        outbox.append(message)

    def flush() -> None:
        if outbox:
            send_many(outbox[:])
            outbox.clear()

    def emit(slot: Slot, text: str) -> None:
        batcher = batchers.setdefault(slot.job_id, ChunkBatcher(slot.job_id, stream_interval))
        message = batcher.add(text, time.perf_counter())
        if message is not None:
            send(message)

    def finish(slot: Slot, outcome: Any) -> None:
        if isinstance(outcome, Exception):
            final = {"id": slot.job_id, "error": str(outcome), "kind": "request"}
        else:
            tail = slot.decoder.decode(b"", final=True) + (slot.stop.flush() if outcome == "length" else "")
            if tail:
                slot.text_parts.append(tail)
                emit(slot, tail)
            result = _timed_result(slot.text_parts, outcome, len(slot.tokens), len(slot.completion), slot.started,
                                   slot.first_token_at, engine.load_seconds)
            final = {"id": slot.job_id, "done": result.__dict__}
        batcher = batchers.pop(slot.job_id, None)
        held = batcher.take(time.perf_counter()) if batcher else None
        if held:
            send(held)
        send(final)
        loop.release(slot)

    waiting: collections.deque[dict[str, Any]] = collections.deque()  # taken from ``jobs``, not yet admitted

    def drop_cancelled() -> None:
        for command in [c for c in waiting if is_cancelled(c["id"])]:
            waiting.remove(command)
            send({"id": command["id"], "error": "cancelled", "kind": "cancelled"})

    while True:
        while loop.free_seqs:  # join waiting requests between steps (block only when nothing is decoding)
            if not waiting:
                flush()  # nothing may wait in the outbox while this blocks
                try:
                    command = jobs.get(block=not loop.slots)
                except queue.Empty:
                    break
                if command is None:
                    return
                waiting.append(command)
            drop_cancelled()
            if not waiting:
                continue
            command = waiting[0]
            params = sampling_params(command.get("params", {}))
            if not loop.can_admit(params.adapter):
                break  # another adapter: it (and whoever came after it) waits for this batch to drain
            waiting.popleft()
            try:
                loop.admit(command["id"], command["prompt"], params)
            except EngineError as exc:
                send({"id": command["id"], "error": str(exc), "kind": "request"})
            except Exception as exc:  # this request fails; the runner and the other slots carry on
                send({"id": command["id"], "error": f"{type(exc).__name__}: {exc}", "kind": "internal"})
        if not loop.slots and waiting:
            continue  # the head of the queue was held back by the batch that just drained: admit it now
        for slot in list(loop.slots):
            if is_cancelled(slot.job_id):
                finish(slot, "stop")
        flush()  # admission errors and cancels, before a step that may take a while
        loop.step(emit, finish)
        flush()
