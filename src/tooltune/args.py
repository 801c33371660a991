"""LLaMA-Factory-style arguments: ``--key value`` flags (underscore or dashed), bare boolean flags, and YAML configs.

The seed's commands must port by changing only the program name, so the commands that mirror LLaMA-Factory
(``preview``, ``preprocess``, ``train``, ``export``, ``run``) parse their arguments here into plain dataclasses
instead of through typer options: ``--bf16``, ``--bf16 true``, ``--gradient_checkpointing true``, ``--do-train false``
and ``config.yaml --learning_rate 1e-3`` all work, and an unknown key is an error with a suggestion.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from tooltune.errors import TooltuneError

T = TypeVar("T")

TRUE_WORDS = {"true", "yes", "1", "on", "y", "t"}
FALSE_WORDS = {"false", "no", "0", "off", "n", "f"}


class ArgumentError(TooltuneError, ValueError):
    pass


def normalize_key(key: str) -> str:
    return key.lstrip("-").replace("-", "_")


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _is_bool(tp: Any) -> bool:
    return _unwrap_optional(tp)[0] is bool


def convert_value(key: str, raw: Any, tp: Any) -> Any:
    """Convert a CLI string (or a YAML value) to the field's type."""
    inner, optional = _unwrap_optional(tp)
    if raw is None or (optional and isinstance(raw, str) and raw.lower() in ("none", "null")):
        if optional:
            return None
        raise ArgumentError(f"--{key} needs a value")
    if inner is bool:
        if isinstance(raw, bool):
            return raw
        word = str(raw).strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
        raise ArgumentError(f"--{key} expects true or false, got {raw!r}")
    if inner is int:
        try:
            if isinstance(raw, float) and raw.is_integer():
                return int(raw)
            return int(str(raw))
        except ValueError:
            try:
                as_float = float(str(raw))
            except ValueError:
                as_float = None
            if as_float is not None and as_float.is_integer():
                return int(as_float)
            raise ArgumentError(f"--{key} expects an integer, got {raw!r}") from None
    if inner is float:
        try:
            return float(raw)
        except (TypeError, ValueError):
            raise ArgumentError(f"--{key} expects a number, got {raw!r}") from None
    origin = typing.get_origin(inner)
    if origin in (list, tuple) or inner in (list, tuple):
        item_types = typing.get_args(inner)
        item_tp = item_types[0] if item_types else str
        if isinstance(raw, str):
            items: list[Any] = [part.strip() for part in raw.split(",") if part.strip()]
        elif isinstance(raw, (list, tuple)):
            items = list(raw)
        else:
            items = [raw]
        return [convert_value(key, item, item_tp) for item in items]
    if inner is dict or typing.get_origin(inner) is dict:
        if isinstance(raw, str):
            try:
                raw = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ArgumentError(f"--{key} expects a JSON object: {exc.msg}") from exc
        if not isinstance(raw, dict):
            raise ArgumentError(f"--{key} expects a mapping")
        return raw
    if inner is Path:
        return Path(str(raw))
    if inner is str or inner is Any:
        return raw if inner is Any else str(raw)
    if typing.get_origin(inner) is typing.Literal:
        choices = typing.get_args(inner)
        value = str(raw)
        if value not in [str(c) for c in choices]:
            raise ArgumentError(f"--{key} must be one of {', '.join(map(str, choices))}, got {raw!r}")
        return value
    return raw


def load_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ArgumentError(f"{path}: cannot read config ({exc.strerror})") from exc
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise ArgumentError(f"{path}: not valid YAML/JSON: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ArgumentError(f"{path}: a config must be a mapping of keys to values")
    return {normalize_key(str(k)): v for k, v in data.items()}


def split_argv(argv: list[str], bool_keys: set[str]) -> tuple[dict[str, Any], list[str]]:
    """Turn ``argv`` into ``{key: raw value}`` plus positional arguments (config files, paths)."""
    values: dict[str, Any] = {}
    positionals: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        if token.startswith("--") and len(token) > 2:
            body = token[2:]
            if "=" in body:
                key, value = body.split("=", 1)
                values[normalize_key(key)] = value
                i += 1
                continue
            key = normalize_key(body)
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            if key in bool_keys:
                if nxt is not None and nxt.strip().lower() in TRUE_WORDS | FALSE_WORDS:
                    values[key] = nxt
                    i += 2
                else:
                    values[key] = True
                    i += 1
                continue
            if nxt is None or (nxt.startswith("--") and len(nxt) > 2):
                raise ArgumentError(f"--{key} needs a value")
            values[key] = nxt
            i += 2
        elif "=" in token and not token.startswith("-") and not Path(token).exists():
            # LLaMA-Factory's ``llamafactory-cli train cfg.yaml key=value`` overrides.
            key, value = token.split("=", 1)
            values[normalize_key(key)] = value
            i += 1
        else:
            positionals.append(token)
            i += 1
    return values, positionals


def parse_into(
    classes: tuple[type, ...], argv: list[str], *, positional_names: tuple[str, ...] = ()
) -> tuple[Any, ...]:
    """Parse ``argv`` (optionally led by a YAML/JSON config) into one instance of each dataclass in ``classes``.

    A key may belong to several dataclasses (e.g. ``cutoff_len``); each receives it. Positional arguments that are
    not config files fill ``positional_names`` in order.
    """
    all_fields: dict[str, Any] = {}
    for cls in classes:
        all_fields.update(_field_types(cls))
    bool_keys = {k for k, tp in all_fields.items() if _is_bool(tp)}
    cli_values, positionals = split_argv(argv, bool_keys)

    merged: dict[str, Any] = {}
    leftover: list[str] = []
    for item in positionals:
        if item.endswith((".yaml", ".yml", ".json")) and Path(item).is_file() and "config" not in merged:
            merged.update(load_config_file(item))
        else:
            leftover.append(item)
    if len(leftover) > len(positional_names):
        raise ArgumentError(f"unexpected argument {leftover[len(positional_names)]!r}")
    for name, value in zip(positional_names, leftover, strict=False):
        merged[name] = value
    merged.update(cli_values)

    unknown = [k for k in merged if k not in all_fields]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, list(all_fields), n=3)
        hint = f" (did you mean {', '.join('--' + c for c in close)}?)" if close else ""
        raise ArgumentError(f"unknown argument --{key}{hint}")

    instances = []
    for cls in classes:
        hints = _field_types(cls)
        kwargs = {k: convert_value(k, v, hints[k]) for k, v in merged.items() if k in hints}
        try:
            instances.append(cls(**kwargs))
        except TypeError as exc:
            raise ArgumentError(str(exc)) from exc
    return tuple(instances)


def format_help(classes: tuple[type, ...]) -> str:
    """One line per key: name, type, default and the field's ``help`` metadata."""
    lines: list[str] = []
    seen: set[str] = set()
    for cls in classes:
        hints = _field_types(cls)
        doc = (cls.__doc__ or cls.__name__).strip().splitlines()[0]
        lines.append(f"\n{doc}")
        for fld in dataclasses.fields(cls):
            if fld.name in seen or fld.name.startswith("_"):
                continue
            seen.add(fld.name)
            inner, _ = _unwrap_optional(hints[fld.name])
            type_name = getattr(inner, "__name__", str(inner)).replace("typing.", "")
            if fld.default is not dataclasses.MISSING:
                default = fld.default
            elif fld.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                default = fld.default_factory()  # type: ignore[misc]
            else:
                default = "(required)"
            help_text = fld.metadata.get("help", "")
            lines.append(f"  --{fld.name:<32} {type_name:<6} {default!s:<12} {help_text}")
    return "\n".join(lines)
