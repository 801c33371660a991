"""Text-generation engines behind one interface: llama.cpp for GGUF files, transformers for HF directories.

``tooltune chat``, ``tooltune serve`` and ``tooltune eval`` all go through ``load_engine`` so a prompt is rendered
and decoded the same way whichever file format the model is in.

Contract (other modules code against these names):

    SamplingParams, Chunk, Result
    Engine.name / chat_template / bos_token / eos_token / stop_tokens / context_length
    Engine.render(messages, tools, add_generation_prompt=True) -> str
    Engine.tokenize(text) -> list[int]
    Engine.generate(prompt, params) -> Result
    Engine.stream(prompt, params) -> Iterator[Chunk]   (afterwards ``engine.last_result`` holds the Result)
    Engine.close()
    load_engine(model, *, n_ctx=4096, n_threads=None, chat_template=None) -> Engine

Engines are not thread-safe (llama.cpp's context holds one KV cache): callers that serve several clients serialise
access (see ``tooltune.serve.scheduler``).
"""

from __future__ import annotations

import codecs
import ctypes
import inspect
import os
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tooltune import chat_template as jinja_chat
from tooltune.errors import TooltuneError


class EngineError(TooltuneError):
    """A model that cannot be loaded or a request the engine cannot honour."""


@dataclass
class SamplingParams:
    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0
    repeat_penalty: float = 1.0
    stop: list[str] = field(default_factory=list)
    grammar: str | None = None  # GBNF text; only the llama.cpp engine can honour it
    n_ctx: int | None = None  # Ollama's num_ctx: this request's context window (None: the engine's)
    adapter: str | None = None  # served model name whose LoRA adapters apply (None: the base model alone)
    # Constrained tool calls when the model decides (tool_choice auto): the text is free until the model writes
    # ``call_trigger`` (the family's call opener, e.g. <tool_call>); from there on ``call_grammar`` (GBNF for what
    # follows the opener) holds it to the offered tools' schemas, as llama.cpp's server does with its lazy grammars.
    # llama.cpp only, and only without ``grammar`` (a grammar from the start already decides everything).
    call_trigger: str | None = None
    call_grammar: str | None = None

    @property
    def constrains_calls(self) -> bool:
        """A call grammar takes over after the opener (both given, and no grammar from the first token)."""
        return bool(self.call_trigger and self.call_grammar and not self.grammar)

    @property
    def greedy(self) -> bool:
        """The pick is the top logit itself: nothing (temperature, repeat penalty) changes it after the logits."""
        return self.temperature <= 0 and self.repeat_penalty == 1.0


@dataclass
class Chunk:
    text: str


@dataclass
class Result:
    text: str
    finish_reason: Literal["stop", "length"]
    prompt_tokens: int
    completion_tokens: int
    prompt_seconds: float
    decode_seconds: float
    load_seconds: float


