"""Each target type against real engines: an HF dir (transformers), the embedded GGUF (llama.cpp), and a real
``tooltune serve`` app on loopback scored through its OpenAI and Ollama APIs (official clients), plus the CLI."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tooltune.eval import EvalReport, evaluate, load_cases
from tooltune.eval.cases import Case
from tooltune.eval.targets import TargetError, ollama_messages, open_target, openai_messages, resolve_chat_template

BFCL = Path(__file__).parent / "fixtures" / "bfcl"
MAX_TOKENS = 6

WEATHER = {
    "name": "get_weather",
    "description": "Weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture(scope="module")
def history_cases(tmp_path_factory: pytest.TempPathFactory) -> list[Case]:
    """Three cases whose prompts hold a call, parallel calls and tool results, so message conversion is exercised."""
    record = {
        "conversations": [
            {"from": "human", "value": "Weather in Paris and Rome?"},
            {"from": "function_call", "value": json.dumps([
                {"name": "get_weather", "arguments": {"city": "Paris"}},
                {"name": "get_weather", "arguments": {"city": "Rome"}},
            ])},
            {"from": "observation", "value": '{"temp": 21}'},
            {"from": "observation", "value": '{"temp": 25}'},
            {"from": "gpt", "value": "21 in Paris, 25 in Rome."},
            {"from": "human", "value": "And Oslo?"},
            {"from": "function_call", "value": '{"name": "get_weather", "arguments": {"city": "Oslo"}}'},
        ],
        "tools": json.dumps([WEATHER]),
    }  # fmt: skip
    path = tmp_path_factory.mktemp("cases") / "history.json"
    path.write_text(json.dumps([record]))
    cases = load_cases(str(path))
    assert [c.category for c in cases] == ["parallel", "no_call", "simple"]
    return cases


def _outputs(report: EvalReport, run: int = 0) -> list[str]:
    return [s.output for s in report.runs[run].scores]


def test_hf_target_writes_report_and_matches_the_engine(tiny_llama_dir: Path, history_cases: list[Case],
                                                        tmp_path: Path) -> None:  # fmt: skip
    from tooltune.engines import SamplingParams, load_engine

    report = evaluate([str(tiny_llama_dir)], history_cases, tmp_path, max_tokens=MAX_TOKENS, progress=False,
                      chat_template="qwen", lenient="both")  # fmt: skip
    assert [r.label for r in report.runs] == ["model (strict)", "model (lenient)"]
    assert report.runs[0].kind == "hf" and report.runs[0].summary.metrics["accuracy"].n == 3
    for name in ("report.json", "report.md", "report.png"):
        assert (tmp_path / name).stat().st_size > 200
    assert (tmp_path / "report.png").read_bytes()[:4] == b"\x89PNG"
    saved = EvalReport.load(tmp_path)
    assert _outputs(saved) == _outputs(report) and saved.table_markdown() == report.table_markdown()
    # The target decodes exactly what the engine gives for the qwen-rendered prompt (tools wrapped as in training).
    engine = load_engine(tiny_llama_dir, chat_template=resolve_chat_template("qwen"))
    case = history_cases[2]
    prompt = engine.render(case.messages, case.tools)
    assert '{"type": "function", "function": {"name": "get_weather"' in prompt
    assert '"arguments": {"city": "Rome"}' in prompt and "<tool_response>\n{\"temp\": 25}" in prompt
    direct = engine.generate(prompt, SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, seed=0))
    assert report.runs[0].scores[2].output == direct.text
    assert report.runs[0].scores[2].completion_tokens == direct.completion_tokens


def test_a_template_without_tools_is_refused(tiny_llama_dir: Path) -> None:
    # SmolLM2's own chat template drops tools: scoring a model that never saw them would be meaningless.
    with pytest.raises(TargetError, match="ignores tools"):
        open_target(str(tiny_llama_dir))
    with pytest.raises(TargetError, match="no such model"):
        open_target("/nonexistent/model.gguf")
    with pytest.raises(TargetError, match="bundled template"):
        resolve_chat_template("no-such-template")


@pytest.fixture(scope="module")
def served_url(tiny_llama_dir: Path) -> Iterator[str]:
    """A real ``tooltune serve`` app (FastAPI + uvicorn) on a free loopback port, serving the tiny model."""
    import uvicorn

    from tooltune.engines import load_engine
    from tooltune.serve.app import create_app

    engine = load_engine(tiny_llama_dir, chat_template=resolve_chat_template("qwen"))
    app = create_app(engine, "tiny")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started, "server did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)
    sock.close()
    engine.close()


def test_openai_and_ollama_targets_score_the_same_generations_as_the_file(
    served_url: str, tiny_llama_dir: Path, history_cases: list[Case], tmp_path: Path
) -> None:
    targets = [str(tiny_llama_dir), f"{served_url}/v1", f"ollama:{served_url}"]
    report = evaluate(targets, history_cases, tmp_path, max_tokens=MAX_TOKENS, progress=False, chat_template="qwen")
    kinds = [r.kind for r in report.runs]
    assert kinds == ["hf", "openai", "ollama"]
    assert report.runs[1].label.startswith("tiny @ 127.0.0.1") and "(ollama)" in report.runs[2].label
    # Same model, same prompt layout, greedy decoding: the servers return what the file produced (the tiny random
    # model makes no calls, so its whole text comes back as content).
    local = [text.strip() for text in _outputs(report, 0)]
    assert [t.strip() for t in _outputs(report, 1)] == local
    assert [t.strip() for t in _outputs(report, 2)] == local
    for run in report.runs[1:]:
        assert all(s.completion_tokens for s in run.scores) and all(s.latency_s > 0 for s in run.scores)
        assert run.summary.metrics["parsed"].hits == 3
    markdown = (tmp_path / "report.md").read_text()
    assert markdown.count("|") > 40 and "**" in markdown


def test_server_targets_report_unreachable_servers_clearly() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(TargetError, match="not reachable"):
        open_target(f"http://127.0.0.1:{port}/v1")
    with pytest.raises(TargetError, match="not reachable"):
        open_target(f"ollama:http://127.0.0.1:{port}")


def test_wire_message_conversion_links_tool_results_to_calls(history_cases: list[Case]) -> None:
    messages = history_cases[2].messages
    wire = openai_messages(messages)
    calls = wire[1]["tool_calls"]
    assert [c["id"] for c in calls] == ["call_0", "call_1"] and wire[1]["content"] is None
    assert json.loads(calls[1]["function"]["arguments"]) == {"city": "Rome"}
    assert [m.get("tool_call_id") for m in wire[2:4]] == ["call_0", "call_1"]
    ollama = ollama_messages(messages)
    assert ollama[1]["tool_calls"][0] == {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}


@pytest.mark.slow  # ~10 s on idle cores, ~50 s on the shared dev machine
def test_gguf_target_on_the_embedded_model_with_bfcl_cases(default_gguf: Path, tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    cases = load_cases(str(BFCL / "BFCL_v4_simple_python.json"), max_cases=2) + load_cases(
        str(BFCL / "BFCL_v4_irrelevance.json"), max_cases=1
    )
    with pytest.raises(TargetError, match="ignores tools"):
        open_target(str(default_gguf))  # SmolLM2's own template: no tools
    first = evaluate([str(default_gguf)], cases, tmp_path / "a", max_tokens=24, progress=False, chat_template="qwen")
    again = evaluate([str(default_gguf)], cases, None, max_tokens=24, progress=False, chat_template="qwen")
    assert first.runs[0].kind == "gguf"
    assert _outputs(first) == _outputs(again)  # deterministic by default
    assert [s.case_id for s in first.runs[0].scores] == [c.id for c in cases]  # data order, whatever ran first
    assert all(s.completion_tokens for s in first.runs[0].scores)
    assert set(first.runs[0].summary.by_category) == {"simple", "irrelevance"}


def test_cli_eval_and_compare(tiny_llama_dir: Path, history_cases: list[Case], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from tooltune.cli import app

    data = tmp_path / "cases.jsonl"
    record = {"messages": history_cases[2].messages + [{"role": "assistant", "content": "ok"}],
              "tools": history_cases[2].tools}  # fmt: skip
    data.write_text(json.dumps(record) + "\n")
    runner = CliRunner()
    args = ["eval", "--model", str(tiny_llama_dir), "--data", str(data), "--max_new_tokens", str(MAX_TOKENS),
            "--chat-template", "qwen", "--quiet", "--no-plot"]  # fmt: skip
    first = runner.invoke(app, [*args, "--out", str(tmp_path / "a")])
    assert first.exit_code == 0, first.output
    second = runner.invoke(app, [*args, "--out", str(tmp_path / "b"), "--category", "no_call", "--parse", "both"])
    assert second.exit_code == 0, second.output
    assert json.loads((tmp_path / "a" / "report.json").read_text())["n_cases"] == 3
    compared = runner.invoke(app, ["eval", "--compare", str(tmp_path / "a"), str(tmp_path / "b")])
    assert compared.exit_code == 0, compared.output
    assert "| accuracy (AST) |" in compared.output and "shared cases" in compared.output
    missing = runner.invoke(app, ["eval", "--model", str(tmp_path / "nope"), "--data", str(data)])
    assert missing.exit_code != 0 and "no such model" in str(missing.exception)


def test_prompt_order_puts_prompts_that_begin_alike_together(history_cases: list[Case]) -> None:
    from dataclasses import replace

    from tooltune.eval.runner import prompt_order

    other_tools = [{"type": "function", "function": {**WEATHER, "name": "get_time"}}]
    mixed = [history_cases[0], replace(history_cases[1], tools=other_tools), history_cases[2],
             replace(history_cases[0], tools=other_tools)]
    order = prompt_order(mixed)
    assert sorted(order) == [0, 1, 2, 3]  # every case once
    # the two with the weather tool run back to back, and so do the two with the other tool
    assert {frozenset(order[:2]), frozenset(order[2:])} == {frozenset({0, 2}), frozenset({1, 3})}
    # within one tool list, a conversation's earlier turn comes before its continuation (a prefix of it)
    assert order.index(0) < order.index(2)
