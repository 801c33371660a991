"""Streaming reply parsers, one per call syntax, with reasoning split off first.

``reply_parser(family, tools, lenient)`` gives an object with ``feed(delta) -> events``, ``finish() -> events`` and
``result() -> ParsedReply``. Events are ``ThinkingDelta`` (reasoning text), ``ContentDelta`` (text to show) and
``ToolCallDone`` (a complete call). Syntaxes:

- ``hermes`` (Qwen2.5, Qwen3, SmolLM3, Hermes 3, tooltune's Gemma 3): ``<tool_call>{json}</tool_call>`` blocks,
  parsed by
  ``tooltune.toolcalls.StreamingToolCallParser`` (which also does the lenient bare-JSON / ```json fallback);
- ``llama3`` (Llama 3.2): the reply *is* the call, ``{"name": ..., "parameters": {...}}`` (optionally after
  ``<|python_tag|>``, or a JSON list of such objects); a reply that starts with ``{`` but is not call-shaped is content;
- ``mistral``: ``[TOOL_CALLS] [{"name", "arguments", "id"}, ...]``;
- ``phi4``: ``<|tool_call|>[{"name", "arguments"}, ...]<|/tool_call|>``.

Reasoning: for families that think, a reply starting with ``<think>`` (or every reply, when the prompt already opened
the block) has its reasoning up to ``</think>`` returned separately, never parsed for calls — a ``<tool_call>`` written
while thinking is not a call.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from tooltune.conversation import ConversationError, ToolCall
from tooltune.families.family import Family
from tooltune.toolcalls import (
    ContentDelta,
    StreamingToolCallParser,
    ToolCallDone,
    ToolsLike,
    _JsonScanner,
    tool_names,
)

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
# Every marker a parser reads: decoding must hand them over as text even where the vocabulary makes them special.
TEXT_MARKERS = (THINK_OPEN, THINK_CLOSE, "<tool_call>", "</tool_call>", "[TOOL_CALLS]", "<|tool_call|>",
                "<|/tool_call|>", "<|python_tag|>")


@dataclass(frozen=True)
class ThinkingDelta:
    text: str


Event = ThinkingDelta | ContentDelta | ToolCallDone


@dataclass
class ParsedReply:
    content: str = ""
    thinking: str = ""
    calls: list[ToolCall] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    unknown_names: list[str] = field(default_factory=list)


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest end of ``text`` that is a proper beginning of ``marker`` (held back while streaming)."""
    for size in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0


