"""Ollama Modelfile TEMPLATEs per family, rendered by Go's own text/template (tests/go harness, Ollama 0.33.0's data
types) and compared with the family's Jinja template on the glaive demo conversations and a reasoning round trip."""

from __future__ import annotations

from pathlib import Path

from test_modelfile import glaive_conversations, go_render, go_renderer, prompts_of  # noqa: F401  (fixture)

from tooltune.chat_template import render
from tooltune.families.family import FAMILIES
from tooltune.serve.modelfile import canonicalize_for_ollama, go_template_for


def test_qwen3_go_template_matches_jinja_on_glaive(go_renderer: Path, demo_data_dir: Path) -> None:  # noqa: F811
    jinja_template = FAMILIES["qwen3"].template_text()
    family, go_template = go_template_for(jinja_template)
    assert family == "qwen3"
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
