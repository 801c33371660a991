"""Limits checked in Python before a request reaches native code.

llama.cpp's grammar compiler expands a bounded repetition (``maxLength: 50000``, ``a{50000}``) into a chain of
nested rules and walks it recursively: a large enough bound overflows a native stack and kills the process. Python's
``json`` parser raises ``RecursionError`` on deeply nested bodies, and a lone UTF-16 surrogate (``"\\ud800"``) parses
fine but cannot be encoded again. So a body is decoded strictly, its nesting bounded, every string checked, and every
schema that will become a grammar measured (size, depth, repetition bounds) — each failure a 400 naming the limit.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from tooltune.errors import TooltuneError


class LimitError(TooltuneError, ValueError):
    """A request over one of the limits below; the message names the field, the limit and its setting."""


@dataclass(frozen=True)
class RequestLimits:
    max_json_depth: int = 64  # nesting of the request body (objects and arrays)
    max_schema_bytes: int = 64 * 1024  # a schema that becomes a grammar, as compact JSON
    max_schema_depth: int = 32  # nesting of subschemas in such a schema
    # minLength/maxLength/minItems/maxItems/min-maxProperties and regex {n,m} quantifiers: each becomes that many
    # nested groups in the GBNF text, which llama.cpp's recursive parser descends (maxLength 20000 overflows its
    # stack: SIGSEGV; 2048 it refuses itself; 1000 compiles).
    max_schema_repeat: int = 1000


# Schema keywords whose integer value becomes a repetition count in llama.cpp's json_schema_to_grammar.
_REPEAT_KEYWORDS = ("minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties")
_QUANTIFIER = re.compile(r"\{\s*(\d+)\s*(?:,\s*(\d*)\s*)?\}")
_SURROGATE = re.compile("[\ud800-\udfff]")


def decode_body(body: bytes, limits: RequestLimits) -> Any:
    """Parse a request body: strict UTF-8, bounded nesting, no lone surrogates in any string or key."""
    try:
        text = body.decode("utf-8")  # strict: invalid bytes and UTF-8-encoded surrogates are errors
    except UnicodeDecodeError as exc:
        raise LimitError(f"request body is not valid UTF-8 (byte {exc.start}: {exc.reason})") from exc
    try:
        value = json.loads(text)
    except RecursionError as exc:  # the C parser's own guard (~1000 levels); the walk below sets the real limit
        raise LimitError(f"request JSON is nested deeper than the limit of {limits.max_json_depth} levels") from exc
    except json.JSONDecodeError as exc:
        raise LimitError(f"invalid JSON body: {exc}") from exc
    check_strings(value, "body", max_depth=limits.max_json_depth)
    return value


def check_strings(value: Any, where: str, max_depth: int | None = None) -> None:
    """Every string and key must be encodable text (a lone surrogate is a 400 naming where it is); nesting is
    bounded by ``max_depth``. Iterative, so no input can exhaust Python's recursion limit here."""
    # Each entry carries a linked trail (parent trail, key) so a path string is only built for an error.
    stack: list[tuple[Any, Any, int]] = [(value, None, 0)]
    while stack:
        item, trail, depth = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                raise LimitError(f"{_path(where, trail)}: contains a lone UTF-16 surrogate (not valid Unicode text)")
            continue
        if not isinstance(item, (dict, list)):
            continue
        if max_depth is not None and depth >= max_depth:
            raise LimitError(f"request JSON is nested deeper than the limit of {max_depth} levels")
        if isinstance(item, dict):
            for key, child in item.items():
                if _SURROGATE.search(key):
                    raise LimitError(f"{_path(where, trail)}: a key contains a lone UTF-16 surrogate "
                                     "(not valid Unicode text)")
                stack.append((child, (trail, key), depth + 1))
        else:
            stack.extend((child, (trail, i), depth + 1) for i, child in enumerate(item))


def _path(where: str, trail: Any) -> str:
    keys = []
    while trail is not None:
        trail, key = trail
        keys.append(key)
    path = where if where != "body" else ""
    for key in reversed(keys):
        path += f"[{key}]" if isinstance(key, int) else (f".{key}" if path else key)
    return path or where


def check_text(value: str, where: str) -> None:
    """Strictly valid text (used for URL path parameters such as a model name)."""
    if _SURROGATE.search(value) or "\ufffd" in value:
        raise LimitError(f"{where}: not valid UTF-8 text")


def check_schema(schema: Any, where: str, limits: RequestLimits) -> None:
    """Size, depth and repetition bounds of a schema that is about to become a llama.cpp grammar."""
    size = len(json.dumps(schema, ensure_ascii=False))
    if size > limits.max_schema_bytes:
        raise LimitError(f"{where}: schema is {size} bytes; the limit is {limits.max_schema_bytes} "
                         f"(--max-schema-bytes)")
    stack: list[tuple[Any, int, str]] = [(schema, 0, where)]
    while stack:
        node, depth, path = stack.pop()
        if isinstance(node, list):
            stack.extend((child, depth, f"{path}[{i}]") for i, child in enumerate(node))
            continue
        if not isinstance(node, dict):
            continue
        if depth > limits.max_schema_depth:
            raise LimitError(f"{path}: schema is nested deeper than {limits.max_schema_depth} levels "
                             f"(--max-schema-depth)")
        for keyword in _REPEAT_KEYWORDS:
            bound = node.get(keyword)
            if isinstance(bound, (int, float)) and not isinstance(bound, bool) and bound > limits.max_schema_repeat:
                raise LimitError(f"{path}.{keyword}: {bound} is above the limit of {limits.max_schema_repeat} "
                                 f"(--max-schema-repeat)")
        pattern = node.get("pattern")
        if isinstance(pattern, str):
            _check_pattern(pattern, f"{path}.pattern", limits)
        for key, child in node.items():
            if key in ("enum", "const", "default", "examples", "required"):
                continue  # data, not subschemas
            stack.append((child, depth + 1, f"{path}.{key}"))


def _check_pattern(pattern: str, where: str, limits: RequestLimits) -> None:
    """A regex becomes nested GBNF groups: bound its group nesting and its repetition counts (summed, since nested
    quantifiers nest their expansions)."""
    total = 0
    for match in _QUANTIFIER.finditer(pattern):
        total += max(int(n) for n in match.groups() if n)
        if total > limits.max_schema_repeat:
            raise LimitError(f"{where}: repetition {match.group(0)} brings the pattern's repetitions to {total}, above "
                             f"the limit of {limits.max_schema_repeat} (--max-schema-repeat)")
    depth = deepest = 0
    escaped = False
    for char in pattern:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif char == ")":
            depth -= 1
    if deepest > limits.max_schema_depth:
        raise LimitError(f"{where}: groups are nested {deepest} deep, above the limit of {limits.max_schema_depth} "
                         f"(--max-schema-depth)")
