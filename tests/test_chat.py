"""``tooltune chat``: the seed's 模型测试 prompt, parsed calls, --json, the REPL with history and tool results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer
from typer.testing import CliRunner

from tooltune.chat import ChatInputError, ChatSession, chat_once, load_messages, load_tools, parse_tools, run_repl
from tooltune.cli import app
from tooltune.conversation import Message, ToolCall
from tooltune.engines import SamplingParams, load_engine

SEED_CASE = Path(__file__).parent / "fixtures" / "seed_model_test"
QWEN_TEMPLATE = Path(__file__).parent / "fixtures" / "tokenizers" / "qwen2.5" / "chat_template.jinja"
RULER = "=" * 30
# A short case for tests that do not need the seed's (800-token) prompt.
WEATHER_TOOLS = [{"name": "WeatherApi", "description": "该工具专用于市、区县的实时天气查询",
                  "parameters": [{"name": "query_key", "description": "需要查询天气的地区", "required": True}]}]
WEATHER_MESSAGES = [{"role": "user", "content": "北京天气怎么样？"}]


def non_blank_lines(text: str) -> list[str]:
    return [line for line in text.split("\n") if line.strip()]


def section(output: str, title: str) -> str:
    start = output.index(f"{RULER} {title} {RULER}\n") + len(f"{RULER} {title} {RULER}\n")
    end = output.find(f"\n{RULER} ", start)
    return output[start:] if end < 0 else output[start:end]


@pytest.fixture(scope="module")
def qwen_engine(tiny_qwen2_dir: Path):
    engine = load_engine(tiny_qwen2_dir)
    yield engine
    engine.close()


def test_seed_case_prompt_is_exact(tiny_qwen2_dir: Path, qwen_tokenizer_dir: Path) -> None:
    """`tooltune chat` on a tiny Qwen2 with the Qwen2.5 tokenizer shows the prompt the seed printed."""
    argv = ["chat", "--model", str(tiny_qwen2_dir), "--tools", str(SEED_CASE / "tools.json"),
            "--messages", str(SEED_CASE / "messages.json"), "--max_new_tokens", "8"]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output
    prompt = section(result.stdout, "prompt")

    # 1. Exactly what transformers' apply_chat_template renders (the seed's own call), byte for byte.
    tokenizer = AutoTokenizer.from_pretrained(qwen_tokenizer_dir)
    messages = json.loads((SEED_CASE / "messages.json").read_text())
    tools = json.loads((SEED_CASE / "tools.json").read_text())
    assert prompt == tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=False)
    assert prompt == (SEED_CASE / "expected_prompt.txt").read_text()

    # 2. Decoded the seed's way (skip_special_tokens=True) it is the text the guide printed, blank lines aside.
    decoded = tokenizer.decode(tokenizer(prompt)["input_ids"], skip_special_tokens=True)
    seed_printed = (SEED_CASE / "expected_decoded_prompt.txt").read_text()
    assert non_blank_lines(decoded) == non_blank_lines(seed_printed)
    # The seed's list-of-parameters tools are rendered verbatim, not converted to JSON schema.
    assert '"parameters": [{"name": "operation"' in prompt

    # A tiny random model's response is noise, but the sections are there and the calls parse to a JSON list.
    assert isinstance(json.loads(section(result.stdout, "tool calls").strip()), list)
    assert "response" in result.output


def test_json_output_is_one_object(tiny_qwen2_dir: Path, qwen_tokenizer_dir: Path, tmp_path: Path) -> None:
    # Tools may also come inside the messages file, as a {messages, tools} record.
    record = tmp_path / "record.json"
    record.write_text(json.dumps({"messages": WEATHER_MESSAGES, "tools": WEATHER_TOOLS}, ensure_ascii=False))
    argv = ["chat", "--model", str(tiny_qwen2_dir), "--messages", str(record), "--max-new-tokens", "4", "--json",
            "--temperature", "0.7", "--top-p", "0.9", "--seed", "3"]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output
    line = [x for x in result.stdout.splitlines() if x.startswith("{")]
    assert len(line) == 1
    payload = json.loads(line[0])
    tokenizer = AutoTokenizer.from_pretrained(qwen_tokenizer_dir)
    expected = tokenizer.apply_chat_template(WEATHER_MESSAGES, tools=WEATHER_TOOLS, add_generation_prompt=True,
                                             tokenize=False)
    assert payload["prompt"] == expected
    assert set(payload) >= {"raw", "tool_calls", "content", "errors", "unknown_tools", "finish_reason"}
    assert payload["completion_tokens"] <= 4


def test_sampling_seed_makes_runs_reproducible(qwen_engine) -> None:
    params = SamplingParams(max_tokens=6, temperature=1.0, top_p=0.95, seed=7)
    first = chat_once(qwen_engine, WEATHER_TOOLS, WEATHER_MESSAGES, params)
    again = chat_once(qwen_engine, WEATHER_TOOLS, WEATHER_MESSAGES, params)
    assert first.raw == again.raw
    assert first.completion_tokens == 6 and first.finish_reason == "length"


def test_tool_shapes_render_verbatim_and_all_parse(qwen_engine) -> None:
    openai = {"type": "function", "function": {"name": "get_weather", "description": "Weather",
                                               "parameters": {"type": "object", "properties": {}}}}
    bare = {"name": "calculator", "description": "计算数学表达式", "parameters": {"type": "object", "properties": {}}}
    param_list = {"name": "WeatherApi", "parameters": [{"name": "query_key", "required": True}]}
    tools = parse_tools([openai, bare, param_list], "inline")
    assert [t.shape for t in tools] == ["openai", "bare", "param_list"]
    prompt = chat_once(qwen_engine, tools, [{"role": "user", "content": "hi"}], SamplingParams(max_tokens=1)).prompt
    for spec in (openai, bare, param_list):
        assert json.dumps(spec, ensure_ascii=False) in prompt


def test_bad_inputs_name_the_file_and_record(tmp_path: Path) -> None:
    bad_json = tmp_path / "tools.json"
    bad_json.write_text("[{")
    with pytest.raises(ChatInputError, match="tools.json: tools are not valid JSON"):
        load_tools(bad_json)
    nameless = tmp_path / "nameless.json"
    nameless.write_text(json.dumps([{"name": "ok"}, {"description": "no name"}]))
    with pytest.raises(ChatInputError, match="nameless.json tool 1: tool has no function name"):
        load_tools(nameless)
    bad_role = tmp_path / "messages.json"
    bad_role.write_text(json.dumps([{"role": "user", "content": "a"}, {"role": "gpt", "content": "b"}]))
    with pytest.raises(ChatInputError, match="messages.json message 1: unknown role 'gpt'"):
        load_messages(bad_role)
    result = CliRunner().invoke(app, ["chat", "--model", str(tmp_path / "missing"), "--messages", str(bad_role)])
    assert result.exit_code != 0


def test_repl_keeps_history_and_takes_tool_results(qwen_engine) -> None:
    tools = parse_tools(WEATHER_TOOLS, "inline")
    session = ChatSession(engine=qwen_engine, tools=tools, params=SamplingParams(max_tokens=3))
    lines = iter(["新增时讯消息", "/system 你是助手", "明天中午12点公司放假！", "/history"])
    out: list[str] = []

    def read_line(prompt: str) -> str:
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    run_repl(session, read_line, out.append)
    roles = [m.role for m in session.history]
    assert roles == ["system", "user", "assistant", "user", "assistant"]
    history_dump = json.loads("".join(out).split("assistant> ")[-1].split("\n", 1)[1].strip().rsplit("\n", 0)[0])
    assert [m["role"] for m in history_dump] == roles

    # The model asked for a tool (as a tuned model would); the typed result goes into the next prompt.
    call = ToolCall(name="WeatherApi", arguments={"query_key": "北京"}, id="call_0")
    session.history.append(Message(role="assistant", content="", tool_calls=[call]))
    session.pending = [call]
    out.clear()
    lines = iter(['/tool {"temperature": 21}'])
    run_repl(session, read_line, out.append, as_json=True)
    turn = json.loads(out[-1])
    assert '<tool_response>\n{"temperature": 21}\n</tool_response>' in turn["prompt"]
    assert '<tool_call>\n{"name": "WeatherApi", "arguments": {"query_key": "北京"}}\n</tool_call>' in turn["prompt"]
    assert session.history[-2].role == "tool" and session.history[-2].tool_call_id == "call_0"
    assert session.history[-1].role == "assistant"


def test_cli_repl_reads_stdin(tiny_qwen2_dir: Path) -> None:
    result = CliRunner().invoke(
        app, ["chat", "-m", str(tiny_qwen2_dir), "--max_new_tokens", "2"], input="hello\n/reset\n/exit\n"
    )
    assert result.exit_code == 0, result.output
    assert "assistant> " in result.output
    assert "/tool <result>" in result.output  # the help is shown


def test_gguf_and_hf_dir_get_the_same_prompt(default_gguf: Path, tiny_llama_dir: Path) -> None:
    """The embedded SmolLM2 GGUF (llama.cpp) and an HF dir with SmolLM2's tokenizer render the same text."""
    pytest.importorskip("llama_cpp")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "北京天气怎么样？"}]
    prompts = {}
    for model in (default_gguf, tiny_llama_dir):
        engine = load_engine(model)
        try:
            # SmolLM2's own template has no tools; the Qwen layout (what training saves) is passed explicitly too.
            own = chat_once(engine, None, messages, SamplingParams(max_tokens=2)).prompt
            engine.chat_template = QWEN_TEMPLATE.read_text()
            with_tools = chat_once(engine, WEATHER_TOOLS, messages, SamplingParams(max_tokens=2)).prompt
        finally:
            engine.close()
        prompts[model] = (own, with_tools)
    assert prompts[default_gguf] == prompts[tiny_llama_dir]
    assert "<tools>" in prompts[default_gguf][1]


