"""Which model family a GGUF belongs to when it carries no chat template: read from its architecture and vocabulary.

A GGUF without ``tokenizer.chat_template`` (converted by an old tool, or stripped) still says what it is: the
architecture key names the network, and each family's vocabulary has special tokens no other family has. We only
answer when those markers are unambiguous; otherwise the error tells the user which flag chooses the template.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tooltune.errors import TooltuneError
from tooltune.gguf.header import GGUFHeaderError, read_gguf_header

# Family names as the rest of tooltune spells them (the folders of the families' templates).
FAMILIES = ("qwen2.5", "qwen3", "llama3.2", "hermes3", "mistral", "phi4-mini", "smollm2", "smollm3", "gemma3")


class FamilyDetectError(TooltuneError):
    pass


@dataclass(frozen=True)
class _Rule:
    family: str
    architectures: tuple[str, ...]
    required_tokens: tuple[str, ...]  # every one must be in the vocabulary
    forbidden_tokens: tuple[str, ...] = ()  # none may be (tells a fine-tuned relative apart)


# First match wins, so the more specific rule of an architecture comes first.
_RULES = (
    _Rule("qwen3", ("qwen3",), ("<|im_start|>", "<think>", "<tool_call>")),
    _Rule("qwen2.5", ("qwen2",), ("<|im_start|>", "<tool_call>"), ("<think>",)),
    # Hermes 3 is a Llama 3 whose reserved tokens became ChatML and tool tags.
    _Rule("hermes3", ("llama",), ("<|begin_of_text|>", "<|im_start|>", "<tool_call>")),
    _Rule("llama3.2", ("llama",), ("<|begin_of_text|>", "<|start_header_id|>", "<|eot_id|>"), ("<|im_start|>",)),
    _Rule("mistral", ("llama",), ("[INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]")),
    _Rule("smollm2", ("llama",), ("<|im_start|>", "<|im_end|>"), ("<|begin_of_text|>",)),
    _Rule("smollm3", ("smollm3",), ("<|im_start|>", "<think>")),
    _Rule("phi4-mini", ("phi3",), ("<|tool_call|>", "<|assistant|>", "<|end|>")),
    _Rule("gemma3", ("gemma3",), ("<start_of_turn>", "<end_of_turn>")),
)

HOW_TO_CHOOSE = ("pass --template NAME (one of: " + ", ".join(FAMILIES) + ") or --chat-template FILE.jinja "
                 "with the Jinja template the model was trained with")


def detect_family(architecture: str, tokens: Iterable[str]) -> str:
    """The family whose architecture and vocabulary markers match, or FamilyDetectError naming the flag to pass."""
    vocab = set(tokens)
    for rule in _RULES:
        if architecture in rule.architectures and all(t in vocab for t in rule.required_tokens) and not any(
                t in vocab for t in rule.forbidden_tokens):
            return rule.family
    known = sorted({a for rule in _RULES for a in rule.architectures})
    if architecture not in known:
        reason = f"architecture {architecture!r} is not one tooltune knows ({', '.join(known)})"
    else:
        reason = f"its {architecture} vocabulary has none of the special tokens of a known family"
    raise FamilyDetectError(f"cannot tell the model family: {reason}; {HOW_TO_CHOOSE}")


def gguf_family(path: str | Path) -> str:
    """The family of a GGUF file, read from ``general.architecture`` and ``tokenizer.ggml.tokens``."""
    path = Path(path)
    try:
        metadata = read_gguf_header(path).metadata
    except GGUFHeaderError as exc:
        raise FamilyDetectError(str(exc)) from None
    for key in ("general.architecture", "tokenizer.ggml.tokens"):
        if key not in metadata:
            raise FamilyDetectError(f"{path}: no {key} in the GGUF metadata; {HOW_TO_CHOOSE}")
    try:
        return detect_family(metadata["general.architecture"], metadata["tokenizer.ggml.tokens"])
    except FamilyDetectError as exc:
        raise FamilyDetectError(f"{path}: {exc}") from None
