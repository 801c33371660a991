"""OpenAI's HTTP API: /v1/chat/completions (tools, tool_choice, response_format, SSE streaming) and /v1/models.

``tool_choice: "required"`` and a named function are enforced with a llama.cpp grammar, so the answer is a valid
call of an offered tool whatever the model would have written.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from tooltune.conversation import Tool, ToolCall
from tooltune.engines import Chunk, EngineError
from tooltune.families.parsers import Event, ThinkingDelta
from tooltune.serve import grammar as grammars
from tooltune.serve import wire
from tooltune.serve.family_reply import ReplyReader
from tooltune.serve.runner_client import RunnerUnavailable
from tooltune.serve.scheduler import Job, ServerStopping
from tooltune.serve.state import ApiError, ServerState
from tooltune.toolcalls import ToolCallDone


class ToolPlan:
    """What a request's tools/tool_choice mean for rendering, constraining and parsing."""

    def __init__(self, state: ServerState, body: wire.OpenAIChatRequest) -> None:
        self.tools: list[Tool] = state.parse_tools(body.tools)
        self.parallel = body.parallel_tool_calls
        choice = body.tool_choice
        self.forced: str | None = None  # "" = any tool, a name = that tool, None = not forced
        self.parse = bool(self.tools)
        if choice is None or choice == "auto":
            pass
        elif choice == "none":
            self.parse = False
        elif choice == "required":
            self.forced = ""
        elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
            name = choice["function"].get("name")
            if not isinstance(name, str) or name not in {t.name for t in self.tools}:
                raise ApiError(400, f"tool_choice names {name!r}, which is not among the request's tools",
                               "invalid_tool_choice")
            self.forced = name
        else:
            raise ApiError(400, f"tool_choice must be 'auto', 'none', 'required' or a function, got {choice!r}",
                           "invalid_tool_choice")
        if self.forced is not None and not self.tools:
            raise ApiError(400, f"tool_choice {choice!r} needs tools", "invalid_tool_choice")

    def grammar(self, state: ServerState, response_format: dict[str, Any] | None) -> str | None:
        if self.forced is not None:
            if not state.engine.supports_grammar:
                raise ApiError(400, "tool_choice 'required' or a named function needs a GGUF model (llama.cpp "
                                    "grammar); this server runs transformers")
            for position, tool in enumerate(self.tools):  # every schema the grammar will hold, before it is built
                if self.forced in ("", tool.name):
                    state.check_schema(tool.json_schema(), f"tools[{position}].function.parameters")
            return None  # the family's call grammar comes with the reader (reader())
        return _response_format_grammar(state, response_format)

    def reader(self, state: ServerState, prompt: str) -> ReplyReader:
        """The served family's parser for this request; a forced call's grammar and prompt prefix come with it."""
        try:
            return ReplyReader(state.engine.chat_template, prompt, self.tools, parse_calls=self.parse,
                               forced=self.forced, parallel=self.parallel and not self.forced,
                               bare_json_calls=state.config.bare_json_calls,
                               constrain_calls=state.constrains_calls(self.tools), limits=state.config.limits)
        except grammars.GrammarError as exc:
            raise ApiError(400, f"tools: {exc}") from exc

    def keep(self, calls: list[ToolCall]) -> list[ToolCall]:
        # parallel_tool_calls=false promises at most one call; the rest would be actions the client did not ask for.
        return calls if self.parallel else calls[:1]


def _response_format_grammar(state: ServerState, fmt: dict[str, Any] | None) -> str | None:
    if not fmt or fmt.get("type") in (None, "text"):
        return None
    kind = fmt.get("type")
    try:
        if kind == "json_object":
            return grammars.json_object_grammar()
        if kind == "json_schema":
            spec = fmt.get("json_schema")
            if not isinstance(spec, dict):
                raise ApiError(400, "response_format.json_schema: expected an object", "invalid_field",
                               param="response_format.json_schema")
            schema = spec.get("schema")
            if not isinstance(schema, dict):
                raise ApiError(400, "response_format.json_schema.schema: expected a JSON schema object",
                               "invalid_field", param="response_format.json_schema.schema")
            state.check_schema(schema, "response_format.json_schema.schema")
            return grammars.schema_to_gbnf(schema)
    except grammars.GrammarError as exc:
        raise ApiError(400, f"response_format: {exc}") from exc
    raise ApiError(400, f"response_format.type {kind!r} is not one of text, json_object, json_schema",
                   "invalid_field", param="response_format.type")


