"""Hostile input against the real server (model in its runner process): every class of malformed request found by
fuzzing is a 4xx in the calling API's own error shape, and none reaches native code.

One minimal reproducer per class, in both APIs: the official clients where they can send the bad shape, raw httpx
bytes where they cannot (the clients validate or cannot encode a lone surrogate).
"""

from __future__ import annotations

import json
from pathlib import Path
from string import Template

import httpx
import ollama
import openai
import pytest
from test_serve_api import MODEL, QWEN_JINJA, WEATHER_TOOLS, RunningServer  # noqa: E402  (tests/ is on sys.path)

from tooltune.serve.app import create_app
from tooltune.serve.limits import LimitError, RequestLimits, check_schema
from tooltune.serve.runner_client import RunnerEngine

HI = [{"role": "user", "content": "hi"}]
# The schema that took the whole process down with SIGSEGV: llama.cpp's grammar compiler recursing 50000 rules deep.
HUGE_BOUND = {"type": "object", "properties": {"s": {"type": "string", "maxLength": 50000}}, "required": ["s"]}


@pytest.fixture(scope="module")
def runner_server(default_gguf: Path):
    engine = RunnerEngine(default_gguf, n_ctx=1024, n_threads=1, chat_template=QWEN_JINJA)
    server = RunningServer(create_app(engine, MODEL, max_body_bytes=64 * 1024 * 1024))
    yield server
    server.stop()
    engine.close()


def ollama_post(server, path: str, body: bytes | dict) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"{server.url}{path}", content=content, headers={"Content-Type": "application/json"},
                      timeout=60)


def assert_ollama_400(response: httpx.Response, *needles: str) -> None:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert isinstance(error, str) and all(n in error for n in needles), error


def assert_openai_400(response: httpx.Response, *needles: str, param: str | None = None) -> None:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error", error
    assert all(n in error["message"] for n in needles), error
    if param is not None:
        assert error["param"] == param, error


def assert_runner_untouched(server, pid: int) -> None:
    """The bad request never reached the runner: same process, still answering."""
    assert server.state.engine.runner_pid == pid and server.state.engine.restarts == 0
    reply = ollama.Client(host=server.url).generate(model=MODEL, prompt="Say hi",
                                                    options={"temperature": 0, "num_predict": 2})
    assert reply.done


# ------------------------------------------------------------------------------------------- limits before grammars


def test_schema_length_bounds_are_400_before_any_grammar(runner_server) -> None:
    pid = runner_server.state.engine.runner_pid
    with pytest.raises(ollama.ResponseError) as info:
        ollama.Client(host=runner_server.url).chat(model=MODEL, messages=HI, format=HUGE_BOUND)
    assert info.value.status_code == 400 and "format.properties.s.maxLength: 50000" in info.value.error
    assert "--max-schema-repeat" in info.value.error

    client = openai.OpenAI(base_url=f"{runner_server.url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=MODEL, messages=HI, response_format={
            "type": "json_schema", "json_schema": {"name": "x", "schema": HUGE_BOUND}})
    assert "maxLength: 50000 is above the limit of 1000" in bad.value.message
    assert bad.value.body["param"] == "response_format.json_schema.schema"

    # A tool's parameter schema reaches the grammar compiler when tool_choice forces a call.
    tool = {"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"xs": {"type": "array", "items": {"type": "string"}, "minItems": 40000}}}}}
    with pytest.raises(openai.BadRequestError) as forced:
        client.chat.completions.create(model=MODEL, messages=HI, tools=[tool], tool_choice="required")
    assert "tools[0].function.parameters.properties.xs.minItems: 40000" in forced.value.message
    # The same bound in a regex quantifier.
    pattern = {"type": "object", "properties": {"s": {"type": "string", "pattern": "^a{1,90000}$"}}}
    assert_ollama_400(ollama_post(runner_server, "/api/generate", {"model": MODEL, "prompt": "x", "format": pattern}),
                      "format.properties.s.pattern", "{1,90000}")
    assert_runner_untouched(runner_server, pid)


def test_schema_size_and_depth_limits_are_configurable() -> None:
    deep: dict = {"type": "string"}
    for _ in range(40):
        deep = {"type": "array", "items": deep}
    with pytest.raises(LimitError, match=r"deeper than 32 levels \(--max-schema-depth\)"):
        check_schema(deep, "format", RequestLimits())
    check_schema(deep, "format", RequestLimits(max_schema_depth=100))
    wide = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(4000)}}
    with pytest.raises(LimitError, match=r"format: schema is \d+ bytes; the limit is 65536 \(--max-schema-bytes\)"):
        check_schema(wide, "format", RequestLimits())
    with pytest.raises(LimitError, match="maxLength: 20 is above the limit of 10"):
        check_schema({"type": "string", "maxLength": 20}, "format", RequestLimits(max_schema_repeat=10))
    # Nested regex groups and quantifiers nest in the grammar as well.
    with pytest.raises(LimitError, match="groups are nested 40 deep"):
        check_schema({"type": "string", "pattern": "(" * 40 + "a" + ")" * 40}, "format", RequestLimits())
    with pytest.raises(LimitError, match="repetitions to 1200"):
        check_schema({"type": "string", "pattern": "(a{600}){600}"}, "format", RequestLimits())


