"""Which names ``tooltune serve`` answers to when LoRA adapters ride on one base: ``--lora NAME=FILE`` and a
Modelfile's ``ADAPTER`` lines, checked before any runner starts.

Every adapter is checked against the base with ``check_adapter_gguf`` (architecture, tensor names and shapes — the
checks llama.cpp makes when it loads one, which otherwise surface as a runner that fails to start), and every served
name must be unique, counting ``name`` and ``name:latest`` as the same, since a request may use either.
"""

from __future__ import annotations

import re
from pathlib import Path

from tooltune.errors import TooltuneError

# Ollama's model-name characters; '=' and spaces would make ``--lora NAME=FILE`` ambiguous.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")


class AdapterServeError(TooltuneError, ValueError):
    """A ``--lora``/``ADAPTER`` that cannot be served; the message names the option, the file and the reason."""


def parse_lora_option(value: str) -> tuple[str, Path]:
    """``NAME=ADAPTER.gguf`` → (name, path)."""
    name, sep, path = value.partition("=")
    name, path = name.strip(), path.strip()
    if not sep or not name or not path:
        raise AdapterServeError(f"--lora {value!r}: expected NAME=ADAPTER.gguf")
    return name, Path(path).expanduser()


def _canonical(name: str) -> str:
    return name.removesuffix(":latest")


def check_served_models(base: Path, base_name: str, adapters: list[tuple[str, list[Path], str]]
                        ) -> dict[str, list[Path]]:
    """Check ``adapters`` — (served name, its LoRA GGUFs, where it was given) — against ``base``; returns
    name → paths for the runner. Raises ``AdapterServeError`` on a missing file, an adapter made for another base,
    a base that is not a GGUF, a bad name or a name used twice."""
    from tooltune.gguf.adapter import AdapterGGUFError, check_adapter_gguf

    if not adapters:
        return {}
    if base.suffix.lower() != ".gguf" or not base.is_file():
        raise AdapterServeError(f"{base}: LoRA adapters are served over a GGUF base file (llama.cpp); merge the "
                                "adapter into an HF model instead (tooltune export)")
    seen = {_canonical(base_name): "the base model"}
    served: dict[str, list[Path]] = {}
    for name, paths, where in adapters:
        if not _NAME.match(name):
            raise AdapterServeError(f"{where}: {name!r} is not a model name (letters, digits, '._:/-')")
        if _canonical(name) in seen:
            raise AdapterServeError(f"{where}: the name {name!r} is already used by {seen[_canonical(name)]}; "
                                    "each served model needs its own name")
        seen[_canonical(name)] = where
        for path in paths:
            if not path.exists():
                raise AdapterServeError(f"{where}: {path}: no such adapter file")
            if path.is_dir():
                raise AdapterServeError(f"{where}: {path} is a directory; serving needs a LoRA GGUF "
                                        f"(tooltune lora-gguf {path} --base {base})")
            try:
                check_adapter_gguf(path, base)
            except AdapterGGUFError as exc:
                raise AdapterServeError(f"{where}: {exc}") from exc
        served[name] = list(paths)
    return served
