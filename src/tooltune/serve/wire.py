"""Every request and response shape both APIs speak, in one file (as Ollama keeps its ``api/types.go``).

Requests are validated with pydantic (unknown fields are accepted, as both real servers do); responses are built by
small functions so the field names and units (Ollama: nanoseconds; OpenAI: seconds since epoch) live in one place.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tooltune.conversation import ToolCall
from tooltune.engines import Result

OLLAMA_VERSION = "0.33.0"  # the Ollama API version whose wire shapes (and template data types) we follow


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow")


# ---------------------------------------------------------------------------------------------------- Ollama requests


class OllamaOptions(_Lenient):
    """Runtime options of ``/api/chat`` and ``/api/generate`` (the ones llama.cpp honours; others are accepted)."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    num_predict: int | None = None
    num_ctx: int | None = None
    stop: list[str] | str | None = None
    repeat_penalty: float | None = None


class OllamaChatRequest(_Lenient):
    model: str
    messages: list[Any] = Field(default_factory=list)  # each message is checked field by field (serve.validate)
    tools: list[Any] | None = None
    stream: bool = True
    format: str | dict[str, Any] | None = None
    options: OllamaOptions | None = None
    keep_alive: str | int | float | None = None
    think: bool | str | None = None


class OllamaGenerateRequest(_Lenient):
    model: str
    prompt: str = ""
    system: str | None = None
    template: str | None = None
    raw: bool = False
    stream: bool = True
    format: str | dict[str, Any] | None = None
    options: OllamaOptions | None = None
    keep_alive: str | int | float | None = None
    images: list[str] | None = None
    think: bool | str | None = None


class OllamaModelRequest(_Lenient):
    model: str | None = None
    name: str | None = None  # older clients send ``name``

    @property
    def which(self) -> str:
        return self.model or self.name or ""


# ---------------------------------------------------------------------------------------------------- OpenAI requests


class StreamOptions(_Lenient):
    include_usage: bool = False


class OpenAIChatRequest(_Lenient):
    model: str
    messages: list[Any]
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool = True
    response_format: dict[str, Any] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: list[str] | str | None = None
    n: int = 1
    frequency_penalty: float | None = None
    presence_penalty: float | None = None


# ---------------------------------------------------------------------------------------------------- Ollama responses


def now_rfc3339() -> str:
    """Ollama's ``created_at``: RFC 3339 in UTC with nanosecond digits."""
    now = time.time_ns()
    seconds, nanos = divmod(now, 1_000_000_000)
    stamp = datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{nanos:09d}Z"


def _ns(seconds: float) -> int:
    return max(0, int(seconds * 1e9))


def ollama_tool_call(call: ToolCall, index: int) -> dict[str, Any]:
    out: dict[str, Any] = {"function": {"index": index, "name": call.name, "arguments": call.arguments}}
    if call.id:
        out["id"] = call.id
    return out


def ollama_timings(result: Result, total_seconds: float, load_seconds: float) -> dict[str, Any]:
    return {
        "total_duration": _ns(total_seconds),
        "load_duration": _ns(load_seconds),
        "prompt_eval_count": result.prompt_tokens,
        "prompt_eval_duration": _ns(result.prompt_seconds),
        "eval_count": result.completion_tokens,
        "eval_duration": _ns(result.decode_seconds),
    }


def ollama_chat_chunk(model: str, content: str, tool_calls: list[dict[str, Any]] | None = None,
                      created_at: str | None = None, thinking: str = "") -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if thinking:  # Ollama's field for reasoning (the <think> block), kept out of content
        message["thinking"] = thinking
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {"model": model, "created_at": created_at or now_rfc3339(), "message": message, "done": False}


def ollama_chat_final(model: str, content: str, tool_calls: list[dict[str, Any]] | None, done_reason: str,
                      timings: dict[str, Any], thinking: str = "") -> dict[str, Any]:
    out = ollama_chat_chunk(model, content, tool_calls, thinking=thinking)
    out["done_reason"] = done_reason
    out["done"] = True
    out.update(timings)
    return out


def ollama_generate_chunk(model: str, text: str, created_at: str | None = None, thinking: str = "") -> dict[str, Any]:
    out = {"model": model, "created_at": created_at or now_rfc3339(), "response": text, "done": False}
    if thinking:  # Ollama's field for reasoning on /api/generate, as message.thinking on /api/chat
        out["thinking"] = thinking
    return out


def ollama_generate_final(model: str, text: str, done_reason: str, timings: dict[str, Any],
                          thinking: str = "") -> dict[str, Any]:
    out = ollama_generate_chunk(model, text, thinking=thinking)
    out["done"] = True
    out["done_reason"] = done_reason
    out.update(timings)
    return out


def ollama_error(message: str) -> dict[str, Any]:
    return {"error": message}


# ---------------------------------------------------------------------------------------------------- OpenAI responses


FinishReason = Literal["stop", "length", "tool_calls"]


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def openai_tool_call(call: ToolCall, index: int) -> dict[str, Any]:
    return {
        "index": index,
        "id": call.id or call_id(),
        "type": "function",
        "function": {"name": call.name, "arguments": json.dumps(call.arguments, ensure_ascii=False)},
    }


def openai_usage(result: Result) -> dict[str, int]:
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
    }


def openai_completion(cid: str, created: int, model: str, content: str | None, tool_calls: list[dict[str, Any]],
                      finish_reason: FinishReason, result: Result, reasoning: str = "") -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if reasoning:  # vLLM's / DeepSeek's field for the <think> block
        message["reasoning_content"] = reasoning
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": None}],
        "usage": openai_usage(result),
    }


def openai_chunk(cid: str, created: int, model: str, delta: dict[str, Any],
                 finish_reason: FinishReason | None = None) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
    }


def openai_usage_chunk(cid: str, created: int, model: str, result: Result) -> dict[str, Any]:
    return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [],
            "usage": openai_usage(result)}


def openai_error(message: str, status: int, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    kind = "invalid_request_error" if status < 500 else "server_error"
    if status == 401:
        kind = "authentication_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def openai_model(name: str, created: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": "tooltune"}
