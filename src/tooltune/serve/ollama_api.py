"""Ollama's HTTP API: /api/chat, /api/generate, /api/tags, /api/show, /api/ps, /api/version.

Tool calls are parsed from the model's text with the served template's family parser (``serve.family_reply``: Hermes
tags, Llama 3.2's bare JSON, Mistral's ``[TOOL_CALLS]``...; reasoning as ``message.thinking``) and returned structured
(``message.tool_calls[].function.{index,name,arguments}`` with arguments as an object), which the seed's hand-written
Modelfile could not get out of real Ollama.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from tooltune.engines import Chunk
from tooltune.families.parsers import Event, ThinkingDelta
from tooltune.serve import grammar as grammars
from tooltune.serve import wire
from tooltune.serve.family_reply import ReplyReader
from tooltune.serve.scheduler import Job
from tooltune.serve.state import ApiError, ServerState
from tooltune.toolcalls import ContentDelta, ToolCallDone

NDJSON = "application/x-ndjson"


def _format_grammar(state: ServerState, fmt: str | dict[str, Any] | None) -> str | None:
    if fmt is None or fmt == "":
        return None
    if fmt == "json":
        return grammars.json_object_grammar()
    if isinstance(fmt, dict):
        state.check_schema(fmt, "format")
        try:
            return grammars.schema_to_gbnf(fmt)
        except grammars.GrammarError as exc:
            raise ApiError(400, f"format: {exc}") from exc
    raise ApiError(400, f"format must be \"json\" or a JSON schema object, got {fmt!r}")


def _sampling(state: ServerState, options: wire.OllamaOptions | None, grammar: str | None,
              reader: ReplyReader | None = None) -> Any:
    o = options or wire.OllamaOptions()
    call = (reader.call_trigger, reader.call_grammar) if reader is not None else (None, None)
    return state.sampling(temperature=o.temperature, top_p=o.top_p, top_k=o.top_k, seed=o.seed,
                          repeat_penalty=o.repeat_penalty, stop=o.stop, max_tokens=o.num_predict,
                          grammar=grammar, limit_name="num_predict", n_ctx=o.num_ctx, call=call)


def _ndjson(item: dict[str, Any]) -> bytes:
    return (json.dumps(item, ensure_ascii=False) + "\n").encode("utf-8")


def build_router(state: ServerState) -> APIRouter:
    router = APIRouter()

    @router.post("/api/chat")
    async def chat(request: Request) -> Any:
        received = time.perf_counter()
        body = await state.read(request, wire.OllamaChatRequest)
        state.check_model(body.model)
        messages = state.parse_messages(body.messages)
        tools = state.parse_tools(body.tools)
        # Ollama's `think`: true/false switches the template's reasoning (Qwen3's enable_thinking); "high"/"low"...
        # (gpt-oss levels) have no template switch here and leave the default.
        prompt = state.render(messages, tools, enable_thinking=body.think if isinstance(body.think, bool) else None)
        reader = ReplyReader(state.engine.chat_template, prompt, tools, parse_calls=bool(tools),
                             bare_json_calls=state.config.bare_json_calls,
                             constrain_calls=state.constrains_calls(tools), limits=state.config.limits)
        params = _sampling(state, body.options, _format_grammar(state, body.format), reader)
        if not body.stream:
            text, job = await state.run_to_end(request, prompt, params)
            return JSONResponse(_chat_final(state, text, reader, job, received))
        stream = await state.open_stream(prompt, params)
        return StreamingResponse(_chat_stream(state, stream, reader, received), media_type=NDJSON)

    @router.post("/api/generate")
    async def generate(request: Request) -> Any:
        received = time.perf_counter()
        body = await state.read(request, wire.OllamaGenerateRequest)
        state.check_model(body.model)
        if body.template:
            raise ApiError(400, "per-request Go 'template' is not supported: tooltune renders the model's Jinja "
                                "chat template (use raw=true with a rendered prompt instead)")
        if not body.prompt:
            # Ollama answers an empty prompt (raw or not) with a "load" response, without running the model.
            return JSONResponse({"model": body.model, "created_at": wire.now_rfc3339(), "response": "",
                                 "done": True, "done_reason": "load"})
        reader: ReplyReader | None = None
        if body.raw:
            prompt = body.prompt
        else:
            chat_messages = ([{"role": "system", "content": body.system}] if body.system else []) + [
                {"role": "user", "content": body.prompt}]
            # `think` as on /api/chat: the template's switch, and reasoning returned apart as `thinking`.
            prompt = state.render(state.parse_messages(chat_messages), [],
                                  enable_thinking=body.think if isinstance(body.think, bool) else None)
            reader = ReplyReader(state.engine.chat_template, prompt, [], parse_calls=False)
            reader = None if reader.passthrough else reader
        params = _sampling(state, body.options, _format_grammar(state, body.format))
        if not body.stream:
            text, job = await state.run_to_end(request, prompt, params)
            thinking = ""
            if reader is not None:
                reader.feed(text)
                reader.finish()
                parsed = reader.result()
                text, thinking = parsed.content, parsed.thinking
            return JSONResponse(wire.ollama_generate_final(state.name, text, _reason(job), _timings(job, received),
                                                           thinking=thinking))
        stream = await state.open_stream(prompt, params)
        return StreamingResponse(_generate_stream(state, stream, received, reader), media_type=NDJSON)

    @router.get("/api/tags")
    async def tags() -> Any:
        return {"models": [_model_entry(state) for _ in state.each_model()]}

    @router.get("/api/ps")
    async def ps() -> Any:
        entries = [_model_entry(state) for _ in state.each_model()]  # one base in memory, every name ready
        expires = datetime.now(timezone.utc) + timedelta(days=365)
        for entry in entries:
            entry.update({"expires_at": expires.isoformat().replace("+00:00", "Z"), "size_vram": 0,
                          "context_length": state.engine.context_length})
        return {"models": entries}

    @router.post("/api/show")
    async def show(request: Request) -> Any:
        body = await state.read(request, wire.OllamaModelRequest)
        state.check_model(body.which)
        return _show(state)

    @router.get("/api/version")
    async def version() -> Any:
        return {"version": wire.OLLAMA_VERSION}

    return router


def _reason(job: Job) -> str:
    return job.result.finish_reason if job.result else "stop"


def _timings(job: Job, received: float) -> dict[str, Any]:
    assert job.result is not None
    waited = (job.started_at or received) - received
    return wire.ollama_timings(job.result, time.perf_counter() - received, max(0.0, waited))


def _chat_final(state: ServerState, text: str, reader: ReplyReader, job: Job, received: float) -> dict[str, Any]:
    """The whole reply read by the served family's parser: calls structured, reasoning in ``message.thinking``."""
    if reader.passthrough:
        return wire.ollama_chat_final(state.name, text, None, _reason(job), _timings(job, received))
    reader.feed(text)
    reader.finish()
    parsed = reader.result()
    calls = [wire.ollama_tool_call(c, i) for i, c in enumerate(parsed.calls)] or None
    content = parsed.content if calls or parsed.thinking else text
    return wire.ollama_chat_final(state.name, content, calls, _reason(job), _timings(job, received),
                                  thinking=parsed.thinking)


