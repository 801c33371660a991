"""One assistant turn for every caller: render → generate (streaming) → parse, per family.

``respond(engine, conversation, tools, options, tool_choice) -> Reply(prompt, raw, content, thinking, calls)`` is
what ``tooltune chat`` and evaluation call (the serve APIs use its parsers and ``forced_call`` per request, see
``tooltune.serve.family_reply``): the prompt is the family's chat template render, the reply is parsed with the
family's call syntax, and reasoning comes back separately.

``tool_choice``: ``auto`` (the model decides), ``required`` (some tool) or a tool's name. Under ``auto`` on a llama.cpp
engine the model writes freely until it opens a call; the call itself is then held to the offered tools' schemas
(``constrained_call``: names, required arguments, types, enums), as llama.cpp's server does. Forced calls use a
grammar from the first token (llama.cpp engines only); for families whose calls open with a marker the grammar cannot
start with (Mistral's ``[TOOL_CALLS]``, Phi-4-mini's ``<|tool_call|>``) the marker is written into the prompt and then
into ``raw``, as the model would have written it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from tooltune import chat_template
from tooltune.conversation import Message, Tool, ToolCall
from tooltune.families import detect
from tooltune.families.errors import FamilyError
from tooltune.families.family import Family
from tooltune.families.parsers import Event, reply_parser
from tooltune.toolcalls import OPEN_TAG

_FORCED_PREFIX = {"mistral": "[TOOL_CALLS]", "phi4": "<|tool_call|>"}


@dataclass
class RespondOptions:
    params: Any = None  # tooltune.engines.SamplingParams; None: the engine's defaults
    lenient: bool = False  # accept bare JSON / ```json replies that name a known tool (Hermes families)
    enable_thinking: bool | None = None  # passed to templates that have the switch (Qwen3, SmolLM3); None: default
    on_event: Callable[[Event], None] | None = None  # streaming: reasoning, content and calls as they complete
    on_text: Callable[[str], None] | None = None  # streaming: raw text chunks
    constrain_calls: bool = True  # tool_choice auto: a call the model opens follows the tools' schemas (llama.cpp)


@dataclass
class Reply:
    prompt: str
    raw: str
    content: str
    thinking: str
    calls: list[ToolCall]
    errors: list[str] = field(default_factory=list)
    unknown_names: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    family: str | None = None


def engine_family(engine: Any) -> Family | None:
    return detect.from_template(getattr(engine, "chat_template", "") or "")


def template_messages(template: str, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages as ``template``'s family needs them, the way training renders them: families whose templates require
    call ids (Mistral) get the 9-character ids training gives calls without one (clients such as Ollama's send none)."""
    family = detect.from_template(template)
    if family is not None and family.tool_call_ids:
        from tooltune.templates.jinja import with_call_ids

        return with_call_ids(messages)
    return messages


def render_prompt(engine: Any, conversation: Iterable[Message | dict[str, Any]],
                  tools: Iterable[Tool | dict[str, Any]] | None, enable_thinking: bool | None = None) -> str:
    """The exact text the model sees: tools verbatim, as ``apply_chat_template(tools=...)`` receives them."""
    messages = [m.to_template() if isinstance(m, Message) else m for m in conversation]
    messages = template_messages(getattr(engine, "chat_template", "") or "", messages)
    specs = [t.spec if isinstance(t, Tool) else t for t in (tools or [])] or None
    extra = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
    if not getattr(engine, "chat_template", ""):
        raise FamilyError(f"{getattr(engine, 'name', 'model')}: no chat template; pass one with --chat-template")
    return chat_template.render(engine.chat_template, messages, tools=specs, add_generation_prompt=True,
                                bos_token=engine.bos_token, eos_token=engine.eos_token, **extra)


def forced_call(family: Family | None, tools: list[Tool], only: str | None, parallel: bool = False) -> tuple[str, str]:
    """(grammar, prefix) that force a call in ``family``'s call syntax: the grammar constrains what the model writes
    after the prompt, the prefix (Mistral's ``[TOOL_CALLS]``, Phi-4-mini's ``<|tool_call|>``: markers a grammar
    cannot start with) is written into the prompt and, by the caller, fed to the parser as the model's own text."""
    from tooltune.serve.grammar import tool_call_grammar

    syntax = family.call_syntax if family is not None else "hermes"
    grammar = tool_call_grammar(tools, only=only, parallel=parallel, tagged=syntax == "hermes",
                                arguments_key="parameters" if syntax == "llama3" else "arguments",
                                listed=syntax in _FORCED_PREFIX)
    return grammar, _FORCED_PREFIX.get(syntax, "")


