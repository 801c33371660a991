"""Verification of every generated sample, whichever generator wrote it.

A sample is kept only if its turns alternate as LLaMA-Factory requires, every call names a tool on offer, every call's
arguments pass the tool's JSON schema (``jsonschema``: required, types, enums, no unknown arguments), and — with
``grounding: strict`` — every string argument is an enum value or appears in a user turn before the call. Otherwise it
is rejected with one of the reasons below and its detail; nothing is dropped without a reason.
"""

from __future__ import annotations

import functools
import json
import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from jsonschema import Draft202012Validator

from tooltune.synth.pools import PARALLEL_JOIN
from tooltune.synth.spec import SynthSpec

REASONS = {
    "malformed": "turns do not alternate user/assistant, or a call/result is not JSON",
    "unknown_tool": "a call names a tool that is not on offer",
    "missing_required": "a required argument is missing",
    "wrong_type": "an argument has the wrong JSON type",
    "not_in_enum": "an argument value is not one of its enum values",
    "unknown_argument": "an argument the tool does not take",
    "schema": "the arguments break another rule of the tool's schema",
    "ungrounded": "a string argument appears in no user turn before the call (and is no enum value)",
    "duplicate": "same turns as a kept sample (ignoring case, spaces and punctuation)",
    "test_overlap": "shares a user utterance with the held-out test split",
    "generation": "the generator could not fill the sample",
}
_SCHEMA_REASON = {"required": "missing_required", "type": "wrong_type", "enum": "not_in_enum",
                  "additionalProperties": "unknown_argument"}
_USER_SIDE = ("human", "observation")
_ASSISTANT_SIDE = ("gpt", "function_call")


@dataclass(frozen=True)
class Rejection:
    reason: str
    detail: str


class Verifier:
    def __init__(self, spec: SynthSpec) -> None:
        self.validators = {t.name: Draft202012Validator(t.schema) for t in spec.tools}
        self.enums = {t.name: {arg: set(map(str, p.get("enum", []))) for arg, p in t.schema["properties"].items()}
                      for t in spec.tools}
        self.grounding = spec.grounding
        self._valid: set[tuple[str, str]] = set()  # argument sets already found valid (generators repeat them)

    def check(self, record: dict[str, Any]) -> Rejection | None:
        turns = record.get("conversations")
        if not isinstance(turns, list) or len(turns) < 2:
            return Rejection("malformed", "fewer than two turns")
        offered = _offered_names(record.get("tools"))
        heard: list[str] = []
        for position, turn in enumerate(turns):
            role, value = (turn.get("from"), turn.get("value")) if isinstance(turn, dict) else (None, None)
            side = _USER_SIDE if position % 2 == 0 else _ASSISTANT_SIDE
            if role not in side or not isinstance(value, str) or not value.strip():
                return Rejection("malformed", f"turn {position}: {role!r} where {' or '.join(side)} with text belongs")
            if role == "observation" and turns[position - 1].get("from") != "function_call":
                return Rejection("malformed", f"turn {position}: a result that follows no call")
            if role == "human":
                heard.append(value)
            elif role == "function_call":
                problem = self._check_calls(value, position, heard, offered)
                if problem is not None:
                    return problem
        if turns[-1].get("from") not in _ASSISTANT_SIDE:
            return Rejection("malformed", "the last turn is not the assistant's")
        return None

    def _check_calls(self, value: str, position: int, heard: list[str], offered: set[str] | None,
                     ) -> Rejection | None:
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as exc:
            return Rejection("malformed", f"turn {position}: call is not JSON ({exc.msg})")
        calls = parsed if isinstance(parsed, list) else [parsed]
        for call in calls:
            if not isinstance(call, dict) or not isinstance(call.get("name"), str):
                return Rejection("malformed", f"turn {position}: a call without a name")
            name, arguments = call["name"], call.get("arguments", {})
            validator = self.validators.get(name)
            if validator is None or (offered is not None and name not in offered):
                return Rejection("unknown_tool",
                                 f"turn {position}: {name!r} is not one of {', '.join(offered or self.validators)}")
            verdict_key = (name, json.dumps(arguments, sort_keys=True))
            if verdict_key in self._valid:
                errors = []
            else:
                errors = sorted(validator.iter_errors(arguments), key=lambda e: (list(e.path), e.validator))
                if not errors:
                    self._valid.add(verdict_key)
            if errors:
                error = errors[0]
                where = "/".join(str(p) for p in error.path) or "arguments"
                return Rejection(_SCHEMA_REASON.get(str(error.validator), "schema"),
                                 f"turn {position}: {name}.{where}: {error.message}")
            if self.grounding == "strict":
                for arg, arg_value in arguments.items():
                    if isinstance(arg_value, str) and arg_value not in self.enums[name].get(arg, ()) \
                            and not any(arg_value in text for text in heard):
                        return Rejection("ungrounded", f"turn {position}: {name}.{arg}={arg_value!r} is said by no "
                                                       f"user turn before it")
        return None


def _noise_table() -> dict[int, None]:
    """Every whitespace, punctuation and symbol character of the Basic Multilingual Plane, to delete in one pass."""
    return {code: None for code in range(0x10000)
            if unicodedata.category(chr(code))[0] in "PSZ" or chr(code).isspace()}


_NOISE = _noise_table()


def _offered_names(tools: Any) -> set[str] | None:
    """Names of the tools a sample offers (None when it names none: then every spec tool counts as offered)."""
    if tools is None:
        return None
    if isinstance(tools, str):
        return _offered_names_of_text(tools)
    return _parse_offered(tools)


@functools.lru_cache(maxsize=256)
def _offered_names_of_text(tools: str) -> set[str]:
    return _parse_offered(tools)


def _parse_offered(tools: Any) -> set[str]:
    try:
        parsed = json.loads(tools) if isinstance(tools, str) else tools
    except json.JSONDecodeError:
        return set()
    if not isinstance(parsed, list):
        return set()
    names = set()
    for tool in parsed:
        body = tool.get("function", tool) if isinstance(tool, dict) else None
        if isinstance(body, dict) and isinstance(body.get("name"), str):
            names.add(body["name"])
    return names


def normalise(text: str) -> str:
    """Lower case, no whitespace, no punctuation or symbols: what makes two utterances near-duplicates."""
    return text.lower().translate(_NOISE)


def dedup_key(record: dict[str, Any]) -> str:
    """Every turn, normalised: two samples with the same key teach the same thing."""
    parts = [normalise(t["value"]) for t in record["conversations"]]
    return "\x1f".join(parts)


# The joiners of a parallel request (``A，另外B``), longest first so one never splits another.
_REQUEST_JOIN = re.compile("|".join(re.escape(j) for j in sorted(PARALLEL_JOIN.values(), key=len, reverse=True)))


def user_utterances(record: dict[str, Any]) -> set[str]:
    return {normalise(t["value"]) for t in record["conversations"] if t["from"] == "human"}


def user_requests(record: dict[str, Any]) -> set[str]:
    """The user's utterances and each request that a parallel turn joins: ``苏州现在下雨吗，另外开始保温`` also asks
    ``开始保温``, so training on it would teach a held-out single call of those words (and the reverse)."""
    requests = user_utterances(record)
    for turn in record["conversations"]:
        if turn["from"] == "human":  # a turn with no joiner splits into itself, already counted above
            requests.update(said for part in _REQUEST_JOIN.split(turn["value"]) if (said := normalise(part)))
    return requests
