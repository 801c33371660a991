"""Score tool calls against expected answers by the Berkeley Function Calling Leaderboard's AST rules (Python flavour).

An *answer* is BFCL's ``possible_answer`` shape: one ``{function_name: {param: [allowed values...]}}`` per expected
call, where ``""`` among the allowed values marks an optional parameter the model may leave out. The rules, as BFCL
applies them to Python test categories:

* exactly the expected number of calls (``simple``/``multiple``: one); parallel calls match in any order, each
  expected call taking the first unmatched model call that satisfies it;
* the function name matches;
* every parameter the function marks ``required`` is present; no parameter outside the function's properties or the
  answer is present; a listed parameter without ``""`` among its values must be present;
* types follow the function's declared type exactly (``bool`` is not an ``int``), except that an ``int`` is accepted
  for ``float``; arrays check their items' type one level deep; a value of the answer's own type is accepted even when
  the declared type differs (BFCL's "variable" case);
* strings compare after removing spaces and ``,./-_*^``, lower-casing and turning ``'`` into ``"``; lists compare
  element-wise with the same normalisation of string items; dicts compare key by key against BFCL's nested
  ``{key: [values]}`` answers; anything else must equal one of the allowed values.

JSON-schema spellings used by real tool definitions (``number``, ``object``, unions like ``["string", "null"]``) are
mapped onto BFCL's names; a parameter without a declared type is not type-checked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from tooltune.conversation import ToolCall

Answer = dict[str, dict[str, list[Any]]]  # {function_name: {param: [allowed values]}}

# BFCL's Python type names, plus the JSON-schema names tool definitions use in practice.
TYPE_OF: dict[str, type] = {
    "string": str,
    "integer": int,
    "float": float,
    "number": float,
    "boolean": bool,
    "array": list,
    "tuple": list,
    "dict": dict,
    "object": dict,
    "any": str,
}
LIST_TYPES = ("array", "tuple")
OPTIONAL = ""
_STRING_NOISE = re.compile(r"[ ,./\-_*^]")


@dataclass(frozen=True)
class Verdict:
    ok: bool
    error_type: str = ""  # e.g. "wrong_count", "wrong_func_name", "missing_required", "type_error", "value_error"
    message: str = ""

    def __bool__(self) -> bool:
        return self.ok


PASS = Verdict(True)


def normalize_string(text: str) -> str:
    """BFCL's string normalisation: "April 1, 2024" and "april 1 2024" compare equal."""
    return _STRING_NOISE.sub("", text).lower().replace("'", '"')


def _normalize_items(values: list[Any]) -> list[Any]:
    return [normalize_string(v) if isinstance(v, str) else v for v in values]


def _declared_type(schema: dict[str, Any]) -> str | None:
    declared = schema.get("type")
    if isinstance(declared, list):  # JSON-schema union: check against the first non-null member
        declared = next((t for t in declared if t != "null"), None)
    return declared if isinstance(declared, str) and declared in TYPE_OF else None


def _answer_type(allowed: list[Any]) -> type | None:
    """The type of the first non-optional allowed value (BFCL uses it to recognise variables passed as strings)."""
    for value in allowed:
        if value != OPTIONAL:
            return type(value)
    return None


def _check_type(param: str, value: Any, allowed: list[Any], declared: str, item_declared: str | None) -> Verdict:
    """A failing Verdict, or a pass; a pass on the answer's type instead of the declared one has error_type "variable"
    (BFCL then compares the value exactly instead of by the type's rules)."""
    expected = TYPE_OF[declared]
    answer_type = _answer_type(allowed)
    is_variable = answer_type is not None and answer_type is not expected
    if type(value) is expected:
        if item_declared is None:
            return Verdict(True, "variable" if is_variable else "")
        item_type = TYPE_OF[item_declared]
        for candidate in allowed:
            # A non-list allowed value (the optional marker) does not constrain the items, as in BFCL.
            if not isinstance(candidate, list) or all(_item_type_ok(item, candidate, item_type) for item in value):
                return Verdict(True, "variable" if is_variable else "")
        return Verdict(False, "type_error", f"{param!r}: items of {value!r} are not all {item_declared}")
    if answer_type is not None and type(value) is answer_type:
        return Verdict(True, "variable")
    return Verdict(False, "type_error", f"{param!r}: expected {declared}, got {type(value).__name__} ({value!r})")


def _item_type_ok(item: Any, candidate: list[Any], item_type: type) -> bool:
    """One level of item checking; no int-to-float allowance inside arrays (BFCL has none either)."""
    answer_type = _answer_type(candidate)
    return type(item) is item_type or (answer_type is not None and type(item) is answer_type)


def _check_dict(param: str, value: dict[str, Any], allowed: list[Any]) -> Verdict:
    failure = Verdict(False, "value_error", f"{param!r}: {value!r} matches none of {allowed!r}")
    for candidate in allowed:
        if candidate == OPTIONAL or not isinstance(candidate, dict):
            continue
        matched = True
        for key, item in value.items():
            options = candidate.get(key)
            if options is None:
                failure = Verdict(False, "value_error", f"{param!r}: unexpected key {key!r}")
                matched = False
                break
            probe = normalize_string(item) if isinstance(item, str) else item
            if probe not in _normalize_items(list(options)):
                failure = Verdict(False, "value_error", f"{param!r}.{key}: {item!r} not in {options!r}")
                matched = False
                break
        if matched:
            missing = [k for k, options in candidate.items() if k not in value and OPTIONAL not in options]
            if not missing:
                return PASS
            failure = Verdict(False, "value_error", f"{param!r}: missing key {missing[0]!r}")
    return failure


