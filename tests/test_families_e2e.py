"""The families layer end to end: respond() on a real llama.cpp engine per call syntax, Ollama's tool view in training,
preview's warnings and vLLM's flags per family."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from family_fixtures import upstream_template

from tooltune import chat_template
from tooltune.conversation import Conversation, Message, Tool, ToolCall
from tooltune.families.family import FAMILIES
from tooltune.families.parsers import parse_reply
from tooltune.families.respond import RespondOptions, respond
from tooltune.serve.modelfile import canonicalize_for_ollama
from tooltune.templates import JinjaTemplate, get_template

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather of a city",
    "parameters": {"type": "object", "properties": {"unit": {"type": "string", "default": "celsius"},
                                                    "city": {"type": "string", "format": "city-name"}},
                   "required": ["city"]},
}}
MESSAGES = [{"role": "system", "content": "You call tools."}, {"role": "user", "content": "Weather in Paris?"}]


@pytest.mark.slow  # grammar-constrained decoding: ~20 s per call on a busy 2-core machine
def test_respond_forces_a_structured_call_in_each_call_syntax(default_gguf: Path) -> None:
    """Mistral (call marker written into the prompt, then JSON) and Llama 3.2 (the reply is the JSON); Hermes tags are
    covered by test_chat's forced calls, Phi-4-mini takes Mistral's path with its own marker."""
    from tooltune.engines import SamplingParams, load_engine

    engine = load_engine(default_gguf)
    try:
        for family in ("mistral", "llama3.2"):
            template = FAMILIES[family].template_text() or upstream_template(family)
            engine.chat_template = template
            events: list = []
            options = RespondOptions(params=SamplingParams(max_tokens=40, seed=0), on_event=events.append)
            reply = respond(engine, MESSAGES, [WEATHER], options, tool_choice="get_weather")
            assert reply.family == family
            # The prompt is the family template's render (plus the call marker a forced reply starts with).
            prompt = chat_template.render(template, MESSAGES, tools=[WEATHER], add_generation_prompt=True,
                                          bos_token=engine.bos_token, eos_token=engine.eos_token)
            assert reply.prompt.startswith(prompt) and reply.raw.startswith(reply.prompt[len(prompt):])
            assert [c.name for c in reply.calls] == ["get_weather"], reply.raw
            assert isinstance(reply.calls[0].arguments["city"], str)
            assert [e.call.name for e in events if hasattr(e, "call")] == ["get_weather"]
            again = parse_reply(reply.raw, FAMILIES[family], tools=[WEATHER])  # what eval re-reads from raw text
            assert [(c.name, c.arguments) for c in again.calls] == [(c.name, c.arguments) for c in reply.calls]
    finally:
        engine.close()


def test_ollama_tool_view_trains_what_ollama_shows() -> None:
    conv = Conversation(messages=[
        Message("user", "Weather?"),
        Message("assistant", "", tool_calls=[ToolCall("get_weather", {"unit": "c", "city": "Paris"})]),
        Message("tool", "sunny"), Message("assistant", "Sunny."),
    ], tools=[Tool(WEATHER)])
    for name in ("qwen", "qwen3"):
        given = get_template(name, None).render_text(conv)
        ollama = get_template(name, None, tool_view="ollama").render_text(conv)
        assert '"format"' in given and '"format"' not in ollama and '"default"' not in ollama
        assert '{"city": "Paris", "unit": "c"}' in ollama and '{"unit": "c", "city": "Paris"}' in given
        messages, tools = canonicalize_for_ollama(conv.template_messages(), [Tool(WEATHER).to_openai()])
        source = get_template(name, None).jinja_chat_template
        assert ollama == chat_template.render(source, messages, tools=tools)


def test_preview_warns_about_broken_upstream_templates() -> None:
    from tooltune.preview import template_warnings

    (mistral,) = template_warnings(JinjaTemplate(None, source=upstream_template("mistral")))
    assert "drops the system prompt" in mistral and "--template mistral" in mistral
    assert len(template_warnings(JinjaTemplate(None, source=upstream_template("phi4-mini")))) == 2
    assert template_warnings(get_template("mistral", None)) == []
    assert template_warnings(get_template("qwen", None)) == []


@pytest.mark.parametrize(("family", "model_type", "tool_parser", "reasoning"), [
    ("qwen3", "qwen3", "hermes", "qwen3"),
    ("smollm3", "smollm3", "hermes", "qwen3"),
    ("llama3.2", "llama", "llama3_json", None),
    ("mistral", "mistral", "mistral", None),
    ("hermes3", "llama", "hermes", None),
])
def test_vllm_command_flags_per_family(tmp_path: Path, family: str, model_type: str, tool_parser: str,
                                       reasoning: str | None) -> None:
    from tooltune.vllm.command import build_vllm_command

    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type}), encoding="utf-8")
    template = FAMILIES[family].template_text() or upstream_template(family)
    (tmp_path / "chat_template.jinja").write_text(template, encoding="utf-8")
    argv = build_vllm_command(tmp_path).argv
    assert argv[argv.index("--tool-call-parser") + 1] == tool_parser
    if reasoning:
        assert argv[argv.index("--reasoning-parser") + 1] == reasoning
    else:
        assert "--reasoning-parser" not in argv
