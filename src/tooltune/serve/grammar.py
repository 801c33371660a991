"""GBNF grammars that make llama.cpp's output valid by construction.

* ``tool_choice: "required"`` or a named function: the output must be one (or, with ``parallel_tool_calls``, several)
  calls in the layout the family trains (``families.respond.forced_call``: Hermes ``<tool_call>`` blocks, Llama 3.2's
  bare object with ``parameters``, Mistral's / Phi-4-mini's JSON list after their marker), whose ``name`` is one of
  the offered tools and whose arguments follow that tool's JSON schema.
* Ollama ``format: "json"`` / OpenAI ``response_format: json_object``: any JSON object.
* ``format: {schema}`` / ``response_format: json_schema``: that schema.

Schemas become GBNF through llama-cpp-python's converter (the port of llama.cpp's ``json_schema_to_grammar``).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import re
from pathlib import Path
from typing import Any

from tooltune.conversation import ConversationError, Tool
from tooltune.errors import TooltuneError
from tooltune.toolcalls import CLOSE_TAG, OPEN_TAG


class GrammarError(TooltuneError, ValueError):
    """A schema or tool list that cannot be turned into a grammar (a client error)."""


@functools.cache
def _converter() -> Any:
    """llama-cpp-python's ``llama_grammar`` module, loaded from its file without importing the ``llama_cpp``
    package: the package's ``__init__`` loads libllama, which the server process must never do (the model lives in
    the runner process). The module itself is pure Python (stdlib imports only)."""
    spec = importlib.util.find_spec("llama_cpp")  # finds the package without executing it
    if spec is None or not spec.submodule_search_locations:
        raise GrammarError("grammars need llama-cpp-python: pip install llama-cpp-python")
    path = Path(next(iter(spec.submodule_search_locations))) / "llama_grammar.py"
    module_spec = importlib.util.spec_from_file_location("tooltune._llama_grammar", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def schema_to_gbnf(schema: dict[str, Any], rule: str = "root", prop_order: list[str] | None = None) -> str:
    """GBNF for a JSON schema, with its start rule named ``rule``."""
    json_schema_to_gbnf = _converter().json_schema_to_gbnf
    try:
        grammar = json_schema_to_gbnf(json.dumps(schema), prop_order=prop_order)
    except Exception as exc:  # the converter raises ValueError/KeyError/TypeError on schemas it cannot express
        raise GrammarError(f"unsupported JSON schema: {exc}") from exc
    if rule != "root":
        grammar = re.sub(r"^root ::=", f"{rule} ::=", grammar, flags=re.MULTILINE)
    return _strict_json_strings(grammar)


# llama-cpp-python's converter lets a string character be anything but '"' and '\\', so a sampled string may hold a raw
# newline or other control character, which JSON forbids: the "valid by construction" output then fails every JSON
# parser (a forced tool call came back as text). llama.cpp's own converter excludes them; so do we.
_LOOSE_CHAR = re.compile(r'^((?:char|[\w-]*-char) ::= )\[\^"\\\\\]', re.MULTILINE)
_STRICT_CHAR = '[^"\\\\\\x7F\\x00-\\x1F]'


def _strict_json_strings(grammar: str) -> str:
    return _LOOSE_CHAR.sub(lambda m: m.group(1) + _STRICT_CHAR, grammar)


def json_object_grammar() -> str:
    return schema_to_gbnf({"type": "object"})


def tool_call_grammar(tools: list[Tool], only: str | None = None, parallel: bool = True,
                      tagged: bool = True, arguments_key: str = "arguments", listed: bool = False,
                      opened: bool = False) -> str:
    """Grammar for one call (or several, separated as the Qwen template separates them) of the given tools.

    ``arguments_key``: the key the family's calls hold their arguments under (Llama 3.2 trains ``parameters``);
    ``listed``: the calls are one JSON list (Mistral's ``[TOOL_CALLS] [...]``, Phi-4-mini's ``<|tool_call|>[...]``);
    ``opened``: the model has written the call opener already (``<tool_call>``, the list's marker): the grammar is for
    what follows it, from a little whitespace on (a constrained call when the model decided to call, see
    ``SamplingParams.call_trigger``).
    """
    chosen = [t for t in tools if only is None or t.name == only]
    if not chosen:
        raise GrammarError(f"tool_choice names {only!r}, which is not among the request's tools")
    alternatives = []
    for tool in chosen:
        try:
            parameters = tool.json_schema()
        except ConversationError as exc:
            raise GrammarError(str(exc)) from exc
        alternatives.append({
            "type": "object",
            "properties": {"name": {"const": tool.name}, arguments_key: parameters},
            "required": ["name", arguments_key],
            "additionalProperties": False,
        })
    schema = alternatives[0] if len(alternatives) == 1 else {"oneOf": alternatives}
    body = schema_to_gbnf(schema, rule="call-json", prop_order=["name", arguments_key])
    # After the opener the model usually writes a newline (the template's layout) before the JSON.
    lead = "[ \\t\\n]{0,4} " if opened else ""
    if listed:
        more = '("," " "? call-json)*' if parallel else ""
        return f'root ::= {lead}"[" call-json {more} "]"\n' + body
    separator = '"\\n"'
    if tagged:
        open_tag, close_tag = json.dumps(OPEN_TAG + "\n"), json.dumps("\n" + CLOSE_TAG)
        call = f"call ::= {open_tag} call-json {close_tag}\n"
        first = f"{lead}call-json {close_tag}" if opened else "call"
    else:
        call = "call ::= call-json\n"
        first = "call"
    root = f"root ::= {first} ({separator} call)*\n" if parallel else f"root ::= {first}\n"
    return root + call + body
