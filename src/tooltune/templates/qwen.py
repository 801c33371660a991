"""``qwen``: the layout of LLaMA-Factory 0.9.5's ``qwen`` template, token for token.

Why a Python renderer and not the Jinja template: LLaMA-Factory tokenizes the system block, each user turn and each
response separately and concatenates the ids; to reproduce its ``input_ids`` bit for bit
(tests/test_templates_lf_parity.py) we cut the text at the same places. ``QWEN_JINJA`` renders the same text in one
piece for serving and export, and a test checks the two agree on every demo conversation.

Layout (``{}`` are filled in)::

    <|im_start|>system\\n{system}[# Tools block]<|im_end|>\\n
    <|im_start|>user\\n{user}<|im_end|>\\n<|im_start|>assistant\\n           ← prompt (masked)
    {response or <tool_call>\\n{"name": .., "arguments": ..}\\n</tool_call>}<|im_end|>\\n   ← trained
    <|im_start|>user\\n<tool_response>\\n{result}\\n</tool_response><|im_end|>\\n<|im_start|>assistant\\n

Bare and list-parameter tools are wrapped as ``{"type": "function", "function": tool}`` like LLaMA-Factory does;
parallel calls are one ``<tool_call>`` block each, joined by a newline; several tool results in a row share one user
turn, separated by ``\\n</tool_response>\\n<tool_response>\\n``.
"""

from __future__ import annotations

import json
from typing import Any

from tooltune.conversation import Conversation, Message, Tool
from tooltune.templates.base import Template, TemplateError, Turn
from tooltune.toolcalls import CLOSE_TAG

QWEN_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
TOOLS_HEADER = (
    "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
TOOLS_FOOTER = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n'
    "</tool_call>"
)
ASSISTANT_HEADER = "<|im_start|>assistant\n"
END = "<|im_end|>\n"
REQUIRED_TOKENS = ("<|im_start|>", "<|im_end|>")


def has_token(tokenizer: Any, token: str) -> bool:
    token_id = tokenizer.convert_tokens_to_ids(token)
    unk_id = getattr(tokenizer, "unk_token_id", None)
    return token_id is not None and (token_id != unk_id or token == getattr(tokenizer, "unk_token", None))


def tools_block(tools: list[Tool]) -> str:
    if not tools:
        return ""
    lines = ""
    for tool in tools:
        spec: dict[str, Any] = (
            tool.spec if tool.spec.get("type") == "function" else {"type": "function", "function": tool.spec}
        )
        lines += "\n" + json.dumps(spec, ensure_ascii=False)
    return TOOLS_HEADER + lines + TOOLS_FOOTER


def tool_calls_text(message: Message) -> str:
    calls = "\n".join(
        "<tool_call>\n" + json.dumps({"name": c.name, "arguments": c.arguments}, ensure_ascii=False) + "\n</tool_call>"
        for c in message.tool_calls
    )
    return (message.content + "\n" + calls) if message.content else calls


class QwenTemplate(Template):
    name = "qwen"

    def __init__(self, tokenizer: Any, default_system: str | None = None) -> None:
        super().__init__(tokenizer)
        self.default_system = QWEN_DEFAULT_SYSTEM if default_system is None else default_system
        if tokenizer is not None:
            missing = [t for t in REQUIRED_TOKENS if not has_token(tokenizer, t)]
            if missing:
                raise TemplateError(
                    f"template qwen needs the tokens {', '.join(missing)}, which this tokenizer lacks; "
                    "use --template jinja to train with the model's own chat template"
                )

    def system_block(self, conv: Conversation) -> str:
        system = conv.system or self.default_system
        if not system and not conv.tools:
            return ""
        return "<|im_start|>system\n" + system + tools_block(conv.tools) + END

    def _prompt_groups(self, messages: list[Message]) -> list[tuple[str, list[Message]]]:
        """Split messages (system removed) into ("prompt", [user] or [tool, ...]) and ("response", [assistant])."""
        groups: list[tuple[str, list[Message]]] = []
        for message in messages:
            if message.role == "assistant":
                groups.append(("response", [message]))
            elif message.role == "tool" and groups and groups[-1][0] == "prompt" and groups[-1][1][0].role == "tool":
                groups[-1][1].append(message)
            elif message.role in ("user", "tool"):
                groups.append(("prompt", [message]))
            else:
                raise TemplateError(f"{message.role!r} message in the middle of the conversation")
        return groups

    @staticmethod
    def _prompt_text(group: list[Message]) -> str:
        if group[0].role == "user":
            return "<|im_start|>user\n" + group[0].content + END + ASSISTANT_HEADER
        results = "\n</tool_response>\n<tool_response>\n".join(m.content for m in group)
        return "<|im_start|>user\n<tool_response>\n" + results + "\n</tool_response>" + END + ASSISTANT_HEADER

    @staticmethod
    def _response_text(message: Message) -> str:
        return (tool_calls_text(message) if message.tool_calls else message.content) + END

    def turns(self, conv: Conversation) -> list[Turn]:
        messages = conv.messages[1:] if conv.system is not None else conv.messages
        turns: list[Turn] = []
        pending: list[str] = []
        system = self.system_block(conv)
        for kind, group in self._prompt_groups(messages):
            if kind == "prompt":
                if pending:
                    raise TemplateError(f"{conv.where()}: two prompt turns without an assistant turn between them")
                pending = [self._prompt_text(group)]
                if not turns and system:
                    pending.insert(0, system)
            else:
                if not pending:
                    raise TemplateError(f"{conv.where()}: assistant turn without a prompt before it")
                turns.append(Turn(prompt_parts=pending, response=self._response_text(group[0])))
                pending = []
        if pending:
            raise TemplateError(f"{conv.where()}: conversation does not end with an assistant turn")
        return turns

    def render_prompt(self, conversation_prefix: Conversation) -> str:
        conv = conversation_prefix
        messages = conv.messages[1:] if conv.system is not None else conv.messages
        text = self.system_block(conv)
        groups = self._prompt_groups(messages)
        for kind, group in groups:
            text += self._prompt_text(group) if kind == "prompt" else self._response_text(group[0])
        if not groups or groups[-1][0] == "response":
            text += ASSISTANT_HEADER
        return text

    @property
    def call_close(self) -> str | None:
        return CLOSE_TAG

    @property
    def jinja_chat_template(self) -> str:
        return QWEN_JINJA.replace("__DEFAULT_SYSTEM__", jinja_string(self.default_system))


