"""``jinja``: train with the tokenizer's own chat template, so the training prompt is exactly the serving prompt.

The conversation is rendered whole (the text ``apply_chat_template`` gives) and tokenized in one piece, as serving
does. Each assistant span is found by rendering the conversation up to that message twice — with the generation
prompt, and with the message — and checking both are prefixes of the whole rendering; only those spans are trained.
A template that rewrites earlier turns depending on what follows (some drop past reasoning) fails that check, and the
conversation is reported rather than trained on the wrong text.
"""

from __future__ import annotations

import bisect
from typing import Any

from tooltune import chat_template
from tooltune.conversation import Conversation
from tooltune.templates.base import Template, TemplateError, TokenTurns, Turn


class JinjaTemplate(Template):
    name = "jinja"

    def __init__(self, tokenizer: Any, source: str | None = None, default_system: str | None = None) -> None:
        super().__init__(tokenizer)
        self.default_system = default_system
        template = source if source is not None else getattr(tokenizer, "chat_template", None)
        if isinstance(template, dict):  # named templates: take "default" like transformers
            template = template.get("default") or next(iter(template.values()), None)
        if not isinstance(template, str) or not template:
            raise TemplateError("template jinja: the tokenizer has no chat template (use --template qwen)")
        self.source = template
        self.bos_token = getattr(tokenizer, "bos_token", None) or ""
        self.eos_token = getattr(tokenizer, "eos_token", None) or ""

    def _render(self, conv: Conversation, count: int, add_generation_prompt: bool) -> str:
        messages = conv.template_messages()[:count]
        if self.default_system is not None and conv.system is None:
            # Same prepended system message in training and in render_prompt, so eval prompts stay equal.
            messages = [{"role": "system", "content": self.default_system}, *messages]
        try:
            return chat_template.render(
                self.source,
                messages,
                tools=conv.template_tools(),
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            )
        except chat_template.ChatTemplateError as exc:
            raise TemplateError(f"{conv.where()}: {exc}") from None

    def spans(self, conv: Conversation) -> tuple[str, list[tuple[int, int]]]:
        """The whole rendering and the (start, end) character span of each assistant message in it."""
        full = self._render(conv, len(conv.messages), False)
        spans: list[tuple[int, int]] = []
        for position, message in enumerate(conv.messages):
            if message.role != "assistant":
                continue
            before = self._render(conv, position, True)
            upto = self._render(conv, position + 1, False)
            if not (full.startswith(upto) and upto.startswith(before)) or (spans and len(before) < spans[-1][1]):
                raise TemplateError(
                    f"{conv.where()}: the chat template renders message {position} differently depending on what "
                    "follows, so its trained span is ambiguous (use --template qwen)"
                )
            spans.append((len(before), len(upto)))
        if not spans:
            raise TemplateError(f"{conv.where()}: no assistant message to train on")
        return full, spans

    def turns(self, conv: Conversation) -> list[Turn]:
        full, spans = self.spans(conv)
        turns: list[Turn] = []
        cursor = 0
        for start, end in spans:
            turns.append(Turn(prompt_parts=[full[cursor:start]], response=full[start:end]))
            cursor = end
        return turns

    def encode_turns(self, conversations: list[Conversation]) -> list[TokenTurns | TemplateError]:
        """Tokenize each whole rendering once (as serving does) and cut the ids at the span boundaries."""
        rendered: list[tuple[str, list[tuple[int, int]]] | TemplateError] = []
        for conv in conversations:
            try:
                rendered.append(self.spans(conv))
            except TemplateError as exc:
                rendered.append(exc)
        texts = [item[0] for item in rendered if not isinstance(item, TemplateError)]
        batch = self.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True) if texts else None
        out: list[TokenTurns | TemplateError] = []
        row = 0
        for item in rendered:
            if isinstance(item, TemplateError):
                out.append(item)
                continue
            ids = list(batch["input_ids"][row])
            starts = [offset[0] for offset in batch["offset_mapping"][row]]
            row += 1
            turns: TokenTurns = []
            cursor = 0
            for start, end in item[1]:
                # A token belongs to the span its first character falls in.
                first = bisect.bisect_left(starts, start)
                last = bisect.bisect_left(starts, end)
                turns.append((ids[cursor:first], ids[first:last]))
                cursor = last
            out.append(turns)
        return out

    def render_prompt(self, conversation_prefix: Conversation) -> str:
        return self._render(conversation_prefix, len(conversation_prefix.messages), True)

    @property
    def jinja_chat_template(self) -> str:
        return self.source
