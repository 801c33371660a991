"""The one conversation type every stage speaks.

Messages are OpenAI-shaped (system / user / assistant with optional tool calls / tool results) and tools are kept
exactly as the user wrote them, because chat templates render the tool dicts verbatim (``tool | tojson``): the
normalised views below are for validation, grammars and matching, never for re-rendering.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from tooltune.errors import TooltuneError

Role = Literal["system", "user", "assistant", "tool"]
ROLES: tuple[str, ...] = ("system", "user", "assistant", "tool")


class ConversationError(TooltuneError, ValueError):
    """A record that cannot become a Conversation; the message says why."""


@dataclass
class ToolCall:
    """One call of a tool: its name and its arguments as a JSON object (never a JSON string)."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    id: str | None = None

    def to_openai(self, index: int | None = None) -> dict[str, Any]:
        """OpenAI wire shape: arguments are a JSON *string* there."""
        out: dict[str, Any] = {
            "type": "function",
            "function": {"name": self.name, "arguments": json.dumps(self.arguments, ensure_ascii=False)},
        }
        if self.id is not None:
            out["id"] = self.id
        if index is not None:
            out["index"] = index
        return out

    def to_template(self) -> dict[str, Any]:
        """Shape HF chat templates expect: OpenAI's, with arguments as a dict so ``tojson`` prints an object."""
        out: dict[str, Any] = {"type": "function", "function": {"name": self.name, "arguments": self.arguments}}
        if self.id is not None:
            out["id"] = self.id
        return out

    @classmethod
    def from_any(cls, raw: Any) -> ToolCall:
        """Accept OpenAI (``function`` wrapper, string arguments), Ollama (object arguments) or bare shapes."""
        if not isinstance(raw, dict):
            raise ConversationError(f"tool call must be an object, got {type(raw).__name__}")
        call_id = raw.get("id")
        body = raw.get("function", raw)
        if not isinstance(body, dict):
            raise ConversationError("tool call 'function' must be an object")
        name = body.get("name")
        if not isinstance(name, str) or not name:
            raise ConversationError("tool call has no function name")
        arguments = body.get("arguments", body.get("parameters", {}))
        if arguments is None:
            arguments = {}
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except json.JSONDecodeError as exc:
                raise ConversationError(f"tool call {name!r}: arguments are not valid JSON ({exc.msg})") from exc
        if not isinstance(arguments, dict):
            raise ConversationError(f"tool call {name!r}: arguments must be a JSON object")
        return cls(name=name, arguments=arguments, id=call_id if isinstance(call_id, str) else None)


@dataclass
class Message:
    role: Role
    content: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    # For role "tool": which call this answers and which tool produced it (Ollama's ``tool_name``).
    tool_call_id: str | None = None
    name: str | None = None

    def to_template(self) -> dict[str, Any]:
        """Dict for chat-template rendering (HF/Jinja conventions)."""
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = [call.to_template() for call in self.tool_calls]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        if self.name is not None:
            out["name"] = self.name
        return out

    def to_openai(self) -> dict[str, Any]:
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = [call.to_openai() for call in self.tool_calls]
            if not self.content:
                out["content"] = None
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        if self.name is not None and self.role == "tool":
            out["name"] = self.name
        return out

    @classmethod
    def from_openai(cls, raw: Any) -> Message:
        """Accept OpenAI and Ollama message dicts (Ollama names the tool of a result ``tool_name``)."""
        if not isinstance(raw, dict):
            raise ConversationError(f"message must be an object, got {type(raw).__name__}")
        role = raw.get("role")
        if role not in ROLES:
            raise ConversationError(f"unknown role {role!r} (expected one of {', '.join(ROLES)})")
        content = raw.get("content")
        if content is None:
            content = ""
        if isinstance(content, list):  # OpenAI content parts: keep the text ones
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        if not isinstance(content, str):
            raise ConversationError(f"{role} message content must be a string")
        calls = [ToolCall.from_any(c) for c in (raw.get("tool_calls") or [])]
        reasoning = raw.get("reasoning_content", raw.get("thinking"))  # OpenAI-compatible / Ollama reasoning
        if role == "assistant" and isinstance(reasoning, str) and reasoning and "</think>" not in content:
            # Kept where chat templates look for it (Qwen3 splits <think> out of content); --thinking decides.
            content = f"<think>\n{reasoning.strip()}\n</think>\n\n{content.lstrip()}"
        name = raw.get("name", raw.get("tool_name"))
        return cls(
            role=role,
            content=content,
            tool_calls=calls,
            tool_call_id=raw.get("tool_call_id"),
            name=name if isinstance(name, str) else None,
        )


