"""How both serve APIs read a reply: the served template's family decides the call syntax, the reasoning split and
how a forced call is written — the same ``tooltune.families`` parsers and grammar ``respond`` uses.

One ``ReplyReader`` per request: ``prefix`` is text written into the prompt before generation (a forced Mistral /
Phi-4-mini call marker) and already fed to the parser; ``feed``/``finish`` turn the model's text into events
(``ThinkingDelta``, ``ContentDelta``, ``ToolCallDone``); ``result`` is the parsed reply.
"""

from __future__ import annotations

import functools
from typing import Any

from tooltune.conversation import Tool
from tooltune.families import detect
from tooltune.families.family import Family
from tooltune.families.parsers import THINK_OPEN, Event, ParsedReply, ReplyParser, reply_parser
from tooltune.families.respond import constrained_call, forced_call
from tooltune.toolcalls import ContentDelta


@functools.lru_cache(maxsize=16)
def family_of_template(chat_template: str) -> Family | None:
    """The served template's family (None: unknown, read as Hermes ``<tool_call>`` blocks)."""
    return detect.from_template(chat_template or "")


class _TextOnly:
    """Inner parser for replies whose calls are not read (no tools, ``tool_choice: none``): all text is content."""

    def __init__(self) -> None:
        self._parts: list[str] = []

    def feed(self, delta: str) -> list[Event]:
        self._parts.append(delta)
        return [ContentDelta(delta)] if delta else []

    def finish(self) -> list[Event]:
        return []

    def result(self) -> ParsedReply:
        return ParsedReply(content="".join(self._parts))


class ReplyReader:
    def __init__(self, chat_template: str, prompt: str, tools: list[Tool], parse_calls: bool,
                 forced: str | None = None, parallel: bool = True, bare_json_calls: bool = False,
                 constrain_calls: bool = False, limits: Any = None) -> None:
        """``forced``: None (the model decides), "" (some tool) or a tool's name; ``bare_json_calls``: when the model
        decides, also read a bare JSON / ```json call naming an offered tool (the parsers' ``lenient``);
        ``constrain_calls``: when the model decides and opens a call, hold the call to the tools' schemas
        (``call_trigger``/``call_grammar`` go into the request's sampling parameters), for schemas within ``limits``
        (the server's ``RequestLimits``)."""
        self.family = family_of_template(chat_template)
        self.grammar: str | None = None
        self.prefix = ""
        self.call_trigger: str | None = None
        self.call_grammar: str | None = None
        if forced is not None:
            self.grammar, self.prefix = forced_call(self.family, tools, forced or None, parallel=parallel)
        elif constrain_calls and parse_calls and tools:
            lazy = constrained_call(self.family, tools, parallel=parallel, limits=limits)
            if lazy is not None:
                self.call_trigger, self.call_grammar = lazy
        thinks = bool(self.family and self.family.thinks)
        # Templates that end the generation prompt with <think> have opened the reasoning block already.
        thinking_open = thinks and prompt.rstrip().endswith(THINK_OPEN)
        if parse_calls and tools:
            self.parser = reply_parser(self.family, tools=tools, thinking_open=thinking_open,
                                       lenient=bare_json_calls and forced is None)
        else:
            self.parser = ReplyParser(_TextOnly(), thinks=thinks, thinking_open=thinking_open)  # type: ignore[arg-type]
        self._pending = self.parser.feed(self.prefix) if self.prefix else []

    @property
    def passthrough(self) -> bool:
        """Text goes out as generated (no calls to read, no reasoning to split): the old plain path."""
        return isinstance(self.parser.calls, _TextOnly) and not self.parser.thinks

    def feed(self, delta: str) -> list[Event]:
        events, self._pending = self._pending + self.parser.feed(delta), []
        return events

    def finish(self) -> list[Event]:
        events, self._pending = self._pending + self.parser.finish(), []
        return events

    def result(self) -> ParsedReply:
        return self.parser.result()