class MarkerCallParser:
    """Calls after an opening marker, as one JSON object or list, optionally followed by a closing marker.

    ``open_marker=None`` (Llama 3) means the call is the reply itself: a reply whose first non-blank character opens a
    JSON value is held until the value closes, then returned as calls when call-shaped and as content otherwise.
    """

    def __init__(self, open_marker: str | None, close_marker: str | None, tools: ToolsLike = None,
                 alt_open: str | None = None) -> None:
        self.open_marker = open_marker
        self.alt_open = alt_open
        self.close_marker = close_marker
        self.known = tool_names(tools)
        self.calls: list[ToolCall] = []
        self.errors: list[str] = []
        self.unknown_names: list[str] = []
        self._content: list[str] = []
        self._buffer = ""
        self._state = "start" if open_marker is None else "text"  # text | start | json | after | done
        self._scanner: _JsonScanner | None = None
        self._lead = ""

    def feed(self, delta: str) -> list[Event]:
        self._buffer += delta
        return self._process(eos=False)

    def finish(self) -> list[Event]:
        return self._process(eos=True)

    def result(self) -> ParsedReply:
        return ParsedReply(content="".join(self._content).strip(), calls=list(self.calls), errors=list(self.errors),
                           unknown_names=list(self.unknown_names))

    def _text(self, events: list[Event], text: str) -> None:
        if text:
            if not self._content:
                text = text.lstrip()
            if text:
                self._content.append(text)
                events.append(ContentDelta(text))

    def _process(self, eos: bool) -> list[Event]:
        events: list[Event] = []
        while True:
            before = (self._state, len(self._buffer))
            getattr(self, f"_step_{self._state}")(events, eos)
            if (self._state, len(self._buffer)) == before:
                if eos and self._buffer:
                    self._text(events, self._buffer)
                    self._buffer = ""
                return events

    def _step_text(self, events: list[Event], eos: bool) -> None:
        assert self.open_marker is not None
        at = self._buffer.find(self.open_marker)
        if at >= 0:
            self._text(events, self._buffer[:at].rstrip())
            self._buffer = self._buffer[at + len(self.open_marker):]
            self._state = "json"
            return
        hold = 0 if eos else _partial_suffix(self._buffer, self.open_marker)
        self._text(events, self._buffer[: len(self._buffer) - hold])
        self._buffer = self._buffer[len(self._buffer) - hold:]

    def _step_start(self, events: list[Event], eos: bool) -> None:
        """Llama 3: decide from the reply's first characters whether it is a call."""
        stripped = self._buffer.lstrip()
        if self.alt_open and stripped.startswith(self.alt_open):
            self._buffer = stripped[len(self.alt_open):]
            self._state = "json"
            return
        if not stripped or (self.alt_open and self.alt_open.startswith(stripped) and not eos):
            return
        if stripped[0] in "{[":
            self._buffer = stripped
            self._state = "json"
        else:
            self._state = "done"

    def _step_json(self, events: list[Event], eos: bool) -> None:
        body = self._buffer.lstrip()
        if not body:
            if eos:
                self.errors.append(f"{self.open_marker or 'call'} with no JSON after it")
                self._state = "done"
            return
        if self._scanner is None:
            self._lead = ""
            if body[0] not in "{[":
                self._fail(events, "call is not a JSON object or list")
                return
            self._lead = self._buffer[: len(self._buffer) - len(body)]  # kept for the content of a failed call
            self._buffer = body
            self._scanner = _JsonScanner(0)
        end = self._scanner.scan(self._buffer)
        if end is None:
            if eos:
                self._fail(events, "call JSON is not closed")
            return
        if end < 0:
            self._fail(events, "call is not valid JSON")
            return
        raw = self._buffer[:end]
        try:
            value = json.loads(raw)
            calls = self._calls(value)
        except (json.JSONDecodeError, ConversationError) as exc:
            if self.open_marker is None:  # Llama: JSON that is not a call is simply the answer
                self._state = "done"
                self._scanner = None
                return
            self._fail(events, f"call is not a valid call: {exc}")
            return
        for call in calls:
            if self.known is not None and call.name not in self.known:
                self.unknown_names.append(call.name)
            events.append(ToolCallDone(call=call, index=len(self.calls)))
            self.calls.append(call)
        self._buffer = self._buffer[end:]
        self._scanner = None
        self._state = "after"

    def _calls(self, value: Any) -> list[ToolCall]:
        items = value if isinstance(value, list) else [value]
        if not items:
            raise ConversationError("empty list of calls")
        for item in items:
            body = item.get("function", item) if isinstance(item, dict) else None
            if not isinstance(body, dict) or "name" not in body:
                raise ConversationError("an item has no name")
            if self.open_marker is None and not ({"parameters", "arguments"} & set(body)):
                raise ConversationError("no parameters")
        return [ToolCall.from_any(item) for item in items]

    def _fail(self, events: list[Event], reason: str) -> None:
        self.errors.append(reason)
        marker = self.open_marker or ""
        self._text(events, marker + self._lead + self._buffer if self._content or marker else self._buffer)
        self._buffer = ""
        self._scanner = None
        self._state = "done"

    def _step_after(self, events: list[Event], eos: bool) -> None:
        rest = self._buffer.lstrip()
        if self.close_marker is not None:
            if rest.startswith(self.close_marker):
                self._buffer = rest[len(self.close_marker):]
                self._state = "text" if self.open_marker else "done"
                return
            if self.close_marker.startswith(rest) and not eos:
                return
        if self.open_marker is None and rest.startswith(";"):  # Llama's parallel calls: obj; obj
            self._buffer = rest[1:]
            self._state = "json"
            return
        if not rest and not eos:
            return
        self._buffer = rest
        self._state = "text" if self.open_marker else "done"

    def _step_done(self, events: list[Event], eos: bool) -> None:
        self._text(events, self._buffer)
        self._buffer = ""


