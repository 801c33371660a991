"""Modelfile writing/reading, and the Go TEMPLATE proven against the Jinja chat template with Go's text/template."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tooltune.chat_template import render
from tooltune.serve.modelfile import (
    ModelfileError,
    canonicalize_for_ollama,
    go_template_for,
    parse_modelfile,
    write_modelfile,
)

TESTS = Path(__file__).parent
QWEN_JINJA = (TESTS.parent / "src" / "tooltune" / "resources" / "templates" / "qwen.jinja").read_text()
SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "observation": "tool"}

# The seed's hand-written Modelfile TEMPLATE, verbatim.
SEED_TEMPLATE = """{{ if .System }}<|im_start|>system
{{ .System }}{{ end }}{{ if .Tools }}
# Tools
You may call one or more functions to assist with the user query.
You are provided with function signatures within <tools></tools> XML tags:
<tools>
{{ range .Tools }}{{ . }}{{ end }}
</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{"name": <function-name>, "arguments": <args-json-object>}
</tool_call>{{ end }}<|im_end|>
{{ if .Messages }}{{ range .Messages }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}{{ end }}<|im_start|>assistant
"""


# ---------------------------------------------------------------------------------------------------- writing/reading


def test_write_modelfile_for_qwen_template(default_gguf: Path, tmp_path: Path) -> None:
    out = write_modelfile(default_gguf, tmp_path / "Modelfile", name="toolcall_qwen2.5_q4", chat_template=QWEN_JINJA,
                          system="You are a helpful assistant.", params={"temperature": 0.2})
    text = out.read_text()
    assert text.startswith("# Modelfile for toolcall_qwen2.5_q4, written by `tooltune modelfile`.")
    assert f"FROM {default_gguf.resolve()}" in text
    assert "{{ if .ToolCalls }}" in text or "{{- if .ToolCalls }}" in text
    assert "PARAMETER stop <|im_end|>" in text
    assert "PARAMETER temperature 0.2" in text and "PARAMETER top_p 0.9" in text
    parsed = parse_modelfile(out)
    assert parsed.from_ == default_gguf.resolve()
    assert parsed.parameters == {"temperature": 0.2, "top_p": 0.9, "stop": ["<|im_end|>"]}
    assert parsed.system == "You are a helpful assistant."
    assert parsed.template == go_template_for(QWEN_JINJA)[1]


def test_write_modelfile_refuses_unknown_template(default_gguf: Path, tmp_path: Path) -> None:
    # SmolLM2's own template has no tool support: no Go equivalent is claimed for it.
    with pytest.raises(ModelfileError, match="no Go TEMPLATE is known"):
        write_modelfile(default_gguf, tmp_path / "Modelfile")
    out = write_modelfile(default_gguf, tmp_path / "Modelfile", include_template=False)
    assert "TEMPLATE" not in out.read_text().split("FROM", 1)[1]


def test_parse_modelfile_seed_style(tmp_path: Path, default_gguf: Path) -> None:
    (tmp_path / "model.gguf").symlink_to(default_gguf)
    (tmp_path / "Modelfile").write_text(
        f'FROM ./model.gguf\n\nTEMPLATE """{SEED_TEMPLATE}"""\n\nPARAMETER temperature 0.1\nPARAMETER top_p 0.9\n'
        "PARAMETER stop <|im_end|>\nPARAMETER stop <|endoftext|>\nSYSTEM \"Be brief.\"\nMESSAGE user hello\n"
    )
    parsed = parse_modelfile(tmp_path / "Modelfile")
    assert parsed.from_ == tmp_path / "model.gguf"
    assert parsed.template == SEED_TEMPLATE
    assert parsed.parameters == {"temperature": 0.1, "top_p": 0.9, "stop": ["<|im_end|>", "<|endoftext|>"]}
    assert parsed.system == "Be brief."
    assert parsed.messages == [{"role": "user", "content": "hello"}]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("PARAMETER temperature 0.1\n", "no FROM line"),
        ("FROM ./missing.gguf\n", "does not exist"),
        ("FROM {gguf}\nPARAMETER temprature 0.1\n", "unknown PARAMETER 'temprature'"),
        ("FROM {gguf}\nPARAMETER top_k many\n", "is not a int"),
        ('FROM {gguf}\nTEMPLATE """never closed\n', "never closes"),
        ("FROM {gguf}\nADAPTER ./lora.gguf\n", "ADAPTER .*lora.gguf does not exist"),
        ("FROM {gguf}\nFROBNICATE x\n", "unknown instruction FROBNICATE"),
    ],
)
def test_parse_modelfile_errors_name_file_and_line(tmp_path: Path, default_gguf: Path, body: str,
                                                   message: str) -> None:
    path = tmp_path / "Modelfile"
    path.write_text(body.format(gguf=default_gguf))
    with pytest.raises(ModelfileError, match=message) as info:
        parse_modelfile(path)
    assert str(path) in str(info.value)