@pytest.mark.slow  # ~3 s at SmolLM2's usual 90 tok/s, but over 30 s on a busy 2-core machine
def test_gguf_cli_answers(default_gguf: Path, tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    messages = tmp_path / "m.json"
    messages.write_text(json.dumps(WEATHER_MESSAGES, ensure_ascii=False))
    tools = tmp_path / "t.json"
    # An enum keeps the constrained call short (few tokens to generate).
    city = {"type": "string", "description": "需要查询天气的地区", "enum": ["北京", "上海"]}
    weather = {"type": "function", "function": {"name": "WeatherApi", "description": "实时天气查询", "parameters": {
        "type": "object", "properties": {"query_key": city}, "required": ["query_key"]}}}
    tools.write_text(json.dumps([weather], ensure_ascii=False))
    argv = ["chat", "--model", str(default_gguf), "--tools", str(tools), "--messages", str(messages), "--json",
            "--chat-template", str(QWEN_TEMPLATE), "--max_new_tokens", "96", "--tool-choice", "required"]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output
    payload = json.loads([x for x in result.stdout.splitlines() if x.startswith("{")][0])
    assert payload["prompt"].endswith("<|im_start|>assistant\n")
    # The real SmolLM2 writes a call in the template's layout (grammar-constrained) and chat parses it.
    assert payload["raw"].startswith("<tool_call>\n{")
    assert payload["errors"] == [] and payload["unknown_tools"] == []
    [call] = payload["tool_calls"]
    assert call["name"] == "WeatherApi" and call["arguments"]["query_key"] in ("北京", "上海")


def test_tool_choice_needs_a_gguf(qwen_engine) -> None:
    with pytest.raises(ChatInputError, match="needs a GGUF model"):
        chat_once(qwen_engine, WEATHER_TOOLS, WEATHER_MESSAGES, SamplingParams(max_tokens=1), tool_choice="required")
    with pytest.raises(ChatInputError, match="no tools given"):
        chat_once(qwen_engine, None, WEATHER_MESSAGES, SamplingParams(max_tokens=1), tool_choice="required")
