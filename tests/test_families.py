"""The families layer on the real templates and tokenizers: detection, the registry, broken upstream templates caught,
training text token for token as apply_chat_template with only replies trained, think policy, parsers round trip."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from family_fixtures import FIXTURES, family_tokenizer_dir, upstream_template

from tooltune import chat_template
from tooltune.conversation import Conversation, Message, Tool, ToolCall
from tooltune.data import DataArguments, load_conversations
from tooltune.encode import IGNORE_INDEX, EncodeError, encode_dataset, encode_turns
from tooltune.families import detect, problems, registry
from tooltune.families.errors import FamilyError
from tooltune.families.family import FAMILIES
from tooltune.families.parsers import ThinkingDelta, parse_reply, reply_parser
from tooltune.families.stops import end_of_turn_token, stop_strings, strip_end_of_turn
from tooltune.templates import JinjaTemplate, TemplateError, get_template

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
                   "required": ["city"]},
}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Local time", "parameters": {"type": "object", "properties": {
        "zone": {"type": "string"}}},
}}

# A Gemma-3-like template built here (Gemma's own files are never stored): user/model turns, roles must alternate,
# tools= ignored — what the upstream template does with tool conversations.
GEMMA_LIKE = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "<start_of_turn>{{ role }}\n{{ message['content'] | trim }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def template_of(family: str) -> str:
    """What tooltune renders a family with: the shipped template, or the model's own (llama3.2, hermes3)."""
    return FAMILIES[family].template_text() or upstream_template(family)


# ------------------------------------------------------------------------------------------- templates and registry


def test_shipped_templates_are_upstream_bytes_or_declared_fixes() -> None:
    digest = {name: hashlib.sha256(FAMILIES[name].template_text().encode()).hexdigest()
              for name in ("qwen3", "qwen3-instruct-2507")}
    assert digest == {  # the upstream hashes (SOURCES.md): shipped unchanged
        "qwen3": "a55ee1b1660128b7098723e0abcd92caa0788061051c62d51cbe87d9cf1974d8",
        "qwen3-instruct-2507": "40c21f34cf67d8c760ef72f8ad3ae5afad514299d4b06e91dd9a8d705af7b541",
    }
    assert problems.template_problems(upstream_template("mistral"), "<s>", "</s>") == [problems.SYSTEM_DROPPED]
    assert problems.template_problems(upstream_template("smollm3")) == [problems.CALLS_DROPPED]
    assert problems.template_problems(upstream_template("phi4-mini"), eos_token="<|endoftext|>") == [
        problems.TOOLS_IGNORED, problems.CALLS_DROPPED]
    (gemma,) = problems.template_problems(GEMMA_LIKE, "<bos>")
    assert "roles must alternate" in gemma
    for family in FAMILIES:
        assert problems.template_problems(template_of(family), "<s>", "</s>") == [], family
    for name in ("qwen", "qwen2.5"):
        assert problems.template_problems(registry.named(name).source) == [], name


def test_detection_from_template_vocabulary_and_gguf_metadata() -> None:
    for family in FAMILIES:
        assert detect.from_template(template_of(family)).name == family
    for family in ("mistral", "smollm3", "phi4-mini", "llama3.2", "hermes3"):
        assert detect.from_template(upstream_template(family)).name == family
    assert detect.from_template(registry.named("qwen").source).name == "qwen2.5"
    assert detect.from_template(GEMMA_LIKE).name == "gemma3"
    assert detect.from_template("{{ messages }}") is None
    llama_vocab = ["<|begin_of_text|>", "<|start_header_id|>", "<|eot_id|>", "<|python_tag|>", "hello"]
    assert detect.from_vocabulary(llama_vocab).name == "llama3.2"
    assert detect.from_vocabulary(["[INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]", "<s>"]).name == "mistral"
    # GGUF without a chat template: architecture plus vocabulary, never a guess between several families.
    assert detect.from_gguf_metadata({"general.architecture": "phi3"}).name == "phi4-mini"
    assert detect.from_gguf_metadata({"general.architecture": "llama"}, llama_vocab).name == "llama3.2"
    assert detect.from_gguf_metadata({"general.architecture": "llama"}) is None
    assert detect.from_gguf_metadata({"general.architecture": "qwen2",
                                      "tokenizer.chat_template": template_of("qwen3")}).name == "qwen3"


