"""The real server on a loopback port, driven by the official ``ollama`` and ``openai`` clients.

The embedded SmolLM2-135M GGUF served with the Qwen2.5 chat template (``chat_template=`` override, as
``tooltune serve --chat-template qwen``) is the model. It was never tuned to call tools, so the tool tests run twice:
``forced`` wraps the real llama.cpp engine so requests that offer tools decode under a tool-call grammar (the API
shapes of a model that calls), and ``real`` runs the same tests on the untouched engine, where whatever the model
writes must come back either as structured calls or as non-empty content.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pytest
import uvicorn

from tooltune.conversation import Tool
from tooltune.engines import SamplingParams, load_engine
from tooltune.serve.app import create_app
from tooltune.serve.grammar import tool_call_grammar

QWEN_JINJA = (Path(__file__).parent.parent / "src" / "tooltune" / "resources" / "templates" / "qwen.jinja").read_text()
MODEL = "toolcall_qwen2.5_q4"
WEATHER_TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City name"}},
                   "required": ["city"]}}}]
FAST = {"temperature": 0, "num_predict": 48}

# The seed's curl -d body, byte for byte (kept as a fixture: it has trailing spaces ruff would strip).
SEED_CURL_BODY = (Path(__file__).parent / "fixtures" / "serve" / "seed_curl_body.json").read_bytes()
SEED_EXPECTED_FIELDS = ["model", "created_at", "message", "done_reason", "done", "total_duration", "load_duration",
                        "prompt_eval_count", "prompt_eval_duration", "eval_count", "eval_duration"]


class ToolForcingEngine:
    """The real llama.cpp engine, with a tool-call grammar applied to prompts that offer tools and hold no result.

    Only for API-shape tests of a model that cannot call tools yet; everything else is the wrapped engine.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def stream(self, prompt: str, params: SamplingParams):
        if params.grammar is None and "<tools>" in prompt and "<tool_response>" not in prompt:
            tools = [Tool(json.loads(line)) for line in prompt.split("<tools>\n", 1)[1].split("\n</tools>")[0]
                     .splitlines()]
            # Greedy: sampled from a per-request random seed, an untuned model's forced string argument sometimes
            # ran on until the context filled (done_reason "length", one CI run in many); greedy is reproducible.
            params = replace(params, grammar=tool_call_grammar(tools, parallel=False), temperature=0.0)
        return self.inner.stream(prompt, params)


class RunningServer:
    def __init__(self, app: Any) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.port}"
        self.state = app.state.tooltune

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def engine(default_gguf: Path):
    engine = load_engine(default_gguf, n_ctx=2048, n_threads=1, chat_template=QWEN_JINJA)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def plain_server(engine):
    server = RunningServer(create_app(engine, MODEL, max_tokens_limit=1024, max_body_bytes=64 * 1024))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def forced_server(engine):
    server = RunningServer(create_app(ToolForcingEngine(engine), MODEL))
    yield server
    server.stop()


@pytest.fixture(params=["forced", "real"])
def tool_server(request, plain_server, forced_server):
    """The tool tests' server: grammar-forced calls, then the same tests on the untouched engine."""
    return (forced_server if request.param == "forced" else plain_server), request.param == "forced"


def assert_answered(message: Any, forced: bool) -> None:
    """A forced model must call get_weather; a real one must return calls or non-empty text, never nothing."""
    calls = message.tool_calls or []
    if forced:
        assert [c.function.name for c in calls] == ["get_weather"]
    for call in calls:
        args = call.function.arguments
        args = json.loads(args) if isinstance(args, str) else args
        assert isinstance(args, dict)
    if not calls:
        assert message.content and message.content.strip()


# ---------------------------------------------------------------------------------------------------- Ollama API


def test_ollama_chat_with_tools(tool_server) -> None:
    server, forced = tool_server
    client = ollama.Client(host=server.url)
    response = client.chat(model=MODEL, messages=[{"role": "user", "content": "What's the weather in Paris?"}],
                           tools=WEATHER_TOOLS, stream=False, options=FAST)
    assert response.model == MODEL and response.done and response.done_reason in ("stop", "length")
    assert response.message.role == "assistant"
    assert_answered(response.message, forced)
    if forced:
        assert response.message.tool_calls[0].function.arguments["city"]
        assert response.message.content == ""
    assert response.prompt_eval_count > 100 and response.eval_count > 0
    assert response.total_duration >= response.eval_duration > 0


