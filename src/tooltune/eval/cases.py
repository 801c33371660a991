"""Evaluation cases: a conversation prefix, the tools on offer, and what the next assistant turn should do.

Two sources:

* any dataset tooltune loads (sharegpt / OpenAI messages, through ``tooltune.data``): every assistant turn becomes a
  case whose expected outcome is that turn's exact calls, or "no call" for a text turn;
* the Berkeley Function Calling Leaderboard's single-turn Python categories: a question file (``id``, ``question``,
  ``function``; JSON lines) plus its ``possible_answer`` file (``id``, ``ground_truth``). ``irrelevance`` categories
  have no answer file: the right outcome is no call.

``load_cases(..., split="val")`` takes the same seeded ``val_size`` split training uses, so evaluation never scores a
conversation the model was trained on.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tooltune.conversation import Conversation, ConversationError, Tool, ToolCall, openai_tool
from tooltune.errors import TooltuneError
from tooltune.eval.ast_match import OPTIONAL, Answer, answer_from_call


class CaseError(TooltuneError):
    """Cases cannot be built from the given data; the message names the file, record and reason."""


# BFCL's Python type names → JSON schema, for the tool definitions shown to the model (as BFCL's FC handlers do).
BFCL_TO_JSON_SCHEMA = {"dict": "object", "float": "number", "tuple": "array", "any": "string"}
BFCL_SUPPORTED = ("simple", "multiple", "parallel", "parallel_multiple", "irrelevance")
NO_CALL_CATEGORIES = ("no_call", "no_tools", "irrelevance", "live_irrelevance")


@dataclass
class Case:
    id: str
    category: str
    messages: list[dict[str, Any]]  # OpenAI shape, call arguments as objects (what chat templates receive)
    tools: list[dict[str, Any]]  # tool definitions shown to the model, OpenAI shape
    functions: list[dict[str, Any]]  # bare function definitions the AST rules check against
    expected_calls: list[ToolCall] = field(default_factory=list)
    answers: list[Answer] = field(default_factory=list)  # BFCL possible answers; empty = no call expected
    expected_text: str = ""
    source: str = ""

    @property
    def expects_call(self) -> bool:
        return bool(self.answers)

    @property
    def tool_names(self) -> list[str]:
        return [f["name"] for f in self.functions]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "category": self.category,
            "messages": self.messages,
            "tools": self.tools,
            "functions": self.functions,
            "expected_calls": [{"name": c.name, "arguments": c.arguments} for c in self.expected_calls],
            "answers": self.answers,
            "expected_text": self.expected_text,
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Case:
        calls = [ToolCall(name=c["name"], arguments=c["arguments"]) for c in raw.get("expected_calls", [])]
        return cls(
            id=raw["id"],
            category=raw["category"],
            messages=raw["messages"],
            tools=raw["tools"],
            functions=raw["functions"],
            expected_calls=calls,
            answers=raw.get("answers", []),
            expected_text=raw.get("expected_text", ""),
            source=raw.get("source", ""),
        )


def checked_function(tool: Tool) -> dict[str, Any]:
    """Bare function definition with JSON-schema parameters (the seed's list shape becomes properties)."""
    return {"name": tool.name, "description": tool.description, "parameters": tool.json_schema()}


def call_category(calls: list[ToolCall], n_tools: int) -> str:
    """BFCL's category names for what a turn expects."""
    if len(calls) == 1:
        return "simple" if n_tools == 1 else "multiple"
    return "parallel" if len({c.name for c in calls}) == 1 else "parallel_multiple"


# How a case offers a conversation's tools to the model: by default as the data gives them, wrapped when bare (what
# LLaMA-Factory's layouts render); the pipeline passes its training template's view when that differs.
ToolView = Callable[[Tool], dict[str, Any]]


def given_tool(tool: Tool) -> dict[str, Any]:
    return openai_tool(tool.spec)


def cases_from_conversation(conv: Conversation, tool_view: ToolView = given_tool) -> list[Case]:
    """One case per assistant turn: the messages before it, the tools, and its calls or text."""
    tools = [tool_view(t) for t in conv.tools]
    try:
        functions = [checked_function(t) for t in conv.tools]
    except ConversationError as exc:
        raise CaseError(f"{conv.where()}: {exc}") from None
    by_name = {f["name"]: f for f in functions}
    label = f"{Path(conv.source).name}#{conv.index}" if conv.source else f"conversation#{conv.index}"
    cases: list[Case] = []
    for position, message in enumerate(conv.messages):
        if message.role != "assistant":
            continue
        prefix = [m.to_template() for m in conv.messages[:position]]
        if not prefix:
            raise CaseError(f"{conv.where()}: assistant message {position} has nothing before it to answer")
        calls = list(message.tool_calls)
        if calls:
            category = call_category(calls, len(tools))
            answers = [answer_from_call(c, by_name.get(c.name)) for c in calls]
        else:
            category = "no_call" if tools else "no_tools"
            answers = []
        cases.append(
            Case(
                id=f"{label}@{position}",
                category=category,
                messages=prefix,
                tools=tools,
                functions=functions,
                expected_calls=[ToolCall(name=c.name, arguments=c.arguments) for c in calls],
                answers=answers,
                expected_text=message.content if not calls else "",
                source=conv.where(),
            )
        )
    return cases


def cases_from_conversations(conversations: list[Conversation], tool_view: ToolView = given_tool) -> list[Case]:
    return [case for conv in conversations for case in cases_from_conversation(conv, tool_view)]


# --------------------------------------------------------------------------------------------------------------------
# BFCL


def _read_json_lines(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CaseError(f"{path}: cannot read ({exc})") from exc
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CaseError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    else:
        records = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise CaseError(f"{path} line {number}: not valid JSON ({exc.msg})") from exc
    for index, record in enumerate(records):
        if not isinstance(record, dict) or not isinstance(record.get("id"), str):
            raise CaseError(f"{path} record {index}: expected an object with an 'id'")
    return records


def is_bfcl_file(path: str | Path) -> bool:
    """A BFCL question file: JSON lines whose records carry ``question`` and ``function``."""
    path = Path(path)
    if not path.is_file():
        return False
    with path.open(encoding="utf-8") as handle:
        first = handle.readline().strip()
    try:
        record = json.loads(first)
    except json.JSONDecodeError:
        return False
    return isinstance(record, dict) and "question" in record and "function" in record


def bfcl_category(case_id: str) -> str:
    """``simple_python_12`` → ``simple``; ``live_multiple_3-1-0`` → ``live_multiple``; ``irrelevance_7`` stays."""
    category = case_id.rsplit("_", 1)[0]
    return category.removesuffix("_python")


def _schema_from_bfcl(schema: Any) -> Any:
    if isinstance(schema, dict):
        out = {key: _schema_from_bfcl(value) for key, value in schema.items()}
        if isinstance(out.get("type"), str):
            out["type"] = BFCL_TO_JSON_SCHEMA.get(out["type"], out["type"])
        return out
    if isinstance(schema, list):
        return [_schema_from_bfcl(item) for item in schema]
    return schema


def default_answer_path(question_path: Path) -> Path:
    """BFCL keeps answers under ``possible_answer/`` beside the question files, with the same file name."""
    return question_path.parent / "possible_answer" / question_path.name


def load_bfcl(question_path: str | Path, answer_path: str | Path | None = None) -> list[Case]:
    question_path = Path(question_path)
    questions = _read_json_lines(question_path)
    answers_by_id: dict[str, list[Answer]] = {}
    answer_file = Path(answer_path) if answer_path else default_answer_path(question_path)
    needs_answers = any("irrelevance" not in bfcl_category(q["id"]) for q in questions)
    if needs_answers:
        if not answer_file.is_file():
            raise CaseError(
                f"{question_path}: needs its possible_answer file (looked for {answer_file}; pass --answers)"
            )
        for index, record in enumerate(_read_json_lines(answer_file)):
            truth = record.get("ground_truth")
            if not isinstance(truth, list) or not all(isinstance(a, dict) and len(a) == 1 for a in truth):
                raise CaseError(f"{answer_file} record {index}: 'ground_truth' must be a list of {{name: params}}")
            answers_by_id[record["id"]] = truth
    cases = []
    for index, record in enumerate(questions):
        where = f"{question_path} record {index} ({record['id']})"
        category = bfcl_category(record["id"])
        base = category.removeprefix("live_")
        if base not in BFCL_SUPPORTED:
            raise CaseError(f"{where}: category {category!r} is not supported (single-turn Python categories only: "
                            f"{', '.join(BFCL_SUPPORTED)}, optionally live_)")  # fmt: skip
        turns = record.get("question")
        if not isinstance(turns, list) or len(turns) != 1 or not isinstance(turns[0], list):
            raise CaseError(f"{where}: 'question' must hold exactly one turn (a list of messages)")
        functions = record.get("function")
        if not isinstance(functions, list) or not all(isinstance(f, dict) and "name" in f for f in functions):
            raise CaseError(f"{where}: 'function' must be a list of function definitions")
        if base == "irrelevance":
            answers: list[Answer] = []
        elif record["id"] in answers_by_id:
            answers = answers_by_id[record["id"]]
        else:
            raise CaseError(f"{where}: no ground truth for this id in {answer_file}")
        cases.append(
            Case(
                id=record["id"],
                category=category,
                messages=[dict(m) for m in turns[0]],
                tools=[openai_tool(_schema_from_bfcl(f)) for f in functions],
                functions=functions,
                expected_calls=[_canonical_call(a) for a in answers],
                answers=answers,
                source=where,
            )
        )
    return cases


def _canonical_call(answer: Answer) -> ToolCall:
    """The first allowed value of each parameter (for display and exact match); optional-only ones left out."""
    name, params = next(iter(answer.items()))
    arguments = {}
    for param, allowed in params.items():
        given = [v for v in allowed if v != OPTIONAL]
        if given:
            arguments[param] = given[0]
    return ToolCall(name=name, arguments=arguments)


# --------------------------------------------------------------------------------------------------------------------
# The entry point the CLI and the pipeline use


def load_cases(
    source: Any,
    split: str | None = None,
    *,
    answers: str | Path | None = None,
    val_size: float | None = None,
    seed: int | None = None,
    dataset_dir: str | None = None,
    categories: list[str] | None = None,
    max_cases: int | None = None,
    tool_view: ToolView = given_tool,
) -> list[Case]:
    """Cases from ``tooltune.data.DataArguments``, a dataset name/path, a BFCL question file, or a saved
    ``cases.json``. ``tool_view`` shapes a dataset's tools for the prompt (BFCL and saved cases keep theirs).

    ``split="val"`` keeps only the held-out conversations of ``split_train_val(val_size, seed)`` (the values given
    here override those in the DataArguments); ``None`` uses every record. ``max_cases`` keeps the first N cases.
    """
    from tooltune.data.args import DataArguments
    from tooltune.data.loader import load_conversations
    from tooltune.data.split import split_train_val

    if split not in (None, "all", "val"):
        raise CaseError(f"unknown split {split!r} (expected 'val' or none)")
    if isinstance(source, (str, Path)) and is_bfcl_file(source):
        if split == "val":
            raise CaseError(f"{source}: BFCL files are test data already; --split val applies to training datasets")
        cases = load_bfcl(source, answers)
    elif isinstance(source, (str, Path)) and str(source).endswith("cases.json") and Path(source).is_file():
        cases = [Case.from_dict(raw) for raw in json.loads(Path(source).read_text(encoding="utf-8"))]
    else:
        args = replace(source) if isinstance(source, DataArguments) else DataArguments(dataset=str(source))
        if dataset_dir is not None:
            args.dataset_dir = dataset_dir
        if val_size is not None:
            args.val_size = val_size
        if seed is not None:
            args.seed = seed
        report = load_conversations(args)
        if report.rejected:
            # Training skips the same records (and splits what is left), so skip them too, but say so.
            from rich.console import Console

            console = Console(stderr=True)
            for rejection in report.rejected:
                console.print(f"[yellow]warning:[/yellow] skipped {rejection}")
        conversations = report.conversations
        if split == "val":
            if not args.val_size:
                raise CaseError("--split val needs the val_size training used (e.g. --val_size 0.1)")
            conversations = split_train_val(conversations, args.val_size, args.seed)[1]
        cases = cases_from_conversations(conversations, tool_view)
    if categories:
        cases = [c for c in cases if c.category in categories]
    if max_cases is not None:
        cases = cases[:max_cases]
    if not cases:
        where = " in the chosen categories" if categories else ""
        raise CaseError(f"{source}: no evaluation cases (no assistant turns{where})")
    return cases
