"""BFCL AST rules, case by case, on real BFCL v4 records (tests/fixtures/bfcl, Apache-2.0) and a few made-up ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tooltune.conversation import ToolCall
from tooltune.eval.ast_match import answer_from_call, check_call, check_calls, exact_match, normalize_string

BFCL = Path(__file__).parent / "fixtures" / "bfcl"


def _records(path: Path) -> dict[str, dict]:
    return {r["id"]: r for r in map(json.loads, path.read_text().splitlines())}


QUESTIONS = _records(BFCL / "BFCL_v4_simple_python.json")
ANSWERS = _records(BFCL / "possible_answer" / "BFCL_v4_simple_python.json")
IRRELEVANCE = _records(BFCL / "BFCL_v4_irrelevance.json")


def bfcl(case_id: str) -> tuple[dict, dict]:
    return QUESTIONS[case_id]["function"][0], ANSWERS[case_id]["ground_truth"][0]


# (BFCL record, called function, arguments, expected error_type or "" for a pass)
BFCL_TABLE = [
    # simple_python_0: "unit": ["units", ""] — optional, and when given must be "units"
    ("simple_python_0", "calculate_triangle_area", {"base": 10, "height": 5}, ""),
    ("simple_python_0", "calculate_triangle_area", {"base": 10, "height": 5, "unit": "units"}, ""),
    ("simple_python_0", "calculate_triangle_area", {"base": 10, "height": 5, "unit": "Units"}, ""),
    ("simple_python_0", "calculate_triangle_area", {"base": 10, "height": 5, "unit": "cm"}, "value_error"),
    ("simple_python_0", "calculate_triangle_area", {"base": 10}, "missing_required"),
    ("simple_python_0", "calculate_triangle_area", {"base": 10, "height": 5, "color": "red"}, "unexpected_param"),
    ("simple_python_0", "calculate_triangle_area", {"base": 10.0, "height": 5}, "type_error"),
    ("simple_python_0", "calculate_triangle_area", {"base": "10", "height": 5}, "type_error"),
    ("simple_python_0", "calculate_triangle_area", {"base": True, "height": 5}, "type_error"),  # bool is not int
    ("simple_python_0", "calculate_triangle_area", {"base": 11, "height": 5}, "value_error"),
    ("simple_python_0", "triangle_area", {"base": 10, "height": 5}, "wrong_func_name"),
    # simple_python_2: "z": ["", 0] — may be omitted, or given as its default 0
    ("simple_python_2", "math.hypot", {"x": 4, "y": 5}, ""),
    ("simple_python_2", "math.hypot", {"x": 4, "y": 5, "z": 0}, ""),
    ("simple_python_2", "math.hypot", {"x": 4, "y": 5, "z": 1}, "value_error"),
    ("simple_python_2", "math_hypot", {"x": 4, "y": 5}, "wrong_func_name"),
    # simple_python_7: "unit": ["inches", "in"] — allowed values, and not optional
    ("simple_python_7", "calculate_circumference", {"radius": 4, "unit": "inches"}, ""),
    ("simple_python_7", "calculate_circumference", {"radius": 4, "unit": "in"}, ""),
    ("simple_python_7", "calculate_circumference", {"radius": 4, "unit": "IN"}, ""),
    ("simple_python_7", "calculate_circumference", {"radius": 4, "unit": "cm"}, "value_error"),
    ("simple_python_7", "calculate_circumference", {"radius": 4}, "missing_optional"),
    # simple_python_13: several accepted strings, an array of floats, string normalisation
    ("simple_python_13", "calculate_area_under_curve", {"function": "x**2", "interval": [1.0, 3.0]}, ""),
    ("simple_python_13", "calculate_area_under_curve", {"function": "lambda x: x**2", "interval": [1.0, 3.0]}, ""),
    ("simple_python_13", "calculate_area_under_curve", {"function": "X ** 2", "interval": [1.0, 3.0]}, ""),
    # BFCL's normalisation drops "^" and "*": "x^2" equals "x**2"
    ("simple_python_13", "calculate_area_under_curve", {"function": "x^2", "interval": [1.0, 3.0]}, ""),
    ("simple_python_13", "calculate_area_under_curve",
     {"function": "x**2", "interval": [1.0, 3.0], "method": "Trapezoidal"}, ""),  # fmt: skip
    ("simple_python_13", "calculate_area_under_curve", {"function": "x**2", "interval": [1, 3]}, "type_error"),
    ("simple_python_13", "calculate_area_under_curve", {"function": "x**2", "interval": [3.0, 1.0]}, "value_error"),
    ("simple_python_13", "calculate_area_under_curve", {"function": "x**3", "interval": [1.0, 3.0]}, "value_error"),
    ("simple_python_13", "calculate_area_under_curve", {"function": "x**2", "interval": "1-3"}, "type_error"),
    # simple_python_17: "formatted" is required by the function even though the answer lists "" for it
    ("simple_python_17", "get_prime_factors", {"number": 450, "formatted": True}, ""),
    ("simple_python_17", "get_prime_factors", {"number": 450}, "missing_required"),
    ("simple_python_17", "get_prime_factors", {"number": 450, "formatted": "true"}, "type_error"),
    ("simple_python_17", "get_prime_factors", {"number": 450, "formatted": False}, "value_error"),
]


@pytest.mark.parametrize(("record", "name", "arguments", "error"), BFCL_TABLE,
                         ids=[f"{r}-{i}" for i, (r, *_rest) in enumerate(BFCL_TABLE)])  # fmt: skip
def test_bfcl_single_call_rules(record: str, name: str, arguments: dict, error: str) -> None:
    function, answer = bfcl(record)
    verdict = check_call(function, ToolCall(name=name, arguments=arguments), answer)
    assert verdict.ok == (error == ""), verdict
    assert verdict.error_type == error, verdict


def test_int_is_accepted_for_float_and_for_json_schema_number() -> None:
    function = IRRELEVANCE["irrelevance_0"]["function"][0]  # weight/height declared "float"
    answer = {"determine_body_mass_index": {"weight": [70.0], "height": [2.0]}}
    assert check_call(function, ToolCall("determine_body_mass_index", {"weight": 70, "height": 2}), answer)
    schema_fn = {"name": "f", "parameters": {"type": "object", "properties": {"x": {"type": "number"}}}}
    assert check_call(schema_fn, ToolCall("f", {"x": 3}), {"f": {"x": [3.0]}})
    assert not check_call(schema_fn, ToolCall("f", {"x": "3"}), {"f": {"x": [3.0]}})


DICT_FN = {
    "name": "db_fetch_records",
    "parameters": {
        "type": "dict",
        "properties": {"conditions": {"type": "dict"}, "rows": {"type": "array", "items": {"type": "dict"}}},
        "required": [],
    },
}
# Answer shapes as in BFCL simple_python_89 (dict) and simple_python_96 (list of dicts).
SCHOOLS = ["Bluebird High School", "Bluebird HS"]
DICT_ANSWER = {"db_fetch_records": {"conditions": [{"department": ["Science"], "school": SCHOOLS}]}}
ROWS_ANSWER = {
    "db_fetch_records": {
        "rows": [[{"field": ["age"], "operation": [">"], "value": ["25"]}, {"field": ["job"], "value": ["engineer"]}]]
    }
}


@pytest.mark.parametrize(
    ("arguments", "answer", "ok"),
    [
        ({"conditions": {"department": "science", "school": "Bluebird HS"}}, DICT_ANSWER, True),
        ({"conditions": {"department": "Science", "school": "Bluebird High-School"}}, DICT_ANSWER, True),
        ({"conditions": {"department": "Science"}}, DICT_ANSWER, False),  # missing key
        ({"conditions": {"department": "Science", "school": "Bluebird HS", "x": 1}}, DICT_ANSWER, False),
        ({"conditions": {"department": "Arts", "school": "Bluebird HS"}}, DICT_ANSWER, False),
        ({"rows": [{"field": "age", "operation": ">", "value": "25"}, {"field": "job", "value": "engineer"}]},
         ROWS_ANSWER, True),
        ({"rows": [{"field": "job", "value": "engineer"}, {"field": "age", "operation": ">", "value": "25"}]},
         ROWS_ANSWER, False),  # order of a list matters
        ({"rows": [{"field": "age", "operation": ">", "value": "25"}]}, ROWS_ANSWER, False),
    ],
)  # fmt: skip
def test_dict_and_list_of_dict_rules(arguments: dict, answer: dict, ok: bool) -> None:
    assert check_call(DICT_FN, ToolCall("db_fetch_records", arguments), answer).ok is ok


def test_parallel_calls_match_in_any_order() -> None:
    function, _ = bfcl("simple_python_2")
    answers = [{"math.hypot": {"x": [3], "y": [4]}}, {"math.hypot": {"x": [5], "y": [12]}}]
    a, b = ToolCall("math.hypot", {"x": 3, "y": 4}), ToolCall("math.hypot", {"x": 5, "y": 12})
    assert check_calls([function], [a, b], answers)
    assert check_calls([function], [b, a], answers)
    assert check_calls([function], [a], answers).error_type == "wrong_count"
    assert check_calls([function], [a, a], answers).error_type == "value_error"
    assert check_calls([function], [a, b, b], answers).error_type == "wrong_count"


def test_no_call_expected() -> None:
    functions = IRRELEVANCE["irrelevance_12"]["function"]
    assert check_calls(functions, [], [])
    verdict = check_calls(functions, [ToolCall("prime_numbers_in_range", {"start": 1, "end": 9})], [])
    assert verdict.error_type == "unexpected_call"


def test_bfcl_string_normalisation() -> None:
    assert normalize_string("April 1, 2024") == normalize_string("april 1 2024")
    assert normalize_string("New-York_City.") == "newyorkcity"
    assert normalize_string("it's") == 'it"s'


def test_answer_from_a_dataset_call_allows_omitting_defaulted_optionals() -> None:
    function = {
        "name": "convert",
        "parameters": {
            "type": "object",
            "properties": {
                "amount": {"type": "number"},
                "to": {"type": "string"},
                "rounding": {"type": "integer", "default": 2},
                "note": {"type": "string"},
            },
            "required": ["amount", "to"],
        },
    }
    answer = answer_from_call(ToolCall("convert", {"amount": 10, "to": "EUR"}), function)
    assert answer == {"convert": {"amount": [10], "to": ["EUR"], "rounding": ["", 2]}}
    assert check_call(function, ToolCall("convert", {"amount": 10.0, "to": "eur"}), answer)
    assert check_call(function, ToolCall("convert", {"amount": 10, "to": "EUR", "rounding": 2}), answer)
    assert not check_call(function, ToolCall("convert", {"amount": 10, "to": "EUR", "rounding": 3}), answer)
    assert not check_call(function, ToolCall("convert", {"amount": 10, "to": "EUR", "note": "x"}), answer)


def test_exact_match_is_order_free_and_unnormalised() -> None:
    a, b = ToolCall("f", {"x": "Paris"}), ToolCall("g", {"y": [1, 2]})
    assert exact_match([b, a], [a, b])
    assert not exact_match([ToolCall("f", {"x": "paris"}), b], [a, b])
    assert not exact_match([a], [a, b])
