"""Ollama Modelfile TEMPLATEs per family, rendered by Go's own text/template (tests/go harness, Ollama 0.33.0's data
types) and compared with the family's Jinja template on the glaive demo conversations and a reasoning round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_modelfile import glaive_conversations, go_render, go_renderer, prompts_of  # noqa: F401  (fixture)

from tooltune.chat_template import ChatTemplateError, render
from tooltune.families.family import FAMILIES
from tooltune.serve.modelfile import (
    _resource_text,
    canonicalize_for_ollama,
    go_template_for,
    ollama_tool_call_prefix,
    parse_modelfile,
    write_modelfile,
)
from tooltune.templates.jinja import with_call_ids


def test_qwen3_go_template_matches_jinja_on_glaive(go_renderer: Path, demo_data_dir: Path) -> None:  # noqa: F811
    jinja_template = FAMILIES["qwen3"].template_text()
    family, go_template = go_template_for(jinja_template)
    assert family == "qwen3"
    assert ollama_tool_call_prefix(go_template) == "<tool_call>"  # not "{": bare JSON in a reply is no call
    cases = prompts_of(glaive_conversations(demo_data_dir))
    canonical = [(*canonicalize_for_ollama(m, t), g) for m, t, g in cases]
    outputs = go_render(go_renderer, go_template, canonical)
    for (messages, tools, generation), go_text in zip(canonical, outputs, strict=True):
        assert go_text == render(jinja_template, messages, tools, add_generation_prompt=generation), messages


def test_qwen3_go_template_renders_reasoning_like_jinja(go_renderer: Path) -> None:  # noqa: F811
    jinja_template = FAMILIES["qwen3"].template_text()
    _, go_template = go_template_for(jinja_template)
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "thinking": "Use the tool.",
         "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "18"},
        {"role": "assistant", "content": "18 °C.", "thinking": "Answer."},
        {"role": "user", "content": "Thanks"},
    ]
    jinja_messages = [{**m, "reasoning_content": m["thinking"]} if "thinking" in m else m for m in messages]
    texts = {}
    for end in (2, 4, 6):
        [texts[end]] = go_render(go_renderer, go_template, [(messages[:end], tools, True)])
        assert texts[end] == render(jinja_template, jinja_messages[:end], tools, add_generation_prompt=True), end
    # Reasoning after the last user query is shown; once a new query follows, it is dropped (as Qwen3's Jinja does).
    assert "<think>\nUse the tool.\n</think>\n\n<tool_call>" in texts[4]
    assert "Use the tool." not in texts[6] and "Answer." not in texts[6]


# ------------------------------------------------------------------------------------ Mistral, Phi-4-mini, Gemma 3

# Jinja special tokens each family's template prints. BOS is left out on purpose: Ollama's tokenizer (llama.cpp,
# add_bos) puts it in front of the prompt, so a TEMPLATE that printed it would double it.
FAMILY_TOKENS = {"mistral": {"eos_token": "</s>"}, "phi4-mini": {"eos_token": "<|endoftext|>"}, "gemma3": {},
                 "hermes3": {}, "llama3.2": {}, "smollm3": {}}
FAMILY_PREFIX = {"mistral": "[TOOL_CALLS]", "phi4-mini": "<|tool_call|>", "gemma3": "<tool_call>",
                 "hermes3": "<tool_call>", "llama3.2": "{", "smollm3": "<tool_call>"}  # Llama: the reply is JSON
FIXTURES = Path(__file__).parent / "fixtures" / "families"


def _family_template(family: str) -> str:
    """The shipped template, or (Hermes 3, Llama 3.2: Llama licence, never shipped) the fixture's model-folder one."""
    return FAMILIES[family].template_text() or (FIXTURES / family / "chat_template.jinja").read_text()
ROUND_TRIP_TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather <now> & later",
    "parameters": {"type": "object", "properties": {"unit": {"type": "string", "enum": ["c", "f"]},
                                                     "city": {"type": "string", "description": "城市", "format": "x"}},
                   "required": ["city"]}}}]
