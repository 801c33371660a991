"""What tooltune knows about each model family: one record per family, read by every stage.

A ``Family`` answers, for one family of chat models: how its tool calls look in text (``call_syntax``), which
markers end an assistant turn, whether it reasons in ``<think>`` blocks, which chat template tooltune renders with
(the upstream one where it is right, a corrected one shipped in ``families/templates/`` where the upstream one is
broken for tools), and what vLLM needs to serve it. Detection (``detect.py``), the named-template registry
(``registry.py``), the parsers (``parsers.py``) and ``respond`` read this table and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from typing import Literal

CallSyntax = Literal["hermes", "llama3", "mistral", "phi4"]


@dataclass(frozen=True)
class Family:
    name: str
    description: str
    call_syntax: CallSyntax
    end_of_turn: tuple[str, ...]  # text markers that end an assistant turn (stop strings), first = the template's own
    thinks: bool = False  # replies may open with <think>...</think>
    # Template tooltune ships for this family (file in families/templates/), or None: use the model's own.
    shipped_template: str | None = None
    # Why the shipped template differs from upstream (empty: it is upstream's text).
    template_fix: str = ""
    vllm_tool_parser: str | None = None
    vllm_reasoning_parser: str | None = None
    # Special tokens whose presence in a vocabulary identifies the family (all must be there).
    vocab_markers: tuple[str, ...] = ()
    gguf_architectures: tuple[str, ...] = ()
    tool_call_ids: bool = False  # calls carry ids the template requires (Mistral: 9 alphanumerics)
    notes: tuple[str, ...] = field(default_factory=tuple)

    def template_text(self) -> str | None:
        """The shipped template's Jinja text, or None when the family uses the model folder's own template."""
        if self.shipped_template is None:
            return None
        return resources.files("tooltune.families").joinpath(f"templates/{self.shipped_template}").read_text(
            encoding="utf-8"
        )


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            name="qwen2.5",
            description="Qwen2.5 (ChatML, Hermes <tool_call> JSON); tooltune's `qwen` training layout",
            call_syntax="hermes",
            end_of_turn=("<|im_end|>", "<|endoftext|>"),
            vllm_tool_parser="hermes",
            vocab_markers=("<|im_start|>", "<tool_call>", "<|fim_prefix|>"),
            gguf_architectures=("qwen2",),
        ),
        Family(
            name="qwen3",
            description="Qwen3 hybrid reasoning (<think> blocks, enable_thinking), Hermes <tool_call> JSON",
            call_syntax="hermes",
            end_of_turn=("<|im_end|>", "<|endoftext|>"),
            thinks=True,
            shipped_template="qwen3.jinja",
            vllm_tool_parser="hermes",
            vllm_reasoning_parser="qwen3",
            vocab_markers=("<|im_start|>", "<think>", "<tool_response>", "<|fim_prefix|>"),
            gguf_architectures=("qwen3",),
        ),
        Family(
            name="qwen3-instruct-2507",
            description="Qwen3 Instruct-2507 (no reasoning switch; empty <think> block before the reply)",
            call_syntax="hermes",
            end_of_turn=("<|im_end|>", "<|endoftext|>"),
            thinks=True,
            shipped_template="qwen3-instruct-2507.jinja",
            vllm_tool_parser="hermes",
            vllm_reasoning_parser="qwen3",
            vocab_markers=("<|im_start|>", "<think>", "<tool_response>", "<|fim_prefix|>"),
            gguf_architectures=("qwen3",),
        ),
        Family(
            name="llama3.2",
            description="Llama 3.2 Instruct: the reply is the call, JSON with `parameters`; results in ipython turns",
            call_syntax="llama3",
            end_of_turn=("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>"),
            vllm_tool_parser="llama3_json",
            vocab_markers=("<|start_header_id|>", "<|eot_id|>", "<|python_tag|>"),
            gguf_architectures=("llama",),
            notes=("the model folder's own template is used (Llama 3.2 Community License: not shipped)",),
        ),
        Family(
            name="mistral",
            description="Mistral 7B Instruct v0.3: [TOOL_CALLS] JSON list with 9-character call ids",
            call_syntax="mistral",
            end_of_turn=("</s>",),
            shipped_template="mistral.jinja",
            template_fix="the system prompt goes with the last user turn even when a reply follows "
            "(upstream drops it from finished conversations, so training never sees it)",
            vllm_tool_parser="mistral",
            vocab_markers=("[INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]"),
            gguf_architectures=("llama",),
            tool_call_ids=True,
        ),
        Family(
            name="phi4-mini",
            description="Phi-4-mini-instruct: <|tool|> list in the system turn, <|tool_call|>[...]<|/tool_call|>",
            call_syntax="phi4",
            end_of_turn=("<|end|>", "<|endoftext|>"),
            shipped_template="phi4-mini.jinja",
            template_fix="accepts tools= and writes assistant calls and tool results (upstream ignores tools= "
            "and renders neither)",
            # vLLM's phi4_mini_json reads `functools[...]`, not this layout; granite's reads `<|tool_call|>[...]`.
            vllm_tool_parser="granite",
            vocab_markers=("<|assistant|>", "<|end|>", "<|tool_call|>"),
            gguf_architectures=("phi3",),
        ),
        Family(
            name="smollm3",
            description="SmolLM3: ChatML with /think and /no_think, Hermes <tool_call> JSON",
            call_syntax="hermes",
            end_of_turn=("<|im_end|>", "<|end_of_text|>"),
            thinks=True,
            shipped_template="smollm3.jinja",
            template_fix="writes the assistant's tool calls as <tool_call> blocks (upstream renders only content, "
            "so calls vanish from the training text)",
            vllm_tool_parser="hermes",
            vllm_reasoning_parser="qwen3",  # <think> optional: /no_think replies are content
            vocab_markers=("<|im_start|>", "<|start_header_id|>", "<think>"),
            gguf_architectures=("smollm3",),
        ),
        Family(
            name="hermes3",
            description="Hermes 3 (Llama 3.1/3.2 base, ChatML, <tools> in the system turn, <tool_call> JSON)",
            call_syntax="hermes",
            end_of_turn=("<|im_end|>", "<|end_of_text|>", "<|eot_id|>"),
            vllm_tool_parser="hermes",
            vocab_markers=("<|im_start|>", "<|start_header_id|>", "<tool_call>"),
            gguf_architectures=("llama",),
            notes=("the model folder's own `tool_use` template is used (not shipped: Llama 3 license)",),
        ),
        Family(
            name="gemma3",
            description="Gemma 3 instruct (<start_of_turn>); no tool support upstream, tooltune adds Hermes calls",
            call_syntax="hermes",
            end_of_turn=("<end_of_turn>", "<eos>"),
            shipped_template="gemma3.jinja",
            template_fix="tool-capable template written by tooltune (upstream ignores tools= and refuses tool "
            "turns); Gemma's own files are never shipped, the tokenizer comes from the user's model folder",
            vllm_tool_parser="hermes",
            vocab_markers=("<start_of_turn>", "<end_of_turn>"),
            gguf_architectures=("gemma3",),
        ),
    )
}


def get_family(name: str) -> Family:
    from tooltune.families.errors import FamilyError

    try:
        return FAMILIES[name]
    except KeyError:
        raise FamilyError(f"unknown model family {name!r}; known: {', '.join(FAMILIES)}") from None
