"""Property-based fuzzing of both APIs against the real server (the embedded GGUF in its runner process).

Hypothesis builds request bodies from the shapes the wire models accept (``tooltune.serve.wire``) and bends every
field: wrong types, lone surrogates, deep nesting, huge schema bounds, odd roles and tool calls. Properties:

* every answer is 2xx/4xx in the calling API's own error shape — never a 5xx other than 503;
* the runner never dies: a crash during the fuzz fails the test even though the server would recover from it.

Bounded for CI: a fixed number of examples, and every request that reaches the model decodes at most 3 tokens.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_serve_api import MODEL, QWEN_JINJA, RunningServer  # noqa: E402  (tests/ is on sys.path)

from tooltune.serve.app import create_app
from tooltune.serve.runner_client import RunnerEngine

EXAMPLES = 120  # per API route below; ~1 min on 2 quiet cores

def mostly(good: st.SearchStrategy, bad: st.SearchStrategy) -> st.SearchStrategy:
    """A valid value four times in five: enough requests must get past validation to reach the model."""
    return st.sampled_from([True, True, True, True, False]).flatmap(lambda valid: good if valid else bad)


bad_text = st.sampled_from(["\ud800", "a\udfffb"])  # lone surrogates
text = mostly(st.one_of(st.text(max_size=12), st.sampled_from(["<|im_end|>", "<tool_call>", "", "é😀"])), bad_text)
scalar = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=False), text)
json_value = st.recursive(scalar, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                         st.dictionaries(text, inner, max_size=3)), max_leaves=8)
bound = mostly(st.integers(0, 40), st.integers(1000, 10**6))
good_schema = st.recursive(
    st.one_of(
        st.builds(lambda n: {"type": "string", "maxLength": n}, bound),
        st.builds(lambda n: {"type": "string", "minLength": n}, st.integers(0, 5)),
        st.builds(lambda n: {"type": "array", "items": {"type": "integer"}, "maxItems": n}, bound),
        st.builds(lambda p: {"type": "string", "pattern": p}, st.sampled_from(["^a{2,5}$", "^(a|b){1,90000}$",
                                                                             "(" * 50 + "x" + ")" * 50, "[0-9]+"])),
        st.sampled_from([{"type": "integer"}, {"type": "boolean"}, {"enum": ["x", 1]}, {"type": "number"}, {}]),
    ),
    lambda inner: st.one_of(
        st.builds(lambda props: {"type": "object", "properties": props, "required": list(props)[:1]},
                  st.dictionaries(st.sampled_from(["a", "b", "c"]), inner, max_size=3)),
        st.builds(lambda items: {"type": "array", "items": items}, inner),
        st.builds(lambda alts: {"oneOf": alts}, st.lists(inner, min_size=1, max_size=2)),
    ),
    max_leaves=6,
)
schema = mostly(good_schema, json_value)
object_schema = st.builds(lambda props: {"type": "object", "properties": props, "required": list(props)[:1]},
                          st.dictionaries(st.sampled_from(["city", "n"]), good_schema, max_size=2))
tool_call = mostly(
    st.fixed_dictionaries({"function": st.fixed_dictionaries({"name": mostly(st.just("get_weather"), scalar),
                                                              "arguments": mostly(st.dictionaries(
                                                                  st.sampled_from(["city"]), text), json_value)})}),
    json_value,
)
content = mostly(text, st.one_of(st.none(), st.integers(), st.lists(mostly(
    st.fixed_dictionaries({"type": st.just("text"), "text": mostly(text, scalar)}), json_value), max_size=2)))
message = mostly(
    st.fixed_dictionaries({"role": mostly(st.sampled_from(["user", "system", "assistant", "tool"]), text),
                           "content": content},
                          optional={"tool_calls": mostly(st.lists(tool_call, max_size=2), json_value),
                                    "tool_call_id": mostly(text, scalar), "name": mostly(text, scalar),
                                    "images": st.one_of(st.lists(text, max_size=1), json_value)}),
    json_value,
)
messages = mostly(st.lists(message, min_size=1, max_size=3), json_value)
tool = mostly(
    st.fixed_dictionaries({"type": st.just("function"), "function": st.fixed_dictionaries(
        {"name": mostly(st.sampled_from(["get_weather", "f"]), scalar)},
        optional={"description": mostly(text, scalar), "parameters": mostly(object_schema, json_value)})}),
    json_value,
)
tools = mostly(st.lists(tool, max_size=2), json_value)
model_name = mostly(st.just(MODEL), text)
options = mostly(st.fixed_dictionaries({}, optional={
    "temperature": mostly(st.floats(0, 2), scalar), "top_k": mostly(st.integers(0, 100), scalar),
    "top_p": mostly(st.floats(0, 1), scalar), "seed": mostly(st.integers(-5, 2**40), scalar),
    "num_predict": mostly(st.integers(-2, 3), st.one_of(st.integers(4, 10**9), scalar)),
    "num_ctx": mostly(st.integers(64, 512), st.one_of(st.integers(-1, 10**6), scalar)),
    "stop": mostly(st.lists(text, max_size=2), scalar),
    "repeat_penalty": mostly(st.floats(0.5, 2), scalar)}), json_value)
fmt = mostly(st.one_of(st.just("json"), good_schema), json_value)

ollama_chat = st.fixed_dictionaries({"model": model_name, "messages": messages},
                                    optional={"tools": tools, "format": fmt, "options": options,
                                              "stream": mostly(st.booleans(), scalar)})
ollama_generate = st.fixed_dictionaries({"model": model_name, "prompt": mostly(text, scalar)},
                                        optional={"system": mostly(text, scalar), "raw": st.booleans(),
                                                  "format": fmt, "options": options, "stream": st.booleans()})
response_format = mostly(
    st.one_of(st.fixed_dictionaries({"type": st.just("json_schema"),
                                     "json_schema": mostly(st.fixed_dictionaries({"name": text,
                                                                                  "schema": schema}), json_value)}),
              st.sampled_from([{"type": "json_object"}, {"type": "text"}])),
    json_value)
openai_chat = st.fixed_dictionaries(
    {"model": model_name, "messages": messages, "max_tokens": mostly(st.integers(1, 3), scalar)},
    optional={"tools": tools,
              "tool_choice": mostly(st.sampled_from(["auto", "none", "required", {"type": "function", "function": {
                  "name": "get_weather"}}]), json_value),
              "response_format": response_format, "temperature": mostly(st.floats(0, 2), scalar),
              "stop": mostly(st.lists(text, max_size=2), scalar), "stream": st.booleans(),
              "n": mostly(st.just(1), scalar), "seed": mostly(st.integers(0, 2**31), scalar)})
deep = st.integers(1, 200_000).map(lambda n: ("[" * n + "]" * n).encode())


@pytest.fixture(scope="module")
def fuzz_server(default_gguf: Path):
    # At most 3 tokens per request: the fuzz is about shapes, not text.
    engine = RunnerEngine(default_gguf, n_ctx=512, n_threads=1, chat_template=QWEN_JINJA)
    server = RunningServer(create_app(engine, MODEL, max_tokens_limit=3))
    server.client = httpx.Client(base_url=server.url, timeout=120)
    yield server
    server.client.close()
    server.stop()
    engine.close()


def encode(body: object) -> bytes:
    # json.dumps escapes lone surrogates as \\udxxx: the bytes are valid UTF-8, the text is not valid Unicode.
    return json.dumps(body, ensure_ascii=True).encode()


SEEN: Counter[tuple[str, int]] = Counter()  # (route, status) over the whole module


def check(server, path: str, payload: bytes) -> None:
    engine = server.state.engine
    pid = engine.runner_pid
    with server.client.stream("POST", path, content=payload, headers={"Content-Type": "application/json"}) as r:
        body = r.read()
    SEEN[path, r.status_code] += 1
    assert r.status_code < 500, (r.status_code, body[:300], payload[:300])
    if r.status_code >= 400:
        error = json.loads(body)["error"]
        if path.startswith("/v1"):
            assert set(error) == {"message", "type", "param", "code"}, error
        else:
            assert isinstance(error, str), error
    else:
        lines = [line for line in body.splitlines() if line.strip()]
        for line in lines:  # an in-band error in a 200 stream must not be an internal one
            item = json.loads(line.removeprefix(b"data: ")) if line != b"data: [DONE]" else {}
            error = item.get("error")
            assert error is None or "internal" not in str(error), (line, payload[:300])
    assert engine.runner_pid == pid and engine.restarts == 0, f"the runner died on {payload[:300]!r}"


FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])


@FUZZ
@given(body=ollama_chat)
def test_fuzz_ollama_chat(fuzz_server, body) -> None:
    check(fuzz_server, "/api/chat", encode(body))


@FUZZ
@given(body=ollama_generate)
def test_fuzz_ollama_generate(fuzz_server, body) -> None:
    check(fuzz_server, "/api/generate", encode(body))


@FUZZ
@given(body=openai_chat)
def test_fuzz_openai_chat(fuzz_server, body) -> None:
    check(fuzz_server, "/v1/chat/completions", encode(body))


@settings(max_examples=20, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(nested=deep, path=st.sampled_from(["/api/chat", "/v1/chat/completions"]))
def test_fuzz_deep_bodies(fuzz_server, nested, path) -> None:
    check(fuzz_server, path, b'{"model": "%s", "messages": %s}' % (MODEL.encode(), nested))


def test_the_fuzz_reached_the_model_on_every_route() -> None:
    """A fuzz whose every request bounced off validation would test nothing past it."""
    print("\nfuzz answers (route, status): count", dict(sorted(SEEN.items())))
    for route in ("/api/chat", "/api/generate", "/v1/chat/completions"):
        assert SEEN[route, 200] >= 5, SEEN
