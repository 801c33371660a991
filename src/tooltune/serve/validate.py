"""Message shapes checked field by field before they become ``Conversation`` types.

``Message.from_openai`` is lenient by design (training data comes in many shapes); a server must instead answer a
malformed field with a 400 that names it (``messages[1].tool_calls: expected a list``), in the calling API's shape,
rather than fail somewhere later with a 500.
"""

from __future__ import annotations

from typing import Any

from tooltune.conversation import ROLES, ConversationError, Message
from tooltune.errors import TooltuneError


class FieldError(TooltuneError, ValueError):
    """A request field with the wrong shape; ``field`` is its path (``messages[1].content``)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def _expect(value: Any, types: type | tuple[type, ...], field: str, what: str, optional: bool = True) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise FieldError(field, f"expected {what}, got {_kind(value)}")
    if not isinstance(value, types):
        raise FieldError(field, f"expected {what}, got {_kind(value)}")


def check_content(content: Any, field: str) -> None:
    """A string, null, or OpenAI content parts (objects with a ``type``; text parts carry a string ``text``)."""
    if content is None or isinstance(content, str):
        return
    if not isinstance(content, list):
        raise FieldError(field, f"expected a string or a list of content parts, got {_kind(content)}")
    for i, part in enumerate(content):
        where = f"{field}[{i}]"
        _expect(part, dict, where, "an object", optional=False)
        kind = part.get("type", "text")
        _expect(kind, str, f"{where}.type", "a string", optional=False)
        if kind == "text" or "text" in part:
            _expect(part.get("text"), str, f"{where}.text", "a string", optional=False)


def check_tool_call(call: Any, field: str) -> None:
    _expect(call, dict, field, "an object", optional=False)
    _expect(call.get("id"), str, f"{field}.id", "a string")
    _expect(call.get("type"), str, f"{field}.type", "a string")
    body = call.get("function", call)
    if "function" in call:
        _expect(body, dict, f"{field}.function", "an object", optional=False)
    where = f"{field}.function" if "function" in call else field
    name = body.get("name")
    _expect(name, str, f"{where}.name", "a string", optional=False)
    if not name:
        raise FieldError(f"{where}.name", "must not be empty")
    _expect(body.get("arguments"), (str, dict), f"{where}.arguments", "a JSON object or a JSON string")


def check_message(raw: Any, field: str) -> None:
    _expect(raw, dict, field, "an object", optional=False)
    role = raw.get("role")
    _expect(role, str, f"{field}.role", "a string", optional=False)
    if role not in ROLES:
        raise FieldError(f"{field}.role", f"unknown role {role!r} (expected one of {', '.join(ROLES)})")
    check_content(raw.get("content"), f"{field}.content")
    calls = raw.get("tool_calls")
    _expect(calls, list, f"{field}.tool_calls", "a list")
    for i, call in enumerate(calls or []):
        check_tool_call(call, f"{field}.tool_calls[{i}]")
    for key in ("tool_call_id", "name", "tool_name", "thinking", "reasoning_content"):
        _expect(raw.get(key), str, f"{field}.{key}", "a string")
    images = raw.get("images")
    _expect(images, list, f"{field}.images", "a list")
    for i, image in enumerate(images or []):
        _expect(image, str, f"{field}.images[{i}]", "a string (base64)", optional=False)


def parse_message(raw: Any, field: str) -> Message:
    """A request message, every field checked, as the ``Conversation`` type."""
    check_message(raw, field)
    try:
        return Message.from_openai(raw)
    except ConversationError as exc:  # what from_openai checks beyond shapes (tool call arguments as JSON, ...)
        raise FieldError(field, str(exc)) from exc