async def _chat_stream(state: ServerState, stream: AsyncIterator[list[Chunk | Job]], reader: ReplyReader,
                       received: float) -> AsyncIterator[bytes]:
    try:
        async for batch in stream:
            lines: list[bytes] = []
            created = wire.now_rfc3339()  # one stamp per batch: its lines leave together
            for item in batch:
                if isinstance(item, Job):
                    if not reader.passthrough:
                        lines += _chat_events(state, reader.finish(), created)
                    lines.append(_ndjson(wire.ollama_chat_final(state.name, "", None, _reason(item),
                                                                _timings(item, received))))
                    yield b"".join(lines)
                    return
                if reader.passthrough:
                    lines.append(_ndjson(wire.ollama_chat_chunk(state.name, item.text, created_at=created)))
                else:
                    lines += _chat_events(state, reader.feed(item.text), created)
            if lines:
                yield b"".join(lines)
    except Exception as exc:  # headers are sent: report in-band, as Ollama does
        yield _ndjson(wire.ollama_error(str(exc)))


def _chat_events(state: ServerState, events: list[Event], created: str) -> list[bytes]:
    lines = []
    for event in events:
        if isinstance(event, ToolCallDone):
            call = wire.ollama_tool_call(event.call, event.index)
            lines.append(_ndjson(wire.ollama_chat_chunk(state.name, "", [call], created_at=created)))
        elif isinstance(event, ThinkingDelta):
            if event.text:
                lines.append(_ndjson(wire.ollama_chat_chunk(state.name, "", created_at=created,
                                                            thinking=event.text)))
        elif event.text:
            lines.append(_ndjson(wire.ollama_chat_chunk(state.name, event.text, created_at=created)))
    return lines