ROUND_TRIP = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Weather in Paris and 北京?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"id": "abcDEF123", "function": {"name": "get_weather", "arguments": {"unit": "c", "city": "Paris"}}},
        {"id": "abcDEF124", "function": {"name": "get_weather", "arguments": {"city": "北京"}}}]},
    {"role": "tool", "content": "{\"temp\": 20}", "tool_call_id": "abcDEF123"},
    {"role": "tool", "content": "{\"temp\": 25}", "tool_call_id": "abcDEF124"},
    {"role": "assistant", "content": "20 °C and 25 °C."},
    {"role": "user", "content": "Thanks"},
]


def _family_jinja(family: str, messages: list[dict], tools: list | None, generation: bool) -> str:
    if family == "hermes3" and tools is None:
        tools = []  # Hermes' tool_use template needs a list; Ollama's TEMPLATE sees no tools the same way
    text = render(_family_template(family), messages, tools, add_generation_prompt=generation,
                  **FAMILY_TOKENS[family])
    # Phi-4-mini's template ends a finished conversation with EOS (training text); the Go TEMPLATE leaves a final
    # assistant message open, as Ollama needs to continue it.
    eos = FAMILY_TOKENS[family].get("eos_token", "")
    return text.removesuffix(eos) if family == "phi4-mini" and not generation else text


@pytest.mark.parametrize("family", list(FAMILY_TOKENS))
def test_family_go_template_matches_jinja(go_renderer: Path, demo_data_dir: Path, family: str) -> None:  # noqa: F811
    found, go_template = go_template_for(_family_template(family))
    assert found == family
    records = glaive_conversations(demo_data_dir)[::6]  # a sixth of the demo keeps this a few seconds per family
    if FAMILIES[family].tool_call_ids:
        records = [(with_call_ids(m), t) for m, t in records]
    round_trip = ROUND_TRIP
    if family == "llama3.2":  # one call per reply: the template refuses parallel calls
        round_trip = [{**m, "tool_calls": m["tool_calls"][:1]} if m.get("tool_calls") else m for m in ROUND_TRIP]
        round_trip = round_trip[:4] + round_trip[5:]
    cases = prompts_of(records) + prompts_of([(round_trip, ROUND_TRIP_TOOLS)])
    canonical = [(*canonicalize_for_ollama(m, t), g) for m, t, g in cases]
    outputs = go_render(go_renderer, go_template, canonical)
    equal = as_given = unreachable = 0
    for (messages, tools, generation), (raw_m, raw_t, _), go_text in zip(canonical, cases, outputs, strict=True):
        try:
            jinja_text = _family_jinja(family, messages, tools, generation)
        except ChatTemplateError:  # Mistral's template refuses non-alternating records: nothing to compare
            assert family == "mistral", messages
            continue
        if family == "smollm3" and tools and "'" in json.dumps(tools, ensure_ascii=False):
            # SmolLM3 prints tools as Python reprs: a string holding ' is quoted "..." by Python, and Go's
            # text/template (no string functions in Ollama) cannot look inside a string to choose the quote.
            unreachable += go_text != jinja_text
            continue
        assert go_text == jinja_text, (family, messages)
        equal += 1
        as_given += go_text == _family_jinja(family, raw_m, raw_t, generation)
    print(f"\n{family}: Go TEMPLATE == Jinja on {equal}/{len(cases)} prompts after canonicalize_for_ollama, "
          f"{as_given} as given" + (f", {unreachable} differ (' in Python-repr tools)" if unreachable else ""))
    assert equal >= len(cases) - 3 - unreachable
    assert as_given < equal  # sorted keys / dropped schema keys: canonicalisation is what makes them agree
    assert ollama_tool_call_prefix(go_template) == FAMILY_PREFIX[family]


