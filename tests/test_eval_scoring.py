"""Per-case scoring (strict and lenient, raw text and server-parsed calls) and the report/compare views."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tooltune.conversation import ToolCall
from tooltune.eval.cases import Case, load_bfcl
from tooltune.eval.report import EvalReport, RunResult, compare
from tooltune.eval.scoring import METRICS, score_case
from tooltune.eval.targets import Generation

BFCL = Path(__file__).parent / "fixtures" / "bfcl"


@pytest.fixture(scope="module")
def triangle() -> Case:
    return load_bfcl(BFCL / "BFCL_v4_simple_python.json")[0]  # calculate_triangle_area(base=10, height=5)


@pytest.fixture(scope="module")
def irrelevant() -> Case:
    return load_bfcl(BFCL / "BFCL_v4_irrelevance.json")[0]


GOOD = '<tool_call>\n{"name": "calculate_triangle_area", "arguments": {"base": 10, "height": 5}}\n</tool_call>'
BARE = '{"name": "calculate_triangle_area", "arguments": {"base": 10, "height": 5}}'


def outcomes(case: Case, text: str, lenient: bool = False, **kwargs: object) -> dict:
    return score_case(case, Generation(text=text, **kwargs), lenient=lenient).outcomes  # type: ignore[arg-type]


def test_a_right_call(triangle: Case) -> None:
    got = outcomes(triangle, GOOD)
    assert got == {
        "accuracy": True, "decision": True, "name": True, "arguments_ast": True,
        "arguments_exact": False,  # the canonical answer also sets the optional unit="units"
        "no_call": None, "parsed": True, "hallucinated_name": False, "leaked_call": False,
    }  # fmt: skip


def test_wrong_arguments_right_name(triangle: Case) -> None:
    got = outcomes(triangle, GOOD.replace("10", "12"))
    assert got["decision"] and got["name"] and not got["arguments_ast"] and not got["accuracy"]
    score = score_case(triangle, Generation(text=GOOD.replace("10", "12")))
    assert score.verdict.startswith("value_error")


def test_bare_json_is_a_leak_when_strict_and_a_call_when_lenient(triangle: Case) -> None:
    strict = outcomes(triangle, BARE)
    assert not strict["decision"] and strict["leaked_call"] and strict["parsed"]
    lenient = outcomes(triangle, BARE, lenient=True)
    assert lenient["accuracy"] and not lenient["leaked_call"]
    fenced = outcomes(triangle, f"Sure:\n```json\n{BARE}\n```", lenient=True)
    assert fenced["accuracy"]


def test_malformed_and_hallucinated(triangle: Case, irrelevant: Case) -> None:
    broken = outcomes(triangle, '<tool_call>{"name": "calculate_triangle_area", "arguments": {"base": 10</tool_call>')
    assert not broken["parsed"] and not broken["decision"] and broken["leaked_call"]
    invented = outcomes(triangle, '<tool_call>{"name": "area_of_triangle", "arguments": {}}</tool_call>')
    assert invented["hallucinated_name"] and not invented["name"] and invented["decision"]
    # Irrelevance: answering in text is right, calling the offered tool is wrong.
    assert outcomes(irrelevant, "I cannot compute that with the tools I have.")["accuracy"]
    called = outcomes(irrelevant, '<tool_call>{"name": "determine_body_mass_index", "arguments": '
                                  '{"weight": 1.0, "height": 1.0}}</tool_call>')  # fmt: skip
    assert not called["accuracy"] and called["no_call"] is False and called["name"] is None


def test_server_parsed_calls(triangle: Case) -> None:
    call = ToolCall("calculate_triangle_area", {"base": 10, "height": 5})
    assert outcomes(triangle, "", api_calls=[call])["accuracy"]
    # A server that did not parse (e.g. Ollama without a tool-aware TEMPLATE) returns the block as content.
    unparsed = outcomes(triangle, GOOD, api_calls=[])
    assert not unparsed["decision"] and unparsed["leaked_call"]
    assert outcomes(triangle, GOOD, lenient=True, api_calls=[])["accuracy"]
    failed = outcomes(triangle, "", api_calls=[], errors=["request failed: 500"])
    assert not failed["parsed"] and not failed["accuracy"]


def _run(label: str, case: Case, texts: list[str]) -> RunResult:
    scores = []
    for index, text in enumerate(texts):
        score = score_case(case, Generation(text=text, latency_s=0.5, completion_tokens=10))
        score.case_id = f"c{index}"
        scores.append(score)
    return RunResult(label=label, target=label, kind="gguf", parse_mode="strict", scores=scores, seconds=1.0)


def test_report_table_bolds_the_best_run_and_lists_worst_failures(triangle: Case, tmp_path: Path) -> None:
    base = _run("base", triangle, [BARE, BARE, GOOD, "no idea"])
    tuned = _run("tuned", triangle, [GOOD, GOOD, GOOD, '<tool_call>{"name": "nope", "arguments": {}}</tool_call>'])
    report = EvalReport(runs=[base, tuned], n_cases=4, settings={"max_tokens": 64})
    table = report.table_markdown()
    lines = {line.split(" | ")[0].strip("| "): line for line in table.splitlines()}
    assert lines["accuracy (AST)"].endswith("| 25.0% [5–70] (n=4) | **75.0% [30–95] (n=4)** |")
    assert "**" in lines["hallucinated tool name ↓"].split("|")[2]  # base hallucinated less: lower is better
    assert len(table.splitlines()) == 2 + len(METRICS) + 2
    failures = report.failures_markdown()
    assert failures.index("c3") < failures.index("### tuned")  # base's failures listed under base
    tuned_part = failures[failures.index("### tuned"):]
    assert "1 of 4 cases wrong" in tuned_part and "**c3**" in tuned_part and "wrong_func_name" in tuned_part
    assert "### base: 3 of 4 cases wrong" in failures
    written = report.write(tmp_path)
    assert [p.name for p in written] == ["report.json", "report.md", "report.png"]
    loaded = EvalReport.load(tmp_path / "report.json")
    assert loaded.table_markdown() == table
    assert json.loads((tmp_path / "report.json").read_text())["runs"][1]["metrics"]["accuracy"]["hits"] == 3


def test_compare_lists_metric_changes_and_flipped_cases(triangle: Case) -> None:
    before = EvalReport(runs=[_run("base", triangle, [BARE, GOOD, GOOD])], n_cases=3)
    after = EvalReport(runs=[_run("tuned", triangle, [GOOD, GOOD, "no"])], n_cases=3)
    text = compare(before, after)
    assert "| accuracy (AST) | base → tuned | 66.7% [21–94] (n=3) | 66.7% [21–94] (n=3) | +0.0 pts |" in text
    assert "1 now right, 1 now wrong" in text
    assert "now right: c0" in text and "now wrong: c2" in text


def test_call_turns_cut_by_the_token_budget_are_named(triangle: Case, irrelevant: Case, tmp_path: Path) -> None:
    """A wrong call turn that ended on max_tokens is named in the summary line, report.md and report.json: the
    budget, not the model, may have decided it (a second call with long arguments can outgrow it)."""
    def score(case: Case, text: str, finish: str, case_id: str):
        result = score_case(case, Generation(text=text, completion_tokens=64, finish_reason=finish))
        result.case_id = case_id
        return result

    truncated = '<tool_call>{"name": "calculate_triangle_area", "arguments": {"base": 10, "hei'
    scores = [score(triangle, truncated, "length", "cut"),
              score(triangle, GOOD, "length", "right-at-the-limit"),  # right anyway: nothing to name
              score(triangle, "no idea", "stop", "wrong"),  # wrong, but the model stopped by itself
              score(irrelevant, "a long text answer " * 9, "length", "rambling"),  # no call expected
              score(triangle, "Let me explain triangles " * 9, "length", "prose")]  # no call begun: its answer
    assert [s.cut_short for s in scores] == [True, False, False, False, False]
    run = RunResult(label="tuned", target="tuned", kind="gguf", parse_mode="strict", scores=scores)
    report = EvalReport(runs=[run], n_cases=5, settings={"max_tokens": 64})
    assert report.summary_line().endswith(", 1 wrong call turns cut at max_tokens 64")
    markdown = report.markdown()
    assert "Cut short:" in markdown
    assert "**tuned**: 1 call turns scored wrong ended at the max_tokens budget (64): cut" in markdown
    assert "**cut** (simple) — " in markdown and "(ended at max_tokens)" in markdown.split("**cut** (simple)")[1]
    report.write(tmp_path, plot=False)
    assert json.loads((tmp_path / "report.json").read_text())["runs"][0]["cut_short"] == ["cut"]
    clean = EvalReport(runs=[RunResult(label="t", target="t", kind="gguf", parse_mode="strict", scores=scores[1:])],
                       n_cases=4, settings={"max_tokens": 64})
    assert "cut" not in clean.summary_line() and "Cut short" not in clean.markdown()