def test_registry_resolves_names_files_and_folders(tmp_path: Path) -> None:
    # --chat-template qwen and --template qwen are the same text
    assert registry.named("qwen").source == get_template("qwen", None).jinja_chat_template
    assert registry.resolve("mistral").family.name == "mistral"
    with pytest.raises(FamilyError, match=r"unknown template 'qwen4'.*qwen3.*Jinja file"):
        registry.named("qwen4")
    with pytest.raises(FamilyError, match="not a bundled template name.*Jinja file"):
        registry.resolve("no-such-template")
    with pytest.raises(FamilyError, match="not shipped.*model folder"):
        registry.named("llama3.2")
    jinja_file = tmp_path / "t.jinja"
    jinja_file.write_text(upstream_template("hermes3"), encoding="utf-8")
    resolved = registry.resolve(str(jinja_file))
    assert resolved.family.name == "hermes3" and resolved.origin == f"file:{jinja_file}"
    # A model folder with a broken upstream template gets the corrected one, and says so.
    folder = tmp_path / "smol"
    folder.mkdir()
    (folder / "chat_template.jinja").write_text(upstream_template("smollm3"), encoding="utf-8")
    fixed = registry.resolve(folder)
    assert fixed.source == FAMILIES["smollm3"].template_text() and "corrected" in fixed.warnings[0]
    assert registry.resolve(folder, use_fixes=False).source == upstream_template("smollm3")
    with pytest.raises(FamilyError, match="no chat template"):
        registry.resolve(tmp_path)


def test_chat_template_qwen_now_names_the_training_layout_and_renders_every_demo_case_as_before() -> None:
    """`--chat-template qwen` used to be Qwen2.5's own template; it is now the `qwen` training layout (one name, one
    text). On every demo eval case the prompts are identical, so the demo's evaluation figures do not move."""
    from tooltune.eval import load_cases

    cases = load_cases(DataArguments(dataset="glaive_toolcall_en_demo,glaive_toolcall_zh_demo"))
    layout, upstream = registry.named("qwen").source, registry.named("qwen2.5").source
    assert layout != upstream and len(cases) > 1000
    for case in cases:
        kwargs = {"tools": case.tools or None, "add_generation_prompt": True}
        assert chat_template.render(layout, case.messages, **kwargs) == chat_template.render(
            upstream, case.messages, **kwargs)


def test_end_of_turn_and_stop_strings_per_family() -> None:
    expected = {"qwen3": "<|im_end|>", "llama3.2": "<|eot_id|>", "mistral": "</s>", "phi4-mini": "<|end|>",
                "smollm3": "<|im_end|>", "gemma3": "<end_of_turn>", "hermes3": "<|im_end|>"}
    specials = {"<|im_end|>", "<|im_start|>", "<|eot_id|>", "<|start_header_id|>", "</s>", "<|end|>",
                "<|assistant|>", "<end_of_turn>", "<start_of_turn>", "<|endoftext|>"}
    for family, marker in expected.items():
        eos = "</s>" if family == "mistral" else "<|endoftext|>"
        assert end_of_turn_token(template_of(family), specials, eos_token=eos) == marker, family
        assert stop_strings(template_of(family), eos)[0] == marker, family
    assert strip_end_of_turn('{"a": 1}<|eot_id|>', template_of("llama3.2")) == '{"a": 1}'


# ----------------------------------------------------------------------------------------------- training render


@pytest.fixture(scope="module")
def demo() -> list[Conversation]:
    conversations = load_conversations(DataArguments(dataset="glaive_toolcall_en_demo")).conversations
    return [c for c in conversations if len(c.messages) > 3][:6]


@pytest.fixture(scope="module", params=["qwen3", "llama3.2", "mistral", "smollm3"])
def family_tokenizer(request, tmp_path_factory):
    from transformers import AutoTokenizer

    folder = family_tokenizer_dir(request.param, tmp_path_factory.mktemp(request.param))
    return request.param, AutoTokenizer.from_pretrained(folder)


