"""``jinja`` (the tokenizer's own chat template) and the family templates (``qwen3``, ``mistral``, ...): train with a
chat template, so the training text is exactly the text the model is served.

The conversation is rendered whole (the text ``apply_chat_template`` gives) and tokenized in one piece, as serving
does. Each assistant message's span is found by rendering the conversation up to that message twice — with the
generation prompt (the inference-time prompt), and with the message — and checking both are prefixes of the whole
rendering; only those spans are trained.

Templates that rewrite history (Qwen3 drops the ``<think>`` block of turns before the last user query; Mistral moves
the tool list and the system prompt to the last user turn) fail that check. Such a conversation is not dropped: it
becomes one sample per assistant message, each the rendering up to and including that message, with only that
message trained — exactly the context the model sees when it writes that reply.

Reasoning (``--thinking``): ``keep`` trains ``<think>…</think>`` as the data has it; ``empty`` strips the reasoning
and trains the family's empty think block (the model learns to answer without reasoning while keeping the format);
``off`` strips it and renders with ``enable_thinking=False`` / ``/no_think``, so the empty block is part of the prompt
and not trained. Families without reasoning ignore the setting.

A conversation whose tools or calls the template cannot show (SmolLM3's upstream template drops calls, Phi-4-mini's
ignores ``tools=``, Gemma 3's has no tools) is refused with the reason, never trained on text with the calls missing.
"""

from __future__ import annotations

import bisect
import os
import re
from typing import Any, Literal

from tooltune import chat_template
from tooltune.conversation import Conversation, Tool, openai_tool
from tooltune.families import detect
from tooltune.families.family import Family
from tooltune.templates.base import Template, TemplateError, TokenTurns, Turn
from tooltune.toolcalls import CLOSE_TAG

Thinking = Literal["keep", "empty", "off"]
THINKING_POLICIES: tuple[str, ...] = ("keep", "empty", "off")
_THINK_BLOCK = re.compile(r"^\s*<think>.*?</think>\s*", re.DOTALL)
# The empty reasoning block a family writes for a reply without reasoning, where its template does not add it itself.
_EMPTY_THINK = {"smollm3": "<think>\n\n</think>\n"}

# One rendering and the character spans of the assistant messages trained in it.
View = tuple[str, list[tuple[int, int]]]


def strip_thinking(content: str) -> str:
    return _THINK_BLOCK.sub("", content, count=1)


def as_client_sends(tool: Tool) -> dict[str, Any]:
    """A tool the way OpenAI/Ollama clients send it, and so the way vLLM and Ollama hand it to the template.

    Data often stores bare functions (glaive, LLaMA-Factory's sharegpt); templates that print each tool as received
    (Llama 3.2, Qwen2.5's own, Hermes) would then train on text no server ever shows. A bare function whose
    ``parameters`` is already a JSON schema is wrapped with its keys untouched; other shapes (the seed's list of
    parameters) become the OpenAI schema a client would send.
    """
    spec = tool.spec
    wrapped = openai_tool(spec)
    if wrapped is spec or (isinstance(spec.get("parameters", {}), dict) and isinstance(spec.get("name"), str)):
        return wrapped
    return tool.to_openai()


def offered_tool(tool: Tool, template_name: str) -> dict[str, Any]:
    """A tool as a Jinja chat template is handed it, in training and in the held-out prompts alike: the families'
    templates read the OpenAI shape serving clients send; the tokenizer's own (``jinja``) gets tools as clients send
    them (``as_client_sends``: keys of a schema left untouched)."""
    return as_client_sends(tool) if template_name == "jinja" else tool.to_openai()


