"""Utterance templates and argument values, from the spec and from the user's example conversations.

A template is a user utterance with ``{argument}`` slots. An example turn ``新增通告：明天放假`` followed by the call
``{"operation": "ADD", "type": "通告", "content": "明天放假"}`` becomes ``{operation}{type}：{content}`` (the words
said for enum values come from the spec's ``enum`` phrases), and ``明天放假`` joins the values of ``content``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from tooltune.synth.spec import SynthError, SynthSpec, ToolPlanInfo

SLOT = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
CJK = re.compile(r"[\u3400-\u9fff]")

DEFAULT_ASK = {
    "zh": ["好的，请问{label}是什么？", "没问题，请告诉我{label}。", "可以，请提供{label}。"],
    "en": ["Sure, what is {label}?", "Happy to help. Could you tell me {label}?", "OK. Please give me {label}."],
}
DEFAULT_ANSWER = {
    "zh": ["已为您处理完毕。", "操作已完成。", "好的，已经完成了。"],
    "en": ["Done.", "All set, it has been handled.", "That is done now."],
}
DEFAULT_NO_CALL = {
    "zh": ["你好", "你是谁？", "讲个笑话吧", "谢谢你", "今天心情不错", "你能做什么？", "推荐一本好书",
           "帮我写一首关于春天的诗", "晚安", "1加1等于几？", "你喜欢什么颜色？", "给我讲讲历史故事"],
    "en": ["Hello there", "Who are you?", "Tell me a joke", "Thanks a lot", "I'm in a good mood today",
           "What can you do?", "Recommend a good book", "Write a short poem about spring", "Good night",
           "What is one plus one?", "What's your favourite colour?", "Tell me a story from history"],
}
DEFAULT_NO_CALL_REPLY = {
    "zh": ["这个问题我可以直接回答，不需要调用工具。", "好的，我们聊聊吧。"],
    "en": ["I can answer that directly; no tool is needed.", "Sure, happy to chat."],
}
PARALLEL_JOIN = {"zh": "，另外", "en": ", and also "}


def language_of(text: str) -> str:
    return "zh" if CJK.search(text) else "en"


def slots_of(template: str) -> frozenset[str]:
    return frozenset(SLOT.findall(template))


def fill(template: str, words: dict[str, str]) -> str:
    return SLOT.sub(lambda m: words.get(m.group(1), m.group(0)), template)


@dataclass
class ToolPools:
    """Per language: templates by slot set, clarification openers by missing argument, values by argument."""

    templates: dict[str, dict[frozenset[str], list[str]]] = field(default_factory=dict)
    partial: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    values: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    asks: dict[str, list[str]] = field(default_factory=dict)

    def add_template(self, language: str, template: str) -> None:
        bucket = self.templates.setdefault(language, {}).setdefault(slots_of(template), [])
        if template not in bucket:
            bucket.append(template)

    def add_value(self, language: str, arg: str, value: str) -> None:
        bucket = self.values.setdefault(language, {}).setdefault(arg, [])
        if value not in bucket:
            bucket.append(value)

    def variants(self, language: str, required: list[str]) -> list[frozenset[str]]:
        """Slot sets with every required argument: each is one way of calling (optional arguments present/absent)."""
        return sorted((s for s in self.templates.get(language, {}) if set(required) <= s), key=lambda s: sorted(s))


@dataclass
class Pools:
    tools: dict[str, ToolPools]
    no_call: dict[str, list[str]]
    no_call_reply: dict[str, list[str]]


def _mark_slots(text: str, tool: ToolPlanInfo, arguments: dict[str, Any], language: str) -> str | None:
    """Replace each argument's words in ``text`` by its slot; None when one cannot be found (no template then)."""
    spans: list[tuple[str, str]] = []
    for arg, value in arguments.items():
        said = tool.arguments[arg].phrases(str(value), language) if arg in tool.arguments else [str(value)]
        candidates = sorted({*said, str(value)}, key=len, reverse=True)
        found = next((c for c in candidates if c and c in text), None)
        if found is None:
            return None
        spans.append((found, arg))
    for found, arg in sorted(spans, key=lambda s: len(s[0]), reverse=True):
        text = text.replace(found, "{" + arg + "}", 1)
    return text