def build_router(state: ServerState) -> APIRouter:
    router = APIRouter()

    @router.get("/v1/models")
    async def models() -> Any:
        return {"object": "list", "data": [wire.openai_model(m.name, int(state.started)) for m in state.models]}

    @router.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> Any:
        state.check_model(model_id)
        return wire.openai_model(state.name, int(state.started))

    @router.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        body = await state.read(request, wire.OpenAIChatRequest)
        state.check_model(body.model)
        if body.n != 1:
            raise ApiError(400, "only n=1 is supported")
        plan = ToolPlan(state, body)
        messages = state.parse_messages(body.messages)
        prompt = state.render(messages, plan.tools)
        format_grammar = plan.grammar(state, body.response_format)
        reader = plan.reader(state, prompt)
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        params = state.sampling(temperature=body.temperature, top_p=body.top_p, seed=body.seed, stop=body.stop,
                                max_tokens=max_tokens, grammar=reader.grammar or format_grammar,
                                limit_name="max_tokens", call=(reader.call_trigger, reader.call_grammar))
        prompt += reader.prefix  # a forced call's marker (Mistral, Phi-4-mini), as the model would have written it
        cid, created = wire.completion_id(), int(time.time())
        if not body.stream:
            text, job = await state.run_to_end(request, prompt, params)
            return JSONResponse(_completion(state, plan, reader, text, job, cid, created))
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        stream = await state.open_stream(prompt, params)
        return StreamingResponse(_sse_stream(state, plan, reader, stream, cid, created, include_usage),
                                 media_type="text/event-stream")

    return router


def _completion(state: ServerState, plan: ToolPlan, reader: ReplyReader, text: str, job: Job, cid: str,
                created: int) -> dict[str, Any]:
    assert job.result is not None
    if reader.passthrough:
        return wire.openai_completion(cid, created, state.name, text, [], job.result.finish_reason, job.result)
    reader.feed(text)
    reader.finish()
    parsed = reader.result()
    kept = plan.keep(parsed.calls)
    calls = [wire.openai_tool_call(c, i) for i, c in enumerate(kept)]
    content: str | None = (parsed.content or None) if calls else (parsed.content if parsed.thinking else text)
    finish = "tool_calls" if calls else job.result.finish_reason
    return wire.openai_completion(cid, created, state.name, content, calls, finish, job.result,
                                  reasoning=parsed.thinking)


def _in_band_status(exc: Exception) -> tuple[int, str | None]:
    if isinstance(exc, ServerStopping):
        return 503, "server_stopping"
    if isinstance(exc, RunnerUnavailable):
        return 503, "runner_unavailable"
    if isinstance(exc, EngineError):
        return 400, None
    return 500, None


def _sse(item: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(item, ensure_ascii=False)}\n\n".encode()


async def _sse_stream(state: ServerState, plan: ToolPlan, reader: ReplyReader,
                      stream: AsyncIterator[list[Chunk | Job]], cid: str, created: int,
                      include_usage: bool) -> AsyncIterator[bytes]:
    parser = None if reader.passthrough else reader
    calls_sent = 0

    def events_to_chunks(events: list[Event]) -> list[bytes]:
        nonlocal calls_sent
        out = []
        for event in events:
            if isinstance(event, ToolCallDone):
                if not plan.parallel and calls_sent >= 1:
                    continue
                call = wire.openai_tool_call(event.call, calls_sent)
                arguments = call["function"]["arguments"]
                # OpenAI streams the id and name first, then the arguments as string fragments.
                head = {"index": calls_sent, "id": call["id"], "type": "function",
                        "function": {"name": call["function"]["name"], "arguments": ""}}
                out.append(_sse(wire.openai_chunk(cid, created, state.name, {"tool_calls": [head]})))
                out.append(_sse(wire.openai_chunk(cid, created, state.name, {
                    "tool_calls": [{"index": calls_sent, "function": {"arguments": arguments}}]})))
                calls_sent += 1
            elif isinstance(event, ThinkingDelta):
                if event.text:
                    out.append(_sse(wire.openai_chunk(cid, created, state.name, {"reasoning_content": event.text})))
            elif event.text:
                out.append(_sse(wire.openai_chunk(cid, created, state.name, {"content": event.text})))
        return out

    try:
        lines = [_sse(wire.openai_chunk(cid, created, state.name, {"role": "assistant", "content": ""}))]
        async for batch in stream:
            for item in batch:
                if isinstance(item, Job):
                    if parser is not None:
                        lines += events_to_chunks(parser.finish())
                    assert item.result is not None
                    finish = "tool_calls" if calls_sent else item.result.finish_reason
                    lines.append(_sse(wire.openai_chunk(cid, created, state.name, {}, finish)))
                    if include_usage:
                        lines.append(_sse(wire.openai_usage_chunk(cid, created, state.name, item.result)))
                    lines.append(b"data: [DONE]\n\n")
                    yield b"".join(lines)
                    return
                if parser is None:
                    lines.append(_sse(wire.openai_chunk(cid, created, state.name, {"content": item.text})))
                else:
                    lines += events_to_chunks(parser.feed(item.text))
            if lines:  # the events of one batch leave in one write
                yield b"".join(lines)
                lines = []
    except Exception as exc:  # headers are sent: report in-band, with the status the error would have had
        status, code = _in_band_status(exc)
        yield _sse(wire.openai_error(str(exc), status, code))
        yield b"data: [DONE]\n\n"