def test_training_render_is_apply_chat_template_and_trains_only_replies(family_tokenizer, demo) -> None:
    family, tokenizer = family_tokenizer
    # llama3.2 trains with its own template (`jinja`); the others with tooltune's (upstream or corrected).
    template = get_template("jinja" if family == "llama3.2" else family, tokenizer)
    assert isinstance(template, JinjaTemplate) and template.family.name == family
    report = encode_dataset(demo, template)
    assert report.skipped == []
    samples = iter(report.samples)
    for conv in demo:
        positions = [i for i, m in enumerate(conv.messages) if m.role == "assistant"]
        views = template.views(conv)
        ends = [len(conv.messages)] if len(views) == 1 else [p + 1 for p in positions]
        assert len(views) == len(ends)
        for (text, spans), end in zip(views, ends, strict=True):
            # Tools as clients send them (glaive's bare functions wrapped as they are), as vLLM and Ollama pass them.
            tools = ([t.to_openai() for t in conv.tools] if family != "llama3.2"
                     else [{"type": "function", "function": t} for t in conv.template_tools() or []]) or None
            expected = tokenizer.apply_chat_template(
                template._messages(conv, end), tools=tools, tokenize=False, chat_template=template.source)
            assert text == expected, conv.where()
            sample = next(samples)
            assert sample.input_ids == tokenizer(text, add_special_tokens=False)["input_ids"], conv.where()
            trained = tokenizer.decode([i for i, label in zip(sample.input_ids, sample.labels, strict=True)
                                        if label != IGNORE_INDEX])
            # (SentencePiece decoding drops the space that starts a piece, hence the strip)
            assert trained.strip() == "".join(text[s:e] for s, e in spans).strip()
            for message in conv.messages[:end]:
                if message.role in ("tool", "user") and len(message.content) > 20:
                    assert message.content not in trained, "a prompt was trained"
            for start, stop in spans:  # each reply ends with the family's end of turn
                assert text[start:stop].rstrip("\n").endswith(FAMILIES[family].end_of_turn[0]), text[start:stop]
    assert next(samples, None) is None


def test_templates_that_drop_tool_data_are_refused_with_the_reason() -> None:
    conv = Conversation(messages=[
        Message("user", "Weather?"), Message("assistant", "", tool_calls=[ToolCall("get_weather", {"city": "X"})]),
        Message("tool", "sunny"), Message("assistant", "Sunny."),
    ], tools=[Tool(WEATHER)], source="data.json", index=4)
    smol = JinjaTemplate(None, source=upstream_template("smollm3"))
    with pytest.raises(TemplateError, match=r"data.json record 4: .*drops the tool call 'get_weather'.*"
                                            r"--template smollm3"):
        smol.views(conv)
    phi = JinjaTemplate(None, source=upstream_template("phi4-mini"))
    with pytest.raises(TemplateError, match="does not show the tools.*--template phi4-mini"):
        phi.views(conv)
    assert len(get_template("phi4-mini", None).views(conv)) == 1


def test_zero_trained_tokens_is_an_error() -> None:
    with pytest.raises(EncodeError, match="no token of this sample is trained"):
        encode_turns([([1, 2, 3], [])], cutoff_len=100)


QWEN3_CONV = Conversation(messages=[
    Message("user", "Weather in Paris?"),
    Message("assistant", "<think>I need the tool.</think>",
            tool_calls=[ToolCall("get_weather", {"city": "Paris"})]),
    Message("tool", '{"temp": 18}'),
    Message("assistant", "<think>Report it.</think>18 °C."),
    Message("user", "Thanks"),
    Message("assistant", "<think>Be polite.</think>You're welcome."),
], tools=[Tool(WEATHER)])


def test_reasoning_fields_of_openai_and_ollama_messages_reach_the_template() -> None:
    for key in ("reasoning_content", "thinking"):
        message = Message.from_openai({"role": "assistant", "content": "Hi.", key: "Greet."})
        text = get_template("qwen3", None).render_text(Conversation([Message("user", "hello"), message]))
        assert text.endswith("<|im_start|>assistant\n<think>\nGreet.\n</think>\n\nHi.<|im_end|>\n")
        off = get_template("qwen3", None, thinking="off").render_text(Conversation([Message("user", "hello"), message]))
        assert "Greet." not in off