class _StopMatcher:
    """Holds back text that could be the start of a stop string, so a stop string never reaches the client."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self.pending = ""

    def push(self, text: str) -> tuple[str, bool]:
        """Return (text safe to emit, stopped)."""
        self.pending += text
        if not self.stops:
            out, self.pending = self.pending, ""
            return out, False
        cut = min((i for i in (self.pending.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            out, self.pending = self.pending[:cut], ""
            return out, True
        hold = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(self.pending)), 0, -1):
                if self.pending.endswith(stop[:size]):
                    hold = max(hold, size)
                    break
        out = self.pending[: len(self.pending) - hold]
        self.pending = self.pending[len(out) :]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


def _through_stops(stop: _StopMatcher, piece: str, text_parts: list[str]) -> tuple[Chunk | None, bool]:
    """A decoded piece through the stop matcher: the chunk safe to send now (also kept in ``text_parts``) and whether
    a stop string ended the reply."""
    emit, stopped = stop.push(piece)
    if emit:
        text_parts.append(emit)
    return (Chunk(emit) if emit else None), stopped


class CallOpenerWatch:
    """Watches generated text for the opener of a tool call (``SamplingParams.call_trigger``).

    ``push`` returns True once, for the token that completes the opener, when the call grammar can take over from
    there: nothing but whitespace may follow the opener in that token (the grammar starts after the opener and
    allows leading whitespace; a token that already wrote more of the call leaves this reply unconstrained)."""

    def __init__(self, trigger: str | None) -> None:
        self.trigger = trigger or ""
        self.text = ""
        self.done = not self.trigger

    def push(self, piece: str) -> bool:
        if self.done:
            return False
        self.text += piece
        at = self.text.find(self.trigger)
        if at < 0:
            # Only a tail that could still be the opener's start needs keeping.
            self.text = self.text[-(len(self.trigger) - 1):] if len(self.trigger) > 1 else ""
            return False
        self.done = True
        return not self.text[at + len(self.trigger):].strip()


class GreedyGrammar:
    """A llama.cpp grammar for greedy decoding at nearly no cost per token, as llama.cpp's own sampler does it: the
    most likely token is checked against the grammar alone, and only when the grammar rejects it are all candidates
    checked (llama-cpp-python's grammar sampler checks every one of the ~50k every token: measured 18.9 against
    13.8 ms per token on the demo model). Used as a llama-cpp-python logits processor, with ``accept`` told each token
    decoded, for ``temperature <= 0`` and no repeat penalty, where the greedy pick is the processor's own argmax."""

    def __init__(self, lib: Any, vocab: Any, gbnf: str, n_vocab: int) -> None:
        import numpy as np

        self._np, self._lib = np, lib
        self.sampler = lib.llama_sampler_init_grammar(vocab, gbnf.encode("utf-8"), b"root")
        if not self.sampler:
            raise EngineError("invalid grammar: llama.cpp could not parse it (see its log above)")
        self._one = (lib.llama_token_data * 1)()
        self._one_array = lib.llama_token_data_array(data=self._one, size=1, selected=-1, sorted=False)
        self._n_vocab = n_vocab
        self._all: Any = None  # every candidate, built the first time the grammar rejects the top token
        self._all_array: Any = None
        self.off = False  # set when a token the grammar rejects was decoded anyway: stop constraining, never crash

    def allows(self, token: int) -> bool:
        self._one[0].id, self._one[0].logit, self._one[0].p = token, 0.0, 0.0
        self._one_array.selected, self._one_array.sorted = -1, False
        self._lib.llama_sampler_apply(self.sampler, ctypes.byref(self._one_array))
        return self._one[0].logit != float("-inf")

    def __call__(self, input_ids: Any, logits: Any) -> Any:
        if self.off or self.allows(int(self._np.argmax(logits))):
            return logits
        if self._all is None:
            np, lib = self._np, self._lib
            self._all = np.zeros(self._n_vocab, dtype=[("id", np.int32), ("logit", np.float32), ("p", np.float32)])
            self._all["id"] = np.arange(self._n_vocab, dtype=np.int32)
            data = ctypes.cast(self._all.ctypes.data, ctypes.POINTER(lib.llama_token_data))
            self._all_array = lib.llama_token_data_array(data=data, size=self._n_vocab, selected=-1, sorted=False)
        self._all["logit"] = logits
        self._all_array.selected, self._all_array.sorted = -1, False
        self._lib.llama_sampler_apply(self.sampler, ctypes.byref(self._all_array))
        return self._all["logit"]

    def accept(self, token: int) -> None:
        # llama.cpp aborts the process when a grammar is fed a token it rejects; that cannot happen when the greedy
        # pick is this processor's, but a sampler setting that changes the pick must end the constraint, not the run.
        if self.off or not self.allows(token):
            self.off = True
            return
        self._lib.llama_sampler_accept(self.sampler, token)

    def close(self) -> None:
        if self.sampler:
            self._lib.llama_sampler_free(self.sampler)
            self.sampler = None


