"""OpenAI chat records (``{"messages": [...], "tools": [...]}``) converted to a Conversation.

Assistant messages may carry ``tool_calls`` (OpenAI's string arguments or Ollama's object arguments) and results come
back as ``role: tool`` messages. A dataset_info.json entry with ``formatting: openai`` may rename the columns and the
role names through ``columns`` / ``tags`` as in LLaMA-Factory.
"""

from __future__ import annotations

from typing import Any

from tooltune.conversation import Conversation, ConversationError, Message
from tooltune.data.registry import OPENAI_TAGS, DatasetSpec


def _rename_roles(messages: list[Any], tags: dict[str, str]) -> list[Any]:
    role_of = {
        tags["user_tag"]: "user",
        tags["assistant_tag"]: "assistant",
        tags["observation_tag"]: "tool",
        tags["system_tag"]: "system",
    }
    renamed = []
    for message in messages:
        if isinstance(message, dict):
            message = dict(message)
            message["role"] = role_of.get(message.get(tags["role_tag"]), message.get(tags["role_tag"]))
            message["content"] = message.get(tags["content_tag"])
        renamed.append(message)
    return renamed


def convert_openai(record: Any, spec: DatasetSpec) -> Conversation:
    if not isinstance(record, dict):
        raise ConversationError(f"record must be an object, got {type(record).__name__}")
    column = spec.columns.get("messages") or "messages"
    messages = record.get(column)
    if not isinstance(messages, list):
        raise ConversationError(f"no {column!r} list")
    if spec.explicit_tags:
        tags = dict(OPENAI_TAGS)
        tags.update(spec.tags)
        messages = _rename_roles(messages, tags)
    tools_column = spec.columns.get("tools") or "tools"
    normalised = {"messages": messages, "tools": record.get(tools_column)}
    try:
        conv = Conversation.from_openai(normalised)
    except ConversationError as exc:
        position = _failing_message(messages)
        prefix = f"message {position}: " if position is not None else ""
        raise ConversationError(f"{prefix}{exc}") from None
    system_column = spec.columns.get("system")
    system = record.get(system_column) if system_column else None
    if isinstance(system, str) and system and conv.system is None:
        conv.messages.insert(0, Message(role="system", content=system))
    return conv


def _failing_message(messages: list[Any]) -> int | None:
    """Index of the first message that does not convert, to name it in the error."""
    for position, message in enumerate(messages):
        try:
            Message.from_openai(message)
        except ConversationError:
            return position
    return None
