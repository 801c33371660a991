"""The isolated Python environment llm-compressor runs in.

llm-compressor pins a narrow transformers range (0.14.0.1: ``>=5.15,<=5.17``) that differs from the main install's,
so it lives in its own plain virtual environment (no ``--system-site-packages``: that would put the main
transformers/peft on its path and mix versions) and runs as a subprocess. The environment gets the *same* torch
version as the main install, pinned with a constraint so pip can never resolve another build (on this machine the
CPU wheel comes from the local wheelhouse). It is built once, under the tooltune cache, and reused.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

from rich.console import Console

from tooltune.default_model import cache_dir
from tooltune.errors import TooltuneError

LLMCOMPRESSOR_REQUIREMENT = "llmcompressor==0.14.0.1"
MARKER_FILE = "tooltune-env.json"


class VllmEnvError(TooltuneError, RuntimeError):
    pass


def env_dir() -> Path:
    """``TOOLTUNE_VLLM_ENV`` overrides the default ``<cache>/vllm-env``."""
    override = os.environ.get("TOOLTUNE_VLLM_ENV")
    return Path(override) if override else cache_dir() / "vllm-env"


def env_python(root: Path) -> Path:
    return root / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def torch_requirement() -> str:
    """The main install's torch version without its local tag (``2.13.0+cpu`` → ``torch==2.13.0``)."""
    try:
        version = metadata.version("torch")
    except metadata.PackageNotFoundError as exc:
        raise VllmEnvError("torch is not installed in this environment; install it before tooltune") from exc
    return f"torch=={version.split('+')[0]}"


def _wanted() -> dict[str, str]:
    return {"llmcompressor": LLMCOMPRESSOR_REQUIREMENT, "torch": torch_requirement()}


def read_marker(root: Path) -> dict | None:
    marker = root / MARKER_FILE
    if not marker.is_file() or not env_python(root).exists():
        return None
    try:
        return json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def is_ready(root: Path | None = None) -> bool:
    marker = read_marker(root or env_dir())
    return marker is not None and marker.get("requirements") == _wanted()


@contextlib.contextmanager
def _install_lock(root: Path) -> Iterator[None]:
    # Two tooltune processes (or two test workers) must not build the same environment at once.
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run_step(argv: list[str], log: Path, what: str) -> None:
    with open(log, "a", encoding="utf-8") as out:
        out.write(f"\n$ {' '.join(argv)}\n")
        out.flush()
        proc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
        raise VllmEnvError(f"{what} failed (exit {proc.returncode}); see {log}:\n" + "\n".join(tail))


def ensure_env(console: Console | None = None, rebuild: bool = False) -> Path:
    """Return the isolated environment's python, building the environment first if needed (minutes, once)."""
    console = console or Console(stderr=True)
    root = env_dir()
    with _install_lock(root):
        if not rebuild and is_ready(root):
            return env_python(root)
        if root.exists():
            shutil.rmtree(root)
        wanted = _wanted()
        started = time.monotonic()
        log = root.parent / f"{root.name}-install.log"
        log.write_text("", encoding="utf-8")
        python = env_python(root)
        constraints = root.parent / f"{root.name}-constraints.txt"
        constraints.write_text(wanted["torch"] + "\n", encoding="utf-8")
        # --no-compile: byte-compiling torch's thousands of files at install costs minutes (measured here: torch
        # 213 s with, 60 s without); Python compiles the few modules the worker imports on first use instead.
        pip = [str(python), "-m", "pip", "install", "--no-compile", "--disable-pip-version-check"]
        steps = [
            ([sys.executable, "-m", "venv", str(root)], "creating the virtual environment"),
            ([*pip, wanted["torch"]], f"installing {wanted['torch']}"),
            (
                [*pip, "-c", str(constraints), wanted["llmcompressor"]],
                f"installing {wanted['llmcompressor']}",
            ),
        ]
        with console.status("") as status:
            for number, (argv, what) in enumerate(steps, 1):
                status.update(f"[bold]llm-compressor environment[/bold] {number}/{len(steps)}: {what} (log: {log})")
                _run_step(argv, log, what)
        versions = subprocess.run(
            [str(python), "-c", "import importlib.metadata as m, json; print(json.dumps({p: m.version(p) for p in "
             "('llmcompressor', 'compressed-tensors', 'transformers', 'torch')}))"],
            capture_output=True, text=True, check=False,
        )
        if versions.returncode != 0:
            raise VllmEnvError(f"the llm-compressor environment at {root} does not import: {versions.stderr[-500:]}")
        seconds = time.monotonic() - started
        marker = {"requirements": wanted, "versions": json.loads(versions.stdout), "install_seconds": round(seconds, 1)}
        (root / MARKER_FILE).write_text(json.dumps(marker, indent=2), encoding="utf-8")
        found = ", ".join(f"{k} {v}" for k, v in marker["versions"].items())
        console.print(f"llm-compressor environment ready at {root} in {seconds:.0f} s ({found})")
        return python
