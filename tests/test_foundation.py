"""The shared building blocks: Conversation shapes, LLaMA-Factory-style arguments, the sandboxed template renderer."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from tooltune.args import ArgumentError, parse_into
from tooltune.chat_template import ChatTemplateError, load_from_tokenizer_dir, render
from tooltune.conversation import Conversation, ConversationError, Message, Tool, ToolCall


def test_tool_call_accepts_openai_string_arguments_and_ollama_objects() -> None:
    openai_call = ToolCall.from_any({"id": "c1", "type": "function",
                                     "function": {"name": "f", "arguments": '{"x": 1}'}})
    ollama_call = ToolCall.from_any({"function": {"name": "f", "arguments": {"x": 1}}})
    bare = ToolCall.from_any({"name": "f", "arguments": {"x": 1}})
    assert openai_call.arguments == ollama_call.arguments == bare.arguments == {"x": 1}
    assert openai_call.id == "c1"
    assert json.loads(openai_call.to_openai()["function"]["arguments"]) == {"x": 1}


@pytest.mark.parametrize(
    "raw, reason",
    [
        ({"function": {"name": "f", "arguments": "{not json"}}, "not valid JSON"),
        ({"function": {"arguments": {}}}, "no function name"),
        ({"name": "f", "arguments": [1, 2]}, "must be a JSON object"),
        ("f()", "must be an object"),
    ],
)
def test_tool_call_errors_say_why(raw: object, reason: str) -> None:
    with pytest.raises(ConversationError, match=reason):
        ToolCall.from_any(raw)


SEED_LIST_TOOL = {
    "name": "WeatherApi",
    "description": "该工具专用于市、区县的实时天气查询",
    "parameters": [{"name": "query_key", "description": "需要查询天气的地区", "required": True}],
}


def test_three_tool_shapes_normalise_to_the_same_schema_and_keep_their_spec() -> None:
    schema = {"type": "object", "properties": {"q": {"type": "string"}}}
    bare = {"name": "get", "description": "d", "parameters": schema}
    openai = {"type": "function", "function": bare}
    tools = Tool.parse_list(json.dumps([bare, openai, SEED_LIST_TOOL]))
    assert [t.shape for t in tools] == ["bare", "openai", "param_list"]
    assert tools[0].json_schema() == tools[1].json_schema()
    assert tools[0].spec == bare and tools[1].spec == openai  # verbatim: templates render what the user gave
    schema = tools[2].json_schema()
    assert schema["required"] == ["query_key"]
    assert schema["properties"]["query_key"]["type"] == "string"


def test_conversation_round_trips_openai_messages() -> None:
    raw = {
        "messages": [
            {"role": "user", "content": "weather in Paris?"},
            {"role": "assistant", "content": None,
             "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "w", "arguments": '{"q":"Paris"}'}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
            {"role": "assistant", "content": "It is sunny."},
        ],
        "tools": [{"type": "function", "function": {"name": "w", "parameters": {"type": "object"}}}],
    }
    conv = Conversation.from_openai(raw)
    assert conv.messages[1].tool_calls[0].arguments == {"q": "Paris"}
    again = Conversation.from_openai(conv.to_openai())
    assert again.messages == conv.messages
    assert conv.template_messages()[1]["tool_calls"][0]["function"]["arguments"] == {"q": "Paris"}


def test_unknown_role_is_rejected() -> None:
    with pytest.raises(ConversationError, match="unknown role 'gpt'"):
        Message.from_openai({"role": "gpt", "content": "hi"})


@dataclass
class _Data:
    """Data."""

    dataset: str = ""
    cutoff_len: int = 2048
    lora_target: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    bf16: bool = False
    gradient_checkpointing: bool = False
    learning_rate: float = 5e-5
    max_samples: int | None = None


def test_seed_flags_parse_with_underscores_dashes_and_bare_bools() -> None:
    (args,) = parse_into(
        (_Data,),
        ["--dataset", "glaive_toolcall_en_demo", "--cutoff-len", "4096", "--lora_target", "q_proj,k_proj",
         "--gradient_checkpointing", "true", "--bf16", "--learning_rate", "5e-6", "--max_samples=10"],
    )
    assert args == _Data("glaive_toolcall_en_demo", 4096, ["q_proj", "k_proj"], True, True, 5e-6, 10)


def test_yaml_config_with_cli_overrides(tmp_path: Path) -> None:
    config = tmp_path / "train.yaml"
    config.write_text("dataset: a\ncutoff_len: 512\nbf16: true\nlora_target: [q_proj]\n")
    (args,) = parse_into((_Data,), [str(config), "--cutoff_len", "1024", "bf16=false"])
    assert (args.dataset, args.cutoff_len, args.bf16, args.lora_target) == ("a", 1024, False, ["q_proj"])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--cutof_len", "1"], "did you mean --cutoff_len"),
        (["--cutoff_len", "big"], "expects an integer"),
        (["--bf16", "maybe"], "unexpected argument 'maybe'"),
        (["--dataset"], "needs a value"),
    ],
)
def test_argument_errors(argv: list[str], message: str) -> None:
    with pytest.raises(ArgumentError, match=message):
        parse_into((_Data,), argv)


def test_renderer_equals_apply_chat_template_with_tools(qwen_tokenizer_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(qwen_tokenizer_dir)
    tools = [{"type": "function", "function": {"name": "calc", "description": "计算 <x> & y",
                                               "parameters": {"type": "object", "properties": {}}}}]
    conv = Conversation.from_openai({
        "messages": [
            {"role": "user", "content": "1+1?"},
            {"role": "assistant", "tool_calls": [{"function": {"name": "calc", "arguments": {"e": "1+1"}}}]},
            {"role": "tool", "content": "2"},
            {"role": "tool", "content": "two"},
        ],
        "tools": tools,
    })
    expected = tokenizer.apply_chat_template(conv.template_messages(), tools=conv.template_tools(),
                                             add_generation_prompt=True, tokenize=False)
    template = load_from_tokenizer_dir(qwen_tokenizer_dir)
    assert template is not None
    ours = render(template, conv.template_messages(), conv.template_tools(), add_generation_prompt=True)
    assert ours == expected


def test_renderer_is_sandboxed() -> None:
    with pytest.raises(ChatTemplateError):
        render("{{ messages.__class__.__mro__[1].__subclasses__() }}", [])
    with pytest.raises(ChatTemplateError, match="no system"):
        render("{{ raise_exception('no system') }}", [])
