"""Prompt templates: how a Conversation becomes training text and ids, and the prompt a model sees when serving.

Public API (other stages code against these names):

    get_template(name, tokenizer, default_system=None) -> Template
    Template.turns(conv) -> list[Turn(prompt_parts, response)]      text of each prompt/response pair
    Template.encode_turns(conversations) -> list[[(prompt_ids, response_ids), ...] | TemplateError]
    Template.render_prompt(conversation_prefix) -> str              prompt up to the next assistant turn, with the
                                                                    generation prompt (what eval/serving feed a model)
    Template.render_text(conv) -> str                               the whole training text
    Template.jinja_chat_template -> str                             a chat template rendering exactly this layout;
                                                                    training/export save it with the tokenizer and GGUF
    TEMPLATES                                                       names accepted by --template

Templates: ``qwen`` (LLaMA-Factory 0.9.5's layout, bit-identical ids) and ``jinja`` (the tokenizer's own chat
template).
"""

from __future__ import annotations

from typing import Any

from tooltune.families.family import FAMILIES
from tooltune.templates.base import Template, TemplateError, TokenTurns, Turn
from tooltune.templates.jinja import JinjaTemplate
from tooltune.templates.qwen import QWEN_DEFAULT_SYSTEM, QwenTemplate
from tooltune.templates.tool_view import TOOL_VIEWS, OllamaToolView

TEMPLATES: dict[str, str] = {
    "qwen": "LLaMA-Factory's qwen layout (Hermes tool block, <tool_call> JSON), bit-identical to LLaMA-Factory 0.9.5",
    "jinja": "the tokenizer's own chat template; trains exactly the text apply_chat_template renders",
    **{name: f"{family.description} (tooltune's {name} template)" for name, family in FAMILIES.items()
       if family.shipped_template},
}


def get_template(name: str, tokenizer: Any, default_system: str | None = None, thinking: str = "keep",
                 tool_view: str = "as_given") -> Template:
    """The template called ``name`` bound to ``tokenizer``; ``default_system`` replaces the template's default;
    ``thinking`` (keep | empty | off) is what reasoning families train on (see ``JinjaTemplate``); ``tool_view``
    (as_given | ollama) how tools are shown (see ``templates.tool_view``)."""
    if tool_view not in TOOL_VIEWS:
        raise TemplateError(f"unknown --tool_view {tool_view!r} (expected one of {', '.join(TOOL_VIEWS)})")
    if tool_view == "ollama":
        return OllamaToolView(get_template(name, tokenizer, default_system, thinking))
    if name == "qwen":
        return QwenTemplate(tokenizer, default_system=default_system)
    if name == "jinja":
        return JinjaTemplate(tokenizer, default_system=default_system, thinking=thinking)
    family = FAMILIES.get(name)
    if family is not None and family.shipped_template:
        return JinjaTemplate(tokenizer, source=family.template_text(), default_system=default_system,
                             thinking=thinking, family=family, name=name)
    import difflib

    close = difflib.get_close_matches(name, list(TEMPLATES), n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise TemplateError(
        f"unknown template {name!r}{hint}; available: {', '.join(TEMPLATES)} (a model whose template tooltune does "
        "not ship, such as llama3.2 or hermes3, trains with --template jinja, which uses the tokenizer's own)"
    )


__all__ = [
    "QWEN_DEFAULT_SYSTEM",
    "TEMPLATES",
    "JinjaTemplate",
    "QwenTemplate",
    "Template",
    "TemplateError",
    "TokenTurns",
    "Turn",
    "get_template",
]
