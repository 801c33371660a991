"""``--tool_view ollama``: train on tools and call arguments exactly as Ollama will show them to the model.

Ollama decodes a request's tools into Go structs and maps before its TEMPLATE runs: object keys come out sorted and
schema keys it has no field for (``format``, ``default``, ``minimum``, ...) are gone. A model trained on the tools as
given then sees slightly different text under Ollama than in training. With ``ollama`` every conversation is rewritten
the same way before the template lays it out (``serve.modelfile.canonicalize_for_ollama``), so Ollama's prompt is
byte-identical to training. Default ``as_given``: the text HF, vLLM and ``tooltune serve`` render (they pass tools
through untouched), and LLaMA-Factory's ids stay bit-identical.
"""

from __future__ import annotations

from typing import Any

from tooltune.conversation import Conversation, Message, Tool
from tooltune.templates.base import Template, TemplateError, TokenTurns, Turn

TOOL_VIEWS: tuple[str, ...] = ("as_given", "ollama")


def ollama_view(conv: Conversation) -> Conversation:
    from tooltune.serve.modelfile import canonicalize_for_ollama

    tools = [tool.to_openai() for tool in conv.tools] or None
    messages, new_tools = canonicalize_for_ollama(conv.template_messages(), tools)
    return Conversation(
        messages=[Message.from_openai(m) for m in messages],
        tools=[Tool(t) for t in new_tools or []],
        source=conv.source,
        index=conv.index,
    )


class OllamaToolView(Template):
    """Any template, fed conversations as Ollama will show them."""

    def __init__(self, inner: Template) -> None:
        super().__init__(inner.tokenizer)
        self.inner = inner
        self.name = inner.name

    def turns(self, conv: Conversation) -> list[Turn]:
        return self.inner.turns(ollama_view(conv))

    def render_text(self, conv: Conversation) -> str:
        return self.inner.render_text(ollama_view(conv))

    def render_prompt(self, conversation_prefix: Conversation) -> str:
        return self.inner.render_prompt(ollama_view(conversation_prefix))

    def encode_turns(self, conversations: list[Conversation]) -> list[TokenTurns | TemplateError]:
        return self.inner.encode_turns([ollama_view(c) for c in conversations])

    def encode_samples(self, conversations: list[Conversation]) -> list[list[TokenTurns] | TemplateError]:
        return self.inner.encode_samples([ollama_view(c) for c in conversations])

    @property
    def jinja_chat_template(self) -> str:
        return self.inner.jinja_chat_template

    @property
    def call_close(self) -> str | None:
        return self.inner.call_close

    def __getattr__(self, name: str) -> Any:  # family, source, thinking ... of the wrapped template
        return getattr(self.inner, name)