def test_ollama_chat_with_tools_streaming(tool_server) -> None:
    server, forced = tool_server
    client = ollama.Client(host=server.url)
    parts = list(client.chat(model=MODEL, messages=[{"role": "user", "content": "Weather in Oslo?"}],
                             tools=WEATHER_TOOLS, stream=True, options=FAST))
    assert parts[-1].done and not any(p.done for p in parts[:-1])
    calls = [c for p in parts for c in (p.message.tool_calls or [])]
    content = "".join(p.message.content or "" for p in parts)
    if forced:
        assert [c.function.name for c in calls] == ["get_weather"] and content == ""
    assert calls or content.strip()
    assert parts[-1].eval_count > 0


def test_ollama_tool_result_round_trip(tool_server) -> None:
    server, forced = tool_server
    client = ollama.Client(host=server.url)
    first = client.chat(model=MODEL, messages=[{"role": "user", "content": "Weather in Rome?"}],
                        tools=WEATHER_TOOLS, stream=False, options=FAST)
    calls = first.message.tool_calls or [ollama.Message.ToolCall(
        function=ollama.Message.ToolCall.Function(name="get_weather", arguments={"city": "Rome"}))]
    history = [
        {"role": "user", "content": "Weather in Rome?"},
        {"role": "assistant", "content": first.message.content or "",
         "tool_calls": [{"function": {"name": c.function.name, "arguments": dict(c.function.arguments)}}
                        for c in calls]},
        {"role": "tool", "content": json.dumps({"city": "Rome", "temp_c": 21}), "tool_name": "get_weather"},
    ]
    second = client.chat(model=MODEL, messages=history, tools=WEATHER_TOOLS, stream=False, options=FAST)
    assert second.done
    # The tool result reached the model in the training layout (rendered by the Jinja template).
    rendered = server.state.render(server.state.parse_messages(history), server.state.parse_tools(WEATHER_TOOLS))
    assert '<tool_response>\n{"city": "Rome", "temp_c": 21}\n</tool_response>' in rendered
    assert '<tool_call>\n{"name": "get_weather", "arguments": {' in rendered
    assert second.message.content.strip() or second.message.tool_calls


def test_seed_curl_body_verbatim(forced_server) -> None:
    """The seed's curl body returns every field of the seed's expected result, with the call structured."""
    response = httpx.post(f"{forced_server.url}/api/chat", content=SEED_CURL_BODY,
                          headers={"Content-Type": "application/json"}, timeout=120)
    assert response.status_code == 200, response.text
    body = response.json()
    for name in SEED_EXPECTED_FIELDS:
        assert name in body, name
    assert body["model"] == "toolcall_qwen2.5_q4" and body["done"] is True and body["done_reason"] == "stop"
    assert body["message"]["role"] == "assistant" and "content" in body["message"]
    [call] = body["message"]["tool_calls"]
    assert call["function"]["name"] == "HandleTongzhiTonggao" and call["function"]["index"] == 0
    arguments = call["function"]["arguments"]
    assert arguments["operation"] in ("ADD", "DELETE", "UPDATE", "LIST")
    assert arguments["type"] in ("时讯消息", "通告") and isinstance(arguments["content"], str)
    assert body["created_at"].endswith("Z") and len(body["created_at"]) == len("2025-08-18T07:28:39.035242070Z")
    assert all(isinstance(body[k], int) and body[k] >= 0 for k in SEED_EXPECTED_FIELDS[5:])


