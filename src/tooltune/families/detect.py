"""Which family a model belongs to, from its chat template, its vocabulary or its GGUF metadata.

The chat template is the strongest evidence (it is what decides the text); the vocabulary's special tokens come
next; GGUF files without a template fall back to ``general.architecture`` plus the vocabulary.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from tooltune.families.family import FAMILIES, Family

# (family, markers that must all occur in the template text), most specific first.
_TEMPLATE_MARKERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("smollm3", ("<|im_start|>", "Reasoning Mode")),
    ("qwen3", ("<|im_start|>", "last_query_index", "enable_thinking")),
    ("qwen3-instruct-2507", ("<|im_start|>", "last_query_index")),
    ("hermes3", ("<|im_start|>", "You are a function calling AI model")),
    ("qwen2.5", ("<|im_start|>", "<tool_call>")),
    ("qwen2.5", ("<|im_start|>", "You are Qwen")),
    ("llama3.2", ("<|start_header_id|>", "ipython")),
    ("mistral", ("[INST]", "[TOOL_CALLS]")),
    ("phi4-mini", ("<|assistant|>", "<|end|>")),
    ("gemma3", ("<start_of_turn>",)),
)


def from_template(template: str | None) -> Family | None:
    if not template:
        return None
    for name, markers in _TEMPLATE_MARKERS:
        if all(marker in template for marker in markers):
            return FAMILIES[name]
    return None


def from_vocabulary(tokens: Iterable[str]) -> Family | None:
    """The family whose special tokens all occur in ``tokens``; the one with the most markers wins."""
    vocab = set(tokens)
    matches = [f for f in FAMILIES.values() if f.vocab_markers and all(m in vocab for m in f.vocab_markers)]
    if not matches:
        return None
    best = max(len(f.vocab_markers) for f in matches)
    winners = [f for f in matches if len(f.vocab_markers) == best]
    return winners[0]


def from_tokenizer(tokenizer: Any) -> Family | None:
    """From a transformers tokenizer: its chat template first, then its vocabulary."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("default") or next(iter(template.values()), None)
    found = from_template(template if isinstance(template, str) else None)
    if found is not None:
        return found
    return from_vocabulary(tokenizer.get_vocab())


def from_gguf_metadata(metadata: Mapping[str, Any], tokens: Iterable[str] = ()) -> Family | None:
    """From GGUF key/values (``tokenizer.chat_template``, ``general.architecture``) and the token list."""
    found = from_template(metadata.get("tokenizer.chat_template"))
    if found is not None:
        return found
    tokens = list(tokens)
    by_vocab = from_vocabulary(tokens) if tokens else None
    architecture = str(metadata.get("general.architecture", ""))
    candidates = [f for f in FAMILIES.values() if architecture in f.gguf_architectures]
    if by_vocab is not None and (not candidates or by_vocab in candidates):
        return by_vocab
    return candidates[0] if len(candidates) == 1 else None