def with_call_ids(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Give calls without an id a 9-character one (Mistral's templates refuse others) and point each tool result
    without ``tool_call_id`` at the oldest unanswered call, so data without ids (glaive, ShareGPT) renders."""
    out: list[dict[str, Any]] = []
    pending: list[str] = []
    counter = 0
    for message in messages:
        message = dict(message)
        if message.get("tool_calls"):
            calls = []
            for call in message["tool_calls"]:
                call = dict(call)
                if not isinstance(call.get("id"), str) or len(call["id"]) != 9 or not call["id"].isalnum():
                    counter += 1
                    call["id"] = f"call{counter:05d}"
                pending.append(call["id"])
                calls.append(call)
            message["tool_calls"] = calls
        elif message["role"] == "tool":
            given = message.get("tool_call_id")
            if isinstance(given, str) and given in pending:
                pending.remove(given)
            elif pending:
                message["tool_call_id"] = pending.pop(0)
        out.append(message)
    return out


class JinjaTemplate(Template):
    name = "jinja"

    def __init__(self, tokenizer: Any, source: str | None = None, default_system: str | None = None,
                 thinking: str = "keep", family: Family | None = None, name: str | None = None) -> None:
        super().__init__(tokenizer)
        if thinking not in THINKING_POLICIES:
            raise TemplateError(f"unknown --thinking {thinking!r} (expected one of {', '.join(THINKING_POLICIES)})")
        self.default_system = default_system
        self.thinking = thinking
        if name:
            self.name = name
        template = source if source is not None else getattr(tokenizer, "chat_template", None)
        # Named templates (Hermes, Command-R): transformers renders a conversation that has tools with "tool_use" and
        # any other with "default" — taking "default" alone would refuse every tool conversation. The pair becomes the
        # one template every single-template consumer gets (export, GGUF, vLLM), which makes that choice inside.
        tool_use = None
        if isinstance(template, dict):
            tool_use = template.get("tool_use") if isinstance(template.get("tool_use"), str) else None
            template = template.get("default") or tool_use or next(iter(template.values()), None)
        if not isinstance(template, str) or not template:
            raise TemplateError("template jinja: the tokenizer has no chat template (use --template qwen)")
        self.source = chat_template.combine_named(template, tool_use)
        self.family = family or detect.from_template(tool_use or template)
        self.bos_token = getattr(tokenizer, "bos_token", None) or ""
        self.eos_token = getattr(tokenizer, "eos_token", None) or ""

    # ---- rendering ----

    def _messages(self, conv: Conversation, count: int) -> list[dict[str, Any]]:
        messages = conv.template_messages()[:count]
        if self.default_system is not None and conv.system is None:
            # Same prepended system message in training and in render_prompt, so eval prompts stay equal.
            messages = [{"role": "system", "content": self.default_system}, *messages]
        if self.family is not None and self.family.tool_call_ids:
            messages = with_call_ids(messages)
        if self.thinking != "keep" and self.family is not None and self.family.thinks:
            empty = _EMPTY_THINK.get(self.family.name, "") if self.thinking == "empty" else ""
            for message in messages:
                if message["role"] == "assistant":
                    message.pop("reasoning_content", None)
                    message["content"] = empty + strip_thinking(message.get("content") or "")
        return messages

    def _render(self, conv: Conversation, count: int, add_generation_prompt: bool) -> str:
        extra: dict[str, Any] = {}
        if self.thinking == "off" and self.family is not None and self.family.thinks:
            extra["enable_thinking"] = False
        tools = conv.template_tools()
        if tools:
            tools = [offered_tool(tool, self.name) for tool in conv.tools]
        try:
            return chat_template.render(
                self.source,
                self._messages(conv, count),
                tools=tools,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
                **extra,
            )
        except chat_template.ChatTemplateError as exc:
            raise TemplateError(f"{conv.where()}: {exc}") from None

    def _check_shows_tools(self, conv: Conversation, text: str) -> None:
        """Refuse tool data the template cannot show (the reason names what is missing)."""
        missing = [tool.name for tool in conv.tools if tool.name not in text]
        if missing:
            raise TemplateError(
                f"{conv.where()}: the chat template does not show the tools ({', '.join(missing)}) in the prompt; "
                f"use a tool-capable template ({self._fix_hint()})"
            )

    def _check_reply_shows_calls(self, conv: Conversation, position: int, reply: str) -> None:
        for call in conv.messages[position].tool_calls:
            if call.name not in reply:
                raise TemplateError(
                    f"{conv.where()}: the chat template drops the tool call {call.name!r} of message {position}; "
                    f"training on it would teach replies without their calls ({self._fix_hint()})"
                )

    def _fix_hint(self) -> str:
        if self.family is not None and self.family.shipped_template:
            return f"--template {self.family.name} is tooltune's corrected {self.family.name} template"
        return "pass --template with a family name, or a Jinja file that renders tools and tool_calls"

    def views(self, conv: Conversation) -> list[View]:
        """The renderings to train on: one (whole conversation, every assistant span) when the template keeps earlier
        turns as they were, else one per assistant message (see the module docstring)."""
        full = self._render(conv, len(conv.messages), False)
        self._check_shows_tools(conv, full)
        positions = [i for i, m in enumerate(conv.messages) if m.role == "assistant"]
        if not positions:
            raise TemplateError(f"{conv.where()}: no assistant message to train on")
        per_message: list[View] = []
        spans: list[tuple[int, int]] | None = []
        for position in positions:
            before = self._render(conv, position, True)
            upto = self._render(conv, position + 1, False)
            if not upto.startswith(before):
                upto = self._in_inference_context(conv, position, before, upto)
            if not upto.startswith(before) or len(upto) == len(before):
                raise TemplateError(
                    f"{conv.where()}: the chat template's generation prompt is not how it renders assistant message "
                    f"{position}, so the reply the model must learn cannot be located"
                )
            self._check_reply_shows_calls(conv, position, upto[len(before):])
            per_message.append((upto, [(len(before), len(upto))]))
            if spans is None:
                continue
            reply = upto[len(before):]
            if self.eos_token and reply.endswith(self.eos_token) and not full.startswith(upto):
                reply = reply[: -len(self.eos_token)]  # an end-of-conversation token only the last reply keeps
            if full.startswith(before + reply) and (not spans or len(before) >= spans[-1][1]):
                spans.append((len(before), len(before) + len(reply)))
            else:
                spans = None
        if spans is not None:
            return [(full, spans)]
        return per_message

    def _in_inference_context(self, conv: Conversation, position: int, before: str, upto: str) -> str:
        """The reply rendered after the prompt the model sees at inference, for templates that close the message
        before a reply differently when it is the last one (Hermes 3 closes a last tool result without the newline it
        puts inside a conversation). The reply is what follows the generation prompt in the longer rendering; it is
        trained after ``before``, the text a server renders when asking for it. ``upto`` is returned as it was when
        the generation prompt cannot be found (the caller then refuses the conversation)."""
        plain = self._render(conv, position, False)
        generation_prompt = before[len(plain):] if before.startswith(plain) else ""
        if not generation_prompt:
            return upto
        shared = len(os.path.commonprefix([before, upto]))
        start = upto.find(generation_prompt, max(0, shared - len(generation_prompt)))
        if start < 0:
            return upto
        return before + upto[start + len(generation_prompt):]

    def spans(self, conv: Conversation) -> tuple[str, list[tuple[int, int]]]:
        """The whole rendering and each assistant span, for templates that keep earlier turns as they were."""
        views = self.views(conv)
        if len(views) != 1:
            raise TemplateError(
                f"{conv.where()}: the chat template renders earlier turns differently depending on what follows; "
                "it is trained one assistant message per sample (see views())"
            )
        return views[0]

    def turns(self, conv: Conversation) -> list[Turn]:
        turns: list[Turn] = []
        for text, spans in self.views(conv):
            cursor = 0
            for start, end in spans:
                turns.append(Turn(prompt_parts=[text[cursor:start]], response=text[start:end]))
                cursor = end
        return turns

    def render_text(self, conv: Conversation) -> str:
        """The whole conversation as the template renders it (apply_chat_template's text)."""
        return self._render(conv, len(conv.messages), False)

    # ---- token ids ----

    def encode_samples(self, conversations: list[Conversation]) -> list[list[TokenTurns] | TemplateError]:
        """Tokenize each rendering once (as serving does) and cut the ids at the span boundaries."""
        rendered: list[list[View] | TemplateError] = []
        for conv in conversations:
            try:
                rendered.append(self.views(conv))
            except TemplateError as exc:
                rendered.append(exc)
        texts = [text for item in rendered if not isinstance(item, TemplateError) for text, _ in item]
        batch = self.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True) if texts else None
        out: list[list[TokenTurns] | TemplateError] = []
        row = 0
        for item in rendered:
            if isinstance(item, TemplateError):
                out.append(item)
                continue
            samples: list[TokenTurns] = []
            for _text, spans in item:
                ids = list(batch["input_ids"][row])
                starts = [offset[0] for offset in batch["offset_mapping"][row]]
                ends = [offset[1] for offset in batch["offset_mapping"][row]]
                row += 1
                turns: TokenTurns = []
                cursor = 0
                for start, end in spans:
                    # A token is trained when any of its characters is in the span: one that straddles the prompt
                    # and the reply (no special token between them) is part of what the model must write.
                    first = max(cursor, bisect.bisect_right(ends, start))
                    last = bisect.bisect_left(starts, end)
                    turns.append((ids[cursor:first], ids[first:last]))
                    cursor = last
                samples.append(turns)
            out.append(samples)
        return out

    def encode_turns(self, conversations: list[Conversation]) -> list[TokenTurns | TemplateError]:
        """One sequence per conversation; a conversation that needs one sample per message is an error here."""
        out: list[TokenTurns | TemplateError] = []
        for conv, samples in zip(conversations, self.encode_samples(conversations), strict=True):
            if isinstance(samples, TemplateError) or len(samples) == 1:
                out.append(samples[0] if isinstance(samples, list) else samples)
            else:
                out.append(TemplateError(
                    f"{conv.where()}: the chat template renders earlier turns differently depending on what follows; "
                    "encode it with encode_samples (one sample per assistant message)"
                ))
        return out

    def render_prompt(self, conversation_prefix: Conversation) -> str:
        return self._render(conversation_prefix, len(conversation_prefix.messages), True)

    @property
    def call_close(self) -> str | None:
        # Hermes-style families close each call with </tool_call>; the others write all calls in one list, where
        # no marker ends a single call.
        return CLOSE_TAG if self.family is not None and self.family.call_syntax == "hermes" else None

    @property
    def jinja_chat_template(self) -> str:
        return self.source