def test_deep_request_json_is_400_in_both_apis(runner_server) -> None:
    # 100000 levels raised RecursionError (a 500) in the JSON parser; 65 is over the default limit of 64.
    for depth in (100_000, 65):
        nested = b"[" * depth + b"]" * depth
        body = raw_body('{"model": "$model", "messages": [{"role": "user", "content": "hi"}], "x": $n}',
                        n=nested.decode())
        assert_ollama_400(ollama_post(runner_server, "/api/chat", body), "nested deeper than the limit of 64")
        assert_openai_400(ollama_post(runner_server, "/v1/chat/completions", body), "nested deeper")


# ------------------------------------------------------------------------------------------- strict text


SURROGATE = "\\ud800"  # as JSON text: a lone high surrogate, which no UTF-8 encoder accepts


def raw_body(template: str, **values: str) -> bytes:
    """JSON text written by hand (``$name`` placeholders): the clients cannot encode what these tests send."""
    return Template(template).substitute(model=MODEL, **values).encode()


def raw_chat(content_json: str) -> bytes:
    return raw_body('{"model": "$model", "messages": [{"role": "user", "content": $c}], "stream": false}',
                    c=content_json)


def test_lone_surrogates_are_400_wherever_they_are(runner_server) -> None:
    bad = f'"a{SURROGATE}b"'
    assert_ollama_400(ollama_post(runner_server, "/api/chat", raw_chat(bad)), "messages[0].content",
                      "lone UTF-16 surrogate")
    assert_openai_400(ollama_post(runner_server, "/v1/chat/completions", raw_chat(bad)), "messages[0].content")
    generate = raw_body('{"model": "$model", "prompt": "hi", "system": "s$s"}', s=SURROGATE)
    assert_ollama_400(ollama_post(runner_server, "/api/generate", generate), "system")
    raw = raw_body('{"model": "$model", "prompt": "$s", "raw": true}', s=SURROGATE)
    assert_ollama_400(ollama_post(runner_server, "/api/generate", raw), "prompt")
    tool = raw_body('{"model": "$model", "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": '
                    '"function", "function": {"name": "f$s"}}]}', s=SURROGATE)
    assert_openai_400(ollama_post(runner_server, "/v1/chat/completions", tool), "tools[0].function.name")
    # The model name of what would be a 404 (it used to fail while writing the 404 itself).
    unknown = raw_body('{"model": "m$s", "messages": []}', s=SURROGATE)
    assert_ollama_400(ollama_post(runner_server, "/api/chat", unknown), "model")
    assert_openai_400(ollama_post(runner_server, "/v1/chat/completions", unknown), "model")
    assert_openai_400(httpx.get(f"{runner_server.url}/v1/models/m%ED%A0%80"), "not valid UTF-8")
    assert_openai_400(httpx.get(f"{runner_server.url}/v1/models/m%FF"), "not valid UTF-8")


def test_invalid_utf8_bodies_are_400(runner_server) -> None:
    for body in (raw_chat('"caf\xe9"').replace("\xe9".encode(), b"\xe9"),  # Latin-1 byte
                 raw_chat('"x"').replace(b'"x"', b'"\xed\xa0\x80"')):  # a surrogate encoded as UTF-8 bytes
        assert_ollama_400(ollama_post(runner_server, "/api/chat", body), "not valid UTF-8")
        assert_openai_400(ollama_post(runner_server, "/v1/chat/completions", body), "not valid UTF-8")