async def _generate_stream(state: ServerState, stream: AsyncIterator[list[Chunk | Job]],
                           received: float, reader: ReplyReader | None = None) -> AsyncIterator[bytes]:
    """``reader``: splits reasoning off (families that think) into chunks' ``thinking``; None: text as generated."""
    try:
        async for batch in stream:
            lines: list[bytes] = []
            created = wire.now_rfc3339()
            for item in batch:
                if isinstance(item, Job):
                    if reader is not None:
                        lines += _generate_events(state, reader.finish(), created)
                    lines.append(_ndjson(wire.ollama_generate_final(state.name, "", _reason(item),
                                                                    _timings(item, received))))
                    yield b"".join(lines)
                    return
                if reader is not None:
                    lines += _generate_events(state, reader.feed(item.text), created)
                    continue
                lines.append(_ndjson(wire.ollama_generate_chunk(state.name, item.text, created_at=created)))
            yield b"".join(lines)
    except Exception as exc:
        yield _ndjson(wire.ollama_error(str(exc)))


def _details(state: ServerState) -> dict[str, Any]:
    metadata = getattr(state.engine, "metadata", {}) or {}
    architecture = metadata.get("general.architecture", "")
    file_type = metadata.get("general.file_type", "")
    return {
        "parent_model": "",
        "format": "gguf" if state.model_path.suffix == ".gguf" else "safetensors",
        "family": architecture,
        "families": [architecture] if architecture else None,
        "parameter_size": metadata.get("general.size_label", ""),
        "quantization_level": quantization_name(file_type) if file_type != "" else "",
    }


def quantization_name(file_type: Any) -> str:
    """``general.file_type`` as Ollama names it (``Q4_K_M``), from gguf-py's own table of llama.cpp's file types."""
    from gguf import LlamaFileType

    try:
        name = LlamaFileType(int(file_type)).name
    except (TypeError, ValueError):
        return str(file_type)
    for prefix in ("MOSTLY_", "ALL_"):
        name = name.removeprefix(prefix)
    return name


def _model_entry(state: ServerState) -> dict[str, Any]:
    modified = datetime.fromtimestamp(state.started, tz=timezone.utc).isoformat().replace("+00:00", "Z")
    return {"name": state.tagged_name, "model": state.tagged_name, "modified_at": modified, "size": state.size,
            "digest": state.digest, "details": _details(state)}


def _show(state: ServerState) -> dict[str, Any]:
    parameters = []
    for key, value in state.defaults.items():
        for item in value if isinstance(value, list) else [value]:
            parameters.append(f"{key:<24}{json.dumps(item) if isinstance(item, str) else item}")
    metadata = getattr(state.engine, "metadata", {}) or {}
    model_info = {k: v for k, v in metadata.items() if not k.startswith("tokenizer.chat_template")}
    capabilities = ["completion"]
    if "tools" in state.engine.chat_template:
        capabilities.append("tools")
    modified = datetime.fromtimestamp(state.started, tz=timezone.utc).isoformat().replace("+00:00", "Z")
    return {
        "license": "",
        "modelfile": state.modelfile_text,
        "parameters": "\n".join(parameters),
        "template": state.engine.chat_template,
        "system": state.config.system or "",
        "details": _details(state),
        "model_info": model_info,
        "capabilities": capabilities,
        "modified_at": modified,
    }


def _generate_events(state: ServerState, events: list[Event], created: str) -> list[bytes]:
    lines = []
    for event in events:  # reasoning and content (no calls are read on /api/generate)
        if isinstance(event, ThinkingDelta) and event.text:
            lines.append(_ndjson(wire.ollama_generate_chunk(state.name, "", created_at=created, thinking=event.text)))
        elif isinstance(event, ContentDelta) and event.text:
            lines.append(_ndjson(wire.ollama_generate_chunk(state.name, event.text, created_at=created)))
    return lines

