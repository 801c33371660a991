"""Templates: the qwen layout and its Jinja twin agree, ``jinja`` equals apply_chat_template, the three tool shapes."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from tooltune import chat_template
from tooltune.conversation import Conversation, Message, Tool, ToolCall
from tooltune.data import DataArguments, load_conversations, load_tokenizer
from tooltune.encode import IGNORE_INDEX, encode_dataset
from tooltune.templates import QWEN_DEFAULT_SYSTEM, TemplateError, get_template


@pytest.fixture(scope="module")
def qwen_tok(qwen_tokenizer_dir: Path):
    return load_tokenizer(qwen_tokenizer_dir)


@pytest.fixture(scope="module")
def smol_tok(smollm2_tokenizer_dir: Path):
    return load_tokenizer(smollm2_tokenizer_dir)


@pytest.fixture(scope="module")
def demo_conversations() -> list[Conversation]:
    return load_conversations(DataArguments(dataset="glaive_toolcall_en_demo,glaive_toolcall_zh_demo")).conversations


def client_tools(conv: Conversation) -> list[dict] | None:
    """Tools as OpenAI/Ollama clients send them, which is what vLLM and Ollama hand the chat template."""
    shaped = []
    for tool in conv.tools:
        spec = tool.spec
        if spec.get("type") == "function":
            shaped.append(spec)
        elif isinstance(spec.get("parameters", {}), dict):
            shaped.append({"type": "function", "function": spec})
        else:
            shaped.append(tool.to_openai())
    return shaped or None


def prefixes(conv: Conversation) -> list[Conversation]:
    """Every conversation prefix that ends right before an assistant message (what eval renders)."""
    return [
        Conversation(messages=conv.messages[:i], tools=conv.tools)
        for i, m in enumerate(conv.messages)
        if m.role == "assistant"
    ]


def test_qwen_jinja_twin_renders_the_training_text(qwen_tok, demo_conversations) -> None:
    template = get_template("qwen", qwen_tok)
    source = template.jinja_chat_template
    for conv in demo_conversations:
        full = chat_template.render(source, conv.template_messages(), tools=conv.template_tools())
        assert full == template.render_text(conv), conv.where()
        for prefix in prefixes(conv):
            served = chat_template.render(
                source, prefix.template_messages(), tools=prefix.template_tools(), add_generation_prompt=True
            )
            assert served == template.render_prompt(prefix), prefix.where()


def test_qwen_render_prompt_is_the_training_prompt(qwen_tok, demo_conversations) -> None:
    template = get_template("qwen", qwen_tok)
    conv = demo_conversations[0]
    turns = template.turns(conv)
    for number, prefix in enumerate(prefixes(conv)):
        expected = "".join(t.prompt + t.response for t in turns[:number]) + turns[number].prompt
        assert template.render_prompt(prefix) == expected


def test_jinja_template_equals_apply_chat_template_on_every_demo_conversation(qwen_tok, demo_conversations) -> None:
    template = get_template("jinja", qwen_tok)
    for conv in demo_conversations:
        expected = qwen_tok.apply_chat_template(conv.template_messages(), tools=client_tools(conv), tokenize=False)
        assert template.render_text(conv) == expected, conv.where()


def test_jinja_trains_only_assistant_spans_with_serving_ids(qwen_tok, demo_conversations) -> None:
    template = get_template("jinja", qwen_tok)
    convs = demo_conversations[:40]
    report = encode_dataset(convs, template, cutoff_len=100_000, policy="safe")
    assert report.skipped == []
    end = qwen_tok.convert_tokens_to_ids("<|im_end|>")
    for conv, sample in zip(convs, report.samples, strict=True):
        ids = qwen_tok.apply_chat_template(conv.template_messages(), tools=client_tools(conv), tokenize=True)
        ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
        assert sample.input_ids == list(ids)
        trained = [t for t, label in zip(sample.input_ids, sample.labels, strict=True) if label != IGNORE_INDEX]
        assistant = [m for m in conv.messages if m.role == "assistant"]
        assert trained.count(end) == len(assistant)
        text = qwen_tok.decode(trained)
        for message in assistant:
            assert (message.content or message.tool_calls[0].name) in text


def test_jinja_on_smollm2_uses_its_own_template(smol_tok, demo_conversations) -> None:
    template = get_template("jinja", smol_tok)
    conv = demo_conversations[1]
    assert template.render_text(conv) == smol_tok.apply_chat_template(conv.template_messages(), tokenize=False)


def test_jinja_trains_each_turn_of_a_template_that_rewrites_history(qwen_tok) -> None:
    # Renders only the last assistant message in full: earlier spans change with what follows. Issue 13 changed the
    # behaviour: such a conversation is no longer reported away but trained one assistant message per sample, each
    # in the context the model sees when it writes that message.
    source = (
        "{% for m in messages %}{% if m.role == 'assistant' and not loop.last %}<a>{% else %}"
        "<{{ m.role }}>{{ m.content }}{% endif %}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    from tooltune.templates import JinjaTemplate

    template = JinjaTemplate(qwen_tok, source=source)
    conv = Conversation(
        messages=[Message("user", "a"), Message("assistant", "b"), Message("user", "c"), Message("assistant", "d")],
        source="x.json",
        index=3,
    )
    report = encode_dataset([conv], template)
    assert report.skipped == [] and len(report.samples) == 2
    first, second = report.samples
    decode = qwen_tok.decode
    assert decode(first.input_ids) == "<user>a<assistant>b"
    assert decode(second.input_ids) == "<user>a<a><user>c<assistant>d"
    for sample, reply in ((first, "b"), (second, "d")):
        trained = [i for i, label in zip(sample.input_ids, sample.labels, strict=True) if label != IGNORE_INDEX]
        assert decode(trained).endswith(reply) and sample.record == 3


BARE = {
    "name": "get_weather",
    "description": "Weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}
OPENAI = {"type": "function", "function": BARE}
PARAM_LIST = {
    "name": "HandleTongzhiTonggao",
    "description": "该工具专用于新增、修改、删除时讯消息或通告！",
    "parameters": [{"name": "operation", "description": "操作方式", "required": True}],
}


def tool_conv(spec: dict) -> Conversation:
    return Conversation(
        messages=[
            Message("user", "go"),
            Message("assistant", "", tool_calls=[ToolCall(Tool(spec).name, {"city": "北京"})]),
            Message("tool", "sunny"),
            Message("assistant", "Sunny."),
        ],
        tools=[Tool(spec)],
    )


@pytest.mark.parametrize("spec", [OPENAI, BARE, PARAM_LIST], ids=["openai", "bare", "param_list"])
def test_three_tool_shapes(spec: dict, qwen_tok) -> None:
    conv = tool_conv(spec)
    qwen_text = get_template("qwen", qwen_tok).render_text(conv)
    # qwen (LLaMA-Factory): bare and list shapes are wrapped, the user's dict is otherwise kept verbatim.
    wrapped = spec if spec.get("type") == "function" else {"type": "function", "function": spec}
    assert "\n<tools>\n" + json.dumps(wrapped, ensure_ascii=False) + "\n</tools>" in qwen_text
    name = Tool(spec).name
    assert f'<tool_call>\n{{"name": "{name}", "arguments": {{"city": "北京"}}}}\n</tool_call><|im_end|>' in qwen_text
    # jinja (the tokenizer's own template): the tool as a client sends it (what vLLM and Ollama give the template):
    # a bare function wrapped with its keys untouched, the seed's parameter list as the OpenAI schema.
    jinja_text = get_template("jinja", qwen_tok).render_text(conv)
    shown = wrapped if isinstance(spec.get("parameters"), dict) or spec is OPENAI else Tool(spec).to_openai()
    assert "\n<tools>\n" + json.dumps(shown, ensure_ascii=False) + "\n</tools>" in jinja_text
    assert jinja_text == qwen_tok.apply_chat_template(conv.template_messages(), tools=[shown], tokenize=False)


def test_qwen_layout_details(qwen_tok) -> None:
    conv = Conversation(
        messages=[
            Message("system", "Be brief."),
            Message("user", "两个城市?"),
            Message(
                "assistant",
                "Checking.",
                tool_calls=[ToolCall("get_weather", {"city": "A"}), ToolCall("get_weather", {"city": "B"})],
            ),
            Message("tool", "1"),
            Message("tool", "2"),
            Message("assistant", "Done."),
        ],
        tools=[Tool(BARE)],
    )
    template = get_template("qwen", qwen_tok)
    turns = template.turns(conv)
    assert turns[0].prompt_parts[0].startswith("<|im_start|>system\nBe brief.\n\n# Tools\n")
    assert turns[0].response == (
        'Checking.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "A"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "B"}}\n</tool_call><|im_end|>\n'
    )
    assert turns[1].prompt_parts == [
        "<|im_start|>user\n<tool_response>\n1\n</tool_response>\n<tool_response>\n2\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n"
    ]
    jinja_text = chat_template.render(
        template.jinja_chat_template, conv.template_messages(), tools=conv.template_tools()
    )
    assert jinja_text == template.render_text(conv)


def test_default_system_override(qwen_tok) -> None:
    conv = Conversation(messages=[Message("user", "hi"), Message("assistant", "hello")])
    assert (
        get_template("qwen", qwen_tok)
        .render_text(conv)
        .startswith(f"<|im_start|>system\n{QWEN_DEFAULT_SYSTEM}<|im_end|>")
    )
    custom = get_template("qwen", qwen_tok, default_system='Say "yes".\nAlways.')
    text = custom.render_text(conv)
    assert text.startswith('<|im_start|>system\nSay "yes".\nAlways.<|im_end|>\n<|im_start|>user\nhi')
    assert chat_template.render(custom.jinja_chat_template, conv.template_messages()) == text
    no_system = get_template("qwen", qwen_tok, default_system="")
    assert no_system.render_text(conv) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n"
    jinja = get_template("jinja", qwen_tok, default_system="Custom.")
    assert jinja.render_text(conv).startswith("<|im_start|>system\nCustom.<|im_end|>")


def test_template_errors(qwen_tok) -> None:
    with pytest.raises(TemplateError, match="did you mean qwen"):
        get_template("qwne", qwen_tok)
    without_template = copy.copy(qwen_tok)
    without_template.chat_template = None
    with pytest.raises(TemplateError, match="no chat template"):
        get_template("jinja", without_template)