def test_qwen3_trains_every_turn_in_its_inference_context_under_each_think_policy() -> None:
    replies = {}
    for policy in ("keep", "empty", "off"):
        template = get_template("qwen3", None, thinking=policy)
        views = template.views(QWEN3_CONV)
        assert len(views) == 3  # Qwen3 drops earlier reasoning, so each reply is its own sample
        for (text, [(start, _)]), position in zip(views, (1, 3, 5), strict=True):
            # The context is exactly the generation prompt inference renders for this turn.
            assert text[:start] == template.render_prompt(Conversation(QWEN3_CONV.messages[:position],
                                                                       tools=QWEN3_CONV.tools))
        replies[policy] = [text[s:e] for text, [(s, e)] in views]
    assert replies["keep"][0].startswith("<think>\nI need the tool.\n</think>\n\n<tool_call>")
    assert replies["keep"][2] == "<think>\nBe polite.\n</think>\n\nYou're welcome.<|im_end|>\n"
    assert all(r.startswith("<think>\n\n</think>\n\n") for r in replies["empty"])
    assert replies["off"][2] == "You're welcome.<|im_end|>\n"  # the empty block is in the prompt, untrained
    last_prompt = get_template("qwen3", None, thinking="off").views(QWEN3_CONV)[2][0]
    assert "I need the tool." not in last_prompt and last_prompt.count("<think>\n\n</think>") == 1
    with pytest.raises(TemplateError, match="unknown --thinking"):
        get_template("qwen3", None, thinking="some")


# ------------------------------------------------------------------------------------------------------ parsers


def _reply_text(source: str, messages: list[dict], tools: list[dict], family: str) -> str:
    """The text the model writes for the last assistant message: its render minus the generation prompt."""
    eos = "</s>" if family == "mistral" else "<|endoftext|>"
    kwargs = {"tools": tools, "bos_token": "<s>", "eos_token": eos}
    prompt = chat_template.render(source, messages[:-1], add_generation_prompt=True, **kwargs)
    full = chat_template.render(source, messages, **kwargs)
    assert full.startswith(prompt)
    return strip_end_of_turn(full[len(prompt):], source, eos)


ROUND_TRIP = ["qwen3", "qwen3-instruct-2507", "llama3.2", "mistral", "phi4-mini", "smollm3", "gemma3", "hermes3"]


@pytest.mark.parametrize("family", ROUND_TRIP)
def test_parser_round_trip_whole_and_split_at_every_character(family: str) -> None:
    calls = [ToolCall("get_weather", {"city": "Paris", "unit": "celsius"}, id="abcDEF123"),
             ToolCall("get_time", {"zone": "Europe/Paris"}, id="xyz987654")]
    if family == "llama3.2":
        calls = calls[:1]  # its template refuses parallel calls
    source = template_of(family)
    messages = [{"role": "user", "content": "Weather and time in Paris?"},
                {"role": "assistant", "content": "", "tool_calls": [c.to_template() for c in calls]}]
    reply = _reply_text(source, messages, [WEATHER, TIME], family)
    fam = FAMILIES[family]
    expected = [(c.name, c.arguments, c.id if fam.tool_call_ids else None) for c in calls]
    whole = parse_reply(reply, fam, tools=[WEATHER, TIME])
    assert [(c.name, c.arguments, c.id) for c in whole.calls] == expected, reply
    assert whole.errors == [] and whole.unknown_names == []
    for cut in range(len(reply) + 1):
        parser = reply_parser(fam, tools=[WEATHER, TIME])
        parser.feed(reply[:cut])
        parser.feed(reply[cut:])
        parser.finish()
        got = parser.result()
        assert [(c.name, c.arguments, c.id) for c in got.calls] == expected, (family, cut)
        assert (got.content, got.thinking) == (whole.content, whole.thinking), (family, cut)
    streamed = reply_parser(fam, tools=[WEATHER, TIME])
    events = [e for ch in reply for e in streamed.feed(ch)] + streamed.finish()
    assert [e.call.name for e in events if hasattr(e, "call")] == [c.name for c in calls]


