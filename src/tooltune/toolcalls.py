"""Turn model text into tool calls: the one parser chat, serving and evaluation share.

Format: Hermes/Qwen2.5 blocks ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``. A block may hold several
JSON objects (Ollama's qwen2.5 template writes parallel calls that way) or a JSON list of them; ``arguments`` may be a
JSON string (OpenAI habit) and ``parameters`` is accepted for ``arguments``.

Two entry points, one implementation:

* ``parse_tool_calls(text, tools=None, lenient=False) -> ParseResult`` for a finished response.
* ``StreamingToolCallParser(tools=None, lenient=False)`` for token streams: ``.feed(delta)`` and ``.finish()`` return
  ``list[StreamEvent]`` where a ``StreamEvent`` is either ``ContentDelta(text)`` (plain text to show now) or
  ``ToolCallDone(call: ToolCall, index: int)`` (a complete call, emitted as soon as its JSON object closes).
  Errors and unknown names accumulate on the parser (``.errors``, ``.unknown_names``); ``.result()`` gives the
  ``ParseResult`` of everything fed so far (after ``finish()``).

``parse_tool_calls`` *is* the streaming parser fed the whole text, so both modes agree on every input by construction.

Rules (why):

* Block bodies are scanned as JSON (string-aware), so a literal ``</tool_call>`` inside an argument string does not
  close the block.
* An unclosed final block at end of output is accepted when its JSON is complete: models often stop at EOS right after
  the object.
* Malformed JSON never disappears: the raw block text is kept as content and the reason goes to ``errors``, so a
  response is never silently empty.
* A call naming a tool that is not in ``tools`` is still returned (callers decide) and its name is listed in
  ``unknown_names``.
* Whitespace touching a block (the ``\\n`` the Qwen template writes before ``<tool_call>``) is layout, not content;
  content is stripped at both ends, so ``content`` round-trips what the template rendered.
* ``lenient=True`` (off by default) additionally accepts, outside blocks, a bare JSON object/list or a fenced
  ````json`` block that names a known tool (any name when ``tools`` is None, but then it must have both ``name`` and
  ``arguments``/``parameters``), because untuned models often answer that way. In streaming, lenient mode holds text
  from the first ``{``, ``[`` or backtick of a text segment until the segment ends.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from tooltune.conversation import ConversationError, Tool, ToolCall

OPEN_TAG = "<tool_call>"
CLOSE_TAG = "</tool_call>"

# Characters that may appear in JSON outside of strings; anything else (notably ``<``) means the block is not JSON.
_JSON_BARE_CHARS = frozenset(" \t\r\n{}[],:-+.0123456789eEtruefalsnl")


@dataclass(frozen=True)
class ContentDelta:
    """A piece of plain assistant text, ready to show."""

    text: str


@dataclass(frozen=True)
class ToolCallDone:
    """A complete tool call; ``index`` counts calls in this response from 0 (OpenAI's ``tool_calls[].index``)."""

    call: ToolCall
    index: int


StreamEvent = ContentDelta | ToolCallDone


@dataclass
class ParseResult:
    calls: list[ToolCall] = field(default_factory=list)
    content: str = ""
    errors: list[str] = field(default_factory=list)
    unknown_names: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No malformed block and no unknown tool name."""
        return not self.errors and not self.unknown_names


ToolsLike = Iterable[Tool | dict[str, Any] | str] | None


def tool_names(tools: ToolsLike) -> set[str] | None:
    """Names of ``tools`` given as ``Tool`` objects, tool dicts of any shape, or plain names; None when not given."""
    if tools is None:
        return None
    names: set[str] = set()
    for tool in tools:
        if isinstance(tool, str):
            names.add(tool)
        elif isinstance(tool, Tool):
            names.add(tool.name)
        else:
            names.add(Tool(tool).name)
    return names


def tool_schemas(tools: ToolsLike) -> dict[str, dict[str, Any]]:
    """Parameter schemas by tool name (tools given only by name have none)."""
    schemas: dict[str, dict[str, Any]] = {}
    for tool in tools or []:
        if isinstance(tool, str):
            continue
        item = tool if isinstance(tool, Tool) else Tool(tool)
        try:
            schemas[item.name] = item.json_schema()
        except ConversationError:
            continue
    return schemas


_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,), "integer": (int,), "number": (int, float), "boolean": (bool,), "array": (list,),
    "object": (dict,), "null": (type(None),),
}


def arguments_fit(arguments: dict[str, Any], schema: dict[str, Any] | None) -> bool:
    """Required properties present, no property the schema does not name, top-level types right (None: no schema
    to check against, so accepted)."""
    if schema is None:
        return True
    properties = schema.get("properties") or {}
    if any(name not in arguments for name in schema.get("required") or []):
        return False
    if properties and any(name not in properties for name in arguments):
        return False
    for name, value in arguments.items():
        wanted = (properties.get(name) or {}).get("type") if isinstance(properties.get(name), dict) else None
        kinds = [wanted] if isinstance(wanted, str) else list(wanted or [])
        allowed = tuple(t for kind in kinds for t in _JSON_TYPES.get(kind, (object,)))
        if allowed and (not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed)):
            return False
    return True


def format_tool_calls(calls: Iterable[ToolCall]) -> str:
    """Render calls the way the Qwen2.5 / Hermes template writes them (one block per call)."""
    blocks = []
    for call in calls:
        name = json.dumps(call.name, ensure_ascii=False)
        arguments = json.dumps(call.arguments, ensure_ascii=False)
        blocks.append(f'{OPEN_TAG}\n{{"name": {name}, "arguments": {arguments}}}\n{CLOSE_TAG}')
    return "\n".join(blocks)


def parse_tool_calls(text: str, tools: ToolsLike = None, lenient: bool = False) -> ParseResult:
    """Split a finished model response into tool calls and remaining content (see module docstring)."""
    parser = StreamingToolCallParser(tools=tools, lenient=lenient)
    parser.feed(text)
    parser.finish()
    return parser.result()


# --------------------------------------------------------------------------------------------------------------------
# JSON scanning


class _JsonScanner:
    """Finds where the JSON object/array starting at ``start`` ends, resuming where the previous call stopped, so a
    call streamed in N pieces costs O(length), not O(N·length)."""

    def __init__(self, start: int) -> None:
        self.start = start
        self.pos = start
        self.depth = 0
        self.in_string = False
        self.escaped = False
        self.end: int | None = None  # the answer once known: later calls return it without rescanning

    def scan(self, text: str) -> int | None:
        """End index (exclusive); None if the text ends before the value closes; -1 if a character that cannot be
        JSON appears outside a string (so streaming gives up on a broken block early instead of buffering to EOS)."""
        if self.end is not None:
            return self.end
        for pos in range(self.pos, len(text)):
            char = text[pos]
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif char == "\\":
                    self.escaped = True
                elif char == '"':
                    self.in_string = False
                continue
            if char == '"':
                self.in_string = True
            elif char in "{[":
                self.depth += 1
            elif char in "}]":
                self.depth -= 1
                if self.depth <= 0:
                    self.end = pos + 1 if self.depth == 0 else -1
                    return self.end
            elif char not in _JSON_BARE_CHARS:
                self.end = -1
                return -1
        self.pos = len(text)
        return None


def _scan_json_value(text: str, start: int) -> int | None:
    return _JsonScanner(start).scan(text)


def _calls_from_json(value: Any) -> list[ToolCall]:
    """Tool calls from a decoded object or list of objects; raises ConversationError if it is not call-shaped."""
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ConversationError("empty list of tool calls")
    return [ToolCall.from_any(item) for item in items]


def _looks_like_call(value: Any, known: set[str] | None) -> bool:
    """For lenient mode: is this decoded JSON plausibly a call (and not, say, a JSON answer the user asked for)?"""
    items = value if isinstance(value, list) else [value]
    if not items:
        return False
    for item in items:
        if not isinstance(item, dict):
            return False
        body = item.get("function", item)
        if not isinstance(body, dict) or not isinstance(body.get("name"), str):
            return False
        if known is None:
            if "arguments" not in body and "parameters" not in body:
                return False
        elif body["name"] not in known:
            return False
    return True


# --------------------------------------------------------------------------------------------------------------------
# The state machine


class StreamingToolCallParser:
    """Incremental parser; see the module docstring for the event types and rules."""

    def __init__(self, tools: ToolsLike = None, lenient: bool = False) -> None:
        self.known = tool_names(tools)
        self.schemas = tool_schemas(tools)
        self.lenient = lenient
        self.calls: list[ToolCall] = []
        self.errors: list[str] = []
        self.unknown_names: list[str] = []
        self._content: list[str] = []
        self._buffer = ""  # unconsumed text (outside a block, or the body of the open block)
        self._scanner: _JsonScanner | None = None  # progress through the JSON value at the start of the block buffer
        self._text_searched = 0  # the held text before this offset holds no opening tag
        self._in_block = False
        self._block_has_calls = False
        self._at_segment_start = True  # drop whitespace at output start and right after a block
        self._held_whitespace = ""  # trailing whitespace: content if more text follows, layout if a block follows
        self._finished = False

    # ---- public API ----

    def feed(self, delta: str) -> list[StreamEvent]:
        if self._finished:
            raise RuntimeError("feed() after finish()")
        self._buffer += delta
        return self._process(eos=False)

    def finish(self) -> list[StreamEvent]:
        if self._finished:
            return []
        events = self._process(eos=True)
        self._finished = True
        return events

    def result(self) -> ParseResult:
        return ParseResult(
            calls=list(self.calls),
            content="".join(self._content).strip(),
            errors=list(self.errors),
            unknown_names=list(self.unknown_names),
        )

    # ---- internals ----

    def _process(self, eos: bool) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        while True:
            progressed = self._step_block(events, eos) if self._in_block else self._step_text(events, eos)
            if not progressed:
                return events

    def _emit_text(self, events: list[StreamEvent], text: str, final: bool) -> None:
        """Emit plain text, applying the whitespace-is-layout rule around blocks and at the ends."""
        if self._at_segment_start:
            text = text.lstrip()
            if not text:
                return
            self._at_segment_start = False
        stripped = text.rstrip()
        if not stripped:
            self._held_whitespace += text
            return
        out = self._held_whitespace + stripped
        self._held_whitespace = "" if final else text[len(stripped) :]
        self._content.append(out)
        events.append(ContentDelta(out))

    def _emit_segment(self, events: list[StreamEvent], text: str) -> None:
        """A complete text segment (before a block or at EOS); in lenient mode, pull bare/fenced calls out of it."""
        if not self.lenient:
            self._emit_text(events, text, final=False)
            return
        pos = 0
        for start, end, calls in self._lenient_calls(text):
            self._emit_text(events, text[pos:start], final=False)
            self._emit_calls(events, calls, inline=not self._at_segment_start)
            pos = end
        self._emit_text(events, text[pos:], final=False)

    def _emit_calls(self, events: list[StreamEvent], calls: list[ToolCall], inline: bool = False) -> None:
        # Whitespace held before a block is layout and text after it starts a new segment; a lenient call found
        # inside prose (``inline``) keeps the prose's spacing instead.
        if not inline:
            self._held_whitespace = ""
            self._at_segment_start = True
        for call in calls:
            if self.known is not None and call.name not in self.known:
                self.unknown_names.append(call.name)
            events.append(ToolCallDone(call=call, index=len(self.calls)))
            self.calls.append(call)

    def _step_text(self, events: list[StreamEvent], eos: bool) -> bool:
        buffer = self._buffer
        tag_at = buffer.find(OPEN_TAG, self._text_searched)
        if tag_at >= 0:
            self._text_searched = 0
            self._emit_segment(events, buffer[:tag_at])
            self._held_whitespace = ""
            self._buffer = buffer[tag_at + len(OPEN_TAG) :]
            self._in_block = True
            self._block_has_calls = False
            return True
        if eos:
            self._buffer = ""
            self._emit_segment(events, buffer)
            self._held_whitespace = ""  # trailing whitespace of the whole output is not content
            return False
        # Hold back what could still become an opening tag, and in lenient mode everything from a JSON start.
        safe_end = len(buffer)
        for keep in range(min(len(OPEN_TAG) - 1, len(buffer)), 0, -1):
            if OPEN_TAG.startswith(buffer[-keep:]):
                safe_end = len(buffer) - keep
                break
        if self.lenient:
            candidates = [i for i in (buffer.find("{"), buffer.find("["), buffer.find("`")) if 0 <= i < safe_end]
            if candidates:
                safe_end = min(candidates)
        if safe_end > 0:
            self._emit_text(events, buffer[:safe_end], final=False)
            self._buffer = buffer = buffer[safe_end:]
        # Text held in lenient mode can grow long: next time, search only where a new tag could start.
        self._text_searched = max(0, len(buffer) - len(OPEN_TAG) + 1)
        return False

    def _step_block(self, events: list[StreamEvent], eos: bool) -> bool:
        buffer = self._buffer
        pos = len(buffer) - len(buffer.lstrip())
        rest = buffer[pos:]
        if rest.startswith(CLOSE_TAG):
            if not self._block_has_calls:
                return self._malformed(events, eos, "empty block")
            self._close_block(buffer[pos + len(CLOSE_TAG) :])
            return True
        if not rest:
            if not eos:
                return False
            if not self._block_has_calls:
                return self._malformed(events, eos, "empty block")
            self._close_block("")  # unclosed final block whose calls were complete: accept
            return True
        if CLOSE_TAG.startswith(rest):
            if not eos:
                return False  # a closing tag still arriving
            if self._block_has_calls:  # output stopped inside the closing tag: the calls are complete
                self._close_block("")
                return True
        if rest[0] in "{[":
            if self._scanner is None or self._scanner.start != pos:
                self._scanner = _JsonScanner(pos)
            end = self._scanner.scan(buffer)
            if end is None and not eos:
                return False
            if end is not None and end > 0:
                raw = buffer[pos:end]
                try:
                    calls = _calls_from_json(json.loads(raw))
                except json.JSONDecodeError as exc:
                    return self._malformed(events, eos, f"invalid JSON ({exc.msg})")
                except ConversationError as exc:
                    return self._malformed(events, eos, f"not a tool call ({exc})")
                self._emit_calls(events, calls)
                self._block_has_calls = True
                self._buffer = buffer[end:]
                self._scanner = None
                return True
            return self._malformed(events, eos, "JSON incomplete at end of output" if end is None else "invalid JSON")
        return self._malformed(events, eos, "no JSON object")

    def _malformed(self, events: list[StreamEvent], eos: bool, reason: str) -> bool:
        """Keep the raw block as content (never lose what the model wrote) and record why it was not a call."""
        buffer = self._buffer
        close_at = buffer.find(CLOSE_TAG)
        if close_at < 0 and not eos:
            return False  # wait for the block to end so the whole raw text is kept together
        body = buffer if close_at < 0 else buffer[:close_at]
        if self._block_has_calls:
            raw = body.strip()
            where = "text after a call in <tool_call> block"
        else:
            raw = OPEN_TAG + body + (CLOSE_TAG if close_at >= 0 else "")
            where = "<tool_call> block" if close_at >= 0 else "unclosed <tool_call> block"
        self.errors.append(f"{where}: {reason}: {body.strip()[:120]!r}")
        self._held_whitespace = ""
        self._emit_text(events, raw, final=False)
        self._close_block("" if close_at < 0 else buffer[close_at + len(CLOSE_TAG) :], layout=False)
        return True

    def _close_block(self, rest: str, layout: bool = True) -> None:
        """Leave the block; ``layout`` says whitespace after it is layout (a real call) or content (kept raw text)."""
        self._buffer = rest
        self._scanner = None
        self._in_block = False
        self._at_segment_start = layout
        self._held_whitespace = ""

    def _lenient_calls(self, text: str) -> list[tuple[int, int, list[ToolCall]]]:
        """(start, end, calls) spans of bare or fenced JSON calls in a text segment, in order."""
        spans: list[tuple[int, int, list[ToolCall]]] = []
        pos = 0
        while pos < len(text):
            fence = text.find("```", pos)
            brace = min((i for i in (text.find("{", pos), text.find("[", pos)) if i >= 0), default=-1)
            if fence >= 0 and (brace < 0 or fence < brace):
                close = text.find("```", fence + 3)
                if close < 0:
                    break
                inner = text[fence + 3 : close]
                if inner.startswith("json"):
                    inner = inner[4:]
                calls = self._lenient_decode(inner.strip())
                if calls:
                    spans.append((fence, close + 3, calls))
                pos = close + 3
                continue
            if brace < 0:
                break
            end = _scan_json_value(text, brace)
            if end is None or end < 0:
                pos = brace + 1
                continue
            calls = self._lenient_decode(text[brace:end])
            if calls:
                spans.append((brace, end, calls))
                pos = end
            else:
                pos = brace + 1
        return spans

    def _lenient_decode(self, raw: str) -> list[ToolCall] | None:
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            return None
        if not _looks_like_call(value, self.known):
            return None
        try:
            calls = _calls_from_json(value)
        except ConversationError:
            return None
        # Untagged JSON is a call only when its arguments fit the tool's schema: a JSON answer that merely names a
        # tool (or is about one) stays text.
        if not all(arguments_fit(call.arguments, self.schemas.get(call.name)) for call in calls):
            return None
        return calls
