"""Find what a chat template loses from a tool conversation, by rendering probes (works on any template, known or not).

Each problem is a sentence naming what is lost; preview prints them, and tool data is refused on a template that
cannot show tools or calls (training on it would teach the model text without its calls).
"""

from __future__ import annotations

from tooltune import chat_template

PROBE_TOOL = "tooltune_probe_tool"
PROBE_ARGUMENT = "probe_value_7731"
PROBE_SYSTEM = "probe system prompt 5517"
PROBE_RESULT = "probe result 9043"
_CALL_ID = "probe0001"  # 9 alphanumerics: Mistral's templates insist

_TOOLS = [{"type": "function", "function": {
    "name": PROBE_TOOL, "description": "probe",
    "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
}}]
_CONVERSATION = [
    {"role": "system", "content": PROBE_SYSTEM},
    {"role": "user", "content": "hi"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"id": _CALL_ID, "type": "function", "function": {"name": PROBE_TOOL, "arguments": {"q": PROBE_ARGUMENT}}},
    ]},
    {"role": "tool", "content": PROBE_RESULT, "tool_call_id": _CALL_ID, "name": PROBE_TOOL},
    {"role": "assistant", "content": "done"},
]

TOOLS_IGNORED = "ignores tools= (the model would never see the tool list)"
CALLS_DROPPED = "drops the assistant's tool calls (training would teach replies without the calls)"
RESULTS_DROPPED = "drops tool results"
SYSTEM_DROPPED = "drops the system prompt of a finished conversation (training would never see it)"


def template_problems(source: str, bos_token: str = "", eos_token: str = "") -> list[str]:
    """What ``source`` loses from a tool conversation; empty when it keeps tools, calls, results and the system."""
    def render(messages: list[dict], tools: list[dict] | None) -> str:
        return chat_template.render(source, messages, tools=tools, bos_token=bos_token, eos_token=eos_token)

    problems: list[str] = []
    try:
        prompt = chat_template.render(source, _CONVERSATION[:2], tools=_TOOLS, add_generation_prompt=True,
                                      bos_token=bos_token, eos_token=eos_token)
    except chat_template.ChatTemplateError as exc:
        return [f"cannot render a system + user prompt with tools ({exc})"]
    if PROBE_TOOL not in prompt:
        problems.append(TOOLS_IGNORED)
    try:
        full = render(_CONVERSATION, _TOOLS)
    except chat_template.ChatTemplateError as exc:
        return [*problems, f"refuses tool calls or tool results ({exc})"]
    if PROBE_ARGUMENT not in full:
        problems.append(CALLS_DROPPED)
    if PROBE_RESULT not in full:
        problems.append(RESULTS_DROPPED)
    if PROBE_SYSTEM not in full:
        problems.append(SYSTEM_DROPPED)
    return problems