def openai_tool(spec: dict[str, Any]) -> dict[str, Any]:
    """The definition as given, wrapped as ``{"type": "function", "function": ...}`` when bare — LLaMA-Factory's
    ``qwen`` template wraps bare tools this way, and so does every client sending a bare function's schema."""
    if spec.get("type") == "function" and isinstance(spec.get("function"), dict):
        return spec
    return {"type": "function", "function": spec}


@dataclass
class Tool:
    """A tool definition, kept as given (``spec``) with normalised views.

    Three shapes exist in the wild: OpenAI ``{"type": "function", "function": {...}}``, a bare
    ``{"name", "description", "parameters"}`` and the seed's shape where ``parameters`` is a *list* of
    ``{"name", "description", "required"}``.
    """

    spec: dict[str, Any]

    def __post_init__(self) -> None:
        if not isinstance(self.spec, dict):
            raise ConversationError(f"tool must be an object, got {type(self.spec).__name__}")
        if not isinstance(self.function.get("name"), str) or not self.function.get("name"):
            raise ConversationError("tool has no function name")
        params = self.function.get("parameters")
        if params is not None and not isinstance(params, (dict, list)):
            raise ConversationError(f"tool {self.name!r}: parameters must be an object or a list")

    @property
    def function(self) -> dict[str, Any]:
        """The bare function dict, whatever the shape."""
        inner = self.spec.get("function")
        return inner if isinstance(inner, dict) else self.spec

    @property
    def name(self) -> str:
        return str(self.function["name"])

    @property
    def description(self) -> str:
        return str(self.function.get("description", ""))

    @property
    def shape(self) -> Literal["openai", "bare", "param_list"]:
        if isinstance(self.spec.get("function"), dict):
            return "openai"
        if isinstance(self.spec.get("parameters"), list):
            return "param_list"
        return "bare"

    def json_schema(self) -> dict[str, Any]:
        """Parameters as a JSON schema object; the seed's list shape becomes string properties."""
        params = self.function.get("parameters")
        if params is None:
            return {"type": "object", "properties": {}}
        if isinstance(params, list):
            properties: dict[str, Any] = {}
            required: list[str] = []
            for item in params:
                if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                    raise ConversationError(f"tool {self.name!r}: each listed parameter needs a name")
                prop: dict[str, Any] = {"type": item.get("type", "string")}
                if "description" in item:
                    prop["description"] = item["description"]
                properties[item["name"]] = prop
                if item.get("required"):
                    required.append(item["name"])
            return {"type": "object", "properties": properties, "required": required}
        return params

    def to_openai(self) -> dict[str, Any]:
        """OpenAI shape with a JSON-schema ``parameters`` (what APIs and grammars want)."""
        fn = {"name": self.name, "description": self.description, "parameters": self.json_schema()}
        return {"type": "function", "function": fn}

    @classmethod
    def parse_list(cls, raw: Any) -> list[Tool]:
        """Tools from a list, or from the JSON string sharegpt datasets store them as."""
        if raw is None or raw == "":
            return []
        if isinstance(raw, str):
            try:
                raw = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ConversationError(f"tools are not valid JSON ({exc.msg} at char {exc.pos})") from exc
        if isinstance(raw, dict):
            raw = [raw]
        if not isinstance(raw, list):
            raise ConversationError("tools must be a list")
        return [cls(item) for item in raw]


@dataclass
class Conversation:
    messages: list[Message]
    tools: list[Tool] = field(default_factory=list)
    # Where it came from, for error messages: ("data/x.json", 17).
    source: str | None = None
    index: int | None = None

    @property
    def system(self) -> str | None:
        if self.messages and self.messages[0].role == "system":
            return self.messages[0].content
        return None

    def tool_names(self) -> list[str]:
        return [tool.name for tool in self.tools]

    def template_messages(self) -> list[dict[str, Any]]:
        return [m.to_template() for m in self.messages]

    def template_tools(self) -> list[dict[str, Any]] | None:
        """Tools exactly as given, the way ``apply_chat_template(tools=...)`` receives them."""
        return [tool.spec for tool in self.tools] or None

    def to_openai(self) -> dict[str, Any]:
        out: dict[str, Any] = {"messages": [m.to_openai() for m in self.messages]}
        if self.tools:
            out["tools"] = [tool.spec for tool in self.tools]
        return out

    @classmethod
    def from_openai(cls, raw: dict[str, Any], source: str | None = None, index: int | None = None) -> Conversation:
        messages = raw.get("messages")
        if not isinstance(messages, list):
            raise ConversationError("record has no 'messages' list")
        return cls(
            messages=[Message.from_openai(m) for m in messages],
            tools=Tool.parse_list(raw.get("tools")),
            source=source,
            index=index,
        )

    def where(self) -> str:
        if self.source is None:
            return "conversation"
        return f"{self.source} record {self.index}" if self.index is not None else self.source
