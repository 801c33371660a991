"""Modelfiles both ways: write one real Ollama can load, and read one so ``tooltune serve --modelfile`` serves it.

Writing: the GGUF's Jinja chat template is matched against the templates we ship a Go equivalent for
(``resources/ollama/*.gotmpl``: qwen2.5, qwen3, mistral, phi4-mini, gemma3, smollm3, hermes3, llama3.2; per-family
figures and limits in docs/families.md).
The Go TEMPLATE renders system, tools, user, assistant text, assistant tool calls
(inside ``{{ if .ToolCalls }}`` so Ollama derives the ``<tool_call>`` prefix and returns structured calls) and tool
results in the same layout as the Jinja template; tests render both on the glaive demo data (Go's own
``text/template``, Ollama 0.33.0's template data types) and measure what still differs.

What cannot agree byte for byte, by construction of Ollama's data types (measured in tests/test_modelfile_go.py):
object keys inside the tools block and inside call arguments come out sorted (Ollama hands templates Go maps), and
schema keys Ollama's ``ToolProperty`` does not model (``format``, ``default``, ...) are gone before the template runs.
``canonicalize_for_ollama`` rewrites a conversation the way Ollama will see it; train on data passed through it (or
serve with ``tooltune serve``, which renders the Jinja template itself) and train and serve agree exactly.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from tooltune.atomic import write_text
from tooltune.chat_template import from_gguf_metadata, split_named
from tooltune.errors import TooltuneError
from tooltune.families.stops import stop_strings

GO_TEMPLATE_DIR = "resources/ollama"

# Ollama's ToolProperty fields (api/types.go, 0.33.0): every other key of a property schema is dropped on decode.
OLLAMA_PROPERTY_KEYS = ("anyOf", "type", "items", "description", "enum", "properties", "required")
# Families with a shipped Jinja template and a Go TEMPLATE proven equal to it (tests/test_families_modelfile.py).
FAMILY_GO_TEMPLATES = {"qwen3": "qwen3.gotmpl", "mistral": "mistral.gotmpl", "phi4-mini": "phi4-mini.gotmpl",
                       "gemma3": "gemma3.gotmpl", "smollm3": "smollm3.gotmpl"}
# Families whose template comes from the user's model folder (not shipped: Llama licence): the Go TEMPLATE is ours and
# reproduces the layout; the folder's template is recognised by the sha256 of its whitespace-free text.
FOLDER_TEMPLATE_DIGESTS = {
    # NousResearch Hermes-3 `tool_use` template (as llama.cpp vendors it)
    "4b57cee76cd0b66210e6abd2e18835beaf747e9aa3a59a806c61fd142f19c0bc": ("hermes3", "hermes3.gotmpl"),
    # meta-llama/Llama-3.2-*-Instruct (tool calls in the user turn, one call per reply)
    "088f0b1cd4aab07e4c04b4a0afd8e4eb6571ec9362b4bb67aaba6cbd58849641": ("llama3.2", "llama3.2.gotmpl"),
}
DEFAULT_PARAMETERS: dict[str, Any] = {"temperature": 0.1, "top_p": 0.9}  # the seed's Modelfile values

PARAMETER_TYPES: dict[str, type] = {
    "temperature": float, "top_p": float, "top_k": int, "min_p": float, "seed": int, "num_predict": int,
    "num_ctx": int, "repeat_penalty": float, "repeat_last_n": int, "presence_penalty": float,
    "frequency_penalty": float, "stop": str, "num_keep": int, "typical_p": float, "num_thread": int,
}


class ModelfileError(TooltuneError, ValueError):
    pass


# ------------------------------------------------------------------------------------------------ matching templates


def _normalise(template: str) -> str:
    return re.sub(r"\s+", "", template)


def _resource_text(name: str) -> str:
    # A trailing newline would render after the generation prompt: templates end at their last action.
    return resources.files("tooltune").joinpath(GO_TEMPLATE_DIR, name).read_text(encoding="utf-8").rstrip("\n")


def _known_templates() -> list[tuple[str, str, str]]:
    """(family, normalised Jinja source, Go template) for every chat template we have a proven Go equivalent of."""
    from tooltune.templates.qwen import QWEN_DEFAULT_SYSTEM, QWEN_JINJA, jinja_string

    qwen_jinja = resources.files("tooltune").joinpath("resources/templates/qwen.jinja").read_text(encoding="utf-8")
    # What `tooltune train --template qwen` saves with the model: LLaMA-Factory's layout as Jinja. It renders
    # OpenAI-shaped tools (all Ollama ever passes) exactly as Qwen2.5's own template does, so the same Go TEMPLATE
    # serves both; tests/test_modelfile.py proves each against Go's text/template.
    training_jinja = QWEN_JINJA.replace("__DEFAULT_SYSTEM__", jinja_string(QWEN_DEFAULT_SYSTEM))
    go_source = _resource_text("qwen2.5.gotmpl")
    known = [("qwen2.5", _normalise(qwen_jinja), go_source), ("qwen2.5", _normalise(training_jinja), go_source)]
    # Families whose Go TEMPLATE is proven against their shipped Jinja template (tests/test_families_modelfile.py).
    from tooltune.families.family import FAMILIES

    for family, go_file in FAMILY_GO_TEMPLATES.items():
        jinja_text = FAMILIES[family].template_text()
        if jinja_text is not None:
            known.append((family, _normalise(jinja_text), _resource_text(go_file)))
    return known


def go_template_for(chat_template: str) -> tuple[str, str]:
    """(family, Go TEMPLATE) equivalent to ``chat_template``; raises if we have no proven equivalent."""
    wanted = _normalise(chat_template)
    for family, jinja_source, go_source in _known_templates():
        if wanted == jinja_source:
            return family, go_source
    digest = hashlib.sha256(wanted.encode("utf-8")).hexdigest()
    if digest in FOLDER_TEMPLATE_DIGESTS:
        family, go_file = FOLDER_TEMPLATE_DIGESTS[digest]
        return family, _resource_text(go_file)
    named = split_named(chat_template)
    if named is not None:
        # A named pair (Hermes): the Go TEMPLATE follows the tool_use part, the layout tool requests are served in.
        return go_template_for(named[1])
    raise ModelfileError(
        "no Go TEMPLATE is known to match this model's chat template (docs/families.md lists the templates with a "
        "proven equivalent); pass --template FILE with your own Go template, or --no-template to let Ollama 0.30+ "
        "render the GGUF's Jinja chat template"
    )


_TOOL_CALLS_IF = re.compile(r"\{\{-?\s*(?:else\s+)?if\b(?:(?!\}\}).)*\.ToolCalls\b(?:(?!\}\}).)*-?\}\}", re.DOTALL)
_ACTION = re.compile(r"\{\{.*?\}\}", re.DOTALL)


def ollama_tool_call_prefix(go_template: str) -> str:
    """The tool-call prefix Ollama derives from a TEMPLATE: the first text inside the first ``{{ if .ToolCalls }}``
    block, cut before any ``{`` and stripped; ``{`` when there is none (then any JSON object starts a call)."""
    match = _TOOL_CALLS_IF.search(go_template)
    if match is None:
        return "{"
    for text in _ACTION.split(go_template[match.end():]):
        # A trim marker ("{{-" / "-}}") eats the blanks beside it; blanks alone are no prefix either way.
        if text.strip():
            tag = text.split("{", 1)[0].strip()
            return tag or "{"
    return "{"


# ------------------------------------------------------------------------------------------------ writing


# GGUF metadata value types (gguf spec): fixed-size scalars by struct format, plus string (8) and array (9).
_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def read_gguf_chat_info(gguf_path: str | Path) -> tuple[str, str]:
    """(chat template, EOS token text) from a GGUF's header.

    Reads only the key/value section with ``struct`` (gguf-py's reader materialises every token and tensor entry,
    which takes tens of seconds on a real vocabulary).
    """
    import mmap
    import struct

    path = Path(gguf_path)
    try:
        with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            if data[:4] != b"GGUF":
                raise ModelfileError(f"{path}: not a GGUF file (bad magic)")
            pos = 8 + 8  # magic, version, tensor count
            (n_kv,) = struct.unpack_from("<Q", data, pos)
            pos += 8

            def read_string(at: int) -> tuple[str, int]:
                (length,) = struct.unpack_from("<Q", data, at)
                return data[at + 8 : at + 8 + length].decode("utf-8", errors="replace"), at + 8 + length

            def skip_value(kind: int, at: int) -> int:
                if kind in _GGUF_SCALARS:
                    return at + struct.calcsize("<" + _GGUF_SCALARS[kind])
                if kind == _GGUF_STRING:
                    return read_string(at)[1]
                raise ModelfileError(f"{path}: unexpected GGUF value type {kind}")

            values: dict[str, Any] = {}
            tokens_at = None
            for _ in range(n_kv):
                key, pos = read_string(pos)
                (kind,) = struct.unpack_from("<I", data, pos)
                pos += 4
                if kind == _GGUF_ARRAY:
                    item_kind, count = struct.unpack_from("<IQ", data, pos)
                    pos += 12
                    if key == "tokenizer.ggml.tokens":
                        tokens_at = pos
                    if item_kind in _GGUF_SCALARS:
                        pos += count * struct.calcsize("<" + _GGUF_SCALARS[item_kind])
                    else:
                        for _ in range(count):
                            pos = skip_value(item_kind, pos)
                elif key in ("tokenizer.chat_template", "tokenizer.chat_template.tool_use",
                             "tokenizer.ggml.eos_token_id"):
                    if kind == _GGUF_STRING:
                        values[key], pos = read_string(pos)
                    else:
                        (values[key],) = struct.unpack_from("<" + _GGUF_SCALARS[kind], data, pos)
                        pos = skip_value(kind, pos)
                else:
                    pos = skip_value(kind, pos)
            eos = ""
            if tokens_at is not None and "tokenizer.ggml.eos_token_id" in values:
                at = tokens_at
                for _ in range(int(values["tokenizer.ggml.eos_token_id"])):
                    at = read_string(at)[1]
                eos = read_string(at)[0]
    except ModelfileError:
        raise
    except (OSError, ValueError, struct.error) as exc:
        raise ModelfileError(f"{path}: not a readable GGUF file ({exc})") from exc
    return from_gguf_metadata(values), eos  # a named pair (Hermes) read as the server reads it


def _quote(text: str) -> str:
    if '"""' in text:
        raise ModelfileError('a Modelfile value cannot contain """')
    return f'"""{text}"""'


def _parameter_lines(params: dict[str, Any]) -> list[str]:
    lines = []
    for key, value in params.items():
        for item in value if isinstance(value, list) else [value]:
            lines.append(f"PARAMETER {key} {item}")
    return lines


def write_modelfile(gguf_path: str | Path, out: str | Path, name: str | None = None, chat_template: str | None = None,
                    system: str | None = None, params: dict[str, Any] | None = None,
                    go_template: str | None = None, include_template: bool = True,
                    adapter: str | Path | None = None) -> Path:
    """Write a Modelfile for ``gguf_path``: FROM, a Go TEMPLATE equivalent to the chat template, stops, defaults.
    With ``adapter`` (a llama.cpp LoRA GGUF for that base) an ``ADAPTER`` line follows ``FROM``."""
    gguf_path = Path(gguf_path)
    out = Path(out)
    if adapter is not None:
        from tooltune.gguf.adapter import check_adapter_gguf

        check_adapter_gguf(adapter, gguf_path)  # refuse an adapter Ollama would load as a no-op or reject
    gguf_template, eos = read_gguf_chat_info(gguf_path)
    jinja_template = chat_template or gguf_template
    if include_template and go_template is None:
        if not jinja_template:
            raise ModelfileError(f"{gguf_path}: the GGUF carries no tokenizer.chat_template; pass --chat-template")
        family, go_template = go_template_for(jinja_template)
    else:
        family = "user-supplied" if go_template else "none (Ollama renders the GGUF's Jinja template)"
    stops = stop_strings(jinja_template or "", eos)
    if family == "qwen2.5":
        # The proven Qwen2.5 Modelfile keeps its stop lines: the end-of-turn markers its template writes, and EOS.
        stops = [s for s in stops if s in jinja_template or s == eos]
    merged: dict[str, Any] = dict(DEFAULT_PARAMETERS)
    merged.update(params or {})
    merged["stop"] = list(dict.fromkeys([*stops, *_as_list(merged.get("stop"))]))
    from_path = _path_from(out, gguf_path)
    header = [
        f"# Modelfile for {name or gguf_path.stem}, written by `tooltune modelfile`.",
        f"# TEMPLATE: Go equivalent of the model's Jinja chat template ({family}), checked against Go text/template",
        "# with Ollama 0.33.0's template data. Tool-call arguments and the tools block print object keys sorted",
        "# (Ollama passes Go maps), and Ollama drops schema keys such as 'format'/'default'; see docs/serve.md.",
        *([f"# Ollama reads tool calls after the prefix {ollama_tool_call_prefix(go_template)!r} (derived from the "
           "TEMPLATE); per-family limits: docs/families.md."] if include_template and go_template else []),
        f"# Create: ollama create {name or gguf_path.stem} -f {out.name}",
        "",
        f"FROM {from_path}",
    ]
    if adapter is not None:
        header.append(f"ADAPTER {_path_from(out, Path(adapter))}")
    body = []
    if include_template and go_template:
        body.append(f"TEMPLATE {_quote(go_template)}")
    if system:
        body.append(f"SYSTEM {_quote(system)}")
    body.extend(_parameter_lines(merged))
    write_text(out, "\n".join(header + body) + "\n")
    return out


def _path_from(modelfile: Path, target: Path) -> str:
    """``./relative`` when ``target`` sits under the Modelfile's folder (they move together), else absolute."""
    try:
        return f"./{target.resolve().relative_to(modelfile.resolve().parent)}"
    except ValueError:
        return str(target.resolve())


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


# ------------------------------------------------------------------------------------------------ reading


@dataclass
class Modelfile:
    path: Path
    from_: Path
    parameters: dict[str, Any] = field(default_factory=dict)
    system: str | None = None
    template: str | None = None
    messages: list[dict[str, str]] = field(default_factory=list)
    license: str | None = None
    text: str = ""
    adapters: list[Path] = field(default_factory=list)  # ADAPTER lines: LoRA GGUFs applied over FROM, in order


_INSTRUCTION = re.compile(r"^\s*([A-Za-z]+)\s+(.*)$", re.DOTALL)


def _split_instructions(text: str, path: Path) -> list[tuple[int, str, str]]:
    """(line number, INSTRUCTION, argument) with triple-quoted arguments spanning lines."""
    out = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        number = i + 1
        i += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _INSTRUCTION.match(line)
        if not match:
            raise ModelfileError(f"{path}:{number}: cannot read {line.strip()!r} (expected INSTRUCTION argument)")
        command, argument = match.group(1).upper(), match.group(2)
        if argument.startswith('"""'):
            rest = argument[3:]
            while '"""' not in rest:
                if i >= len(lines):
                    raise ModelfileError(f'{path}:{number}: {command} opens """ but never closes it')
                rest += "\n" + lines[i]
                i += 1
            argument, trailing = rest.split('"""', 1)
            if trailing.strip():
                raise ModelfileError(f'{path}:{number}: unexpected text after closing """: {trailing.strip()!r}')
        elif argument.startswith('"') and argument.endswith('"') and len(argument) >= 2:
            argument = argument[1:-1]
        out.append((number, command, argument))
    return out


def parse_modelfile(path: str | Path) -> Modelfile:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ModelfileError(f"{path}: cannot read Modelfile ({exc.strerror})") from exc
    model: Path | None = None
    result = Modelfile(path=path, from_=Path(), text=text)
    for number, command, argument in _split_instructions(text, path):
        where = f"{path}:{number}"
        if command == "FROM":
            candidate = Path(argument.strip()).expanduser()
            model = candidate if candidate.is_absolute() else (path.parent / candidate)
        elif command == "PARAMETER":
            key, _, raw = argument.strip().partition(" ")
            key, raw = key.strip(), raw.strip()
            if key not in PARAMETER_TYPES:
                known = ", ".join(sorted(PARAMETER_TYPES))
                raise ModelfileError(f"{where}: unknown PARAMETER {key!r} (known: {known})")
            if raw.startswith('"') and raw.endswith('"') and len(raw) >= 2:
                raw = json.loads(raw) if key == "stop" else raw[1:-1]
            try:
                value = PARAMETER_TYPES[key](raw)
            except ValueError as exc:
                kind = PARAMETER_TYPES[key].__name__
                raise ModelfileError(f"{where}: PARAMETER {key} {raw!r} is not a {kind}") from exc
            if key == "stop":
                result.parameters.setdefault("stop", []).append(value)
            else:
                result.parameters[key] = value
        elif command == "SYSTEM":
            result.system = argument
        elif command == "TEMPLATE":
            result.template = argument
        elif command == "MESSAGE":
            role, _, content = argument.partition(" ")
            if role not in ("system", "user", "assistant"):
                raise ModelfileError(f"{where}: MESSAGE role must be system, user or assistant, got {role!r}")
            result.messages.append({"role": role, "content": content})
        elif command == "LICENSE":
            result.license = argument
        elif command == "ADAPTER":
            adapter = Path(argument.strip()).expanduser()
            adapter = adapter if adapter.is_absolute() else (path.parent / adapter)
            if not adapter.is_file():
                problem = "is a directory, not a LoRA GGUF (tooltune lora-gguf converts one)" if adapter.is_dir() \
                    else "does not exist"
                raise ModelfileError(f"{where}: ADAPTER {adapter} {problem}")
            result.adapters.append(adapter)
        else:
            raise ModelfileError(f"{where}: unknown instruction {command}")
    if model is None:
        raise ModelfileError(f"{path}: no FROM line")
    if not model.exists():
        raise ModelfileError(f"{path}: FROM {model} does not exist")
    result.from_ = model
    return result


# ------------------------------------------------------------------------------------------------ train/serve parity


def _ollama_property(schema: Any) -> Any:
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key in OLLAMA_PROPERTY_KEYS:
        if key in schema:
            value = schema[key]
            if key == "anyOf" and isinstance(value, list):
                value = [_ollama_property(v) for v in value]
            elif key == "properties" and isinstance(value, dict):
                value = {k: _ollama_property(value[k]) for k in sorted(value)}
            elif key == "items":
                value = _sorted_json(value)
            elif key == "enum" and isinstance(value, list):
                value = [_sorted_json(v) for v in value]
            out[key] = value
    return out


def _sorted_json(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _sorted_json(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted_json(v) for v in value]
    return value


def canonicalize_for_ollama(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
                            ) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """Rewrite a conversation (OpenAI/template shape) into what Ollama's Go TEMPLATE will be able to print.

    Tools are wrapped as ``{"type": "function", "function": {...}}`` with Ollama's field set and property names
    sorted; call arguments get sorted keys. Rendering the result with the Jinja template gives exactly what the
    generated Go TEMPLATE renders in Ollama, so training on it makes train and serve agree byte for byte.
    """
    new_tools = None
    if tools is not None:
        new_tools = []
        for tool in tools:
            fn = tool.get("function", tool) if isinstance(tool.get("function"), dict) else tool
            params = fn.get("parameters") or {}
            properties = params.get("properties") or {}
            sorted_properties = {k: _ollama_property(properties[k]) for k in sorted(properties)}
            new_params: dict[str, Any] = {"type": params.get("type", "object"), "properties": sorted_properties}
            if params.get("required"):
                new_params["required"] = list(params["required"])
            new_fn: dict[str, Any] = {"name": fn["name"]}
            if fn.get("description"):
                new_fn["description"] = fn["description"]
            new_fn["parameters"] = new_params
            new_tools.append({"type": "function", "function": new_fn})
    new_messages = []
    for message in messages:
        message = dict(message)
        if message.get("tool_calls"):
            calls = []
            for call in message["tool_calls"]:
                body = call.get("function", call)
                arguments = body.get("arguments", {})
                if isinstance(arguments, str):
                    arguments = json.loads(arguments) if arguments.strip() else {}
                canonical_call: dict[str, Any] = {"type": "function", "function": {
                    "name": body["name"], "arguments": _sorted_json(arguments)}}
                if isinstance(call.get("id"), str):  # Ollama keeps call ids (Mistral's template prints them)
                    canonical_call["id"] = call["id"]
                calls.append(canonical_call)
            message["tool_calls"] = calls
        new_messages.append(message)
    return new_messages, new_tools
