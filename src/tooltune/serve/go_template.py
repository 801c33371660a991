"""Render an Ollama Modelfile TEMPLATE with Go's own ``text/template``, as Ollama does.

The renderer is a small Go program shipped as a package resource (``resources/go/ollamatmpl``: Ollama 0.33.0's
template data types and functions, no dependencies). It is built once with the ``go`` on PATH into the cache folder,
keyed by the hash of its sources; without ``go`` nothing is rendered and callers say so (``NEEDS_GO``) rather than
passing the check.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

from tooltune.errors import TooltuneError

SOURCE_DIR = "resources/go/ollamatmpl"
SOURCE_FILES = ("go.mod", "main.go")
NEEDS_GO = "not checked: needs go (apt install golang-go)"


class GoTemplateError(TooltuneError):
    pass


def _sources() -> dict[str, bytes]:
    root = resources.files("tooltune").joinpath(SOURCE_DIR)
    return {name: root.joinpath(name).read_bytes() for name in SOURCE_FILES}


def build_renderer(cache: Path | None = None) -> Path | None:
    """The built renderer (built now if this version of its sources was never built); None when ``go`` is missing."""
    go = shutil.which("go")
    if go is None:
        return None
    sources = _sources()
    digest = hashlib.sha256(b"".join(sources[name] for name in SOURCE_FILES)).hexdigest()[:16]
    if cache is None:
        from tooltune.default_model import cache_dir

        cache = cache_dir() / "go"
    binary = cache / f"ollamatmpl-{digest}"
    if binary.is_file():
        return binary
    cache.mkdir(parents=True, exist_ok=True)
    # No dependencies and no network: the build must never try to download a module or a toolchain.
    env = {**os.environ, "GOFLAGS": "-mod=mod", "GOPROXY": "off", "GO111MODULE": "on", "GOTOOLCHAIN": "local"}
    with tempfile.TemporaryDirectory(prefix="tooltune-go-") as tmp:
        for name, data in sources.items():
            (Path(tmp) / name).write_bytes(data)
        built = cache / f".{binary.name}.{os.getpid()}.tmp"
        done = subprocess.run([go, "build", "-o", str(built), "."], cwd=tmp, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            built.unlink(missing_ok=True)
            raise GoTemplateError(f"go build of the Ollama template renderer failed: {done.stderr.strip()[-2000:]}")
        os.replace(built, binary)  # written under a temporary name, renamed when complete
    return binary


def render_go(binary: Path, cases: list[tuple[str, list[dict[str, Any]], list[dict[str, Any]] | None]],
              think: bool | None = None) -> list[str | GoTemplateError]:
    """Render each (Go TEMPLATE, messages, tools) with Ollama's template data; a case Go refuses comes back as an
    error in its place, so one bad case does not hide the others. ``think``: the request's Ollama `think` (None: not
    set, as a request without it; the template sees .Think and .IsThinkSet)."""
    if not cases:
        return []
    extra = {} if think is None else {"think": think}
    payload = [{"template": t, "messages": m, "tools": tools, **extra} for t, m, tools in cases]
    done = subprocess.run([str(binary)], input=json.dumps(payload, ensure_ascii=False), capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise GoTemplateError(f"{binary}: {done.stderr.strip()[-2000:]}")
    results = json.loads(done.stdout)
    return [GoTemplateError(r["error"]) if "error" in r else r["output"] for r in results]
