"""alpaca records (``instruction`` / ``input`` / ``output`` with optional ``history`` and ``system``), as
LLaMA-Factory reads them; they carry no tool calls but let existing instruction data join a tool-call mix."""

from __future__ import annotations

from typing import Any

from tooltune.conversation import Conversation, ConversationError, Message
from tooltune.data.registry import DatasetSpec


def convert_alpaca(record: Any, spec: DatasetSpec) -> Conversation:
    if not isinstance(record, dict):
        raise ConversationError(f"record must be an object, got {type(record).__name__}")
    cols = spec.columns
    messages: list[Message] = []
    if cols.get("system") and isinstance(record.get(cols["system"]), str) and record[cols["system"]]:
        messages.append(Message(role="system", content=record[cols["system"]]))
    history = record.get(cols["history"]) if cols.get("history") else None
    for position, pair in enumerate(history or []):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise ConversationError(f"history item {position} must be a [prompt, response] pair of strings")
        messages += [Message(role="user", content=pair[0]), Message(role="assistant", content=pair[1])]
    parts = [record.get(cols[key]) for key in ("prompt", "query") if cols.get(key)]
    prompt = "\n".join(part for part in parts if isinstance(part, str) and part)
    response = record.get(cols["response"]) if cols.get("response") else None
    if not isinstance(response, str):
        raise ConversationError(f"{cols.get('response')!r} must be a string")
    messages += [Message(role="user", content=prompt), Message(role="assistant", content=response)]
    return Conversation(messages=messages)
