"""What a prompt template is: a way to lay a Conversation out as (prompt, response) turns of text and token ids.

A template yields one ``Turn`` per assistant message: the prompt text since the previous response (``prompt_parts``)
and the response the model learns to produce. ``encode.py`` applies masking and cutoff to the token ids of these
turns; ``render_prompt`` gives the text a model sees at inference, so evaluation prompts equal training prompts.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from tooltune.conversation import Conversation
from tooltune.errors import TooltuneError

TokenTurns = list[tuple[list[int], list[int]]]  # (prompt ids, response ids) per assistant turn


class TemplateError(TooltuneError, ValueError):
    """A conversation or tokenizer the template cannot handle; the message says which and why."""


@dataclass
class Turn:
    """Text of one prompt/response pair. Parts of the prompt are tokenized one by one, as LLaMA-Factory does."""

    prompt_parts: list[str]
    response: str

    @property
    def prompt(self) -> str:
        return "".join(self.prompt_parts)


class Template(ABC):
    """Base of every template. Subclasses implement ``turns``, ``render_prompt`` and ``jinja_chat_template``."""

    name: str = ""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    @abstractmethod
    def turns(self, conv: Conversation) -> list[Turn]:
        """The conversation as (prompt, response) text pairs; their concatenation is the training text."""

    @abstractmethod
    def render_prompt(self, conversation_prefix: Conversation) -> str:
        """Text up to the next assistant turn, ending with the assistant header (the generation prompt)."""

    @property
    @abstractmethod
    def jinja_chat_template(self) -> str:
        """A Jinja chat template that renders exactly the training layout (saved with exported models)."""

    @property
    def call_close(self) -> str | None:
        """The text that closes one tool call in a reply — the token trained after it decides between another call
        and the end of the turn (``decision_weight``) — or None where calls have no closing marker of their own."""
        return None

    def render_text(self, conv: Conversation) -> str:
        return "".join(turn.prompt + turn.response for turn in self.turns(conv))

    def encode_samples(self, conversations: list[Conversation]) -> list[list[TokenTurns] | TemplateError]:
        """The samples each conversation trains: one sequence, or (for chat templates that rewrite earlier turns)
        one per assistant message; see ``JinjaTemplate``."""
        return [t if isinstance(t, TemplateError) else [t] for t in self.encode_turns(conversations)]

    def encode_turns(self, conversations: list[Conversation]) -> list[TokenTurns | TemplateError]:
        """Token ids of every conversation's turns, tokenized in one batch (a failure is returned, not raised,
        so one bad conversation is reported without stopping the rest)."""
        layouts: list[list[Turn] | TemplateError] = []
        texts: dict[str, int] = {}
        for conv in conversations:
            try:
                turns = self.turns(conv)
            except TemplateError as exc:
                layouts.append(exc)
                continue
            layouts.append(turns)
            for turn in turns:
                for part in (*turn.prompt_parts, turn.response):
                    texts.setdefault(part, len(texts))
        ids = batch_encode(self.tokenizer, list(texts))
        out: list[TokenTurns | TemplateError] = []
        for layout in layouts:
            if isinstance(layout, TemplateError):
                out.append(layout)
                continue
            encoded: TokenTurns = []
            for turn in layout:
                prompt_ids: list[int] = []
                for part in turn.prompt_parts:
                    prompt_ids += ids[texts[part]]
                encoded.append((prompt_ids, list(ids[texts[turn.response]])))
            out.append(encoded)
        return out


def batch_encode(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """``tokenizer.encode(text, add_special_tokens=False)`` for many texts at once (the Rust batch path)."""
    if not texts:
        return []
    non_empty = [t for t in texts if t]
    encoded = tokenizer(non_empty, add_special_tokens=False)["input_ids"] if non_empty else []
    result: list[list[int]] = []
    it = iter(encoded)
    for text in texts:
        result.append(list(next(it)) if text else [])
    return result