def test_ollama_generate_format_and_metadata(plain_server) -> None:
    client = ollama.Client(host=plain_server.url)
    reply = client.generate(model=MODEL, prompt="Give a JSON object with a key name.", format="json",
                            options={"temperature": 0, "num_predict": 40}, stream=False)
    assert reply.done and reply.response
    if reply.done_reason == "stop":
        assert isinstance(json.loads(reply.response), dict)
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    chat = client.chat(model=MODEL, messages=[{"role": "user", "content": "Pick a number"}], format=schema,
                       options={"temperature": 0, "num_predict": 30}, stream=False)
    assert isinstance(json.loads(chat.message.content)["n"], int)
    streamed = list(client.generate(model=MODEL, prompt="Say hi", options={"temperature": 0, "num_predict": 8},
                                    stream=True))
    assert streamed[-1].done and "".join(p.response for p in streamed)

    tags = client.list()
    assert [m.model for m in tags.models] == [f"{MODEL}:latest"]
    assert tags.models[0].size > 50_000_000 and tags.models[0].details.format == "gguf"
    shown = client.show(MODEL)
    assert "tools" in shown.capabilities and "<tool_call>" in shown.template
    assert shown.modelinfo["general.architecture"] == "llama"
    assert [m.model for m in client.ps().models] == [f"{MODEL}:latest"]
    assert httpx.get(f"{plain_server.url}/api/version").json()["version"]
    assert httpx.get(f"{plain_server.url}/").text == "Ollama is running"


# ---------------------------------------------------------------------------------------------------- OpenAI API


def test_openai_chat_with_tools(tool_server) -> None:
    server, forced = tool_server
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    completion = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "What's the weather in Paris?"}], tools=WEATHER_TOOLS,
        temperature=0, max_tokens=48)
    choice = completion.choices[0]
    assert_answered(choice.message, forced)
    if choice.message.tool_calls:
        assert choice.finish_reason == "tool_calls"
        assert choice.message.tool_calls[0].id.startswith("call_")
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens


def test_openai_streaming_tool_calls(tool_server) -> None:
    server, forced = tool_server
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Weather in Lima?"}], tools=WEATHER_TOOLS,
        temperature=0, max_tokens=48, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    calls: dict[int, dict[str, str]] = {}
    content = ""
    for chunk in chunks:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        content += delta.content or ""
        for piece in delta.tool_calls or []:
            call = calls.setdefault(piece.index, {"id": "", "name": "", "arguments": ""})
            call["id"] += piece.id or ""
            call["name"] += (piece.function.name or "") if piece.function else ""
            call["arguments"] += (piece.function.arguments or "") if piece.function else ""
    if forced:
        assert list(calls) == [0] and calls[0]["name"] == "get_weather"
        assert json.loads(calls[0]["arguments"])["city"] and calls[0]["id"].startswith("call_")
    assert finish == (["tool_calls"] if calls else finish[:1]) and len(finish) == 1
    assert calls or content.strip()


@pytest.mark.parametrize("tool_choice", ["required", {"type": "function", "function": {"name": "get_time"}}])
def test_openai_tool_choice_is_enforced_by_grammar(plain_server, tool_choice) -> None:
    """No forcing wrapper here: the server's own grammar makes the untuned model emit a valid call."""
    tools = [*WEATHER_TOOLS, {"type": "function", "function": {
        "name": "get_time", "description": "Current time in a timezone",
        "parameters": {"type": "object", "properties": {"tz": {"type": "string", "enum": ["UTC", "CET"]}},
                       "required": ["tz"]}}}]
    client = openai.OpenAI(base_url=f"{plain_server.url}/v1", api_key="unused")
    completion = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Time in Berlin?"}], tools=tools, tool_choice=tool_choice,
        parallel_tool_calls=False, temperature=0, max_tokens=80)
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    arguments = json.loads(call.function.arguments)
    if isinstance(tool_choice, dict):
        assert call.function.name == "get_time" and arguments["tz"] in ("UTC", "CET")
    else:
        assert call.function.name in ("get_weather", "get_time") and arguments


def test_openai_tool_choice_none_and_models(plain_server) -> None:
    client = openai.OpenAI(base_url=f"{plain_server.url}/v1", api_key="unused")
    completion = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hello"}], tools=WEATHER_TOOLS, tool_choice="none",
        temperature=0, max_tokens=16)
    assert completion.choices[0].message.tool_calls is None and completion.choices[0].message.content
    assert [m.id for m in client.models.list()] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL


def test_openai_response_format_json_schema(plain_server) -> None:
    client = openai.OpenAI(base_url=f"{plain_server.url}/v1", api_key="unused")
    schema = {"type": "object", "properties": {"colour": {"type": "string", "enum": ["red", "blue"]}},
              "required": ["colour"]}
    completion = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Pick a colour"}], temperature=0, max_tokens=30,
        response_format={"type": "json_schema", "json_schema": {"name": "pick", "schema": schema}})
    assert json.loads(completion.choices[0].message.content)["colour"] in ("red", "blue")


