"""The folder the UI may touch: every path a request names is resolved inside it or refused.

Symlinks are resolved before the check, so a link that points outside the workspace is refused like ``../``.
"""

from __future__ import annotations

from pathlib import Path

from tooltune.errors import TooltuneError

RUNS_DIR = "runs"


class UIError(TooltuneError, ValueError):
    """A request the UI refuses; ``status`` is the HTTP status it is answered with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class Workspace:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise UIError(f"{root}: workspace folder does not exist")

    @property
    def runs_dir(self) -> Path:
        return self.root / RUNS_DIR

    def resolve(self, relative: str, what: str = "path") -> Path:
        """``relative`` (a path inside the workspace) as an absolute path; anything escaping it is an error."""
        if not isinstance(relative, str) or not relative.strip():
            raise UIError(f"{what}: empty")
        if "\x00" in relative:
            raise UIError(f"{what}: contains a NUL byte")
        candidate = Path(relative)
        full = (candidate if candidate.is_absolute() else self.root / candidate).resolve()
        if full != self.root and self.root not in full.parents:
            raise UIError(f"{what} {relative!r} is outside the workspace {self.root}", status=403)
        return full

    def relative(self, path: Path) -> str:
        return path.resolve().relative_to(self.root).as_posix()

    def run_dir(self, name: str) -> Path:
        """A run's folder: one plain name under ``runs/`` (no separators, no dots in front)."""
        if not is_plain_name(name):
            raise UIError(f"run name {name!r}: use letters, digits, '-', '_' and '.', not starting with '.'")
        return self.resolve(f"{RUNS_DIR}/{name}", "run")


def is_plain_name(name: str) -> bool:
    return (
        isinstance(name, str)
        and 0 < len(name) <= 100
        and not name.startswith(".")
        and all(ch.isalnum() or ch in "-_." for ch in name)
    )