# ------------------------------------------------------------------------------------------- message fields


def test_message_fields_are_400_naming_the_field(runner_server) -> None:
    cases = [
        ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "", "tool_calls": {"f": 1}}],
         "messages[1].tool_calls: expected a list, got an object"),
        ([{"role": "user", "content": [{"type": "text", "text": 5}]}],
         "messages[0].content[0].text: expected a string, got a number"),
        ([{"role": "user", "content": 12}], "messages[0].content: expected a string or a list of content parts"),
        ([{"role": "assistant", "content": "", "tool_calls": [{"function": {"name": 3}}]}],
         "messages[0].tool_calls[0].function.name: expected a string"),
        ([{"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": [1]}}]}],
         "messages[0].tool_calls[0].function.arguments"),
        ([{"role": "tool", "content": "x", "tool_call_id": {"a": 1}}], "messages[0].tool_call_id: expected a string"),
        ([{"role": 7, "content": "x"}], "messages[0].role: expected a string"),
        (["hello"], "messages[0]: expected an object"),
    ]
    for messages, message in cases:
        assert_ollama_400(ollama_post(runner_server, "/api/chat", {"model": MODEL, "messages": messages}), message)
        field = message.split(":")[0]
        assert_openai_400(ollama_post(runner_server, "/v1/chat/completions", {"model": MODEL, "messages": messages}),
                          message, param=field)
    # The official OpenAI client sends these shapes as given (its types are not checked at run time).
    client = openai.OpenAI(base_url=f"{runner_server.url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": [{"type": "text",
                                                                                             "text": None}]}])
    assert info.value.body["param"] == "messages[0].content[0].text"
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=HI,
                                       response_format={"type": "json_schema", "json_schema": "not an object"})
    assert "response_format.json_schema: expected an object" in info.value.message
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=HI, tools=[{"type": "function", "function": "f"}])
    assert info.value.body["param"] == "tools[0].function"
    bad_tool = {"model": MODEL, "messages": HI, "tools": [{"type": "function", "function": {"name": "f",
                                                                                            "parameters": 3}}]}
    assert_ollama_400(ollama_post(runner_server, "/api/chat", bad_tool), "tools[0].function.parameters")
    assert_ollama_400(ollama_post(runner_server, "/api/chat", {"model": MODEL, "messages": HI, "options": {
        "temperature": "hot"}}), "options.temperature")


def test_empty_prompt_is_answered_without_the_engine(runner_server) -> None:
    scheduler = runner_server.state.scheduler
    before = scheduler.completed + scheduler.cancelled
    for raw in (False, True):
        reply = ollama.Client(host=runner_server.url).generate(model=MODEL, prompt="", raw=raw)
        assert reply.done and reply.done_reason == "load" and reply.response == ""
    assert scheduler.completed + scheduler.cancelled == before  # nothing was queued for the runner


def test_forced_tool_schema_within_limits_still_works(runner_server) -> None:
    client = openai.OpenAI(base_url=f"{runner_server.url}/v1", api_key="unused", max_retries=0)
    completion = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Paris?"}],
                                                tools=WEATHER_TOOLS, tool_choice="required", max_tokens=40,
                                                temperature=0)
    call = completion.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather" and "city" in json.loads(call.function.arguments)


def test_quantization_level_comes_from_gguf_py(runner_server, default_gguf: Path) -> None:
    """/api/tags and /api/show name the file type as gguf-py's LlamaFileType does (the hand-written table this
    replaces called Q4_K_M (15) Q5_K_S and had no entry for the embedded model's Q4_1 (3))."""
    import gguf

    from tooltune.serve.ollama_api import quantization_name

    assert quantization_name(15) == "Q4_K_M" and quantization_name(32) == "BF16" and quantization_name(0) == "F32"
    file_type = gguf.GGUFReader(default_gguf).fields["general.file_type"].contents()
    expected = gguf.LlamaFileType(file_type).name.removeprefix("MOSTLY_")
    assert expected == "Q4_1"
    client = ollama.Client(host=runner_server.url)
    assert client.list().models[0].details.quantization_level == expected
    assert client.show(MODEL).details.quantization_level == expected