# ---------------------------------------------------------------------------------------------------- errors


def test_ollama_errors_are_4xx_in_ollama_shape(plain_server) -> None:
    url = plain_server.url
    cases = [
        (httpx.post(f"{url}/api/chat", content=b"{not json"), 400, "invalid JSON"),
        (httpx.post(f"{url}/api/chat", json={"model": "nope", "messages": []}), 404, "not found"),
        (httpx.post(f"{url}/api/chat", content=b"x" * (70 * 1024)), 413, "limit"),
        (httpx.post(f"{url}/api/chat", json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                                             "options": {"num_predict": 5000}}), 400, "num_predict 5000"),
        (httpx.post(f"{url}/api/chat", json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                                             "tools": [{"type": "function", "function": {"description": "x"}}]}),
         400, "tools[0]"),
        (httpx.post(f"{url}/api/chat", json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                                             "tools": [{"type": "function", "function": {
                                                 "name": "f", "parameters": {"type": "string"}}}]}),
         400, "type 'object'"),
        (httpx.post(f"{url}/api/chat", json={"model": MODEL, "messages": [{"role": "robot", "content": "hi"}]}),
         400, "messages[0]"),
        (httpx.post(f"{url}/api/chat", json={"model": MODEL, "messages": "hi"}), 400, "messages"),
        (httpx.post(f"{url}/api/show", json={"model": "nope"}), 404, "not found"),
    ]
    for response, status, text in cases:
        assert response.status_code == status, response.text
        body = response.json()
        assert isinstance(body["error"], str) and text in body["error"], body
    with pytest.raises(ollama.ResponseError) as info:
        ollama.Client(host=url).chat(model="missing-model", messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 404
    assert httpx.get(f"{url}/api/tags").status_code == 200  # still serving


def test_num_ctx_sets_the_request_context(plain_server) -> None:
    """Ollama's options.num_ctx: the context of this request (llama.cpp is reopened with it, as Ollama reloads its
    runner); a prompt longer than it, or a num_ctx beyond the model's training context, is a 400."""
    url, engine = plain_server.url, plain_server.state.engine
    long_prompt = "Tell me about the weather in Paris. " * 20  # ~180 tokens
    small = httpx.post(f"{url}/api/chat", json={"model": MODEL, "stream": False, "options": {**FAST, "num_ctx": 64},
                                                "messages": [{"role": "user", "content": long_prompt}]}, timeout=60)
    assert small.status_code == 400 and "the context holds 64" in small.json()["error"]
    huge = httpx.post(f"{url}/api/chat", json={"model": MODEL, "stream": False, "options": {"num_ctx": 10**7},
                                               "messages": [{"role": "user", "content": "hi"}]}, timeout=60)
    assert huge.status_code == 400 and "num_ctx 10000000" in huge.json()["error"]

    reply = ollama.Client(host=url).chat(model=MODEL, messages=[{"role": "user", "content": long_prompt}],
                                         options={**FAST, "num_ctx": 512})
    assert reply.done and reply.prompt_eval_count > 64
    assert engine.llm.n_ctx() == 512  # this request ran in a 512-token context
    ollama.Client(host=url).chat(model=MODEL, messages=[{"role": "user", "content": "hi"}], options=FAST)
    assert engine.llm.n_ctx() == engine.context_length == 2048  # the next one, without num_ctx, in the default


def test_openai_errors_are_4xx_in_openai_shape(plain_server) -> None:
    url = plain_server.url
    ok_messages = [{"role": "user", "content": "hi"}]
    cases = [
        (httpx.post(f"{url}/v1/chat/completions", content=b"[1,"), 400, "invalid JSON"),
        (httpx.post(f"{url}/v1/chat/completions", json={"model": MODEL, "messages": ok_messages,
                                                        "max_tokens": 100000}), 400, "max_tokens 100000"),
        (httpx.post(f"{url}/v1/chat/completions", json={"model": MODEL, "messages": ok_messages,
                                                        "tools": WEATHER_TOOLS, "tool_choice": "sometimes"}),
         400, "tool_choice"),
        (httpx.post(f"{url}/v1/chat/completions", json={"model": MODEL, "messages": ok_messages,
                                                        "tools": WEATHER_TOOLS, "tool_choice": {
                                                            "type": "function", "function": {"name": "nope"}}}),
         400, "not among"),
        (httpx.post(f"{url}/v1/chat/completions", json={"model": MODEL, "messages": ok_messages,
                                                        "tools": [{"type": "function", "function": {
                                                            "name": "f", "parameters": {"properties": [1]}}}]}),
         400, "properties"),
        (httpx.post(f"{url}/v1/chat/completions", content=b"{" + b" " * (70 * 1024) + b"}"), 413, "limit"),
    ]
    for response, status, text in cases:
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert text in error["message"] and error["type"] == "invalid_request_error", error
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=ok_messages)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=ok_messages, max_tokens=999999)
    assert client.chat.completions.create(model=MODEL, messages=ok_messages, max_tokens=2).choices  # still serving