# The text that opens a call in each family's syntax. Llama 3.2 writes a bare JSON object with no opener to wait
# for, so its calls are constrained only when forced.
_CALL_OPENERS = {"hermes": OPEN_TAG, **_FORCED_PREFIX}


def constrained_call(family: Family | None, tools: list[Tool], parallel: bool = True,
                     limits: Any = None) -> tuple[str, str] | None:
    """(opener, grammar) for ``tool_choice: auto``: once the model writes the family's call opener, the grammar holds
    the rest of its reply to calls of the offered tools (names, required arguments, types, enums). None when the
    family has no opener or a tool's schema cannot safely become a grammar — beyond the size/depth/repetition limits
    that keep llama.cpp's grammar compiler from crashing (``limits``: a server's ``RequestLimits``, the defaults
    otherwise), or one the converter cannot express: the reply is then read as the model wrote it."""
    from tooltune.conversation import ConversationError
    from tooltune.serve.grammar import GrammarError, tool_call_grammar
    from tooltune.serve.limits import LimitError, RequestLimits, check_schema

    syntax = family.call_syntax if family is not None else "hermes"
    opener = _CALL_OPENERS.get(syntax)
    if opener is None or not tools:
        return None
    limits = limits or RequestLimits()
    try:
        for tool in tools:
            check_schema(tool.json_schema(), f"tools.{tool.name}", limits)
    except (LimitError, ConversationError):
        return None
    try:
        grammar = tool_call_grammar(tools, parallel=parallel, tagged=syntax == "hermes",
                                    listed=syntax in _FORCED_PREFIX, opened=True)
    except GrammarError:
        return None
    return opener, grammar


def _forced(engine: Any, family: Family | None, tools: list[Tool], tool_choice: str, params: Any) -> tuple[Any, str]:
    """Sampling params with the call grammar, and the prefix written into the prompt for marker families."""
    if not tools:
        raise FamilyError(f"tool_choice {tool_choice}: no tools given")
    if not getattr(engine, "supports_grammar", False):
        raise FamilyError(f"tool_choice {tool_choice}: constrained decoding needs a GGUF model (llama.cpp)")
    if tool_choice != "required" and tool_choice not in {t.name for t in tools}:
        raise FamilyError(f"tool_choice {tool_choice!r}: no such tool ({', '.join(t.name for t in tools)})")
    grammar, prefix = forced_call(family, tools, None if tool_choice == "required" else tool_choice)
    return replace(params, grammar=grammar), prefix


def respond(engine: Any, conversation: Iterable[Message | dict[str, Any]],
            tools: Iterable[Tool | dict[str, Any]] | None = None, options: RespondOptions | None = None,
            tool_choice: str = "auto") -> Reply:
    from tooltune.engines import SamplingParams

    options = options or RespondOptions()
    tool_list = [t if isinstance(t, Tool) else Tool(t) for t in (tools or [])]
    family = engine_family(engine)
    params = options.params or SamplingParams()
    prompt = render_prompt(engine, conversation, tool_list, options.enable_thinking)
    prefix = ""
    if tool_choice not in ("auto", "none"):
        params, prefix = _forced(engine, family, tool_list, tool_choice, params)
    elif (tool_choice == "auto" and options.constrain_calls and getattr(engine, "supports_grammar", False)
          and params.grammar is None):
        lazy = constrained_call(family, tool_list)
        if lazy is not None:
            params = replace(params, call_trigger=lazy[0], call_grammar=lazy[1])
    # The prompt may already open the reasoning block (templates that end the generation prompt with <think>).
    thinking_open = bool(family and family.thinks and prompt.rstrip().endswith("<think>"))
    parser = reply_parser(family, tools=tool_list or None, lenient=options.lenient, thinking_open=thinking_open)

    def push(text: str) -> None:
        if options.on_text is not None:
            options.on_text(text)
        for event in parser.feed(text):
            if options.on_event is not None:
                options.on_event(event)

    started = time.perf_counter()
    if prefix:
        push(prefix)
    for chunk in engine.stream(prompt + prefix, params):
        push(chunk.text)
    for event in parser.finish():
        if options.on_event is not None:
            options.on_event(event)
    result = engine.last_result
    parsed = parser.result()
    return Reply(
        prompt=prompt + prefix,
        raw=prefix + (result.text if result is not None else ""),
        content=parsed.content,
        thinking=parsed.thinking,
        calls=parsed.calls,
        errors=parsed.errors,
        unknown_names=parsed.unknown_names,
        finish_reason=result.finish_reason if result is not None else None,
        prompt_tokens=result.prompt_tokens if result is not None else 0,
        completion_tokens=result.completion_tokens if result is not None else 0,
        seconds=time.perf_counter() - started,
        family=family.name if family is not None else None,
    )