class Engine:
    """Shared behaviour: rendering with the model's chat template and the non-streaming ``generate``."""

    name: str
    chat_template: str
    bos_token: str = ""
    eos_token: str = ""
    stop_tokens: list[str]
    context_length: int
    load_seconds: float = 0.0
    last_result: Result | None = None
    supports_grammar: bool = False

    def render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
               add_generation_prompt: bool = True, **template_kwargs: Any) -> str:
        """``template_kwargs``: extra template variables, as ``apply_chat_template`` takes them (enable_thinking)."""
        if not self.chat_template:
            raise EngineError(f"{self.name}: the model carries no chat template; pass one with --chat-template")
        from tooltune.families.respond import template_messages

        messages = template_messages(self.chat_template, messages)
        return jinja_chat.render(self.chat_template, messages, tools=tools or None,
                                 add_generation_prompt=add_generation_prompt,
                                 bos_token=self.bos_token, eos_token=self.eos_token, **template_kwargs)

    def tokenize(self, text: str) -> list[int]:
        raise NotImplementedError

    # Both engines decode one request at a time on one model state; the serve scheduler queues the rest.
    busy_message = "engine is busy: it runs one request at a time (use the serve scheduler)"
    _lock: threading.Lock

    def stream(self, prompt: str, params: SamplingParams) -> Iterator[Chunk]:
        if not self._lock.acquire(blocking=False):
            raise EngineError(self.busy_message)
        try:
            yield from self._stream_locked(prompt, params)
        finally:
            self._lock.release()

    def _stream_locked(self, prompt: str, params: SamplingParams) -> Iterator[Chunk]:
        raise NotImplementedError

    def generate(self, prompt: str, params: SamplingParams) -> Result:
        for _ in self.stream(prompt, params):
            pass
        assert self.last_result is not None
        return self.last_result

    def close(self) -> None:
        pass

    def _stops(self, params: SamplingParams) -> list[str]:
        return list(dict.fromkeys([*self.stop_tokens, *params.stop]))

    # The longest context a request may ask for with num_ctx (the model's training context where known).
    train_context_length: int = 0

    def _window(self, params: SamplingParams) -> int:
        """The request's context window: its num_ctx, bounded by what the model was trained for."""
        if params.n_ctx is None:
            return self.context_length
        limit = self.train_context_length or self.context_length
        if not 1 <= params.n_ctx <= limit:
            raise EngineError(f"num_ctx {params.n_ctx} is outside 1..{limit} (the model's training context)")
        return params.n_ctx

    def _check_budget(self, prompt_tokens: int, params: SamplingParams) -> int:
        """The request's context window, once the prompt is known to fit in it."""
        window = self._window(params)
        if prompt_tokens >= window:
            raise EngineError(
                f"prompt is {prompt_tokens} tokens but the context holds {window}; "
                f"raise num_ctx/--n-ctx or shorten the conversation"
            )
        return window


def model_template(own: str, where: Path) -> str:
    """The model's own chat template, or tooltune's corrected one where it is a family's known-broken upstream
    template (SmolLM3's drops calls, Phi-4-mini's and Gemma 3's ignore tools, Mistral's drops the system prompt): the
    text a model trained with that family's template must see when served. A template given explicitly
    (``chat_template=``) is used as given."""
    if not own:
        return ""
    from tooltune.families.registry import model_own

    resolved = model_own(own, where, f"model:{where}")
    for warning in resolved.warnings:
        warnings.warn(warning, UserWarning, stacklevel=3)
    return resolved.source


def end_of_turn_strings(template: str, eos_token: str) -> list[str]:
    """Stop strings of a chat template: ``tooltune.families.stops``, the one end-of-turn detector (the template's
    own end of turn, the family's other ends, EOS)."""
    from tooltune.families.stops import stop_strings

    return stop_strings(template, eos_token)