@pytest.mark.parametrize("family", list(FAMILY_TOKENS))
def test_family_modelfile_written_with_template_and_stops(default_gguf: Path, tmp_path: Path, family: str) -> None:
    jinja_template = _family_template(family)
    out = write_modelfile(default_gguf, tmp_path / "Modelfile", chat_template=jinja_template)
    parsed = parse_modelfile(out)
    assert parsed.template == go_template_for(jinja_template)[1]
    assert parsed.template == _resource_text(f"{family}.gotmpl")
    assert f"prefix {FAMILY_PREFIX[family]!r}" in out.read_text()
    for marker in FAMILIES[family].end_of_turn:
        assert marker in parsed.parameters["stop"], (family, parsed.parameters)


def test_smollm3_apostrophe_is_the_only_gap(go_renderer: Path) -> None:  # noqa: F811
    """Python's repr quotes a string holding ' with "...": the one thing the Go TEMPLATE cannot reproduce."""
    jinja_template = _family_template("smollm3")
    _, go_template = go_template_for(jinja_template)
    tools = [{"type": "function", "function": {"name": "news", "description": "Get the user's news",
                                               "parameters": {"type": "object", "properties": {}}}}]
    messages = [{"role": "user", "content": "hi"}]
    [go_text] = go_render(go_renderer, go_template, [(messages, tools, True)])
    jinja_text = render(jinja_template, messages, tools, add_generation_prompt=True)
    assert go_text != jinja_text
    assert go_text.replace("'Get the user's news'", '"Get the user\'s news"') == jinja_text


def test_llama_template_is_what_its_generator_writes() -> None:
    """llama3.2.gotmpl is generated (indented JSON needs one printer per depth): the committed file must not drift."""
    import importlib.util

    script = Path(__file__).parents[1] / "scripts" / "gen_llama32_gotmpl.py"
    spec = importlib.util.spec_from_file_location("gen_llama32_gotmpl", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.build() == module.OUT.read_text(encoding="utf-8")


@pytest.mark.parametrize("family", [f for f in ("qwen3", "smollm3") if FAMILIES[f].thinks])
def test_think_switch_renders_like_enable_thinking(go_renderer: Path, demo_data_dir: Path,  # noqa: F811
                                                   family: str) -> None:
    """Ollama's request `think` reaches the TEMPLATE as .Think/.IsThinkSet: unset, false and true render what the
    Jinja template renders with enable_thinking unset, False and True (what `tooltune serve` and training use)."""
    jinja_template = _family_template(family)
    _, go_template = go_template_for(jinja_template)
    records = glaive_conversations(demo_data_dir)[::12]
    cases = prompts_of(records) + prompts_of([(ROUND_TRIP, ROUND_TRIP_TOOLS)])
    canonical = [(*canonicalize_for_ollama(m, t), g) for m, t, g in cases]
    if family == "smollm3":  # Python-repr tools: a ' in a string is the known gap (test above)
        canonical = [c for c in canonical if "'" not in json.dumps(c[1], ensure_ascii=False)]
    prompts = {}
    for think in (None, False, True):
        extra = {} if think is None else {"enable_thinking": think}
        outputs = go_render(go_renderer, go_template, canonical, think=think)
        for (messages, tools, generation), go_text in zip(canonical, outputs, strict=True):
            assert go_text == render(jinja_template, messages, tools, add_generation_prompt=generation,
                                     **FAMILY_TOKENS.get(family, {}), **extra), (family, think, messages)
        prompts[think] = outputs
    assert prompts[None] == prompts[True]  # both families think unless told not to
    # Every generation prompt changes with the switch: think false opens the reply with an empty reasoning block.
    generation = [i for i, case in enumerate(canonical) if case[2]]
    assert generation and all(prompts[False][i] != prompts[True][i] for i in generation)
    assert all(prompts[False][i].rstrip("\n").endswith("<think>\n\n</think>") for i in generation)