@pytest.mark.parametrize("family", ["qwen3", "smollm3", "llama3.2", "mistral", "phi4-mini"])
def test_plain_answers_stay_content(family: str) -> None:
    source = template_of(family)
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! {not json} [1]"}]
    reply = _reply_text(source, messages, [WEATHER], family)
    parsed = parse_reply(reply, FAMILIES[family], tools=[WEATHER])
    assert parsed.calls == [] and parsed.content.endswith("Hello! {not json} [1]") and parsed.errors == []


def test_qwen3_reasoning_is_separate_and_tags_inside_it_are_not_calls() -> None:
    reply = ('<think>\nMaybe <tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call> — no, weather.\n'
             '</think>\n\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>')
    for cut in range(len(reply) + 1):
        parser = reply_parser(FAMILIES["qwen3"], tools=[WEATHER, TIME])
        events = parser.feed(reply[:cut]) + parser.feed(reply[cut:]) + parser.finish()
        got = parser.result()
        assert [c.name for c in got.calls] == ["get_weather"] and got.content == ""
        assert got.thinking.startswith("Maybe <tool_call>") and got.thinking.endswith("no, weather.")
        assert "".join(e.text for e in events if isinstance(e, ThinkingDelta)).strip("\n") == got.thinking
    # Rendered reasoning goes back to where the template takes it from.
    rendered = chat_template.render(template_of("qwen3"), [
        {"role": "user", "content": "q"}, {"role": "assistant", "content": "", "reasoning_content": "r1",
                                          "tool_calls": [ToolCall("get_weather", {"city": "P"}).to_template()]}])
    reply = rendered.split("<|im_start|>assistant\n", 1)[1].removesuffix("<|im_end|>\n")
    parsed = parse_reply(reply, FAMILIES["qwen3"])
    assert parsed.thinking == "r1" and parsed.calls[0].arguments == {"city": "P"}


def test_malformed_calls_are_kept_as_content_with_the_reason() -> None:
    for family, text in (("mistral", "[TOOL_CALLS] [{\"name\": \"get_weather\", <oops>"),
                         ("phi4-mini", "<|tool_call|>not json<|/tool_call|>")):
        parsed = parse_reply(text, FAMILIES[family], tools=[WEATHER])
        assert parsed.calls == [] and parsed.errors, family
        assert parsed.content == text, family  # nothing disappears


def test_fixtures_carry_their_licences() -> None:
    for name in ("LICENSE.txt", "USE_POLICY.md", "NOTICE"):
        assert (FIXTURES / "llama3.2" / name).stat().st_size > 100
    sources = (FIXTURES / "SOURCES.md").read_text(encoding="utf-8")
    for family in ("qwen3", "llama3.2", "mistral", "phi4-mini", "smollm3", "hermes3"):
        assert f"## {family}" in sources
    assert json.loads((FIXTURES / "smollm3" / "post_processor.json").read_text())["type"] == "TemplateProcessing"


def test_lenient_bare_json_is_a_call_only_when_its_arguments_fit_the_schema() -> None:
    tools = [WEATHER, TIME]
    for reply in ('{"name": "get_weather", "arguments": {"city": "Paris"}}',
                  'Sure:\n```json\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}\n```'):
        parsed = parse_reply(reply, FAMILIES["qwen3"], tools=tools, lenient=True)
        assert [c.name for c in parsed.calls] == ["get_weather"], reply
    for reply in ('{"name": "get_weather", "arguments": {}}',  # required city missing
                  '{"name": "get_weather", "arguments": {"city": 3}}',  # wrong type
                  '{"name": "get_weather", "arguments": {"city": "P", "date": "today"}}',  # not in the schema
                  '{"name": "get_weather", "description": "Weather of a city"}'):  # a tool description, not a call
        parsed = parse_reply(reply, FAMILIES["qwen3"], tools=tools, lenient=True)
        assert parsed.calls == [] and parsed.content == reply, reply
