"""tool_choice auto with constrained calls: the model writes freely until it opens a call; the call is then held to the
offered tools' schemas by a llama.cpp grammar — in the engine, in `respond` (chat, eval), in both serve APIs on the
one-at-a-time and the batched runner, and in `tooltune eval`.

The test vector: three earlier turns in which the assistant called get_weather with a city only, then "Weather in
Rome?". The embedded SmolLM2 copies the pattern and leaves out ``unit``, which this schema requires; held to the
schema, the same model writes the call with a ``unit`` from its enum.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import ollama
import openai
import pytest
from test_serve_api import MODEL, QWEN_JINJA, RunningServer  # noqa: E402  (tests/ is on sys.path)

from tooltune.conversation import Tool
from tooltune.engines import CallOpenerWatch, GreedyGrammar, SamplingParams, load_engine
from tooltune.families.family import get_family
from tooltune.families.respond import RespondOptions, constrained_call, respond
from tooltune.serve.app import create_app
from tooltune.serve.grammar import tool_call_grammar
from tooltune.serve.runner_client import RunnerEngine

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the weather",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"]}}}


def _city_only_call(city: str) -> dict:
    return {"role": "assistant", "content": "",
            "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": city}}}]}


# Earlier turns that call with the city alone: the model copies them and leaves the required unit out.
CITY_ONLY_TURNS = [m for city in ("Paris", "Berlin", "Madrid")
                   for m in ({"role": "user", "content": f"Weather in {city}?"}, _city_only_call(city))]
ROME = [*CITY_ONLY_TURNS, {"role": "user", "content": "Weather in Rome?"}]


def _valid(arguments: dict) -> bool:
    return set(arguments) == {"city", "unit"} and arguments["unit"] in ("celsius", "fahrenheit")


@pytest.fixture(scope="module")
def engine(default_gguf: Path):
    engine = load_engine(default_gguf, n_ctx=2048, n_threads=1, chat_template=QWEN_JINJA)
    yield engine
    engine.close()


# ------------------------------------------------------------------------------------------------ pieces


def test_opener_watch_fires_once_when_only_whitespace_follows() -> None:
    watch = CallOpenerWatch("<tool_call>")
    assert [watch.push(p) for p in ["Sure. ", "<tool", "_call", ">\n"]] == [False, False, False, True]
    assert watch.push("<tool_call>") is False  # once per reply
    # A token that already wrote part of the call after the opener: the reply stays as the model writes it.
    spilled = CallOpenerWatch("<tool_call>")
    assert spilled.push("<tool_call>{") is False and spilled.push("\n") is False
    assert CallOpenerWatch(None).push("<tool_call>") is False


def test_call_grammars_for_each_family_with_an_opener(engine) -> None:
    tools = [Tool(WEATHER)]
    for family, opener in (("qwen2.5", "<tool_call>"), ("mistral", "[TOOL_CALLS]"), ("phi4-mini", "<|tool_call|>")):
        found = constrained_call(get_family(family), tools)
        assert found is not None and found[0] == opener, family
        engine._compile_grammar(found[1])  # llama.cpp parses it
    assert constrained_call(get_family("llama3.2"), tools) is None  # bare JSON calls: no opener to wait for
    hermes = tool_call_grammar(tools, opened=True)
    assert hermes.startswith('root ::= [ \\t\\n]{0,4} call-json "\\n</tool_call>" ("\\n" call)*')
    single = tool_call_grammar(tools, opened=True, parallel=False)
    assert single.splitlines()[0] == 'root ::= [ \\t\\n]{0,4} call-json "\\n</tool_call>"'
    # A schema no grammar can hold (a dangling $ref) leaves the call as the model writes it, never fails the turn.
    odd = Tool({"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
        "x": {"$ref": "#/definitions/missing"}}}}})
    assert constrained_call(None, [odd]) is None
    # Nor one over the grammar limits: maxLength 50000 becomes 50000 nested groups, which crash llama.cpp's parser.
    huge = Tool({"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
        "x": {"type": "string", "maxLength": 50000}}}}})
    assert constrained_call(None, [huge]) is None


def test_engine_switches_to_the_call_grammar_after_the_opener(engine) -> None:
    prompt = engine.render([{"role": "user", "content": "Name three colours."}], None)
    free = engine.generate(prompt, SamplingParams(max_tokens=12)).text
    first = engine.generate(prompt, SamplingParams(max_tokens=1)).text  # the first token's text: a token boundary
    assert first.strip() and free.startswith(first)
    grammar = 'root ::= " {\\"x\\": 1}"'
    held = engine.generate(prompt, SamplingParams(max_tokens=12, call_trigger=first, call_grammar=grammar))
    assert held.text == first + ' {"x": 1}' and held.finish_reason == "stop"
    # An opener that never appears changes nothing; neither does a grammar given with no opener.
    assert engine.generate(prompt, SamplingParams(max_tokens=12, call_trigger="<tool_call>",
                                                  call_grammar=grammar)).text == free
    assert engine.generate(prompt, SamplingParams(max_tokens=12, call_grammar=grammar)).text == free


def test_greedy_grammar_decodes_exactly_as_the_full_grammar(engine) -> None:
    """The fast path (top token checked alone, all candidates only when it is rejected) picks what llama-cpp-python's
    grammar sampler (every candidate checked every token) picks under greedy decoding."""
    prompt = engine.render(ROME, [WEATHER])
    grammar = tool_call_grammar([Tool(WEATHER)], parallel=False)
    engine.llm.reset()  # both runs from a cold cache: a prefix hit may change the last bits of the logits
    full = engine.generate(prompt, SamplingParams(max_tokens=60, grammar=grammar)).text
    lib = engine._llama_cpp
    fast = GreedyGrammar(lib, lib.llama_model_get_vocab(engine.llm.model), grammar, engine.llm.n_vocab())
    engine.llm.reset()
    out: list[int] = []
    for token in engine.llm.generate(engine.tokenize(prompt), top_k=0, top_p=1.0, min_p=0.0, temp=0.0,
                                     logits_processor=[fast], reset=True):
        if engine._is_end_of_generation(token) or len(out) == 60:
            break
        out.append(token)
        fast.accept(token)
    fast.close()
    assert not fast.off
    assert engine.llm.detokenize(out, special=True).decode("utf-8") == full
    assert json.loads(full.split("<tool_call>\n", 1)[1].split("\n</tool_call>")[0])["arguments"]["unit"] in (
        "celsius", "fahrenheit")


# ------------------------------------------------------------------------------------------------ respond, eval


def test_respond_holds_an_auto_call_to_the_schema(engine) -> None:
    params = SamplingParams(max_tokens=60)
    free = respond(engine, ROME, [WEATHER], RespondOptions(params=params, constrain_calls=False))
    held = respond(engine, ROME, [WEATHER], RespondOptions(params=params))
    assert [c.name for c in free.calls] == ["get_weather"] and free.calls[0].arguments == {"city": "Rome"}
    assert [c.name for c in held.calls] == ["get_weather"] and _valid(held.calls[0].arguments)
    assert held.calls[0].arguments["city"] == "Rome" and not held.errors
    # Greedy decoding checks the grammar on the top token only (GreedyGrammar); sampling applies it to every candidate
    # (llama-cpp-python's grammar sampler). Both hold the call to the schema.
    for seed in (1, 2, 3):
        sampled = respond(engine, ROME, [WEATHER], RespondOptions(params=SamplingParams(max_tokens=60, temperature=0.7,
                                                                                        seed=seed)))
        assert [c.name for c in sampled.calls] == ["get_weather"] and _valid(sampled.calls[0].arguments), sampled.raw
    # A reply that opens no call is the model's own text either way.
    chat = [{"role": "user", "content": "Write one sentence about the sea."}]
    assert (respond(engine, chat, [WEATHER], RespondOptions(params=params)).raw
            == respond(engine, chat, [WEATHER], RespondOptions(params=params, constrain_calls=False)).raw)


def test_eval_scores_constrained_calls_and_can_turn_them_off(default_gguf: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from tooltune.cli import app

    expected = {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Rome", "unit": "celsius"}}}]}
    data = tmp_path / "rome.jsonl"
    data.write_text(json.dumps({"messages": [*ROME, expected], "tools": [WEATHER]}) + "\n")
    args = ["eval", "--model", str(default_gguf), "--data", str(data), "--chat-template", "qwen",
            "--max_new_tokens", "60", "--quiet", "--no-plot"]
    runner = CliRunner()
    for flag, out in (([], "held"), (["--no-constrain-calls"], "free")):
        result = runner.invoke(app, [*args, *flag, "--out", str(tmp_path / out)])
        assert result.exit_code == 0, result.output
    held = json.loads((tmp_path / "held" / "report.json").read_text())
    free = json.loads((tmp_path / "free" / "report.json").read_text())
    assert held["settings"]["constrained calls"] == "on" and free["settings"]["constrained calls"] == "off"
    # Every assistant call turn is a case; the last one asks for Rome.
    held_score, free_score = held["runs"][0]["cases"][-1], free["runs"][0]["cases"][-1]
    assert held_score["calls"] == [{"name": "get_weather", "arguments": {"city": "Rome", "unit": "celsius"}}]
    assert free_score["calls"] == [{"name": "get_weather", "arguments": {"city": "Rome"}}]
    assert held_score["outcomes"]["accuracy"] and not free_score["outcomes"]["accuracy"]


def test_chat_cli_holds_the_call_and_can_show_it_as_written(default_gguf: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from tooltune.cli import app

    (tmp_path / "m.json").write_text(json.dumps(ROME))
    (tmp_path / "t.json").write_text(json.dumps([WEATHER]))
    template = Path(__file__).parent.parent / "src" / "tooltune" / "resources" / "templates" / "qwen.jinja"
    argv = ["chat", "--model", str(default_gguf), "--messages", str(tmp_path / "m.json"), "--tools",
            str(tmp_path / "t.json"), "--json", "--chat-template", str(template), "--max_new_tokens", "60"]
    calls = []
    for flag in ([], ["--no-constrain-calls"]):
        result = CliRunner().invoke(app, [*argv, *flag])
        assert result.exit_code == 0, result.output
        calls.append(json.loads([x for x in result.stdout.splitlines() if x.startswith("{")][0])["tool_calls"])
    held, free = calls
    assert _valid(held[0]["arguments"]) and free[0]["arguments"] == {"city": "Rome"}


# ------------------------------------------------------------------------------------------------ serving


@pytest.fixture(scope="module", params=[1, 2], ids=["one-at-a-time", "batched"])
def runner_engine(request, default_gguf: Path):
    engine = RunnerEngine(default_gguf, n_ctx=1024, n_threads=1, chat_template=QWEN_JINJA, parallel=request.param)
    yield engine
    engine.close()


def test_both_apis_serve_auto_calls_held_to_the_schema(runner_engine) -> None:
    held = RunningServer(create_app(runner_engine, MODEL, stream_interval=0))
    try:
        client = openai.OpenAI(base_url=f"{held.url}/v1", api_key="x")
        reply = client.chat.completions.create(model=MODEL, messages=ROME, tools=[WEATHER], temperature=0,
                                               max_tokens=60)
        calls = reply.choices[0].message.tool_calls
        assert reply.choices[0].finish_reason == "tool_calls" and [c.function.name for c in calls] == ["get_weather"]
        assert _valid(json.loads(calls[0].function.arguments))
        streamed = ollama.Client(host=held.url).chat(model=MODEL, messages=ROME, tools=[WEATHER], stream=True,
                                                     options={"temperature": 0, "num_predict": 60})
        ollama_calls = [c for part in streamed for c in (part.message.tool_calls or [])]
        assert [c.function.name for c in ollama_calls] == ["get_weather"]
        assert _valid(dict(ollama_calls[0].function.arguments))
        # tool_choice none: no call is read, so none is constrained either.
        plain = client.chat.completions.create(model=MODEL, messages=ROME, tools=[WEATHER], tool_choice="none",
                                               temperature=0, max_tokens=60)
        assert plain.choices[0].message.tool_calls is None
        # A schema over the grammar limits is served as the model writes it (a 400 only when a call is forced).
        huge = json.loads(json.dumps(WEATHER))
        huge["function"]["parameters"]["properties"]["city"]["maxLength"] = 50000
        served = httpx.post(f"{held.url}/v1/chat/completions", timeout=120, json={
            "model": MODEL, "messages": ROME, "tools": [huge], "temperature": 0, "max_tokens": 40})
        assert served.status_code == 200, served.text
        forced = httpx.post(f"{held.url}/v1/chat/completions", timeout=120, json={
            "model": MODEL, "messages": ROME, "tools": [huge], "tool_choice": "required", "max_tokens": 40})
        assert forced.status_code == 400 and "maxLength" in forced.text
    finally:
        held.stop()
    free = RunningServer(create_app(runner_engine, MODEL, stream_interval=0, constrain_calls=False))
    try:
        body = {"model": MODEL, "messages": ROME, "tools": [WEATHER], "stream": False,
                "options": {"temperature": 0, "num_predict": 60}}
        reply = httpx.post(f"{free.url}/api/chat", json=body, timeout=120).json()
        assert reply["message"]["tool_calls"][0]["function"]["arguments"] == {"city": "Rome"}
    finally:
        free.stop()