class LlamaCppEngine(Engine):
    """A GGUF file through llama-cpp-python, decoding token by token so counts, stops and cancels are exact."""

    busy_message = "engine is busy: llama.cpp runs one request at a time (use the serve scheduler)"

    supports_grammar = True

    def __init__(self, path: Path, n_ctx: int = 4096, n_threads: int | None = None,
                 chat_template: str | None = None, adapters: dict[str, list[Path]] | None = None) -> None:
        try:
            import llama_cpp
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise EngineError("llama-cpp-python is not installed: pip install llama-cpp-python") from exc
        self._llama_cpp = llama_cpp
        started = time.perf_counter()
        threads = n_threads or default_threads()
        # Prompt batches get the same thread count as decoding: llama-cpp-python's default (every logical CPU)
        # oversubscribes hyper-threads, and OpenMP's spinning threads then make prompt evaluation 10x slower.
        self._threads = threads
        self.llm = self._open(path, n_ctx)
        self.load_seconds = time.perf_counter() - started
        self.path = path
        self.name = path.stem
        metadata = self.llm.metadata or {}
        self.chat_template = chat_template or model_template(jinja_chat.from_gguf_metadata(metadata), path)
        self.bos_token = self._token_text(self.llm.token_bos())
        self.eos_token = self._token_text(self.llm.token_eos())
        self.add_bos = metadata.get("tokenizer.ggml.add_bos_token", "true") == "true"
        self.stop_tokens = end_of_turn_strings(self.chat_template, self.eos_token)
        self.context_length = self.llm.n_ctx()
        self.train_context_length = int(next((v for k, v in metadata.items() if k.endswith(".context_length")), 0))
        self.metadata = metadata
        self._is_end_of_generation = self._end_of_generation_check()
        self._preserved = self._marker_tokens()
        self._lock = threading.Lock()
        # Served model name -> its LoRA GGUFs. Each file is loaded once over the shared weights and applied to a
        # context per request (llama_set_adapters_lora), so switching models never reloads the base.
        self.adapter_paths = {name: [Path(p) for p in paths] for name, paths in (adapters or {}).items()}
        self._adapter_handles: dict[Path, Any] = {}
        self._load_adapters()
        self._main_adapter: str | None = None  # what the main context has applied now

    def _open(self, path: Path, n_ctx: int) -> Any:
        return self._llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_threads=self._threads,
                                     n_threads_batch=self._threads, verbose=False)

    def _use_context(self, n_ctx: int) -> None:
        """Reopen the model with a context of ``n_ctx`` tokens, as Ollama reloads its runner when num_ctx changes
        (llama.cpp sizes the KV cache when the context is created). The weights are memory-mapped, so this is fast."""
        if n_ctx == self.llm.n_ctx():
            return
        self._free_adapters()
        self.llm.close()
        self.llm = self._open(self.path, n_ctx)
        # The end-of-generation check holds the old model's vocabulary pointer: rebind it to the new model.
        self._is_end_of_generation = self._end_of_generation_check()
        # Adapters belong to the model they were loaded on: load them onto the reopened one.
        self._load_adapters()
        self._main_adapter = None

    # ---- LoRA adapters ----

    def _load_adapters(self) -> None:
        lib = self._llama_cpp
        for paths in self.adapter_paths.values():
            for path in paths:
                if path in self._adapter_handles:
                    continue
                handle = lib.llama_adapter_lora_init(self.llm.model, str(path).encode("utf-8"))
                if not handle:
                    raise EngineError(f"{path}: llama.cpp could not load this LoRA adapter for {self.path} "
                                      "(see its log above)")
                self._adapter_handles[path] = handle

    def _free_adapters(self) -> None:
        for handle in self._adapter_handles.values():
            self._llama_cpp.llama_adapter_lora_free(handle)
        self._adapter_handles = {}

    def set_adapter(self, ctx: Any, adapter: str | None) -> None:
        """Apply the adapters of served model ``adapter`` to llama.cpp context ``ctx`` (None: clear them)."""
        lib = self._llama_cpp
        if adapter is not None and adapter not in self.adapter_paths:
            raise EngineError(f"no adapter named {adapter!r} is loaded (loaded: {sorted(self.adapter_paths)})")
        handles = [self._adapter_handles[p] for p in self.adapter_paths.get(adapter or "", [])] if adapter else []
        array = (lib.llama_adapter_lora_p_ctypes * max(1, len(handles)))(*handles)
        scales = (ctypes.c_float * max(1, len(handles)))(*([1.0] * len(handles)))
        if lib.llama_set_adapters_lora(ctx, array, len(handles), scales):
            raise EngineError(f"llama.cpp refused to apply the adapters of {adapter!r}")

    def _use_adapter(self, adapter: str | None) -> None:
        if adapter == self._main_adapter:
            return
        self.set_adapter(self.llm.ctx, adapter)
        self._main_adapter = adapter
        # The cached prompt prefix was computed under other adapters: reusing it would leak their effect.
        self.llm.reset()

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return self.llm.detokenize([token], special=True).decode("utf-8", errors="replace")

    def _marker_tokens(self) -> frozenset[int]:
        """Ids of the call and reasoning markers that are special tokens in this vocabulary (Mistral's [TOOL_CALLS],
        Phi-4-mini's <|tool_call|>, Hermes 3's <tool_call>...). llama.cpp's detokenizer drops special tokens' text
        unless asked, so a call written with one would reach the parser without its marker: these are kept as text,
        as llama.cpp's server keeps its chat formats' "preserved tokens"."""
        from tooltune.families.parsers import TEXT_MARKERS

        found = set()
        for marker in TEXT_MARKERS:
            ids = self.llm.tokenize(marker.encode("utf-8"), add_bos=False, special=True)
            if len(ids) == 1 and not self.llm.detokenize(ids, special=False):
                found.add(ids[0])
        return frozenset(found)

    def _end_of_generation_check(self) -> Any:
        """llama.cpp's own end-of-generation test (EOS, EOT, <|im_end|>...), whichever binding this version has."""
        lib = self._llama_cpp
        if hasattr(lib, "llama_vocab_is_eog") and hasattr(lib, "llama_model_get_vocab"):
            vocab = lib.llama_model_get_vocab(self.llm.model)
            return lambda token: bool(lib.llama_vocab_is_eog(vocab, token))
        if hasattr(lib, "llama_token_is_eog"):
            model = self.llm.model
            return lambda token: bool(lib.llama_token_is_eog(model, token))
        eos = self.llm.token_eos()
        return lambda token: token == eos

    def _compile_grammar(self, gbnf: str) -> Any:
        """Check a GBNF grammar with llama.cpp's own parser before decoding with it.

        llama-cpp-python hands an unparseable grammar's NULL sampler to the sampler chain, which crashes the process;
        building the sampler once here turns that into an error for this request only.
        """
        lib = self._llama_cpp
        vocab = lib.llama_model_get_vocab(self.llm.model)
        probe = lib.llama_sampler_init_grammar(vocab, gbnf.encode("utf-8"), b"root")
        if not probe:
            raise EngineError("invalid grammar: llama.cpp could not parse it (see its log above)")
        lib.llama_sampler_free(probe)
        return lib.LlamaGrammar.from_string(gbnf, verbose=False)

    def tokenize(self, text: str) -> list[int]:
        # Templates that write the BOS text themselves must not get a second BOS from the tokenizer.
        add_bos = self.add_bos and not (self.bos_token and text.startswith(self.bos_token))
        return self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)

    def _stream_locked(self, prompt: str, params: SamplingParams) -> Iterator[Chunk]:
        self.last_result = None
        tokens = self.tokenize(prompt)
        window = self._check_budget(len(tokens), params)
        self._use_context(window)
        self._use_adapter(params.adapter)
        max_tokens = min(params.max_tokens, window - len(tokens))
        grammar = self._compile_grammar(params.grammar) if params.grammar else None
        # The call grammar is parsed once, now (a bad one fails the request before any text), in the form the rest of
        # the reply will use: the greedy fast path, or llama-cpp-python's grammar for sampled requests.
        call_grammar: Any = None
        if params.constrains_calls:
            if params.greedy:
                lib = self._llama_cpp
                call_grammar = GreedyGrammar(lib, lib.llama_model_get_vocab(self.llm.model), params.call_grammar or "",
                                             self.llm.n_vocab())
            else:
                call_grammar = self._compile_grammar(params.call_grammar or "")
        opener = CallOpenerWatch(params.call_trigger if params.constrains_calls else None)
        self.llm.set_seed(params.seed)
        stop = _StopMatcher(self._stops(params))
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        started = time.perf_counter()
        first_token_at: float | None = None
        completion: list[int] = []
        text_parts: list[str] = []
        finish: Literal["stop", "length"] = "length"

        greedy_call: GreedyGrammar | None = None  # the fast path's grammar, once the opener put it in force

        def tokens_from(active_grammar: Any, processor: Any = None) -> Any:
            # A restart after the call opener re-reads nothing: llama-cpp-python keeps the evaluated prefix
            # (prompt + completion so far) and evaluates only the token it has not seen.
            return self.llm.generate(tokens + completion, top_k=params.top_k if params.top_k > 0 else 0,
                                     top_p=params.top_p, min_p=0.0, temp=params.temperature,
                                     repeat_penalty=params.repeat_penalty, grammar=active_grammar, reset=True,
                                     logits_processor=[processor] if processor is not None else None)

        def constrained_rest() -> Any:
            nonlocal greedy_call
            if isinstance(call_grammar, GreedyGrammar):
                greedy_call = call_grammar
                return tokens_from(None, greedy_call)
            return tokens_from(call_grammar)

        generator = tokens_from(grammar)
        try:
            while generator is not None:
                switch = False
                for token in generator:
                    if first_token_at is None:
                        first_token_at = time.perf_counter()
                    if self._is_end_of_generation(token):
                        finish = "stop"
                        break
                    completion.append(token)
                    if greedy_call is not None:
                        greedy_call.accept(token)
                    piece = decoder.decode(self.llm.detokenize([token], prev_tokens=tokens + completion[:-1],
                                                               special=token in self._preserved))
                    chunk, stopped = _through_stops(stop, piece, text_parts)
                    if chunk is not None:
                        yield chunk
                    if stopped or len(completion) >= max_tokens:
                        finish = "stop" if stopped else "length"
                        break
                    if opener.push(piece):
                        switch = True
                        break
                generator.close()
                generator = constrained_rest() if switch else None
        finally:
            if generator is not None:
                generator.close()
            if isinstance(call_grammar, GreedyGrammar):
                call_grammar.close()
        tail = decoder.decode(b"", final=True) + (stop.flush() if finish == "length" else "")
        if tail:
            text_parts.append(tail)
            yield Chunk(tail)
        self.last_result = _timed_result(text_parts, finish, len(tokens), len(completion), started, first_token_at,
                                         self.load_seconds)

    def close(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            self._free_adapters()  # before the model they were loaded on
            llm.close()


class TransformersEngine(Engine):
    """An HF directory through transformers (safetensors only, no remote code unless asked)."""

    def __init__(self, path: Path, n_ctx: int = 4096, n_threads: int | None = None,
                 chat_template: str | None = None, trust_remote_code: bool = False) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if n_threads:
            torch.set_num_threads(n_threads)
        started = time.perf_counter()
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        self.model = AutoModelForCausalLM.from_pretrained(
            path, use_safetensors=True, dtype=torch.float32, trust_remote_code=trust_remote_code
        )
        self.model.eval()
        self.load_seconds = time.perf_counter() - started
        self._torch = torch
        self.path = path
        self.name = path.name
        self.chat_template = chat_template or model_template(jinja_chat.load_from_tokenizer_dir(path) or "", path)
        self.bos_token = self.tokenizer.bos_token or ""
        self.eos_token = self.tokenizer.eos_token or ""
        self.stop_tokens = end_of_turn_strings(self.chat_template, self.eos_token)
        max_positions = int(getattr(self.model.config, "max_position_embeddings", n_ctx) or n_ctx)
        self.context_length = min(n_ctx, max_positions)
        self.train_context_length = max_positions
        stop_ids = {self.tokenizer.convert_tokens_to_ids(t) for t in self.stop_tokens}
        unk = self.tokenizer.unk_token_id
        self._stop_ids = {i for i in stop_ids if isinstance(i, int) and i >= 0 and i != unk}
        if self.tokenizer.eos_token_id is not None:
            self._stop_ids.add(self.tokenizer.eos_token_id)
        # transformers 5.x renamed ``past_key_values`` to ``cache`` (the old name warns, then goes away).
        forward_args = inspect.signature(self.model.forward).parameters
        self._cache_arg = "cache" if "cache" in forward_args else "past_key_values"
        self._lock = threading.Lock()

    def tokenize(self, text: str) -> list[int]:
        # Chat templates write special tokens (BOS included) themselves, as apply_chat_template does.
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def stream(self, prompt: str, params: SamplingParams) -> Iterator[Chunk]:
        if params.grammar:
            raise EngineError("constrained output (grammar, tool_choice required/named, format) needs a GGUF model "
                              "served through llama.cpp")
        yield from super().stream(prompt, params)

    def _stream_locked(self, prompt: str, params: SamplingParams) -> Iterator[Chunk]:
        torch = self._torch
        self.last_result = None
        tokens = self.tokenize(prompt)
        window = self._check_budget(len(tokens), params)
        max_tokens = min(params.max_tokens, window - len(tokens))
        generator = torch.Generator().manual_seed(params.seed)
        stop = _StopMatcher(self._stops(params))
        started = time.perf_counter()
        first_token_at: float | None = None
        completion: list[int] = []
        emitted_text = ""
        text_parts: list[str] = []
        finish: Literal["stop", "length"] = "length"
        input_ids = torch.tensor([tokens])
        past = None
        with torch.inference_mode():
            while len(completion) < max_tokens:
                out = self.model(input_ids=input_ids, use_cache=True, **{self._cache_arg: past})
                past = getattr(out, self._cache_arg)
                token = self._sample(out.logits[0, -1].float(), params, tokens + completion, generator)
                if first_token_at is None:
                    first_token_at = time.perf_counter()
                if token in self._stop_ids:
                    finish = "stop"
                    break
                completion.append(token)
                input_ids = torch.tensor([[token]])
                # Decode the whole completion and emit the new suffix: byte-level BPE pieces are not valid UTF-8
                # on their own, and a replacement char at the end means the character is still incomplete.
                full = self.tokenizer.decode(completion, skip_special_tokens=False)
                if full.endswith("\ufffd"):
                    continue
                piece, emitted_text = full[len(emitted_text):], full
                chunk, stopped = _through_stops(stop, piece, text_parts)
                if chunk is not None:
                    yield chunk
                if stopped:
                    finish = "stop"
                    break
        tail = stop.flush() if finish == "length" else ""
        if tail:
            text_parts.append(tail)
            yield Chunk(tail)
        self.last_result = _timed_result(text_parts, finish, len(tokens), len(completion), started, first_token_at,
                                         self.load_seconds)

    def _sample(self, logits: Any, params: SamplingParams, history: list[int], generator: Any) -> int:
        torch = self._torch
        if params.repeat_penalty != 1.0 and history:
            seen = torch.tensor(sorted(set(history)))
            values = logits[seen]
            logits[seen] = torch.where(values > 0, values / params.repeat_penalty, values * params.repeat_penalty)
        if params.temperature <= 0:
            return int(torch.argmax(logits))
        logits = logits / params.temperature
        if params.top_k > 0:
            kth = torch.topk(logits, min(params.top_k, logits.numel())).values[-1]
            logits = torch.where(logits < kth, torch.full_like(logits, float("-inf")), logits)
        probs = torch.softmax(logits, dim=-1)
        if params.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < params.top_p
            filtered = torch.zeros_like(probs)
            filtered[order[keep]] = probs[order[keep]]
            probs = filtered / filtered.sum()
        return int(torch.multinomial(probs, 1, generator=generator))

    def close(self) -> None:
        self.model = None


def _timed_result(text_parts: list[str], finish: str, prompt_tokens: int, completion_tokens: int, started: float,
                  first_token_at: float | None, load_seconds: float) -> Result:
    """The Result of a finished stream: prompt time runs to the first token, decode time from it to now."""
    ended = time.perf_counter()
    first = first_token_at or ended
    return Result(text="".join(text_parts), finish_reason=finish, prompt_tokens=prompt_tokens,
                  completion_tokens=completion_tokens, prompt_seconds=first - started, decode_seconds=ended - first,
                  load_seconds=load_seconds)


def default_threads() -> int:
    """Physical cores, roughly: llama.cpp decodes fastest with one thread per core, not per hyper-thread.

    Small machines (≤ 4 CPUs, typically VMs whose vCPUs are whole cores) use them all; ``TOOLTUNE_THREADS`` overrides.
    """
    override = os.environ.get("TOOLTUNE_THREADS")
    if override and override.isdigit() and int(override) > 0:
        return int(override)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)
    return max(1, cpus if cpus <= 4 else min(cpus // 2, 8))


def load_engine(model: str | Path, *, n_ctx: int = 4096, n_threads: int | None = None,
                chat_template: str | None = None, trust_remote_code: bool = False,
                adapters: dict[str, list[Path]] | None = None) -> Engine:
    """A GGUF file loads through llama.cpp, a directory through transformers.

    ``chat_template`` (Jinja source) replaces the model's own template.
    """
    path = Path(model).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        return LlamaCppEngine(path, n_ctx=n_ctx, n_threads=n_threads, chat_template=chat_template,
                              adapters=adapters)
    if adapters:
        raise EngineError(f"{path}: LoRA adapters (--lora, ADAPTER) are served over a GGUF base only")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise EngineError(f"{path}: not a model directory (no config.json)")
        return TransformersEngine(path, n_ctx=n_ctx, n_threads=n_threads, chat_template=chat_template,
                                  trust_remote_code=trust_remote_code)
    if not path.exists():
        raise EngineError(f"{path}: no such file or directory")
    raise EngineError(f"{path}: expected a .gguf file or an HF model directory")
