"""`tooltune serve` per model family: the prompt it renders is the training render, and the unmodified `openai` and
`ollama` clients get structured calls (and reasoning) read with the family's own parser, then continue after the tool
result.

One tiny random-weight GGUF per family, converted by our converter, carrying the family's real tokenizer and chat
template. Phi-4-mini, SmolLM3 and Gemma 3 are their own architectures (phi3, smollm3, gemma3: the models the GGUF
parity tests build, shared through ``tiny_family_model``) and their GGUFs carry the template the model folder has —
upstream's, broken for tools — so serving proves the corrected one is used; Gemma 3's tokenizer and template are built
in the test (its files are never in the repo). Qwen3, Llama 3.2 and Hermes 3 (a Hermes-3-like tokenizer, see
``family_fixtures.hermes3_tokenizer_dir``) are 2-layer llamas with the family's tokenizer. Mistral's tokenizer is
SentencePiece-style, so Mistral runs as `tooltune serve tiny.gguf --chat-template mistral` on the SmolLM2-tokenizer
model (the registry path of `--chat-template`). Weights are random, so calls are forced: through OpenAI's
`tool_choice` (the server's own grammar per call syntax), and for the Ollama API (which has no tool_choice) by
`CallingModel`, which stands in for a tuned model and writes the family's call (after a reasoning block for families
that think) with the same grammar.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import ollama
import openai
import pytest
from family_fixtures import family_tokenizer_dir, hermes3_tokenizer_dir, upstream_template
from test_serve_api import RunningServer
from tiny_models import GEMMA3_CHAT_TEMPLATE, QWEN_TOKENIZER, make_tiny_llama
from transformers import AutoTokenizer

from tooltune.commands.serve import build_server
from tooltune.conversation import Conversation, Tool
from tooltune.engines import Chunk
from tooltune.families.family import FAMILIES
from tooltune.families.registry import named
from tooltune.families.respond import forced_call
from tooltune.gguf.convert import convert
from tooltune.serve.app import create_app
from tooltune.serve.family_reply import family_of_template
from tooltune.templates import get_template

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Lyon"]}},
                   "required": ["city"]},
}}
MESSAGES = [{"role": "system", "content": "You call tools."}, {"role": "user", "content": "Weather in Paris?"}]
REASONING = "The user wants the weather in Paris."
RESULT = "18 degrees, sunny"
# The turn after the tool ran, as each client sends it: OpenAI's arguments are a JSON string, Ollama's an object.
# Call ids are 9 alphanumerics (Mistral's template requires them).
OPENAI_CONTINUATION = MESSAGES + [
    {"role": "assistant", "content": "", "tool_calls": [
        {"id": "abcDEF123", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
    {"role": "tool", "tool_call_id": "abcDEF123", "content": RESULT},
]
OLLAMA_CONTINUATION = MESSAGES + [  # the ollama client has no call ids: the server gives them as training does
    {"role": "assistant", "content": "", "tool_calls": [
        {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
    {"role": "tool", "content": RESULT},
]

# family -> (training --template, --chat-template given to serve or None: the GGUF's own)
CASES = {
    "qwen2.5": ("qwen", None),  # the seed's case: Qwen2.5's own template in the GGUF, trained with `qwen`
    "qwen3": ("qwen3", None),
    "llama3.2": ("jinja", None),
    "mistral": ("mistral", "mistral"),
    "phi4-mini": ("phi4-mini", None),  # the GGUF carries upstream's template (ignores tools=)
    "smollm3": ("smollm3", None),  # ... upstream's (drops assistant calls)
    "gemma3": ("gemma3", None),  # ... a Gemma-style template without tools, as Gemma 3's own
    "hermes3": ("jinja", None),  # Hermes 3's tool_use template (not shipped: the model's own is used)
}
# Enough tokens for a forced call with every tokenizer (the test's Gemma vocabulary has 512 pieces, mostly single
# characters); a forced call stops where its grammar ends.
CALL_TOKENS = 160
# The empty reasoning block `think: false` puts at the end of the prompt (as each family's own template does).
THINK_OFF_END = {"qwen3": "<think>\n\n</think>\n\n", "smollm3": "<think>\n\n</think>\n"}


class CallingModel:
    """A model that calls get_weather whenever it is offered, in its family's syntax (what tuning teaches)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.prompts: list[str] = []  # what the server sent, as rendered

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def stream(self, prompt: str, params: Any, cancel: Any = None) -> Iterator[Chunk]:
        self.prompts.append(prompt)
        # It calls until the tool has answered; then it writes text (random weights: a few tokens of anything).
        if params.grammar is None and RESULT not in prompt:
            family = family_of_template(self.inner.chat_template)
            prefix = ""
            if "get_weather" in prompt:
                grammar, prefix = forced_call(family, [Tool(WEATHER)], "get_weather")
                params = replace(params, grammar=grammar)
            # It reasons first unless the prompt closed the reasoning block already (`think: false`).
            if family is not None and family.thinks and not prompt.rstrip().endswith("</think>"):
                prefix = f"<think>\n{REASONING}\n</think>\n\n{prefix}"
            if prefix:
                yield Chunk(prefix)
            prompt += prefix
        yield from self.inner.stream(prompt, params, cancel=cancel)


