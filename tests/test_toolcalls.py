"""Table tests for the tool-call parser, batch and streaming (fed one character at a time and in random chunks)."""

from __future__ import annotations

import json
import random

import pytest

from tooltune.conversation import Tool, ToolCall
from tooltune.toolcalls import (
    ContentDelta,
    ParseResult,
    StreamingToolCallParser,
    ToolCallDone,
    format_tool_calls,
    parse_tool_calls,
    tool_names,
)

TOOLS = ["get_weather", "search_recipes"]


def call(name: str, **arguments: object) -> ToolCall:
    return ToolCall(name=name, arguments=dict(arguments))


# (id, text, lenient, expected calls, expected content, number of errors, unknown names)
CASES: list[tuple[str, str, bool, list[ToolCall], str, int, list[str]]] = [
    (
        "single block (Qwen2.5 layout)",
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
        False,
        [call("get_weather", city="Paris")],
        "",
        0,
        [],
    ),
    (
        "several blocks with text before",
        'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>',
        False,
        [call("get_weather", city="Paris"), call("get_weather", city="Rome")],
        "Let me check.",
        0,
        [],
    ),
    (
        "several objects in one block (Ollama qwen2.5 template)",
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
        '{"name": "search_recipes", "arguments": {"ingredients": ["rice"]}}\n</tool_call>',
        False,
        [call("get_weather", city="Paris"), call("search_recipes", ingredients=["rice"])],
        "",
        0,
        [],
    ),
    (
        "a JSON list in one block",
        '<tool_call>[{"name": "get_weather", "arguments": {"city": "A"}}, '
        '{"name": "get_weather", "arguments": {"city": "B"}}]</tool_call>',
        False,
        [call("get_weather", city="A"), call("get_weather", city="B")],
        "",
        0,
        [],
    ),
    (
        "text after the call",
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\nI will report back.',
        False,
        [call("get_weather", city="Paris")],
        "I will report back.",
        0,
        [],
    ),
    (
        "arguments as a JSON string",
        '<tool_call>\n{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}\n</tool_call>',
        False,
        [call("get_weather", city="Paris")],
        "",
        0,
        [],
    ),
    (
        "parameters instead of arguments, and OpenAI function wrapper",
        '<tool_call>{"name": "get_weather", "parameters": {"city": "Oslo"}}</tool_call>'
        '<tool_call>{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Bern"}}}'
        "</tool_call>",
        False,
        [call("get_weather", city="Oslo"), call("get_weather", city="Bern")],
        "",
        0,
        [],
    ),
    (
        "missing arguments means no arguments",
        '<tool_call>{"name": "get_weather"}</tool_call>',
        False,
        [call("get_weather")],
        "",
        0,
        [],
    ),
    (
        "literal closing tag inside an argument string",
        '<tool_call>\n{"name": "search_recipes", "arguments": {"query": "a </tool_call> b {x}"}}\n</tool_call> done',
        False,
        [call("search_recipes", query="a </tool_call> b {x}")],
        "done",
        0,
        [],
    ),
    (
        "unclosed final block at EOS",
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}',
        False,
        [call("get_weather", city="Paris")],
        "",
        0,
        [],
    ),
    (
        "output stopped inside the closing tag",
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_',
        False,
        [call("get_weather", city="Paris")],
        "",
        0,
        [],
    ),
    (
        "malformed JSON (missing brace) is kept as content with an error",
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}\n</tool_call>',
        False,
        [],
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}\n</tool_call>',
        1,
        [],
    ),
    (
        "malformed JSON (single quotes)",
        "<tool_call>{'name': 'get_weather'}</tool_call> and more",
        False,
        [],
        "<tool_call>{'name': 'get_weather'}</tool_call> and more",
        1,
        [],
    ),
    (
        "valid JSON that is not a call",
        '<tool_call>{"city": "Paris"}</tool_call>',
        False,
        [],
        '<tool_call>{"city": "Paris"}</tool_call>',
        1,
        [],
    ),
    (
        "arguments string that is not JSON",
        '<tool_call>{"name": "get_weather", "arguments": "Paris"}</tool_call>',
        False,
        [],
        '<tool_call>{"name": "get_weather", "arguments": "Paris"}</tool_call>',
        1,
        [],
    ),
    (
        "unclosed block with truncated JSON at EOS",
        'Checking <tool_call>\n{"name": "get_weather", "arguments": {"ci',
        False,
        [],
        'Checking<tool_call>\n{"name": "get_weather", "arguments": {"ci',
        1,
        [],
    ),
    (
        "a good block survives a broken one",
        "<tool_call>not json</tool_call>\n"
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Lima"}}</tool_call>',
        False,
        [call("get_weather", city="Lima")],
        "<tool_call>not json</tool_call>",
        1,
        [],
    ),
    (
        "stray text after a call inside a block",
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Lima"}}}</tool_call>',
        False,
        [call("get_weather", city="Lima")],
        "}",
        1,
        [],
    ),
    (
        "empty block",
        "<tool_call></tool_call>",
        False,
        [],
        "<tool_call></tool_call>",
        1,
        [],
    ),
    (
        "unknown tool name is returned and flagged",
        '<tool_call>{"name": "launch_rocket", "arguments": {}}</tool_call>',
        False,
        [call("launch_rocket")],
        "",
        0,
        ["launch_rocket"],
    ),
    (
        "plain text only",
        "  The weather in Paris is sunny.\n",
        False,
        [],
        "The weather in Paris is sunny.",
        0,
        [],
    ),
    (
        "a lone '<' and a near-miss tag stay content",
        "a < b and <tool_cal> is not a tag",
        False,
        [],
        "a < b and <tool_cal> is not a tag",
        0,
        [],
    ),
    (
        "strict mode ignores a bare JSON call",
        '{"name": "get_weather", "arguments": {"city": "Paris"}}',
        False,
        [],
        '{"name": "get_weather", "arguments": {"city": "Paris"}}',
        0,
        [],
    ),
    (
        "lenient: bare JSON object naming a known tool",
        '{"name": "get_weather", "arguments": {"city": "Paris"}}',
        True,
        [call("get_weather", city="Paris")],
        "",
        0,
        [],
    ),
    (
        "lenient: json fence",
        'Here you go:\n```json\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```',
        True,
        [call("get_weather", city="Paris")],
        "Here you go:",
        0,
        [],
    ),
    (
        "lenient: bare list of calls",
        '[{"name": "get_weather", "arguments": {"city": "A"}}, {"name": "get_weather", "arguments": {"city": "B"}}]',
        True,
        [call("get_weather", city="A"), call("get_weather", city="B")],
        "",
        0,
        [],
    ),
    (
        "lenient: call inside prose keeps the prose spacing",
        'Calling {"name": "get_weather", "arguments": {"city": "Paris"}} now.',
        True,
        [call("get_weather", city="Paris")],
        "Calling  now.",
        0,
        [],
    ),
    (
        "lenient: JSON naming an unknown tool stays content",
        '{"name": "launch_rocket", "arguments": {}}',
        True,
        [],
        '{"name": "launch_rocket", "arguments": {}}',
        0,
        [],
    ),
    (
        "lenient: JSON that is not a call stays content",
        'The answer is {"temperature": 21} and [1, 2].',
        True,
        [],
        'The answer is {"temperature": 21} and [1, 2].',
        0,
        [],
    ),
    (
        "lenient: tagged blocks still work",
        'x <tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call> y',
        True,
        [call("get_weather", city="Paris")],
        "xy",
        0,
        [],
    ),
]