def test_modelfile_cli(default_gguf: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from tooltune.cli import app

    result = CliRunner().invoke(app, ["modelfile", str(default_gguf), "--out", str(tmp_path / "Modelfile"),
                                      "--chat_template", "qwen", "--name", "toolcall_qwen2.5_q4"])
    assert result.exit_code == 0, result.output
    assert parse_modelfile(tmp_path / "Modelfile").template == go_template_for(QWEN_JINJA)[1]


# ---------------------------------------------------------------------------------------------------- Go equivalence


def glaive_conversations(data_dir: Path) -> list[tuple[list[dict], list[dict] | None]]:
    """Every glaive demo record in Ollama's message shape: tool calls with object arguments, role ``tool``."""
    out = []
    for name in ("glaive_toolcall_en_demo.json", "glaive_toolcall_zh_demo.json"):
        for record in json.loads((data_dir / name).read_text()):
            messages: list[dict] = []
            for turn in record["conversations"]:
                if turn["from"] == "function_call":
                    calls = json.loads(turn["value"])
                    calls = calls if isinstance(calls, list) else [calls]
                    messages.append({"role": "assistant", "content": "", "tool_calls": [
                        {"function": {"name": c["name"], "arguments": c["arguments"]}} for c in calls]})
                else:
                    messages.append({"role": SHAREGPT_ROLES[turn["from"]], "content": turn["value"]})
            tools = json.loads(record["tools"]) if record.get("tools") else None
            out.append((messages, [{"type": "function", "function": t} for t in tools] if tools else None))
    return out


def prompts_of(conversations: list[tuple[list[dict], list[dict] | None]]) -> list[tuple[list[dict], list | None, bool]]:
    """Each prompt a served model sees (every prefix ending in a user or tool turn) plus each whole conversation."""
    cases = []
    for messages, tools in conversations:
        for end in range(1, len(messages) + 1):
            last = messages[end - 1]["role"]
            if last in ("user", "tool") or end == len(messages):
                cases.append((messages[:end], tools, last != "assistant"))
    return cases


@pytest.fixture(scope="session")
def go_renderer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped Ollama template renderer (src/tooltune/resources/go/ollamatmpl), built once per session."""
    from tooltune.serve.go_template import build_renderer

    binary = build_renderer(tmp_path_factory.mktemp("go"))
    if binary is None:
        pytest.skip("the Go toolchain (`go`, Debian package golang-go) is not installed: cannot run text/template")
    return binary


def go_render(binary: Path, template: str, cases: list[tuple[list[dict], list | None, bool]],
              think: bool | None = None) -> list[str]:
    """``think``: the request's Ollama `think` (None: not set, as a request without it)."""
    from tooltune.serve.go_template import render_go

    results = render_go(binary, [(template, m, t) for m, t, _ in cases], think=think)
    errors = [str(r) for r in results if not isinstance(r, str)]
    assert not errors, errors[:3]
    return [r for r in results if isinstance(r, str)]


def _training_qwen_jinja() -> str:
    from tooltune.templates.qwen import QWEN_DEFAULT_SYSTEM, jinja_string
    from tooltune.templates.qwen import QWEN_JINJA as TRAINING_JINJA

    return TRAINING_JINJA.replace("__DEFAULT_SYSTEM__", jinja_string(QWEN_DEFAULT_SYSTEM))


@pytest.mark.parametrize("which", ["qwen2.5 chat template", "training template qwen"])
def test_go_template_matches_jinja_on_glaive(go_renderer: Path, demo_data_dir: Path, which: str) -> None:
    jinja_template = QWEN_JINJA if which == "qwen2.5 chat template" else _training_qwen_jinja()
    _, go_template = go_template_for(jinja_template)
    cases = prompts_of(glaive_conversations(demo_data_dir))
    go_outputs = go_render(go_renderer, go_template, cases)
    exact = canonical = 0
    first_mismatch = None
    for (messages, tools, generation), go_text in zip(cases, go_outputs, strict=True):
        jinja_text = render(jinja_template, messages, tools, add_generation_prompt=generation)
        exact += jinja_text == go_text
        canon_messages, canon_tools = canonicalize_for_ollama(messages, tools)
        canon_text = render(jinja_template, canon_messages, canon_tools, add_generation_prompt=generation)
        if canon_text == go_text:
            canonical += 1
        elif first_mismatch is None:
            first_mismatch = (canon_text, go_text)
    print(f"\nGo TEMPLATE vs Jinja on {len(cases)} glaive prompts: {exact} byte-identical as given, "
          f"{canonical} after canonicalize_for_ollama")
    # Whatever Ollama's data types can carry, the Go template prints exactly as Jinja does.
    assert first_mismatch is None, first_mismatch
    assert canonical == len(cases)
    # As given, the difference is only key order / dropped schema keys: measured, never zero on this data.
    assert 0 < exact < len(cases)


def test_go_template_tool_round_trip_and_prefix(go_renderer: Path) -> None:
    """A multi-turn round trip (parallel calls, two tool results) renders like Jinja, and Ollama finds <tool_call>."""
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather <now> & later",
                                               "parameters": {"type": "object", "properties": {
                                                   "city": {"type": "string", "description": "城市"}},
                                                   "required": ["city"]}}}]
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Weather in Paris and 北京?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
            {"function": {"name": "get_weather", "arguments": {"city": "北京"}}}]},
        {"role": "tool", "content": "{\"temp\": 20}", "tool_name": "get_weather"},
        {"role": "tool", "content": "{\"temp\": 25}", "tool_name": "get_weather"},
    ]
    _, go_template = go_template_for(QWEN_JINJA)
    [go_text] = go_render(go_renderer, go_template, [(messages, tools, True)])
    assert go_text == render(QWEN_JINJA, messages, tools, add_generation_prompt=True)
    assert "Weather <now> & later" in go_text  # no \u003c escaping, unlike Go's json
    # Ollama's tool-call prefix: the first non-blank text inside the first {{ if .ToolCalls }} block, cut at "{".
    block = go_template.split("{{- if .ToolCalls }}", 1)[1]
    first_text = block.split("{{- range .ToolCalls }}", 1)[1].split("{{", 1)[0]
    assert first_text.split("{", 1)[0].strip() == "<tool_call>"


def test_seed_template_differs_from_training_layout(go_renderer: Path, demo_data_dir: Path) -> None:
    """The seed's hand-written TEMPLATE drops tool calls and results: measure how many prompts still match."""
    cases = prompts_of(glaive_conversations(demo_data_dir))
    go_outputs = go_render(go_renderer, SEED_TEMPLATE, cases)
    pairs = zip(cases, go_outputs, strict=True)
    same = sum(render(QWEN_JINJA, m, t, add_generation_prompt=g) == out for (m, t, g), out in pairs)
    print(f"\nseed TEMPLATE vs Jinja on {len(cases)} glaive prompts: {same} byte-identical")
    assert same == 0
