"""Render chat templates the way ``tokenizer.apply_chat_template`` does, in a sandboxed Jinja environment.

The same renderer serves training (the ``jinja`` template), ``tooltune chat``, the server and evaluation, so the text
a model is trained on is byte for byte the text it is served.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2 import nodes
from jinja2.exceptions import TemplateError
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from tooltune.errors import TooltuneError


class ChatTemplateError(TooltuneError, ValueError):
    pass


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    # transformers' tojson: no HTML escaping and non-ASCII kept, unlike Jinja's built-in filter.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class _GenerationBlock(Extension):
    """``{% generation %}...{% endgeneration %}`` (transformers' marker of assistant text, used by SmolLM3's
    template): rendered as its body; tooltune finds trained spans by rendering prefixes instead."""

    tags = {"generation"}

    def parse(self, parser: Any) -> Any:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.Scope(body, lineno=lineno)


@lru_cache(maxsize=32)
def compile_template(source: str) -> Any:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[loopcontrols, _GenerationBlock])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(source)
    except TemplateError as exc:
        raise ChatTemplateError(f"chat template does not compile: {exc}") from exc


def render(
    template: str,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None = None,
    add_generation_prompt: bool = False,
    bos_token: str = "",
    eos_token: str = "",
    **extra: Any,
) -> str:
    """Render like ``apply_chat_template(..., tokenize=False)``."""
    compiled = compile_template(template)
    try:
        return compiled.render(
            messages=messages,
            tools=tools,
            add_generation_prompt=add_generation_prompt,
            bos_token=bos_token,
            eos_token=eos_token,
            **extra,
        )
    except TemplateError as exc:
        raise ChatTemplateError(f"chat template failed: {exc}") from exc
    except (TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
        # A template that does not handle this input (e.g. iterates a missing list) fails the same way.
        raise ChatTemplateError(f"chat template failed: {type(exc).__name__}: {exc}") from exc


def _config_template(cfg_file: Path) -> str | None:
    if not cfg_file.is_file():
        return None
    template = json.loads(cfg_file.read_text(encoding="utf-8")).get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        default = named.get("default") or next(iter(named.values()), None)
        tool_use = named.get("tool_use")
        template = default
        if isinstance(default, str) and isinstance(tool_use, str):
            template = combine_named(default, tool_use)
    return template if isinstance(template, str) else None


def combine_named(default: str, tool_use: str | None) -> str:
    """One template for a named pair (Hermes ships "default" and "tool_use"): transformers renders a conversation
    that has tools with "tool_use" and any other with "default"; the returned template makes that choice inside, so
    every consumer that takes a single template (serving, GGUF, vLLM ``--chat-template``) keeps the tool layout."""
    if not tool_use or tool_use == default:
        return default
    return (_NAMED_TOOL_USE + "{% if tools %}" + tool_use + "{% else %}" + _NAMED_DEFAULT + default
            + "{% endif %}")


def from_gguf_metadata(metadata: dict[str, Any]) -> str:
    """A GGUF's chat template: ``tokenizer.chat_template``, combined with ``tokenizer.chat_template.tool_use`` where
    llama.cpp's converter wrote a named pair (Hermes) — "" when the file carries none."""
    default = metadata.get("tokenizer.chat_template")
    tool_use = metadata.get("tokenizer.chat_template.tool_use")
    return combine_named(default if isinstance(default, str) else "", tool_use if isinstance(tool_use, str) else None)


# Jinja comments (they render nothing) marking the two parts, so split_named finds them again exactly.
_NAMED_TOOL_USE = "{# tooltune: named template tool_use #}"
_NAMED_DEFAULT = "{# tooltune: named template default #}"


def split_named(template: str) -> tuple[str, str] | None:
    """(default, tool_use) of a template combine_named made, else None."""
    if not template.startswith(_NAMED_TOOL_USE + "{% if tools %}") or not template.endswith("{% endif %}"):
        return None
    body = template[len(_NAMED_TOOL_USE + "{% if tools %}"):-len("{% endif %}")]
    tool_use, marker, default = body.rpartition("{% else %}" + _NAMED_DEFAULT)
    return (default, tool_use) if marker else None


def load_from_tokenizer_dir(path: str | Path, prefer: str = "transformers") -> str | None:
    """The chat template a tokenizer directory carries — the one folder reader every stage uses.

    ``prefer="transformers"`` (default): ``chat_template.jinja`` wins, as transformers loads it.
    ``prefer="gguf"``: ``tokenizer_config.json``'s wins, as llama.cpp's converter (gguf-py) reads it, so our GGUF
    stays identical to llama.cpp's; a folder where the two differ is inconsistent either way.
    """
    path = Path(path)
    jinja_file = path / "chat_template.jinja"
    jinja = jinja_file.read_text(encoding="utf-8") if jinja_file.is_file() else None
    config = _config_template(path / "tokenizer_config.json")
    processor = _config_template(path / "chat_template.json")
    order = (config, jinja, processor) if prefer == "gguf" else (jinja, config, processor)
    return next((template for template in order if template is not None), None)
