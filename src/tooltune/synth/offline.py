"""The offline generator: fills templates with argument values, deterministically, with no model.

Every sample is a LLaMA-Factory sharegpt record (``human`` / ``gpt`` / ``function_call`` / ``observation``; parallel
calls are one ``function_call`` holding a list and their results one ``observation`` holding a list, so turns
alternate as LLaMA-Factory requires). The random choices of sample *i* depend only on the seed, the plan item and
the draw (``synthesize`` draws a sample again when it repeats a kept one), so the same spec always gives the same data.
"""

from __future__ import annotations

import json
import random
import zlib
from dataclasses import dataclass
from typing import Any

from tooltune.synth.plan import PlanItem
from tooltune.synth.pools import DEFAULT_ANSWER, PARALLEL_JOIN, Pools, fill, slots_of
from tooltune.synth.spec import SynthSpec, ToolPlanInfo


@dataclass
class Sample:
    item: PlanItem
    record: dict[str, Any]  # sharegpt: conversations, tools (JSON string), system

    @property
    def turns(self) -> list[dict[str, str]]:
        return self.record["conversations"]


class GenerationGap(Exception):
    """The pools cannot fill this item (no values for an argument); becomes a rejection with the reason."""


class OfflineGenerator:
    def __init__(self, spec: SynthSpec, pools: Pools) -> None:
        self.spec = spec
        self.pools = pools
        self.tools_json = json.dumps(spec.raw_tools, ensure_ascii=False)
        self.openai_tools = [openai_shape(tool) for tool in spec.tools]

    def generate(self, item: PlanItem, draw: int = 0) -> Sample:
        """Sample ``item``; ``draw`` > 0 draws its phrasings and templates again (its argument values stay)."""
        if item.pattern == "example":
            record = dict(self.spec.examples[item.index])
            if self.spec.distractors is not None or self.spec.tool_shape != "as_given" or "tools" not in record:
                # offered like the generated samples
                rng = random.Random(f"{self.spec.seed}:{item.key}")
                record["tools"] = self._tools_for(record["conversations"], rng)
            if self.spec.system:
                record.setdefault("system", self.spec.system)
            return Sample(item, record)
        rng = random.Random(f"{self.spec.seed}:{item.key}" + (f":{draw}" if draw else ""))
        build = {"single": self._single, "result": self._result, "clarify": self._clarify,
                 "parallel": self._parallel, "no_call": self._no_call}[item.pattern]
        turns = build(item, rng)
        record: dict[str, Any] = {"conversations": turns, "tools": self._tools_for(turns, rng)}
        if self.spec.system:
            record["system"] = self.spec.system
        return Sample(item, record)

    def _tools_for(self, turns: list[dict[str, str]], rng: random.Random) -> str:
        """The tools offered in this sample: all of them, or the called ones + fallback + N drawn distractors."""
        shape = self.spec.tool_shape
        if shape == "mixed":
            shape = "openai" if rng.random() < 0.5 else "as_given"
        if self.spec.distractors is None:
            if shape == "openai":
                return json.dumps(self.openai_tools, ensure_ascii=False)
            return self.tools_json
        called = set()
        for turn in turns:
            if turn["from"] == "function_call":
                calls = json.loads(turn["value"])
                called |= {c["name"] for c in (calls if isinstance(calls, list) else [calls])}
        if self.spec.fallback_tool:
            called.add(self.spec.fallback_tool)
        others = [t.name for t in self.spec.tools if t.name not in called]
        called |= set(rng.sample(others, min(self.spec.distractors, len(others))))
        shaped = self.openai_tools if shape == "openai" else self.spec.raw_tools
        offered = [raw for raw, tool in zip(shaped, self.spec.tools, strict=True) if tool.name in called]
        return json.dumps(offered, ensure_ascii=False)

    # ---- arguments and utterances

    def _arguments(self, tool: ToolPlanInfo, slots: frozenset[str], item: PlanItem, rng: random.Random,
                   ) -> tuple[dict[str, Any], dict[str, str]]:
        """Call arguments and the words the user says for them; enum arguments walk their values with the index."""
        arguments: dict[str, Any] = {}
        words: dict[str, str] = {}
        pool = self.pools.tools[tool.name].values.get(item.language, {})
        stride = 1
        for arg in sorted(slots):
            values = tool.arguments.get(arg)
            if values is not None and values.enum:
                # Sample i takes value i of the first enum (so all appear); later enums also shift every full turn
                # of the earlier ones, so value combinations vary too.
                enum = list(values.enum)
                value = enum[(item.index + item.index // stride) % len(enum)] if stride > 1 else enum[
                    item.index % len(enum)]
                stride *= len(enum)
                arguments[arg] = value
                words[arg] = rng.choice(values.phrases(value, item.language))
                continue
            schema_enum = tool.schema["properties"].get(arg, {}).get("enum")
            if schema_enum:
                value = schema_enum[item.index % len(schema_enum)]
                arguments[arg], words[arg] = value, str(value)
                continue
            choices = pool.get(arg)
            if not choices:
                raise GenerationGap(f"no values for {tool.name}.{arg} in {item.language}")
            # Walk the values too (from a per-pattern start), so samples of one bucket rarely repeat a value.
            value = choices[(item.index + zlib.crc32(f"{item.pattern}:{tool.name}".encode())) % len(choices)]
            arguments[arg] = _typed(value, tool.schema["properties"].get(arg, {}))
            words[arg] = value
        # Values are chosen in name order (the enum walk above depends on it) but written in the schema's order:
        # a model writes its arguments in the order the tool lists them, so the first key it learns is the first
        # parameter. Alphabetical calls taught SmolLM2 to open with `content`, close the object there, and drop
        # `operation` and `type` (the seed's curl).
        order = list(tool.schema.get("properties", {}))
        arguments = dict(sorted(arguments.items(), key=lambda item: _schema_rank(order, item[0])))
        return arguments, words

    def _utterance(self, tool: ToolPlanInfo, slots: frozenset[str], words: dict[str, str], item: PlanItem,
                   rng: random.Random) -> str:
        templates = self.pools.tools[tool.name].templates[item.language][slots]
        return fill(rng.choice(templates), words)

    def _call(self, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
        return {"name": tool, "arguments": arguments}

    def _observation(self, tool: ToolPlanInfo, arguments: dict[str, Any], words: dict[str, str]) -> str:
        configured = self.spec.results.get(tool.name, {}).get("observation")
        if configured is not None:
            text = configured if isinstance(configured, str) else json.dumps(configured, ensure_ascii=False)
            return fill(text, {k: str(v) for k, v in arguments.items()})
        return json.dumps({"status": "success", **arguments}, ensure_ascii=False)

    def _answer(self, tool: ToolPlanInfo, words: dict[str, str], item: PlanItem, rng: random.Random) -> str:
        answers = self.spec.results.get(tool.name, {}).get("answer") or {}
        per_lang = answers.get(item.language) if isinstance(answers, dict) else answers
        return fill(rng.choice(per_lang or DEFAULT_ANSWER[item.language]), words)

    # ---- patterns

    def _asked_and_called(self, item: PlanItem, rng: random.Random
                          ) -> tuple[ToolPlanInfo, dict[str, Any], dict[str, str], list[dict[str, str]]]:
        """The user's request and the call it gets (the single pattern, and how the result pattern starts)."""
        tool = self.spec.tool(item.tool)
        assert tool is not None and item.variant is not None
        arguments, words = self._arguments(tool, item.variant, item, rng)
        turns = [
            {"from": "human", "value": self._utterance(tool, item.variant, words, item, rng)},
            {"from": "function_call", "value": _dumps(self._call(tool.name, arguments))},
        ]
        return tool, arguments, words, turns

    def _single(self, item: PlanItem, rng: random.Random) -> list[dict[str, str]]:
        return self._asked_and_called(item, rng)[3]

    def _result(self, item: PlanItem, rng: random.Random) -> list[dict[str, str]]:
        tool, arguments, words, turns = self._asked_and_called(item, rng)
        return [
            *turns,
            {"from": "observation", "value": self._observation(tool, arguments, words)},
            {"from": "gpt", "value": self._answer(tool, words, item, rng)},
        ]

    def _clarify(self, item: PlanItem, rng: random.Random) -> list[dict[str, str]]:
        tool = self.spec.tool(item.tool)
        assert tool is not None and item.missing is not None
        tp = self.pools.tools[tool.name]
        opener = rng.choice(tp.partial[item.language][item.missing])
        slots = slots_of(opener) | {item.missing}
        arguments, words = self._arguments(tool, slots, item, rng)
        values = tool.arguments.get(item.missing)
        label = values.label.get(item.language) if values else None
        asks = (values.ask.get(item.language) if values else None) or tp.asks[item.language]
        ask = fill(rng.choice(asks), {"label": label or item.missing, **words})
        return [
            {"from": "human", "value": fill(opener, words)},
            {"from": "gpt", "value": ask},
            {"from": "human", "value": words[item.missing]},
            {"from": "function_call", "value": _dumps(self._call(tool.name, arguments))},
        ]

    def _parallel(self, item: PlanItem, rng: random.Random) -> list[dict[str, str]]:
        assert item.pair is not None
        said, calls, observations = [], [], []
        for name in item.pair:
            tool = self.spec.tool(name)
            assert tool is not None
            variants = self.pools.tools[name].variants(item.language, tool.required)
            slots = variants[item.index % len(variants)]
            arguments, words = self._arguments(tool, slots, item, rng)
            text = self._utterance(tool, slots, words, item, rng)
            trimmed = text.rstrip("。.!！?？")
            # Drop the closing mark before joining, unless it belongs to a value the call quotes.
            said.append(trimmed if all(w in trimmed for w in words.values()) else text)
            calls.append(self._call(name, arguments))
            observation = self._observation(tool, arguments, words)
            observations.append(json.loads(observation) if _is_json(observation) else observation)
        answer = DEFAULT_ANSWER[item.language][item.index % len(DEFAULT_ANSWER[item.language])]
        return [
            {"from": "human", "value": PARALLEL_JOIN[item.language].join(said)},
            {"from": "function_call", "value": _dumps(calls)},
            {"from": "observation", "value": _dumps(observations)},
            {"from": "gpt", "value": answer},
        ]

    def _no_call(self, item: PlanItem, rng: random.Random) -> list[dict[str, str]]:
        utterances = self.pools.no_call[item.language]
        text = utterances[item.index % len(utterances)]
        fallback = self.spec.tool(self.spec.fallback_tool) if self.spec.fallback_tool else None
        if fallback is None:
            return [{"from": "human", "value": text},
                    {"from": "gpt", "value": rng.choice(self.pools.no_call_reply[item.language])}]
        # The fallback takes the user's words as its first required string argument (the seed's "question").
        arg = next((a for a in fallback.required), None) or next(iter(fallback.schema["properties"]), None)
        arguments = {arg: text} if arg else {}
        return [{"from": "human", "value": text},
                {"from": "function_call", "value": _dumps(self._call(fallback.name, arguments))}]


def openai_shape(tool: ToolPlanInfo) -> dict[str, Any]:
    """The tool as an OpenAI client sends it: a JSON-schema ``parameters`` with the spec's enums (the seed's list
    shape has them only in prose). ``additionalProperties`` is a verification rule, not something a client sends."""
    parameters = {k: v for k, v in tool.schema.items() if k != "additionalProperties"}
    function: dict[str, Any] = {"name": tool.name}
    if tool.tool.description:
        function["description"] = tool.tool.description
    function["parameters"] = parameters
    return {"type": "function", "function": function}


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return False
    return True


def _schema_rank(order: list[str], name: str) -> tuple[int, str]:
    return (order.index(name), name) if name in order else (len(order), name)


def _typed(value: str, schema: dict[str, Any]) -> Any:
    """Values lists are text; integer/number/boolean arguments get the JSON type their schema asks for."""
    kind = schema.get("type")
    try:
        if kind == "integer":
            return int(value)
        if kind == "number":
            return float(value)
    except ValueError:
        return value  # verification then rejects it with the type error
    if kind == "boolean" and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return value