def _stream(text: str, chunks: list[str], lenient: bool) -> tuple[list, ParseResult]:
    parser = StreamingToolCallParser(tools=TOOLS, lenient=lenient)
    events = []
    for chunk in chunks:
        events += parser.feed(chunk)
    events += parser.finish()
    return events, parser.result()


def _random_chunks(text: str, seed: int) -> list[str]:
    rng = random.Random(seed)
    chunks, pos = [], 0
    while pos < len(text):
        size = rng.randint(1, 7)
        chunks.append(text[pos : pos + size])
        pos += size
    return chunks


@pytest.mark.parametrize(("text", "lenient", "calls", "content", "n_errors", "unknown"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])  # fmt: skip
def test_parse_table(text, lenient, calls, content, n_errors, unknown) -> None:
    result = parse_tool_calls(text, tools=TOOLS, lenient=lenient)
    assert result.calls == calls
    assert result.content == content
    assert len(result.errors) == n_errors, result.errors
    assert result.unknown_names == unknown
    if n_errors:
        assert result.content, "a malformed response must never become an empty message"


@pytest.mark.parametrize(("text", "lenient"), [(c[1], c[2]) for c in CASES], ids=[c[0] for c in CASES])
def test_streaming_one_char_at_a_time_matches_batch(text: str, lenient: bool) -> None:
    batch = parse_tool_calls(text, tools=TOOLS, lenient=lenient)
    for chunks in (list(text), _random_chunks(text, seed=1), _random_chunks(text, seed=2)):
        events, result = _stream(text, chunks, lenient)
        assert result == batch
        assert [e.call for e in events if isinstance(e, ToolCallDone)] == batch.calls
        assert [e.index for e in events if isinstance(e, ToolCallDone)] == list(range(len(batch.calls)))
        streamed_text = "".join(e.text for e in events if isinstance(e, ContentDelta))
        assert streamed_text.strip() == batch.content


