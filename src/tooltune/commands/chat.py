"""``tooltune chat``: the seed's 模型测试 script as a command, or an interactive REPL without ``--messages``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console


def chat_command(
    model: str = typer.Option(
        ..., "--model", "--model_name_or_path", "--model-name-or-path", "-m",
        help="HF model directory (e.g. the export_dir of `tooltune export`) or a .gguf file.",
    ),
    tools: Path | None = typer.Option(
        None, "--tools", help="JSON list of tools: OpenAI, bare function, or the seed's list-of-parameters shape."
    ),
    messages: Path | None = typer.Option(
        None, "--messages", help="JSON list of messages (or {messages, tools}); without it, start a REPL."
    ),
    as_json: bool = typer.Option(
        False, "--json", help="Print one machine-readable JSON object (one per turn in the REPL)."
    ),
    temperature: float = typer.Option(0.0, "--temperature", help="0 = greedy, like the seed's generate()."),
    top_p: float = typer.Option(1.0, "--top_p", "--top-p"),
    max_new_tokens: int = typer.Option(256, "--max_new_tokens", "--max-new-tokens"),
    seed: int = typer.Option(0, "--seed", help="Sampling seed (reproducible runs)."),
    system: str | None = typer.Option(None, "--system", help="System message put before the conversation."),
    chat_template: str | None = typer.Option(
        None, "--chat-template", "--chat_template",
        help="Template instead of the model's own: a name (qwen, qwen3, mistral, ...), a Jinja file or a model folder."
    ),
    n_ctx: int = typer.Option(4096, "--n-ctx", "--n_ctx", help="Context length (tokens)."),
    lenient: bool = typer.Option(
        False, "--lenient", help="Also accept a bare JSON object / ```json fence naming a known tool as a call."
    ),
    tool_choice: str = typer.Option(
        "auto", "--tool-choice", "--tool_choice",
        help="auto | required | TOOL_NAME: force a call with a grammar (GGUF models, through llama.cpp).",
    ),
    constrain_calls: bool = typer.Option(
        True, "--constrain-calls/--no-constrain-calls", "--constrain_calls/--no_constrain_calls",
        help="tool_choice auto: once the model opens a call, hold it to the tools' schemas (GGUF models), as "
        "`tooltune serve` does; --no-constrain-calls shows the call as the model writes it.",
    ),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", "--trust_remote_code"),
) -> None:
    """Render the prompt with the model's chat template and tools, generate, and print the parsed tool calls."""
    from tooltune.chat import ChatSession, chat_once, load_messages, load_tools, run_repl
    from tooltune.conversation import Message
    from tooltune.engines import SamplingParams, load_engine

    status = Console(stderr=True)
    tool_list = load_tools(tools) if tools else []
    history: list[Message] = []
    if messages is not None:
        history, file_tools = load_messages(messages)
        tool_list = tool_list or file_tools
    if system is not None:
        history = [m for m in history if m.role != "system"]
        history.insert(0, Message(role="system", content=system))
    from tooltune.families.registry import resolve_text

    template_text = resolve_text(chat_template)
    params = SamplingParams(max_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)

    with status.status(f"loading {model}"):
        engine = load_engine(model, n_ctx=n_ctx, chat_template=template_text, trust_remote_code=trust_remote_code)
    try:
        if messages is None:
            session = ChatSession(engine=engine, tools=tool_list, params=params, history=history, lenient=lenient,
                                  tool_choice=tool_choice, constrain_calls=constrain_calls)

            def write(text: str) -> None:
                sys.stdout.write(text)
                sys.stdout.flush()

            run_repl(session, read_line=input, write=write, as_json=as_json)
            return
        result = chat_once(engine, tool_list, history, params, lenient=lenient, tool_choice=tool_choice,
                           constrain_calls=constrain_calls)
    finally:
        engine.close()

    if as_json:
        typer.echo(json.dumps(result.to_json(), ensure_ascii=False))
    else:
        sections = [("prompt", result.prompt), ("response", result.raw),
                    ("tool calls", json.dumps(result.calls_json(), ensure_ascii=False, indent=2))]
        if result.calls and result.content:
            sections.append(("content", result.content))
        if result.errors or result.unknown_names:
            problems = [*result.errors, *(f"unknown tool {name!r}" for name in result.unknown_names)]
            sections.append(("parse problems", "\n".join(problems)))
        for title, body in sections:
            typer.echo(f"{'=' * 30} {title} {'=' * 30}")
            typer.echo(body)
    status.print(result.summary(), soft_wrap=True, markup=False, highlight=False)


def register(app: typer.Typer) -> None:
    app.command(
        name="chat",
        help="Test a model with tools (the seed's 模型测试): prompt, raw response and parsed tool calls; REPL without "
        "--messages.",
    )(chat_command)