def jinja_string(text: str) -> str:
    """A Jinja string literal (minimal escapes, so other Jinja engines such as llama.cpp's parse it too)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


# The qwen layout as a chat template: Qwen2.5's own, changed where LLaMA-Factory's layout differs (bare tools are
# wrapped in {"type": "function", ...}; a call is dumped as one JSON object; an empty system falls back to the
# default; the default system prompt is a parameter).
QWEN_JINJA = (
    "{%- set default_system = __DEFAULT_SYSTEM__ %}\n"
    "{%- if messages and messages[0]['role'] == 'system' and messages[0]['content'] %}\n"
    "    {%- set system_message = messages[0]['content'] %}\n"
    "{%- else %}\n"
    "    {%- set system_message = default_system %}\n"
    "{%- endif %}\n"
    "{%- if tools %}\n"
    "    {{- '<|im_start|>system\\n' + system_message }}\n"
    '    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n'
    'You are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}\n'
    "    {%- for tool in tools %}\n"
    "        {{- '\\n' }}\n"
    "        {%- if tool['type'] is defined and tool['type'] == 'function' %}\n"
    "            {{- tool | tojson }}\n"
    "        {%- else %}\n"
    "            {{- {'type': 'function', 'function': tool} | tojson }}\n"
    "        {%- endif %}\n"
    "    {%- endfor %}\n"
    '    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments '
    'within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, '
    '\\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}\n'
    "{%- elif system_message %}\n"
    "    {{- '<|im_start|>system\\n' + system_message + '<|im_end|>\\n' }}\n"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    "    {%- if message['role'] == 'user' %}\n"
    "        {{- '<|im_start|>user\\n' + message['content'] + '<|im_end|>\\n' }}\n"
    "    {%- elif message['role'] == 'assistant' %}\n"
    "        {{- '<|im_start|>assistant\\n' }}\n"
    "        {%- if message['tool_calls'] is defined and message['tool_calls'] %}\n"
    "            {%- if message['content'] %}\n"
    "                {{- message['content'] + '\\n' }}\n"
    "            {%- endif %}\n"
    "            {%- for tool_call in message['tool_calls'] %}\n"
    "                {%- if tool_call['function'] is defined %}\n"
    "                    {%- set tool_call = tool_call['function'] %}\n"
    "                {%- endif %}\n"
    "                {%- if not loop.first %}\n"
    "                    {{- '\\n' }}\n"
    "                {%- endif %}\n"
    "                {{- '<tool_call>\\n' + ({'name': tool_call['name'], "
    "'arguments': tool_call['arguments']} | tojson) + '\\n</tool_call>' }}\n"
    "            {%- endfor %}\n"
    "        {%- else %}\n"
    "            {{- message['content'] }}\n"
    "        {%- endif %}\n"
    "        {{- '<|im_end|>\\n' }}\n"
    "    {%- elif message['role'] == 'tool' %}\n"
    "        {%- if loop.first or messages[loop.index0 - 1]['role'] != 'tool' %}\n"
    "            {{- '<|im_start|>user\\n<tool_response>\\n' }}\n"
    "        {%- else %}\n"
    "            {{- '\\n</tool_response>\\n<tool_response>\\n' }}\n"
    "        {%- endif %}\n"
    "        {{- message['content'] }}\n"
    "        {%- if loop.last or messages[loop.index0 + 1]['role'] != 'tool' %}\n"
    "            {{- '\\n</tool_response><|im_end|>\\n' }}\n"
    "        {%- endif %}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n"
)