_GGUFS: dict[str, tuple[Path, Path]] = {}  # family -> (GGUF, folder of the training tokenizer), once per session


def _gguf(family: str, root: Path, tiny_llama_dir: Path, tiny_qwen2_dir: Path,
          tiny_family_model: Callable[[str], Path]) -> tuple[Path, Path]:
    """The family's tiny GGUF and the folder whose tokenizer training renders with."""
    if family in _GGUFS:
        return _GGUFS[family]
    template: str | None
    if family == "qwen2.5":
        model_dir = tiny_qwen2_dir
        template = (QWEN_TOKENIZER / "chat_template.jinja").read_text(encoding="utf-8")
    elif family == "mistral":
        model_dir, template = tiny_llama_dir, None
    elif family in ("phi4-mini", "smollm3", "gemma3"):
        # The template the model folder carries as downloaded (upstream's), which the converter stores.
        model_dir = tiny_family_model(family)
        template = GEMMA3_CHAT_TEMPLATE if family == "gemma3" else upstream_template(family)
    else:
        if family == "hermes3":
            tokenizer = hermes3_tokenizer_dir(root / "tokenizer")
        else:
            tokenizer = family_tokenizer_dir(family, root / "tokenizer")
        model_dir = make_tiny_llama(root / "hf", tokenizer_dir=tokenizer)
        template = FAMILIES[family].template_text() or (tokenizer / "chat_template.jinja").read_text(encoding="utf-8")
    path = convert(model_dir, root / f"{family}.gguf", "f16", chat_template=template, show_progress=False).path
    _GGUFS[family] = (path, model_dir)
    return _GGUFS[family]


# Reasoning tests run only on the families that reason (no skipped placeholders for the others).
REASONING_ONLY = pytest.mark.parametrize("served", [f for f in CASES if FAMILIES[f].thinks], indirect=True)


@pytest.fixture(scope="module", params=list(CASES))
def served(request, tmp_path_factory, tiny_llama_dir: Path, tiny_qwen2_dir: Path, tiny_family_model):
    family = request.param
    root = tmp_path_factory.mktemp(f"serve-{family}")
    gguf_path, hf_dir = _gguf(family, root, tiny_llama_dir, tiny_qwen2_dir, tiny_family_model)
    app = build_server(str(gguf_path), name="m", chat_template=CASES[family][1], n_ctx=1024, n_threads=1,
                       stream_interval_ms=0)
    engine = app.state.tooltune.engine
    server = RunningServer(app)
    model = CallingModel(engine)
    calling = RunningServer(create_app(model, "m", stream_interval=0))
    try:
        yield family, server, calling, hf_dir, model
    finally:
        calling.stop()
        server.stop()
        engine.close()


def test_served_prompt_is_the_training_render(served) -> None:
    family, server, _, hf_dir, _ = served
    state = server.state
    assert family_of_template(state.engine.chat_template) is FAMILIES[family]
    if FAMILIES[family].template_fix and CASES[family][1] is None:
        # The GGUF carries upstream's broken template: the server renders with the corrected one, as training does.
        assert state.engine.chat_template == FAMILIES[family].template_text()
    for messages in (MESSAGES, OPENAI_CONTINUATION):
        prompt = state.render(state.parse_messages(messages), state.parse_tools([WEATHER]))
        assert prompt == _training_render(family, hf_dir, state.engine.chat_template, messages=messages)
    assert "get_weather" in prompt and RESULT in prompt