def _learn_from_example(record: Any, index: int, spec: SynthSpec, pools: dict[str, ToolPools]) -> None:
    where = f"examples[{index}]"
    turns = record.get("conversations") if isinstance(record, dict) else None
    if not isinstance(turns, list):
        raise SynthError(f"{where}: expected a sharegpt record with a 'conversations' list")
    for position, turn in enumerate(turns):
        if not isinstance(turn, dict) or turn.get("from") != "function_call":
            continue
        try:
            calls = json.loads(turn["value"])
        except (KeyError, TypeError, json.JSONDecodeError) as exc:
            raise SynthError(f"{where} turn {position}: function_call value is not JSON ({exc})") from None
        calls = calls if isinstance(calls, list) else [calls]
        if len(calls) != 1 or not isinstance(calls[0], dict):
            continue  # parallel examples teach no single-tool template
        name, arguments = calls[0].get("name"), calls[0].get("arguments") or {}
        tool = spec.tool(name) if isinstance(name, str) else None
        if tool is None:
            raise SynthError(f"{where} turn {position}: calls {name!r}, which is not one of the tools")
        humans = [(p, t["value"]) for p, t in enumerate(turns[:position]) if t.get("from") == "human"]
        if not humans:
            continue
        language = language_of(humans[-1][1])
        tp = pools[tool.name]
        for arg, value in arguments.items():
            if isinstance(value, str) and not (arg in tool.arguments and tool.arguments[arg].enum):
                tp.add_value(language, arg, value)
        last_p, last_text = humans[-1]
        asked = turns[last_p - 1] if last_p >= 2 and turns[last_p - 1].get("from") == "gpt" else None
        if asked is not None and len(humans) >= 2:
            # human (partial) → gpt asks → human gives the missing value → call: a clarification dialogue.
            missing = [a for a, v in arguments.items() if isinstance(v, str) and v in last_text]
            if len(missing) == 1:
                rest = {a: v for a, v in arguments.items() if a != missing[0]}
                opener = _mark_slots(humans[-2][1], tool, rest, language)
                if opener is not None:
                    bucket = tp.partial.setdefault(language, {}).setdefault(missing[0], [])
                    if opener not in bucket:
                        bucket.append(opener)
                    tp.asks.setdefault(language, []).append(asked["value"])
                continue
        template = _mark_slots(last_text, tool, arguments, language)
        if template is not None:
            tp.add_template(language, template)


def build_pools(spec: SynthSpec) -> Pools:
    pools = {tool.name: ToolPools() for tool in spec.tools}
    for tool_name, per_lang in spec.templates.items():
        for language, templates in per_lang.items():
            for template in templates:
                unknown = slots_of(template) - set(spec.tool(tool_name).schema["properties"])  # type: ignore[union-attr]
                if unknown:
                    raise SynthError(f"{spec.source}: templates.{tool_name}: {template!r} has slot(s) "
                                     f"{', '.join(sorted(unknown))} the tool does not take")
                pools[tool_name].add_template(language, template)
    for tool_name, per_arg in spec.clarify_templates.items():
        for arg, per_lang in per_arg.items():
            for language, templates in per_lang.items():
                pools[tool_name].partial.setdefault(language, {}).setdefault(arg, []).extend(templates)
    for tool in spec.tools:
        for arg, values in tool.arguments.items():
            for language, listed in values.values.items():
                for value in listed:
                    pools[tool.name].add_value(language, arg, value)
    for index, record in enumerate(spec.examples):
        _learn_from_example(record, index, spec, pools)
    for tool in spec.callable_tools:
        tp = pools[tool.name]
        for language in spec.languages:
            tp.asks[language] = tp.asks.get(language) or spec.ask_templates.get(language) or DEFAULT_ASK[language]
            _derive_openers(tool, tp, language)
    return Pools(
        tools=pools,
        no_call={lang: spec.no_call.get(lang) or DEFAULT_NO_CALL[lang] for lang in spec.languages},
        no_call_reply={lang: spec.no_call_reply.get(lang) or DEFAULT_NO_CALL_REPLY[lang] for lang in spec.languages},
    )


def _derive_openers(tool: ToolPlanInfo, tp: ToolPools, language: str) -> None:
    """Clarification openers for required free-text arguments that have none: a full template ending with that slot,
    the slot and the separator before it cut off — ``{operation}{type}：{content}`` → ``{operation}{type}``."""
    partial = tp.partial.setdefault(language, {})
    for arg in tool.required:
        if partial.get(arg) or (arg in tool.arguments and tool.arguments[arg].enum):
            continue
        # Only a slot that ends the template is cut: one inside the sentence would leave it broken.
        cut = re.compile(r"[\s:：,，、]*(?:saying|that says|内容是|内容为)?[\s:：,，、]*"
                         r"\{" + arg + r"\}[\s。.!！?？]*$")
        openers = []
        for slots, templates in tp.templates.get(language, {}).items():
            if arg not in slots:
                continue
            for template in templates:
                opener = cut.sub("", template).strip()
                if opener and slots_of(opener) == slots - {arg} and opener not in openers:
                    openers.append(opener)
        if openers:
            partial[arg] = openers
