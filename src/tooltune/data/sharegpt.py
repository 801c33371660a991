"""sharegpt records as LLaMA-Factory reads them, converted to a Conversation.

Roles: ``human`` → user, ``gpt`` → assistant, ``function_call`` → assistant with tool calls (the value is one call
or a list of parallel calls as JSON), ``observation`` → tool result, ``system`` (first message only) → system.
``tools`` is a JSON string (or a list) of tool definitions in any of the three shapes.
"""

from __future__ import annotations

import json
from typing import Any

from tooltune.conversation import Conversation, ConversationError, Message, Tool, ToolCall
from tooltune.data.registry import DatasetSpec


def parse_function_call(value: str, position: int) -> list[ToolCall]:
    """One call or a list of parallel calls, each ``{"name", "arguments"}``."""
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise ConversationError(
            f"message {position} (function_call): not valid JSON ({exc.msg} at char {exc.pos})"
        ) from None
    calls = parsed if isinstance(parsed, list) else [parsed]
    if not calls:
        raise ConversationError(f"message {position} (function_call): empty list of calls")
    try:
        return [ToolCall.from_any(call) for call in calls]
    except ConversationError as exc:
        raise ConversationError(f"message {position} (function_call): {exc}") from None


def convert_sharegpt(record: Any, spec: DatasetSpec) -> Conversation:
    if not isinstance(record, dict):
        raise ConversationError(f"record must be an object, got {type(record).__name__}")
    column = spec.columns.get("messages") or "conversations"
    turns = record.get(column)
    if not isinstance(turns, list):
        raise ConversationError(f"no {column!r} list")
    tags = spec.tags
    role_of = {
        tags["user_tag"]: "user",
        tags["assistant_tag"]: "assistant",
        tags["function_tag"]: "function_call",
        tags["observation_tag"]: "tool",
        tags["system_tag"]: "system",
    }
    messages: list[Message] = []
    system_column = spec.columns.get("system")
    if system_column and isinstance(record.get(system_column), str) and record[system_column]:
        messages.append(Message(role="system", content=record[system_column]))
    for position, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise ConversationError(f"message {position} is not an object")
        tag = turn.get(tags["role_tag"])
        value = turn.get(tags["content_tag"])
        role = role_of.get(tag)
        if role is None:
            known = ", ".join(str(t) for t in role_of)
            raise ConversationError(f"message {position}: unknown role {tag!r} (expected one of {known})")
        if not isinstance(value, str):
            raise ConversationError(f"message {position} ({tag}): value must be a string")
        if role == "system":
            if position != 0 or messages:
                raise ConversationError(f"message {position}: a system message is only allowed first")
            messages.append(Message(role="system", content=value))
        elif role == "function_call":
            messages.append(Message(role="assistant", content="", tool_calls=parse_function_call(value, position)))
        else:
            messages.append(Message(role=role, content=value))
    tools_column = spec.columns.get("tools")
    tools = Tool.parse_list(record.get(tools_column)) if tools_column else []
    return Conversation(messages=messages, tools=tools)
