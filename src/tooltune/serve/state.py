"""What both APIs share: the served model, its defaults, prompt rendering, request limits and the error type."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import random
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from tooltune.chat_template import ChatTemplateError
from tooltune.conversation import ConversationError, Message, Tool
from tooltune.engines import Chunk, Engine, EngineError, SamplingParams
from tooltune.serve.limits import LimitError, RequestLimits, check_schema, check_text, decode_body
from tooltune.serve.runner_client import RETRY_AFTER_SECONDS, RunnerUnavailable
from tooltune.serve.scheduler import DEFAULT_STREAM_INTERVAL, Job, QueueFullError, Scheduler, ServerStopping
from tooltune.serve.validate import FieldError, parse_message

DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024

# Ollama's documented defaults, used unless the Modelfile or the command line sets a PARAMETER.
OLLAMA_DEFAULTS: dict[str, Any] = {"temperature": 0.8, "top_p": 0.9, "top_k": 40, "repeat_penalty": 1.1}


class ApiError(Exception):
    """A request the server refuses; rendered in the calling API's own error shape."""

    def __init__(self, status: int, message: str, code: str | None = None, *, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param  # the offending field, for OpenAI's error.param
        self.headers = headers or {}


@dataclass
class ServeConfig:
    name: str
    defaults: dict[str, Any] = field(default_factory=dict)  # PARAMETER values: temperature, top_p, stop, ...
    system: str | None = None  # SYSTEM of a Modelfile: used when a request brings no system message
    messages: list[dict[str, Any]] = field(default_factory=list)  # MESSAGE lines of a Modelfile, prepended
    api_key: str | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_tokens_limit: int | None = None  # default: the context length
    max_waiting: int = 64
    modelfile_text: str = ""
    stream_interval: float = DEFAULT_STREAM_INTERVAL  # seconds between hand-overs of streamed tokens (0: each)
    limits: RequestLimits = field(default_factory=RequestLimits)
    # More served names over the same base: name -> the LoRA GGUFs applied for it (``--lora NAME=FILE``, ADAPTER).
    adapters: dict[str, list[Path]] = field(default_factory=dict)
    # tool_choice auto: also take a bare JSON object / ```json fence naming an offered tool with arguments that fit
    # its schema as a call (off by default: see docs/families.md, "Bare JSON fallback").
    bare_json_calls: bool = False
    # tool_choice auto: once the model opens a call, hold it to the offered tools' schemas with a llama.cpp grammar
    # (names, required arguments, types, enums), as llama.cpp's server does; --no-constrain-calls serves it as written.
    constrain_calls: bool = True


@dataclass(frozen=True)
class ServedModel:
    """One name a client can ask for: the base model alone (``adapter`` None) or the base with its adapters."""

    name: str
    adapter: str | None = None
    adapter_paths: tuple[Path, ...] = ()

    @property
    def tagged_name(self) -> str:
        return self.name if ":" in self.name else f"{self.name}:latest"


# The model the request being handled asked for. The APIs build every response field (``model`` in each chunk, the
# listing entries) from ``state.name``/``state.size``/``state.digest``; keeping the choice per request context lets
# them stay unaware of adapters: ``check_model`` sets it, and each request runs in its own context.
_current_model: contextvars.ContextVar[ServedModel | None] = contextvars.ContextVar("served_model", default=None)


T = TypeVar("T", bound=BaseModel)


class ServerState:
    def __init__(self, engine: Engine, config: ServeConfig) -> None:
        self.engine = engine
        self.config = config
        self.scheduler = Scheduler(engine, max_waiting=config.max_waiting, stream_interval=config.stream_interval)
        self.started = time.time()
        self.max_tokens_limit = config.max_tokens_limit or engine.context_length
        self.defaults = OLLAMA_DEFAULTS | config.defaults
        path = Path(getattr(engine, "path", engine.name))
        self.model_path = path
        self.base = ServedModel(config.name)
        self.models = [self.base] + [ServedModel(name, name, tuple(paths)) for name, paths in config.adapters.items()]
        self._sizes = {m.name: _size_of(path) + sum(_size_of(p) for p in m.adapter_paths) for m in self.models}
        # Identifies the files (path, size, mtime) without hashing gigabytes at start-up.
        self._digests = {m.name: _identity_digest([path, *m.adapter_paths]) for m in self.models}

    # ---- names ----

    @property
    def current(self) -> ServedModel:
        """The model this request asked for (the base outside a request)."""
        return _current_model.get() or self.base

    @property
    def name(self) -> str:
        return self.current.name

    @property
    def tagged_name(self) -> str:
        return self.current.tagged_name

    @property
    def size(self) -> int:
        return self._sizes[self.current.name]

    @property
    def digest(self) -> str:
        return self._digests[self.current.name]

    @property
    def modelfile_text(self) -> str:
        """What /api/show reports: the Modelfile served or, with several names over one base, the FROM and ADAPTER
        lines of the name asked about (one Modelfile cannot describe them all)."""
        if not self.config.adapters:
            return self.config.modelfile_text or f"FROM {self.model_path}\n"
        return f"FROM {self.model_path}\n" + "".join(f"ADAPTER {path}\n" for path in self.current.adapter_paths)

    def each_model(self) -> Iterator[ServedModel]:
        """Every served name in turn, each the current one while the caller describes it (listings)."""
        for model in self.models:
            token = _current_model.set(model)
            try:
                yield model
            finally:
                _current_model.reset(token)

    def check_model(self, requested: str) -> ServedModel:
        """The served model a request names (``name`` or ``name:latest``), made current for this request."""
        for model in self.models:
            if requested in (model.name, model.tagged_name):
                _current_model.set(model)
                return model
        try:
            check_text(requested, "model")
        except LimitError as exc:
            raise ApiError(400, str(exc), "invalid_text", param="model") from exc
        served = ", ".join(f"'{m.name}'" for m in self.models)
        raise ApiError(404, f"model '{requested}' not found (this server serves {served})", "model_not_found")

    # ---- requests ----

    async def read(self, request: Request, model: type[T]) -> T:
        body = await request.body()
        if len(body) > self.config.max_body_bytes:
            raise ApiError(413, f"request body is {len(body)} bytes; the limit is {self.config.max_body_bytes}")
        try:
            raw = decode_body(body, self.config.limits)
        except LimitError as exc:
            raise ApiError(400, str(exc), "invalid_request_body") from exc
        if not isinstance(raw, dict):
            raise ApiError(400, "request body must be a JSON object")
        try:
            return model.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = _field_path(first["loc"]) or "body"
            raise ApiError(400, f"{where}: {first['msg']}", "invalid_field", param=where) from exc

    def check_schema(self, schema: Any, where: str) -> None:
        """Size, depth and repetition bounds, before the schema goes anywhere near llama.cpp's grammar compiler."""
        try:
            check_schema(schema, where, self.config.limits)
        except LimitError as exc:
            raise ApiError(400, str(exc), "schema_limit", param=where) from exc

    def constrains_calls(self, tools: list[Tool]) -> bool:
        """Whether a call the model opens under tool_choice auto is held to the tools' schemas: on llama.cpp, when
        configured (a schema beyond this server's grammar limits is then served unconstrained, not refused: the
        client did not ask for a constraint; ``respond.constrained_call`` checks it against ``config.limits``)."""
        return bool(self.config.constrain_calls and self.engine.supports_grammar and tools)

    def parse_messages(self, raw_messages: list[Any], field_name: str = "messages") -> list[Message]:
        # The Modelfile's MESSAGE lines were checked when it was read; the request's are checked field by field.
        messages = [Message.from_openai(raw) for raw in self.config.messages]
        for position, raw in enumerate(raw_messages):
            try:
                messages.append(parse_message(raw, f"{field_name}[{position}]"))
            except FieldError as exc:
                raise ApiError(400, str(exc), "invalid_field", param=exc.field) from exc
        if self.config.system and not any(m.role == "system" for m in messages):
            messages.insert(0, Message(role="system", content=self.config.system))
        return messages

    def parse_tools(self, raw_tools: list[dict[str, Any]] | None) -> list[Tool]:
        if not raw_tools:
            return []
        tools = []
        for position, raw in enumerate(raw_tools):
            _check_tool_shape(raw, f"tools[{position}]")
            try:
                tool = Tool(raw)
                schema = tool.json_schema()
            except ConversationError as exc:
                raise ApiError(400, f"tools[{position}]: {exc}") from exc
            _check_parameters(position, tool.name, schema)
            tools.append(tool)
        return tools

    def render(self, messages: list[Message], tools: list[Tool], enable_thinking: bool | None = None) -> str:
        """``enable_thinking``: the reasoning switch of templates that have one (Qwen3, SmolLM3); None: default."""
        extra = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
        try:
            return self.engine.render([m.to_template() for m in messages], [t.spec for t in tools] or None,
                                      add_generation_prompt=True, **extra)
        except (ChatTemplateError, EngineError) as exc:
            raise ApiError(400, f"cannot render the chat template: {exc}") from exc

    def sampling(self, *, temperature: float | None = None, top_p: float | None = None, top_k: int | None = None,
                 seed: int | None = None, repeat_penalty: float | None = None, stop: list[str] | str | None = None,
                 max_tokens: int | None = None, grammar: str | None = None,
                 limit_name: str = "max_tokens", n_ctx: int | None = None,
                 call: tuple[str | None, str | None] = (None, None)) -> SamplingParams:
        """``call``: (opener, grammar) of a constrained call under tool_choice auto (``ReplyReader``); unused when
        ``grammar`` constrains the whole reply."""
        d = self.defaults
        if max_tokens is None and d.get("num_predict") is not None:  # a Modelfile's PARAMETER num_predict
            max_tokens = min(int(d["num_predict"]), self.max_tokens_limit)
        if max_tokens is not None and max_tokens > self.max_tokens_limit:
            raise ApiError(400, f"{limit_name} {max_tokens} is above this server's limit of {self.max_tokens_limit}")
        budget = self.max_tokens_limit if max_tokens is None or max_tokens < 0 else max_tokens
        if max_tokens == 0:
            raise ApiError(400, f"{limit_name} must be positive")
        stops = _as_list(stop if stop is not None else d.get("stop"))
        chosen_seed = seed if seed is not None and seed >= 0 else d.get("seed")
        return SamplingParams(
            max_tokens=budget,
            temperature=float(_first(temperature, d.get("temperature"), 0.8)),
            top_p=float(_first(top_p, d.get("top_p"), 1.0)),
            top_k=int(_first(top_k, d.get("top_k"), 0)),
            seed=int(chosen_seed) if chosen_seed is not None and int(chosen_seed) >= 0 else random.getrandbits(31),
            repeat_penalty=float(_first(repeat_penalty, d.get("repeat_penalty"), 1.0)),
            stop=stops,
            grammar=grammar,
            n_ctx=n_ctx,
            adapter=self.current.adapter,
            call_trigger=None if grammar else call[0],
            call_grammar=None if grammar else call[1],
        )

    # ---- running ----

    async def open_stream(self, prompt: str, params: SamplingParams) -> AsyncIterator[list[Chunk | Job]]:
        """Start a job and return its batches once the first is ready, so start-up errors are still 4xx.

        Each batch is a list of chunks handed over together (see ``tooltune.serve.scheduler``); the last one ends
        with the finished ``Job``.
        """
        iterator = self.scheduler.batches(prompt, params)
        try:
            first = await iterator.__anext__()
        except QueueFullError as exc:
            raise ApiError(503, str(exc), "queue_full", headers={"Retry-After": "1"}) from exc
        except EngineError as exc:
            raise engine_api_error(exc) from exc
        except StopAsyncIteration:  # pragma: no cover - the scheduler always ends with the Job
            raise ApiError(500, "generation produced nothing") from None

        async def chained() -> AsyncIterator[list[Chunk | Job]]:
            try:
                yield first
                async for batch in iterator:
                    yield batch
            finally:
                await iterator.aclose()

        return chained()

    async def run_to_end(self, request: Request, prompt: str, params: SamplingParams) -> tuple[str, Job]:
        """Non-streaming generation that still stops when the client goes away."""
        stream = await self.open_stream(prompt, params)

        async def collect() -> tuple[str, Job]:
            parts: list[str] = []
            async for batch in stream:
                for item in batch:
                    if isinstance(item, Job):
                        return "".join(parts), item
                    parts.append(item.text)
            raise ApiError(500, "generation ended without a result")

        task = asyncio.ensure_future(collect())
        try:
            while not task.done():
                done, _ = await asyncio.wait({task}, timeout=0.1)
                if not done and await request.is_disconnected():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                    await stream.aclose()
                    raise ApiError(499, "client disconnected")
            return task.result()
        except EngineError as exc:
            raise engine_api_error(exc) from exc


def engine_api_error(exc: EngineError) -> ApiError:
    """A request the engine refused is the client's (400); a runner that died or hung is the server's (503)."""
    if isinstance(exc, ServerStopping):
        return ApiError(503, str(exc), "server_stopping")
    if isinstance(exc, RunnerUnavailable):
        return ApiError(503, f"{exc}; retry the request", "runner_unavailable",
                        headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
    return ApiError(400, str(exc))


def _field_path(loc: tuple[Any, ...]) -> str:
    """pydantic's ``("messages", 1, "content")`` as ``messages[1].content``."""
    path = ""
    for key in loc:
        path += f"[{key}]" if isinstance(key, int) else (f".{key}" if path else str(key))
    return path


def _check_tool_shape(raw: Any, where: str) -> None:
    """The fields a tool definition must have, each named when wrong."""
    def fail(field: str, problem: str) -> None:
        raise ApiError(400, f"{field}: {problem}", "invalid_field", param=field)

    if not isinstance(raw, dict):
        fail(where, "expected an object")
    if "function" in raw:
        if not isinstance(raw["function"], dict):
            fail(f"{where}.function", "expected an object")
        raw, where = raw["function"], f"{where}.function"
    if not isinstance(raw.get("name"), str) or not raw.get("name"):
        fail(f"{where}.name", "expected a non-empty string")
    if raw.get("description") is not None and not isinstance(raw["description"], str):
        fail(f"{where}.description", "expected a string")
    parameters = raw.get("parameters")
    if parameters is not None and not isinstance(parameters, (dict, list)):
        fail(f"{where}.parameters", "expected a JSON schema object")


def _first(*values: Any) -> Any:
    return next(v for v in values if v is not None)


def _as_list(stop: list[str] | str | None) -> list[str]:
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else [s for s in stop if isinstance(s, str)]


def _identity_digest(paths: list[Path]) -> str:
    parts = []
    for path in paths:
        stat = path.stat() if path.exists() else None
        parts.append(f"{path.resolve()}:{stat.st_size if stat else 0}:{stat.st_mtime_ns if stat else 0}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def _size_of(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    if path.is_dir():
        return sum(p.stat().st_size for p in path.glob("*.safetensors"))
    return 0


def _check_parameters(position: int, name: str, schema: Any) -> None:
    """Reject tool schemas no template or grammar can use, naming the tool and the field."""
    where = f"tools[{position}] ({name})"
    if not isinstance(schema, dict):
        raise ApiError(400, f"{where}: parameters must be a JSON schema object")
    if schema.get("type", "object") != "object":
        raise ApiError(400, f"{where}: parameters must have type 'object', got {schema.get('type')!r}")
    properties = schema.get("properties", {})
    if not isinstance(properties, dict) or not all(isinstance(v, dict) for v in properties.values()):
        raise ApiError(400, f"{where}: parameters.properties must map names to schema objects")
    required = schema.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        raise ApiError(400, f"{where}: parameters.required must be a list of property names")
