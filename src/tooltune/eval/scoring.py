"""Score one generation against one case, and a run of them into rates.

Every per-case outcome is a bool, or None where it does not apply (argument checks on a turn that expects no call),
so each rate is over the cases it concerns and reports that n.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from tooltune.conversation import ToolCall
from tooltune.eval.ast_match import check_calls, exact_match
from tooltune.eval.cases import Case
from tooltune.eval.metrics import Rate, percentile, rate
from tooltune.eval.targets import Generation
from tooltune.toolcalls import OPEN_TAG, parse_tool_calls


@dataclass(frozen=True)
class Metric:
    key: str
    title: str
    lower_is_better: bool = False
    help: str = ""


# Order here is the order of the report's table.
METRICS: tuple[Metric, ...] = (
    Metric("accuracy", "accuracy (AST)", help="right call(s) by BFCL's AST rules, or rightly no call"),
    Metric("decision", "call / no-call decision", help="called a tool exactly when the reference did"),
    Metric("name", "function name", help="call turns: the same function names (any order)"),
    Metric("arguments_ast", "arguments (AST)", help="call turns: calls and arguments right by BFCL's AST rules"),
    Metric("arguments_exact", "arguments (exact)", help="call turns: identical arguments, no normalisation"),
    Metric("no_call", "no call when none is due", help="text turns: answered without calling"),
    Metric("parsed", "output parsed", help="no malformed <tool_call> block or failed request"),
    Metric("hallucinated_name", "hallucinated tool name", True, "called a tool that was not offered"),
    Metric("leaked_call", "call JSON leaked into content", True, "call-like JSON or <tool_call> left in the text"),
)
METRIC_BY_KEY = {m.key: m for m in METRICS}


@dataclass
class CaseScore:
    case_id: str
    category: str
    expected_calls: list[dict[str, Any]]
    expected_text: str
    output: str  # raw text (local) or message content (server)
    content: str
    calls: list[dict[str, Any]]
    errors: list[str]
    verdict: str  # the AST verdict's message when it failed
    outcomes: dict[str, bool | None]
    latency_s: float
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    prompt_preview: str = ""

    @property
    def correct(self) -> bool:
        return bool(self.outcomes["accuracy"])

    @property
    def cut_short(self) -> bool:
        """A call turn scored wrong that ended on the token budget inside the calls it had begun (some parsed, or a
        call block left open): what the model would have answered is unknown (a second call with long arguments can
        need more than the budget), so reports name it instead of letting it pass as the model's mistake. Prose
        that runs to the budget without a call is the model's answer, not a cut one."""
        began_calls = bool(self.calls) or bool(self.outcomes.get("leaked_call"))
        return self.finish_reason == "length" and bool(self.expected_calls) and not self.correct and began_calls

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> CaseScore:
        return cls(**raw)


def _call_dicts(calls: list[ToolCall]) -> list[dict[str, Any]]:
    return [{"name": c.name, "arguments": c.arguments} for c in calls]


def _prompt_preview(case: Case, limit: int = 300) -> str:
    """The last message the model answers, for the failure list."""
    last = case.messages[-1] if case.messages else {}
    text = str(last.get("content") or "")
    if last.get("tool_calls"):
        text = "(tool calls) " + text
    text = f"{last.get('role', '?')}: {text}"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def has_leaked_call(content: str, tool_names: list[str]) -> bool:
    """Tool-call text a client would show the user instead of running: a tag, or JSON naming an offered tool."""
    if OPEN_TAG in content:
        return True
    return bool(parse_tool_calls(content, tools=tool_names, lenient=True).calls)


def score_case(case: Case, generation: Generation, lenient: bool = False) -> CaseScore:
    from tooltune.families.family import FAMILIES
    from tooltune.families.parsers import parse_reply

    tool_names = case.tool_names
    errors = list(generation.errors)
    family = FAMILIES.get(generation.family or "")
    if generation.api_calls is None:
        # Raw model text: read with the model family's parser (Hermes tags when the family is unknown).
        parsed = parse_reply(generation.text, family, tools=tool_names, lenient=lenient)
        calls, content = parsed.calls, parsed.content
        errors += parsed.errors
    else:
        # A server's parsed calls are what a client gets; its content is re-parsed for errors, and for calls only
        # in lenient scoring (e.g. Ollama without a tool-aware TEMPLATE returns <tool_call> text as content).
        reparsed = parse_reply(generation.text, family, tools=tool_names, lenient=lenient)
        calls = list(generation.api_calls)
        content = generation.text.strip()
        errors += reparsed.errors
        if lenient:
            calls += reparsed.calls
            content = reparsed.content
    verdict = check_calls(case.functions, calls, case.answers)
    expects_call = case.expects_call
    names_match = Counter(c.name for c in calls) == Counter(c.name for c in case.expected_calls)
    outcomes: dict[str, bool | None] = {
        "accuracy": verdict.ok,
        "decision": bool(calls) == expects_call,
        "name": names_match if expects_call else None,
        "arguments_ast": verdict.ok if expects_call else None,
        "arguments_exact": exact_match(calls, case.expected_calls) if expects_call else None,
        "no_call": (not calls) if not expects_call else None,
        "parsed": not errors,
        "hallucinated_name": any(c.name not in tool_names for c in calls),
        "leaked_call": has_leaked_call(content, tool_names),
    }
    return CaseScore(
        case_id=case.id,
        category=case.category,
        expected_calls=_call_dicts(case.expected_calls),
        expected_text=case.expected_text,
        output=generation.text,
        content=content,
        calls=_call_dicts(calls),
        errors=errors,
        verdict="" if verdict.ok else f"{verdict.error_type}: {verdict.message}",
        outcomes=outcomes,
        latency_s=generation.latency_s,
        prompt_tokens=generation.prompt_tokens,
        completion_tokens=generation.completion_tokens,
        finish_reason=generation.finish_reason,
        prompt_preview=_prompt_preview(case),
    )


@dataclass
class RunSummary:
    metrics: dict[str, Rate]
    by_category: dict[str, dict[str, Rate]]  # every metric, per category
    latency: dict[str, float | None] = field(default_factory=dict)
    tokens_per_second: float | None = None


def summarize(scores: list[CaseScore]) -> RunSummary:
    metrics = {m.key: rate(s.outcomes.get(m.key) for s in scores) for m in METRICS}
    categories = sorted({s.category for s in scores})
    by_category = {
        c: {m.key: rate(s.outcomes.get(m.key) for s in scores if s.category == c) for m in METRICS} for c in categories
    }
    latencies = [s.latency_s for s in scores]
    completion = sum(s.completion_tokens or 0 for s in scores)
    seconds = sum(latencies)
    return RunSummary(
        metrics=metrics,
        by_category=by_category,
        latency={
            "mean_s": sum(latencies) / len(latencies) if latencies else None,
            "p50_s": percentile(latencies, 50),
            "p95_s": percentile(latencies, 95),
        },
        tokens_per_second=completion / seconds if seconds and completion else None,
    )


SEVERITY = ("hallucinated_name", "parsed", "decision", "name", "arguments_ast")


def failure_rank(score: CaseScore) -> tuple[int, str]:
    """Worst first: a hallucinated tool, then unparsable output, a wrong decision, a wrong name, wrong arguments."""
    for rank, key in enumerate(SEVERITY):
        value = score.outcomes.get(key)
        failed = value if key == "hallucinated_name" else value is False
        if failed:
            return rank, score.case_id
    return len(SEVERITY), score.case_id