def _check_list_of_dicts(param: str, value: list[Any], allowed: list[Any]) -> Verdict:
    failure = Verdict(False, "value_error", f"{param!r}: {value!r} matches none of {allowed!r}")
    for candidate in allowed:
        if not isinstance(candidate, list):
            continue
        if len(candidate) != len(value):
            failure = Verdict(False, "value_error", f"{param!r}: expected {len(candidate)} items, got {len(value)}")
            continue
        verdicts = [_check_dict(param, item, [want]) for item, want in zip(value, candidate, strict=True)]
        failed = next((v for v in verdicts if not v.ok), None)
        if failed is None:
            return PASS
        failure = failed
    return failure


def _check_value(param: str, value: Any, allowed: list[Any], schema: dict[str, Any]) -> Verdict:
    declared = _declared_type(schema)
    item_declared = None
    if declared in LIST_TYPES:
        items = schema.get("items")
        item_declared = _declared_type(items) if isinstance(items, dict) else None
    if declared in ("float", "number") and type(value) is int:
        value = float(value)  # Python would convert an int passed for a float
    is_variable = False
    if declared is not None:
        typed = _check_type(param, value, allowed, declared, item_declared)
        if not typed.ok:
            return typed
        is_variable = typed.error_type == "variable"
    if not is_variable:
        if isinstance(value, dict):
            return _check_dict(param, value, allowed)
        if isinstance(value, list) and item_declared in ("dict", "object"):
            return _check_list_of_dicts(param, value, allowed)
        if isinstance(value, str):
            if normalize_string(value) in [normalize_string(a) for a in allowed if isinstance(a, str)]:
                return PASS
            return Verdict(False, "value_error", f"{param!r}: {value!r} not in {allowed!r}")
        if isinstance(value, list):
            if _normalize_items(value) in [_normalize_items(a) for a in allowed if isinstance(a, list)]:
                return PASS
            return Verdict(False, "value_error", f"{param!r}: {value!r} not in {allowed!r}")
    if value in allowed:
        return PASS
    return Verdict(False, "value_error", f"{param!r}: {value!r} not in {allowed!r}")


def check_call(function: dict[str, Any] | None, call: ToolCall, answer: Answer) -> Verdict:
    """One model call against one expected answer, given the function's definition (bare: name/parameters)."""
    expected_name, allowed_by_param = next(iter(answer.items()))
    if call.name != expected_name:
        return Verdict(False, "wrong_func_name", f"called {call.name!r}, expected {expected_name!r}")
    parameters = (function or {}).get("parameters") or {}
    properties: dict[str, Any] = parameters.get("properties") or {} if isinstance(parameters, dict) else {}
    required: list[str] = parameters.get("required") or [] if isinstance(parameters, dict) else []
    arguments = call.arguments
    for param in required:
        if param not in arguments:
            return Verdict(False, "missing_required", f"missing required parameter {param!r}")
    for param, value in arguments.items():
        if param not in allowed_by_param or (properties and param not in properties):
            return Verdict(False, "unexpected_param", f"unexpected parameter {param!r}")
        schema = properties.get(param)
        verdict = _check_value(param, value, allowed_by_param[param], schema if isinstance(schema, dict) else {})
        if not verdict.ok:
            return verdict
    for param, allowed in allowed_by_param.items():
        if param not in arguments and OPTIONAL not in allowed:
            return Verdict(False, "missing_optional", f"parameter {param!r} is expected but missing")
    return PASS


def check_calls(functions: list[dict[str, Any]], calls: list[ToolCall], answers: list[Answer]) -> Verdict:
    """All model calls against all expected answers; an empty ``answers`` means "no call expected"."""
    if not answers:
        if calls:
            return Verdict(False, "unexpected_call", f"expected no call, got {', '.join(c.name for c in calls)}")
        return PASS
    if len(calls) != len(answers):
        return Verdict(False, "wrong_count", f"expected {len(answers)} call(s), got {len(calls)}")
    by_name = {f.get("name"): f for f in functions}
    matched: set[int] = set()
    for answer in answers:
        function = by_name.get(next(iter(answer)))
        last = Verdict(False, "wrong_func_name", "no call left to match")
        for index, call in enumerate(calls):
            if index in matched:
                continue
            last = check_call(function, call, answer)
            if last.ok:
                matched.add(index)
                break
        if not last.ok:
            return last
    return PASS


def answer_from_call(call: ToolCall, function: dict[str, Any] | None) -> Answer:
    """A BFCL-style answer from a known-good call (dataset cases): each given value is the only allowed value, and an
    optional parameter the call leaves out may be omitted or set to its schema ``default``."""
    allowed: dict[str, list[Any]] = {}
    for param, value in call.arguments.items():
        allowed[param] = [_answer_value(value)]
    parameters = (function or {}).get("parameters")
    properties = parameters.get("properties") if isinstance(parameters, dict) else None
    required = set(parameters.get("required") or []) if isinstance(parameters, dict) else set()
    if isinstance(properties, dict):
        for param, schema in properties.items():
            if param in allowed or param in required:
                continue
            if isinstance(schema, dict) and "default" in schema:
                allowed[param] = [OPTIONAL, schema["default"]]
    return {call.name: allowed}


def _answer_value(value: Any) -> Any:
    """Nested dicts become BFCL's ``{key: [value]}`` form so the dict rules apply one level down."""
    if isinstance(value, dict):
        return {k: [v] for k, v in value.items()}
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return [{k: [v] for k, v in item.items()} for item in value]
    return value


def exact_match(calls: list[ToolCall], expected: list[ToolCall]) -> bool:
    """Same calls with identical arguments, in any order (no normalisation at all)."""
    if len(calls) != len(expected):
        return False
    remaining = [(c.name, c.arguments) for c in expected]
    for call in calls:
        key = (call.name, call.arguments)
        if key not in remaining:
            return False
        remaining.remove(key)
    return True