def test_api_key_guards_both_apis(engine) -> None:
    server = RunningServer(create_app(engine, MODEL, api_key="s3cret"))
    try:
        assert httpx.get(f"{server.url}/api/tags").status_code == 401
        assert "error" in httpx.get(f"{server.url}/api/tags").json()
        denied = httpx.get(f"{server.url}/v1/models", headers={"Authorization": "Bearer wrong"})
        assert denied.status_code == 401 and denied.json()["error"]["type"] == "authentication_error"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0).models.list()
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="s3cret")
        assert [m.id for m in client.models.list()] == [MODEL]
        authed = ollama.Client(host=server.url, headers={"Authorization": "Bearer s3cret"})
        assert authed.list().models
    finally:
        server.stop()


# ---------------------------------------------------------------------------------------------------- concurrency


@pytest.mark.slow
def test_eight_concurrent_streams_do_not_interleave(plain_server) -> None:
    """8 clients stream at once; each one's output is pinned to its own tag by a schema, so a chunk that reached
    the wrong client would break that client's JSON or carry another client's tag."""

    def one_client(i: int) -> tuple[int, str, str]:
        tag = f"client-{i}"
        schema = {"type": "object", "properties": {"tag": {"const": tag}, "word": {"type": "string",
                                                                                    "maxLength": 12}},
                  "required": ["tag", "word"]}
        if i % 2:
            client = openai.OpenAI(base_url=f"{plain_server.url}/v1", api_key="unused")
            stream = client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": f"Say a word #{i}"}], temperature=0.7, seed=i,
                max_tokens=60, stream=True, response_format={"type": "json_schema",
                                                             "json_schema": {"name": "t", "schema": schema}})
            text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        else:
            parts = ollama.Client(host=plain_server.url).chat(
                model=MODEL, messages=[{"role": "user", "content": f"Say a word #{i}"}], format=schema, stream=True,
                options={"temperature": 0.7, "seed": i, "num_predict": 60})
            text = "".join(p.message.content for p in parts)
        return i, tag, text

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one_client, range(8)))
    assert len(results) == 8
    for _, tag, text in results:
        assert json.loads(text)["tag"] == tag, text
    assert plain_server.state.scheduler.running == 0 and plain_server.state.scheduler.waiting == 0


def test_client_disconnect_frees_the_slot(plain_server) -> None:
    scheduler = plain_server.state.scheduler
    cancelled_before = scheduler.cancelled
    long_schema = {"type": "array", "items": {"const": 1}, "minItems": 600}
    body = {"model": MODEL, "messages": [{"role": "user", "content": "ones"}], "format": long_schema,
            "options": {"num_predict": 1000}}
    with httpx.stream("POST", f"{plain_server.url}/api/chat", json=body, timeout=60) as response:
        lines = response.iter_lines()
        for _ in range(3):
            assert json.loads(next(lines))["done"] is False
    # The connection is closed mid-stream: the decode thread must stop and take the next request.
    deadline = time.monotonic() + 30
    while scheduler.running or scheduler.cancelled == cancelled_before:
        assert time.monotonic() < deadline, "the abandoned request kept its slot"
        time.sleep(0.05)
    reply = httpx.post(f"{plain_server.url}/api/chat", json={"model": MODEL, "stream": False, "options": FAST,
                                                             "messages": [{"role": "user", "content": "hi"}]},
                       timeout=60)
    assert reply.status_code == 200 and reply.json()["done"]