def test_streaming_yields_content_before_the_call_opens_and_the_call_when_it_closes() -> None:
    parser = StreamingToolCallParser(tools=TOOLS)
    assert parser.feed("Let me look") == [ContentDelta("Let me look")]
    assert parser.feed(" that up.\n<tool") == [ContentDelta(" that up.")]  # "\n<tool" may be layout + a tag
    assert parser.feed('_call>\n{"name": "get_weather", ') == []
    events = parser.feed('"arguments": {"city": "Paris"}}')
    assert events == [ToolCallDone(call("get_weather", city="Paris"), 0)]  # emitted as soon as the object closes
    assert parser.feed("\n</tool_call>") == []
    assert parser.finish() == []
    assert parser.result().content == "Let me look that up."


def test_streaming_whitespace_between_words_is_kept() -> None:
    parser = StreamingToolCallParser()
    events = [*parser.feed("Hello"), *parser.feed(" "), *parser.feed("world"), *parser.feed("\n"), *parser.finish()]
    assert "".join(e.text for e in events) == "Hello world"


def test_feed_after_finish_is_an_error() -> None:
    parser = StreamingToolCallParser()
    parser.finish()
    with pytest.raises(RuntimeError):
        parser.feed("x")


def test_without_tools_no_name_is_unknown_and_lenient_needs_arguments() -> None:
    assert parse_tool_calls('<tool_call>{"name": "anything"}</tool_call>').unknown_names == []
    assert parse_tool_calls('{"name": "anything", "arguments": {}}', lenient=True).calls == [call("anything")]
    assert parse_tool_calls('{"name": "Alice"}', lenient=True).calls == []


def test_tool_names_accepts_every_tool_shape() -> None:
    openai = {"type": "function", "function": {"name": "a", "parameters": {}}}
    bare = {"name": "b", "parameters": {}}
    param_list = {"name": "c", "parameters": [{"name": "q", "required": True}]}
    assert tool_names([openai, bare, param_list, Tool({"name": "d"}), "e"]) == {"a", "b", "c", "d", "e"}
    assert tool_names(None) is None


def test_format_round_trips_through_the_parser_and_the_qwen_template(qwen_tokenizer_dir) -> None:
    from tooltune.chat_template import render

    calls = [call("get_weather", city="Zürich <x>"), call("search_recipes", ingredients=["a", "b"], n=2)]
    assert parse_tool_calls(format_tool_calls(calls)).calls == calls
    template = (qwen_tokenizer_dir / "chat_template.jinja").read_text()
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "On it.", "tool_calls": [c.to_template() for c in calls]},
    ]
    rendered = render(template, messages)
    reply = rendered.split("<|im_start|>assistant\n", 1)[1].removesuffix("<|im_end|>\n")
    parsed = parse_tool_calls(reply, tools=TOOLS)
    assert parsed.calls == calls and parsed.content == "On it." and parsed.ok
    assert json.loads(json.dumps(parsed.calls[0].arguments)) == {"city": "Zürich <x>"}