class HermesParser:
    """``StreamingToolCallParser`` behind the common interface."""

    def __init__(self, tools: ToolsLike = None, lenient: bool = False) -> None:
        self.inner = StreamingToolCallParser(tools=tools, lenient=lenient)

    def feed(self, delta: str) -> list[Event]:
        return list(self.inner.feed(delta))

    def finish(self) -> list[Event]:
        return list(self.inner.finish())

    def result(self) -> ParsedReply:
        r = self.inner.result()
        return ParsedReply(content=r.content, calls=r.calls, errors=r.errors, unknown_names=r.unknown_names)


class ReplyParser:
    """Reasoning first (for families that think), then the family's call syntax on the rest."""

    def __init__(self, calls: HermesParser | MarkerCallParser, thinks: bool, thinking_open: bool = False) -> None:
        self.calls = calls
        self.thinks = thinks
        self._state = "thinking" if thinking_open else ("maybe" if thinks else "body")
        self._buffer = ""
        self._thinking: list[str] = []
        self._finished = False

    def feed(self, delta: str) -> list[Event]:
        self._buffer += delta
        return self._process(eos=False)

    def finish(self) -> list[Event]:
        if self._finished:
            return []
        events = self._process(eos=True)
        self._finished = True
        return events + self.calls.finish()

    def result(self) -> ParsedReply:
        parsed = self.calls.result()
        parsed.thinking = "".join(self._thinking).strip("\n")
        return parsed

    def _process(self, eos: bool) -> list[Event]:
        events: list[Event] = []
        if self._state == "maybe":
            stripped = self._buffer.lstrip()
            if stripped.startswith(THINK_OPEN):
                self._buffer = stripped[len(THINK_OPEN):]
                self._state = "thinking"
            elif (THINK_OPEN.startswith(stripped)) and not eos:
                return events
            else:
                self._state = "body"
        if self._state == "thinking":
            at = self._buffer.find(THINK_CLOSE)
            if at >= 0:
                self._think(events, self._buffer[:at])
                self._buffer = self._buffer[at + len(THINK_CLOSE):].lstrip("\n")
                self._state = "body"
            else:
                hold = 0 if eos else _partial_suffix(self._buffer, THINK_CLOSE)
                self._think(events, self._buffer[: len(self._buffer) - hold])
                self._buffer = self._buffer[len(self._buffer) - hold:]
                return events
        if self._state == "body" and self._buffer:
            events += self.calls.feed(self._buffer)
            self._buffer = ""
        return events

    def _think(self, events: list[Event], text: str) -> None:
        if not self._thinking:
            text = text.lstrip("\n")
        if text:
            self._thinking.append(text)
            events.append(ThinkingDelta(text))


def reply_parser(family: Family | None, tools: ToolsLike = None, lenient: bool = False,
                 thinking_open: bool = False) -> ReplyParser:
    """The parser for one reply of ``family`` (None: Hermes ``<tool_call>`` blocks, tooltune's default layout)."""
    syntax = family.call_syntax if family is not None else "hermes"
    inner: HermesParser | MarkerCallParser
    if syntax == "llama3":
        inner = MarkerCallParser(None, None, tools, alt_open="<|python_tag|>")
    elif syntax == "mistral":
        inner = MarkerCallParser("[TOOL_CALLS]", None, tools)
    elif syntax == "phi4":
        inner = MarkerCallParser("<|tool_call|>", "<|/tool_call|>", tools)
    else:
        inner = HermesParser(tools, lenient=lenient)
    return ReplyParser(inner, thinks=bool(family and family.thinks), thinking_open=thinking_open)


def parse_reply(text: str, family: Family | None, tools: ToolsLike = None, lenient: bool = False,
                thinking_open: bool = False) -> ParsedReply:
    parser = reply_parser(family, tools, lenient, thinking_open)
    parser.feed(text)
    parser.finish()
    return parser.result()