def _training_render(family: str, hf_dir: Path, served_template: str, thinking: str = "keep",
                     messages: list[dict] = MESSAGES, tools: list[dict] | None = None) -> str:
    if family == "gemma3":
        # The test's Gemma tokenizer is a bare SentencePiece model, which transformers loads only with protobuf
        # (not a dependency); a prompt render reads nothing from a tokenizer but its BOS/EOS texts.
        config = json.loads((hf_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
        tokenizer: Any = SimpleNamespace(bos_token=config["bos_token"], eos_token=config["eos_token"],
                                         chat_template=config["chat_template"])
    else:
        tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    if CASES[family][0] == "jinja":
        tokenizer.chat_template = served_template
    training = get_template(CASES[family][0], tokenizer, thinking=thinking)
    tools = [WEATHER] if tools is None else tools
    return training.render_prompt(Conversation.from_openai({"messages": messages, "tools": tools}))


def test_openai_tool_choice_forces_a_call_in_the_family_syntax(served) -> None:
    family, server, _, _, _ = served
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x")
    choice = {"type": "function", "function": {"name": "get_weather"}}
    reply = client.chat.completions.create(model="m", messages=MESSAGES, tools=[WEATHER], tool_choice=choice,
                                           max_tokens=CALL_TOKENS, seed=0)
    message = reply.choices[0].message
    assert reply.choices[0].finish_reason == "tool_calls", message
    assert [c.function.name for c in message.tool_calls] == ["get_weather"]
    assert isinstance(json.loads(message.tool_calls[0].function.arguments)["city"], str)
    assert not message.content or "get_weather" not in message.content
    # Streaming: the same call arrives as OpenAI's deltas (id and name, then the arguments).
    chunks = list(client.chat.completions.create(model="m", messages=MESSAGES, tools=[WEATHER], tool_choice=choice,
                                                 max_tokens=CALL_TOKENS, seed=0, stream=True))
    deltas = [d for c in chunks if c.choices for d in (c.choices[0].delta.tool_calls or [])]
    assert deltas[0].function.name == "get_weather"
    arguments = "".join(d.function.arguments or "" for d in deltas)
    assert json.loads(arguments) == json.loads(message.tool_calls[0].function.arguments)
    assert not "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip()


def test_ollama_client_gets_calls_and_thinking(served) -> None:
    family, _, calling, hf_dir, model = served
    client = ollama.Client(host=calling.url)
    options = {"num_predict": CALL_TOKENS, "seed": 0, "temperature": 0}
    # The request as JSON (the ollama client re-orders schema keys): what the runner is sent is the training render.
    model.prompts.clear()
    raw = httpx.post(f"{calling.url}/api/chat", json={"model": "m", "messages": MESSAGES, "tools": [WEATHER],
                                                       "stream": False, "options": options}, timeout=120).json()
    assert model.prompts == [_training_render(family, hf_dir, calling.state.engine.chat_template)]
    assert [c["function"]["name"] for c in raw["message"]["tool_calls"]] == ["get_weather"]
    reply = client.chat(model="m", messages=MESSAGES, tools=[WEATHER], options=options)
    calls = reply.message.tool_calls or []
    assert [c.function.name for c in calls] == ["get_weather"], reply.message
    assert isinstance(calls[0].function.arguments["city"], str)
    thinks = FAMILIES[family].thinks
    assert (reply.message.thinking or "") == (REASONING if thinks else "")
    assert "<think>" not in reply.message.content and "get_weather" not in reply.message.content
    parts = list(client.chat(model="m", messages=MESSAGES, tools=[WEATHER], options=options, stream=True))
    streamed = [c for p in parts for c in (p.message.tool_calls or [])]
    assert [(c.function.name, c.function.arguments) for c in streamed] == [
        (c.function.name, c.function.arguments) for c in calls]
    assert "".join(p.message.thinking or "" for p in parts).strip() == (REASONING if thinks else "")


@REASONING_ONLY
def test_openai_reasoning_content(served) -> None:
    family, _, calling, _, _ = served
    client = openai.OpenAI(base_url=f"{calling.url}/v1", api_key="x")
    reply = client.chat.completions.create(model="m", messages=MESSAGES, tools=[WEATHER], max_tokens=CALL_TOKENS,
                                           seed=0)
    message = reply.choices[0].message
    assert getattr(message, "reasoning_content", None) == REASONING
    assert [c.function.name for c in message.tool_calls] == ["get_weather"]
    chunks = list(client.chat.completions.create(model="m", messages=MESSAGES, tools=[WEATHER], max_tokens=CALL_TOKENS,
                                                 seed=0, stream=True))
    streamed = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks if c.choices)
    assert streamed.strip() == REASONING
    assert [d.function.name for c in chunks if c.choices for d in (c.choices[0].delta.tool_calls or [])
            if d.function and d.function.name] == ["get_weather"]


def test_qwen_name_serves_what_serve_rendered_before() -> None:
    """`--chat-template qwen` now means the training layout (the registry); on API requests (tools in OpenAI's
    shape) it renders exactly what serve rendered before with Qwen2.5's own template — the seed's curl body and the
    glaive demo conversations' prompts."""
    from tooltune.chat_template import render
    from tooltune.data import DataArguments, load_conversations

    layout, upstream = named("qwen").source, named("qwen2.5").source
    seed = json.loads((Path(__file__).parent / "fixtures" / "serve" / "seed_curl_body.json").read_text("utf-8"))
    cases = [(seed["messages"], seed["tools"])]
    data = Path(__file__).parents[1] / "src" / "tooltune" / "resources" / "data"
    report = load_conversations(DataArguments(dataset="glaive_toolcall_en_demo", dataset_dir=str(data),
                                              max_samples=60))
    for conv in report.conversations:
        tools = [t if "function" in t else {"type": "function", "function": t} for t in conv.template_tools() or []]
        messages = [m.to_template() for m in conv.messages]
        cases += [(messages[:k], tools) for k in range(1, len(messages) + 1) if messages[k - 1]["role"] != "assistant"]
    for messages, tools in cases:
        assert render(layout, messages, tools=tools or None, add_generation_prompt=True) == render(
            upstream, messages, tools=tools or None, add_generation_prompt=True)


@REASONING_ONLY
def test_ollama_think_switches_the_template(served) -> None:
    """Ollama's `think`: false is the template's enable_thinking=False (the prompt is training's `--thinking off`,
    ending in the empty reasoning block), true is the family's reasoning prompt (training's `keep`) and the
    reasoning comes back in `message.thinking`, apart from the content and the calls."""
    family, _, calling, hf_dir, model = served
    options = {"num_predict": CALL_TOKENS, "seed": 0, "temperature": 0}
    served_template = calling.state.engine.chat_template
    for think, thinking in ((False, "off"), (True, "keep")):
        model.prompts.clear()
        # As JSON (the ollama client re-orders schema keys, which would change the prompt), then through the client.
        reply = httpx.post(f"{calling.url}/api/chat", json={"model": "m", "messages": MESSAGES, "tools": [WEATHER],
                                                             "think": think, "stream": False, "options": options},
                           timeout=120).json()["message"]
        expected = _training_render(family, hf_dir, served_template, thinking=thinking)
        assert model.prompts == [expected]
        assert expected.endswith(THINK_OFF_END[family]) is (not think)
        assert [c["function"]["name"] for c in reply["tool_calls"]] == ["get_weather"]
        assert reply.get("thinking", "") == (REASONING if think else "")
        assert "<think>" not in reply["content"]
        answer = ollama.Client(host=calling.url).chat(model="m", messages=MESSAGES, tools=[WEATHER], think=think,
                                                      options=options)
        assert (answer.message.thinking or "") == (REASONING if think else "")
        assert [c.function.name for c in answer.message.tool_calls or []] == ["get_weather"]


@REASONING_ONLY
def test_ollama_generate_think(served) -> None:
    """/api/generate takes `think` as /api/chat does: the prompt switches, reasoning comes back as `thinking`."""
    family, _, calling, hf_dir, model = served
    user = [{"role": "user", "content": "Weather in Paris?"}]
    options = {"num_predict": 4, "seed": 0}
    for think, thinking in ((False, "off"), (True, "keep")):
        model.prompts.clear()
        body = httpx.post(f"{calling.url}/api/generate", json={"model": "m", "prompt": user[0]["content"],
                                                                "think": think, "stream": False, "options": options},
                          timeout=120).json()
        assert model.prompts == [_training_render(family, hf_dir, calling.state.engine.chat_template,
                                                  thinking=thinking, messages=user, tools=[])]
        assert body.get("thinking", "") == (REASONING if think else "")
        assert "<think>" not in body["response"]
    parts = list(ollama.Client(host=calling.url).generate(model="m", prompt=user[0]["content"], think=True,
                                                          stream=True, options=options))
    assert "".join(p.thinking or "" for p in parts).strip() == REASONING
    assert "<think>" not in "".join(p.response for p in parts)


def test_tool_result_turn_continues_in_both_clients(served) -> None:
    """After the tool ran: the history as each official client sends it renders as training renders it, and the
    reply is the model's text (no call)."""
    family, _, calling, hf_dir, model = served
    expected = _training_render(family, hf_dir, calling.state.engine.chat_template, messages=OPENAI_CONTINUATION)
    model.prompts.clear()
    client = openai.OpenAI(base_url=f"{calling.url}/v1", api_key="x")
    reply = client.chat.completions.create(model="m", messages=OPENAI_CONTINUATION, tools=[WEATHER], max_tokens=8,
                                           seed=0)
    assert model.prompts == [expected]
    assert reply.choices[0].finish_reason in ("stop", "length") and not reply.choices[0].message.tool_calls
    # Ollama: the prompt from the request as JSON (the client re-orders schema keys), the reply through the client.
    model.prompts.clear()
    expected = _training_render(family, hf_dir, calling.state.engine.chat_template, messages=OLLAMA_CONTINUATION)
    options = {"num_predict": 8, "seed": 0}
    raw = httpx.post(f"{calling.url}/api/chat", json={"model": "m", "messages": OLLAMA_CONTINUATION,
                                                       "tools": [WEATHER], "stream": False, "options": options},
                     timeout=120).json()
    assert model.prompts == [expected]
    assert raw["done"] and not raw["message"].get("tool_calls")
    answer = ollama.Client(host=calling.url).chat(model="m", messages=OLLAMA_CONTINUATION, tools=[WEATHER],
                                                  options=options)
    assert answer.done and not answer.message.tool_calls and isinstance(answer.message.content, str)


class ScriptedModel:
    """A model that writes ``reply`` (forced token by token with a grammar holding just that text): how an untuned
    model answers a tools request with bare JSON or a ```json fence instead of its family's tags."""

    def __init__(self, inner: Any, reply: str) -> None:
        self.inner, self.reply = inner, reply

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def stream(self, prompt: str, params: Any, cancel: Any = None) -> Iterator[Chunk]:
        grammar = "root ::= " + json.dumps(self.reply)  # GBNF string literals take JSON's escapes
        yield from self.inner.stream(prompt, replace(params, grammar=grammar, max_tokens=120), cancel=cancel)


FENCED_CALL = '```json\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```'
JSON_ANSWER = '{"city": "Paris", "temperature": 18}'  # JSON, but no call: names no tool


@pytest.mark.parametrize("served", ["qwen2.5"], indirect=True)
def test_bare_json_calls_option(served) -> None:
    """`--bare-json-calls`: in tool_choice auto a fenced / bare JSON call naming an offered tool is a call; off (the
    default) it stays text; JSON that names no tool stays text either way."""
    _, server, _, _, _ = served
    engine = server.state.engine
    for reply_text, enabled, called in ((FENCED_CALL, True, True), (FENCED_CALL, False, False),
                                        (JSON_ANSWER, True, False)):
        app = RunningServer(create_app(ScriptedModel(engine, reply_text), "m", stream_interval=0,
                                       bare_json_calls=enabled))
        try:
            client = openai.OpenAI(base_url=f"{app.url}/v1", api_key="x")
            message = client.chat.completions.create(model="m", messages=MESSAGES, tools=[WEATHER],
                                                     max_tokens=CALL_TOKENS, seed=0).choices[0].message
            answer = ollama.Client(host=app.url).chat(model="m", messages=MESSAGES, tools=[WEATHER],
                                                      options={"num_predict": CALL_TOKENS, "seed": 0}).message
        finally:
            app.stop()
        if called:
            assert [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls] == [
                ("get_weather", {"city": "Paris"})]
            assert [(c.function.name, c.function.arguments) for c in answer.tool_calls] == [
                ("get_weather", {"city": "Paris"})]
            assert not message.content and not answer.content
        else:
            assert not message.tool_calls and not answer.tool_calls
            assert message.content.strip() == reply_text and answer.content.strip() == reply_text
