"""Talk to a model with tools: the seed's 模型测试 script as a function and a REPL.

One turn is ``tooltune.families.respond``: render the conversation with the model's own chat template (tools
passed verbatim, as ``apply_chat_template(messages, tools=tools, add_generation_prompt=True)`` does), generate, and
parse the response with the model family's parser (reasoning apart) — the same turn evaluation runs. HF directories
and GGUF files go through ``tooltune.engines``, so the prompt is the same text whichever format the model is in.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tooltune.conversation import ConversationError, Message, Tool, ToolCall
from tooltune.engines import Engine, SamplingParams, load_engine
from tooltune.errors import TooltuneError


class ChatInputError(TooltuneError, ValueError):
    """A tools or messages file that cannot be used; the message names the file and the record."""


@dataclass
class ChatResult:
    prompt: str
    raw: str
    calls: list[ToolCall]
    content: str
    errors: list[str] = field(default_factory=list)
    unknown_names: list[str] = field(default_factory=list)
    finish_reason: str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    thinking: str = ""  # reasoning the model wrote before its answer (families that think)

    def calls_json(self) -> list[dict[str, Any]]:
        return [{"name": call.name, "arguments": call.arguments} for call in self.calls]

    def to_json(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "raw": self.raw,
            "tool_calls": self.calls_json(),
            "content": self.content,
            "thinking": self.thinking,
            "errors": self.errors,
            "unknown_tools": self.unknown_names,
            "finish_reason": self.finish_reason,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "seconds": round(self.seconds, 3),
        }

    def assistant_message(self) -> Message:
        """The reply as history: parsed calls (with ids) rather than raw text, so the template re-renders it."""
        calls = [ToolCall(name=c.name, arguments=c.arguments, id=c.id or f"call_{i}") for i, c in enumerate(self.calls)]
        return Message(role="assistant", content=self.content, tool_calls=calls)

    def summary(self) -> str:
        rate = self.completion_tokens / self.seconds if self.seconds > 0 else 0.0
        return (
            f"{self.prompt_tokens} prompt tokens, {self.completion_tokens} generated in {self.seconds:.2f} s "
            f"({rate:.1f} tok/s, {self.finish_reason}), {len(self.calls)} tool call(s)"
        )


# --------------------------------------------------------------------------------------------------------- inputs


def _load_json(path: Path, what: str) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ChatInputError(f"{path}: cannot read {what} ({exc.strerror})") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ChatInputError(f"{path}: {what} are not valid JSON ({exc.msg} at line {exc.lineno})") from exc


def parse_tools(raw: Any, source: str) -> list[Tool]:
    """Tools in any of the three shapes (OpenAI, bare function, the seed's list of parameters), or ``{"tools": []}``."""
    if isinstance(raw, dict) and isinstance(raw.get("tools"), list):
        raw = raw["tools"]
    if isinstance(raw, dict):
        raw = [raw]
    if not isinstance(raw, list):
        raise ChatInputError(f"{source}: tools must be a JSON list of tool objects")
    tools = []
    for index, item in enumerate(raw):
        try:
            tool = Tool(item)
            tool.json_schema()  # validates the seed's list-of-parameters shape too
        except ConversationError as exc:
            raise ChatInputError(f"{source} tool {index}: {exc}") from exc
        tools.append(tool)
    names = [t.name for t in tools]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ChatInputError(f"{source}: tool name(s) defined twice: {', '.join(duplicates)}")
    return tools


def load_tools(path: str | Path) -> list[Tool]:
    path = Path(path)
    return parse_tools(_load_json(path, "tools"), str(path))


def parse_messages(raw: Any, source: str) -> tuple[list[Message], list[Tool]]:
    """A JSON list of OpenAI/Ollama messages, or a record ``{"messages": [...], "tools": [...]}``."""
    tools: list[Tool] = []
    if isinstance(raw, dict):
        if "tools" in raw:
            tools = parse_tools(raw["tools"], source)
        raw = raw.get("messages")
    if not isinstance(raw, list):
        raise ChatInputError(f"{source}: messages must be a JSON list (or an object with a 'messages' list)")
    messages = []
    for index, item in enumerate(raw):
        try:
            messages.append(Message.from_openai(item))
        except ConversationError as exc:
            raise ChatInputError(f"{source} message {index}: {exc}") from exc
    if not messages:
        raise ChatInputError(f"{source}: no messages")
    return messages, tools


def load_messages(path: str | Path) -> tuple[list[Message], list[Tool]]:
    path = Path(path)
    return parse_messages(_load_json(path, "messages"), str(path))


# ----------------------------------------------------------------------------------------------------------- turns


def _as_messages(messages: Iterable[Message | dict[str, Any]]) -> list[Message]:
    return [m if isinstance(m, Message) else Message.from_openai(m) for m in messages]


def _as_tools(tools: Iterable[Tool | dict[str, Any]] | None) -> list[Tool]:
    return [t if isinstance(t, Tool) else Tool(t) for t in (tools or [])]


def render_prompt(engine: Engine, tools: Iterable[Tool | dict[str, Any]] | None,
                  messages: Iterable[Message | dict[str, Any]]) -> str:
    """The exact text the model sees: tools verbatim, as ``apply_chat_template(tools=...)`` receives them."""
    from tooltune.families.respond import render_prompt as family_render

    return family_render(engine, _as_messages(messages), _as_tools(tools))


def chat_once(
    model: Engine | str | Path,
    tools: Iterable[Tool | dict[str, Any]] | None,
    messages: Iterable[Message | dict[str, Any]],
    params: SamplingParams | None = None,
    *,
    lenient: bool = False,
    tool_choice: str = "auto",
    on_text: Callable[[str], None] | None = None,
    constrain_calls: bool = True,
) -> ChatResult:
    """One assistant turn through ``tooltune.families.respond`` (streaming through ``on_text`` when given).

    ``tool_choice`` is ``auto`` (the model decides), ``required`` or a tool name (constrained by a grammar, GGUF only);
    ``constrain_calls``: under ``auto``, a call the model opens is held to the tools' schemas (GGUF only), as served.
    """
    from tooltune.families.errors import FamilyError
    from tooltune.families.respond import RespondOptions, respond

    engine = model if isinstance(model, Engine) else load_engine(model)
    options = RespondOptions(params=params or SamplingParams(), lenient=lenient, on_text=on_text,
                             constrain_calls=constrain_calls)
    try:
        reply = respond(engine, _as_messages(messages), _as_tools(tools), options, tool_choice=tool_choice)
    except FamilyError as exc:
        raise ChatInputError(str(exc).replace("tool_choice", "--tool-choice", 1)) from None
    return ChatResult(
        prompt=reply.prompt,
        raw=reply.raw,
        calls=reply.calls,
        content=reply.content,
        errors=reply.errors,
        unknown_names=reply.unknown_names,
        finish_reason=reply.finish_reason or "stop",
        prompt_tokens=reply.prompt_tokens,
        completion_tokens=reply.completion_tokens,
        seconds=reply.seconds,
        thinking=reply.thinking,
    )


# ------------------------------------------------------------------------------------------------------------ REPL

REPL_HELP = """Type a message and press Enter. Commands:
  /tool <result>     answer the oldest unanswered tool call (JSON or text); the model continues when all are answered
  /system <text>     set the system message        /reset    clear the history
  /history           print the conversation JSON   /exit     quit (or Ctrl-D)"""


@dataclass
class ChatSession:
    """The REPL's state: the conversation so far and the tool calls still waiting for a result."""

    engine: Engine
    tools: list[Tool]
    params: SamplingParams
    history: list[Message] = field(default_factory=list)
    pending: list[ToolCall] = field(default_factory=list)
    lenient: bool = False
    tool_choice: str = "auto"
    constrain_calls: bool = True

    def set_system(self, text: str) -> None:
        self.history = [m for m in self.history if m.role != "system"]
        self.history.insert(0, Message(role="system", content=text))

    def reset(self) -> None:
        system = [m for m in self.history if m.role == "system"]
        self.history, self.pending = system, []

    def reply(self, on_text: Callable[[str], None] | None = None) -> ChatResult:
        result = chat_once(self.engine, self.tools, self.history, self.params, lenient=self.lenient,
                           tool_choice=self.tool_choice, on_text=on_text, constrain_calls=self.constrain_calls)
        message = result.assistant_message()
        self.history.append(message)
        self.pending = list(message.tool_calls)
        return result

    def send_user(self, text: str, on_text: Callable[[str], None] | None = None) -> ChatResult:
        self.pending = []  # a new question abandons unanswered calls
        self.history.append(Message(role="user", content=text))
        return self.reply(on_text)

    def add_tool_result(self, content: str) -> bool:
        """Record a tool result for the oldest pending call; True when no call is left waiting."""
        call = self.pending.pop(0) if self.pending else None
        answered_id, answered_name = (call.id, call.name) if call else (None, None)
        self.history.append(Message(role="tool", content=content, tool_call_id=answered_id, name=answered_name))
        return not self.pending


def run_repl(
    session: ChatSession,
    read_line: Callable[[str], str],
    write: Callable[[str], None],
    as_json: bool = False,
) -> None:
    """Read-eval-print until /exit or end of input. ``read_line`` raises EOFError at the end."""

    def show(result: ChatResult, streamed: bool) -> None:
        if as_json:
            write(json.dumps(result.to_json(), ensure_ascii=False) + "\n")
            return
        if not streamed:
            write(result.raw)
        write("\n")
        if result.calls:
            write("tool calls: " + json.dumps(result.calls_json(), ensure_ascii=False) + "\n")
            write("(answer each with /tool <result>)\n")
        for error in result.errors:
            write(f"parse error: {error}\n")
        if result.unknown_names:
            write(f"unknown tools: {', '.join(result.unknown_names)}\n")

    def respond(action: Callable[..., ChatResult]) -> None:
        if as_json:
            show(action(), streamed=False)
        else:
            write("assistant> ")
            show(action(write), streamed=True)

    if not as_json:
        write(REPL_HELP + "\n")
    while True:
        try:
            line = read_line("you> " if not as_json else "")
        except EOFError:
            return
        text = line.strip()
        if not text:
            continue
        command, _, rest = text.partition(" ")
        if command in ("/exit", "/quit"):
            return
        if command == "/reset":
            session.reset()
        elif command == "/system":
            session.set_system(rest.strip())
        elif command == "/history":
            write(json.dumps([m.to_openai() for m in session.history], ensure_ascii=False, indent=2) + "\n")
        elif command == "/help":
            write(REPL_HELP + "\n")
        elif command == "/tool":
            if session.add_tool_result(rest.strip()):
                respond(session.reply)
        else:
            respond(lambda on_text=None, text=text: session.send_user(text, on_text))
