"""What ``tooltune synth`` is asked to build: tools, example conversations, value lists, languages, counts.

A spec is a YAML/JSON mapping (every key optional except ``tools``)::

    tools: tools.json              # any of the three tool shapes tooltune reads
    examples: examples.json        # sharegpt conversations (optional): templates and values are taken from them
    system: "You are ..."          # system prompt of every sample (optional)
    languages: [zh, en]
    fallback_tool: DirectLLMCommunityAiUser   # no-call turns are routed to it (else answered in text)
    arguments:                     # per tool, per argument
      HandleTongzhiTonggao:
        operation: {enum: {ADD: {zh: [新增, 发布], en: [add]}, DELETE: {zh: [删除], en: [delete]}}}
        content: {values: {zh: [...], en: [...]}, label: {zh: 内容, en: the content}}
    templates:                     # user utterances with {argument} slots, per tool and language
      HandleTongzhiTonggao: {zh: ["{operation}{type}：{content}"], en: [...]}
    results: {HandleTongzhiTonggao: {observation: '{"status": "ok"}', answer: {zh: [...], en: [...]}}}
    no_call: {zh: [...], en: [...]}   # chit-chat / requests no tool serves
    counts: {single: 8, clarify: 3, result: 3, parallel: 2, no_call: 10}
    tool_counts:                   # per-tool overrides (a pair's parallel count is the smaller of its two tools')
      HealthReportSimple: {single: 4, parallel: 2}
    grounding: strict              # strict | off  (string arguments must appear in a user turn unless enum values)
    distractors: 1                 # offer the called tools + fallback + 1 other per sample (absent: every tool)
    tool_shape: mixed              # as_given (default) | openai | mixed: how samples offer the tools
    test_size: 0.15
    seed: 42
    redraws: 50                    # offline: a sample repeating a kept one is drawn again up to N times (0: rejected)

Relative paths are read from the spec's folder.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tooltune.conversation import ConversationError, Tool
from tooltune.errors import TooltuneError

LANGUAGES = ("zh", "en")
PATTERNS = ("single", "clarify", "result", "parallel", "no_call")
DEFAULT_COUNTS = {"single": 8, "clarify": 3, "result": 3, "parallel": 2, "no_call": 10}
GROUNDING = ("strict", "off")
TOOL_SHAPES = ("as_given", "openai", "mixed")


class SynthError(TooltuneError):
    """The spec or an input file cannot be used; the message names the file, key and reason."""


@dataclass
class ArgumentValues:
    """Values one argument may take, per language.

    ``enum`` maps each allowed value to the words users say for it (``{"ADD": {"zh": ["新增"]}}``); ``values`` are
    free values written into the utterance as they are (names, contents, places).
    """

    enum: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    values: dict[str, list[str]] = field(default_factory=dict)
    label: dict[str, str] = field(default_factory=dict)
    ask: dict[str, list[str]] = field(default_factory=dict)  # how the assistant asks for it when it is missing

    def phrases(self, value: str, language: str) -> list[str]:
        said = self.enum.get(value, {})
        return said.get(language) or [value]


@dataclass
class ToolPlanInfo:
    """A tool as the generator sees it: its definition, the schema calls are checked against, and its values."""

    tool: Tool
    schema: dict[str, Any]  # JSON schema of the arguments, enums from the spec merged in, unknown arguments refused
    arguments: dict[str, ArgumentValues]

    @property
    def name(self) -> str:
        return self.tool.name

    @property
    def required(self) -> list[str]:
        return list(self.schema.get("required", []))

    @property
    def optional(self) -> list[str]:
        return [name for name in self.schema.get("properties", {}) if name not in self.required]


@dataclass
class SynthSpec:
    tools: list[ToolPlanInfo]
    raw_tools: list[dict[str, Any]]
    examples: list[dict[str, Any]] = field(default_factory=list)
    system: str | None = None
    languages: list[str] = field(default_factory=lambda: ["en"])
    fallback_tool: str | None = None
    templates: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    clarify_templates: dict[str, dict[str, dict[str, list[str]]]] = field(default_factory=dict)
    ask_templates: dict[str, list[str]] = field(default_factory=dict)
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    no_call: dict[str, list[str]] = field(default_factory=dict)
    no_call_reply: dict[str, list[str]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_COUNTS))
    # Per tool: a tool with one free-text argument and a long description needs fewer (and dearer) samples than one
    # whose enums must each be learnt.
    tool_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    grounding: str = "strict"
    # None: every sample offers every tool. N: the tools it calls, the fallback and N others drawn per sample —
    # shorter prompts (long tool lists cost most of a sample's tokens) and a model that reads the tool list.
    distractors: int | None = None
    # as_given: tools offered as the tools file writes them (the seed's list shape stays a list); openai: as OpenAI
    # function schemas with the spec's enums, the shape every OpenAI/Ollama client sends at serve time; mixed: one
    # or the other per sample, so the model reads both.
    tool_shape: str = "as_given"
    test_size: float = 0.15
    seed: int = 42
    # Offline generator: a sample that repeats a kept one is drawn again (other phrasings and templates, the same
    # values) up to this many times before it is rejected as a duplicate; 0 rejects it at once.
    redraws: int = 50
    name: str = "synth"
    source: str = "<spec>"

    def counts_for(self, tool: str) -> dict[str, int]:
        return {**self.counts, **self.tool_counts.get(tool, {})}

    def tool(self, name: str) -> ToolPlanInfo | None:
        return next((t for t in self.tools if t.name == name), None)

    @property
    def callable_tools(self) -> list[ToolPlanInfo]:
        """Tools that get their own single/clarify/result/parallel samples (the fallback only answers no-call turns)."""
        return [t for t in self.tools if t.name != self.fallback_tool]


def _read_structured(path: Path, what: str) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SynthError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
    if path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise SynthError(f"{path}: the {what} is not valid YAML ({exc})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SynthError(f"{path}: the {what} is not valid JSON ({exc.msg} at line {exc.lineno})") from None


def _per_language(raw: Any, where: str, languages: list[str]) -> dict[str, list[str]]:
    """``[a, b]`` (same for every language) or ``{zh: [...], en: [...]}`` → ``{lang: [str]}``."""
    if raw is None:
        return {}
    if isinstance(raw, str):
        raw = [raw]
    if isinstance(raw, list):
        if not all(isinstance(v, (str, int, float)) for v in raw):
            raise SynthError(f"{where}: expected a list of strings")
        return {lang: [str(v) for v in raw] for lang in languages}
    if isinstance(raw, dict):
        out: dict[str, list[str]] = {}
        for lang, values in raw.items():
            if isinstance(values, str):
                values = [values]
            if not isinstance(values, list) or not all(isinstance(v, (str, int, float)) for v in values):
                raise SynthError(f"{where}.{lang}: expected a list of strings")
            out[str(lang)] = [str(v) for v in values]
        return out
    raise SynthError(f"{where}: expected a list or a mapping of language to list")


def _argument_values(raw: Any, where: str, languages: list[str]) -> ArgumentValues:
    if not isinstance(raw, dict):
        raise SynthError(f"{where}: expected a mapping with enum / values / label")
    unknown = set(raw) - {"enum", "values", "label", "ask"}
    if unknown:
        raise SynthError(f"{where}: unknown key(s) {', '.join(sorted(unknown))} (expected enum, values, label, ask)")
    enum: dict[str, dict[str, list[str]]] = {}
    raw_enum = raw.get("enum") or {}
    if isinstance(raw_enum, list):
        raw_enum = {str(v): None for v in raw_enum}
    if not isinstance(raw_enum, dict):
        raise SynthError(f"{where}.enum: expected a list of values or a mapping value → phrases")
    for value, said in raw_enum.items():
        enum[str(value)] = _per_language(said, f"{where}.enum.{value}", languages) if said is not None else {}
    label = raw.get("label") or {}
    if isinstance(label, str):
        label = {lang: label for lang in languages}
    return ArgumentValues(enum=enum, values=_per_language(raw.get("values"), f"{where}.values", languages),
                          label={str(k): str(v) for k, v in label.items()},
                          ask=_per_language(raw.get("ask"), f"{where}.ask", languages))


def effective_schema(tool: Tool, values: dict[str, ArgumentValues]) -> dict[str, Any]:
    """The tool's argument schema with the spec's enums added, and no argument outside ``properties`` allowed."""
    try:
        schema = copy.deepcopy(tool.json_schema())
    except ConversationError as exc:
        raise SynthError(str(exc)) from None
    schema.setdefault("type", "object")
    properties = schema.setdefault("properties", {})
    for name, arg in values.items():
        if name not in properties:
            raise SynthError(f"arguments.{tool.name}.{name}: the tool has no argument {name!r} "
                             f"(it has {', '.join(properties) or 'none'})")
        if arg.enum:
            properties[name] = {**properties[name], "enum": list(arg.enum)}
    schema.setdefault("additionalProperties", False)
    return schema


def load_spec(path: str | Path, overrides: dict[str, Any] | None = None) -> SynthSpec:
    """Read a spec file (or, for a .json tools file given directly, a spec of just those tools)."""
    path = Path(path)
    raw = _read_structured(path, "synth spec")
    if isinstance(raw, list):  # a bare tools file
        raw = {"tools": raw}
    if not isinstance(raw, dict):
        raise SynthError(f"{path}: a synth spec must be a mapping (or a list of tools)")
    raw = {**raw, **{k: v for k, v in (overrides or {}).items() if v is not None}}
    return spec_from_mapping(raw, base_dir=path.parent, source=str(path))


KNOWN_KEYS = {"tools", "examples", "system", "languages", "fallback_tool", "arguments", "templates", "clarify",
              "ask", "results", "no_call", "no_call_reply", "counts", "tool_counts", "grounding", "test_size", "seed",
              "name", "distractors", "tool_shape", "redraws"}


def spec_from_mapping(raw: dict[str, Any], base_dir: Path, source: str = "<spec>") -> SynthSpec:
    unknown = set(raw) - KNOWN_KEYS
    if unknown:
        raise SynthError(f"{source}: unknown key(s) {', '.join(sorted(unknown))}; "
                         f"known: {', '.join(sorted(KNOWN_KEYS))}")
    tools_raw = raw.get("tools")
    if isinstance(tools_raw, str):
        tools_raw = _read_structured(base_dir / tools_raw, "tools file")
    if not isinstance(tools_raw, list) or not tools_raw:
        raise SynthError(f"{source}: 'tools' must be a non-empty list of tools or the path of a JSON file holding one")
    languages = raw.get("languages") or ["en"]
    if isinstance(languages, str):
        languages = [part.strip() for part in languages.split(",") if part.strip()]
    bad = [lang for lang in languages if lang not in LANGUAGES]
    if bad:
        raise SynthError(f"{source}: languages {', '.join(bad)} are not supported (choose from {', '.join(LANGUAGES)})")
    try:
        tools = [Tool(item) for item in tools_raw]
    except ConversationError as exc:
        raise SynthError(f"{source}: {exc}") from None
    names = [t.name for t in tools]
    if len(set(names)) != len(names):
        raise SynthError(f"{source}: tool names repeat ({', '.join(names)})")
    arguments_raw = raw.get("arguments") or {}
    for tool_name in arguments_raw:
        if tool_name not in names:
            raise SynthError(f"{source}: arguments.{tool_name}: no such tool (tools: {', '.join(names)})")
    infos = []
    for tool in tools:
        per_arg = {
            arg: _argument_values(value, f"{source}: arguments.{tool.name}.{arg}", languages)
            for arg, value in (arguments_raw.get(tool.name) or {}).items()
        }
        infos.append(ToolPlanInfo(tool, effective_schema(tool, per_arg), per_arg))
    fallback = raw.get("fallback_tool")
    if fallback is not None and fallback not in names:
        raise SynthError(f"{source}: fallback_tool {fallback!r} is not one of the tools ({', '.join(names)})")
    examples_raw = raw.get("examples") or []
    if isinstance(examples_raw, str):
        examples_raw = _read_structured(base_dir / examples_raw, "examples file")
    if not isinstance(examples_raw, list):
        raise SynthError(f"{source}: 'examples' must be a list of sharegpt conversations or a JSON file of one")
    counts = {**DEFAULT_COUNTS, **(raw.get("counts") or {})}
    if set(counts) - set(PATTERNS) or not all(isinstance(v, int) and v >= 0 for v in counts.values()):
        raise SynthError(f"{source}: counts must map {', '.join(PATTERNS)} to whole numbers ≥ 0")
    tool_counts = raw.get("tool_counts") or {}
    per_tool = set(PATTERNS) - {"no_call"}
    if not isinstance(tool_counts, dict):
        raise SynthError(f"{source}: tool_counts must map tool names to counts")
    for tool_name, overrides in tool_counts.items():
        if tool_name not in names:
            raise SynthError(f"{source}: tool_counts.{tool_name}: no such tool")
        if (not isinstance(overrides, dict) or set(overrides) - per_tool
                or not all(isinstance(v, int) and v >= 0 for v in overrides.values())):
            raise SynthError(f"{source}: tool_counts.{tool_name} must map {', '.join(sorted(per_tool))} to whole "
                             f"numbers ≥ 0")
    grounding = raw.get("grounding", "strict")
    if grounding not in GROUNDING:
        raise SynthError(f"{source}: grounding {grounding!r} must be one of {', '.join(GROUNDING)}")
    distractors = raw.get("distractors")
    if distractors is not None and (not isinstance(distractors, int) or distractors < 0):
        raise SynthError(f"{source}: distractors must be a whole number ≥ 0 (or absent: every tool in every sample)")
    tool_shape = raw.get("tool_shape", "as_given")
    if tool_shape not in TOOL_SHAPES:
        raise SynthError(f"{source}: tool_shape {tool_shape!r} must be one of {', '.join(TOOL_SHAPES)}")
    redraws = raw.get("redraws", 50)
    if not isinstance(redraws, int) or isinstance(redraws, bool) or redraws < 0:
        raise SynthError(f"{source}: redraws must be a whole number ≥ 0 (0: a repeat is rejected at once)")
    test_size = float(raw.get("test_size", 0.15))
    if not 0 <= test_size < 1:
        raise SynthError(f"{source}: test_size must be in [0, 1)")
    templates = {tool: _per_language(t, f"{source}: templates.{tool}", languages)
                 for tool, t in (raw.get("templates") or {}).items()}
    for tool_name in templates:
        if tool_name not in names:
            raise SynthError(f"{source}: templates.{tool_name}: no such tool")
    clarify = {tool: {arg: _per_language(t, f"{source}: clarify.{tool}.{arg}", languages) for arg, t in per.items()}
               for tool, per in (raw.get("clarify") or {}).items()}
    results = raw.get("results") or {}
    return SynthSpec(
        tools=infos,
        raw_tools=tools_raw,
        examples=examples_raw,
        system=raw.get("system"),
        languages=list(languages),
        fallback_tool=fallback,
        templates=templates,
        clarify_templates=clarify,
        ask_templates=_per_language(raw.get("ask"), f"{source}: ask", languages),
        results={tool: dict(r) for tool, r in results.items()},
        no_call=_per_language(raw.get("no_call"), f"{source}: no_call", languages),
        no_call_reply=_per_language(raw.get("no_call_reply"), f"{source}: no_call_reply", languages),
        counts=counts,
        tool_counts={name: dict(overrides) for name, overrides in tool_counts.items()},
        grounding=grounding,
        distractors=distractors,
        tool_shape=tool_shape,
        test_size=test_size,
        seed=int(raw.get("seed", 42)),
        redraws=redraws,
        name=str(raw.get("name", "synth")),
        source=source,
    )
