"""Atomic checkpoints: transformers writes ``checkpoint-N`` into a staging folder, which is renamed into place only
once every file (adapter, optimizer, scheduler, RNG states of every process, trainer state) is on disk.

A run killed mid-save (kill -9 included) therefore leaves at most a stale staging folder, never a half-written
``checkpoint-N`` that a resume would pick as the latest.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from tooltune.errors import TooltuneError

STAGING_DIR = ".staging"
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
TRAINER_STATE = "trainer_state.json"
# What a checkpoint must hold to resume from it (weights alone are not enough to continue the same run).
RESUME_FILES = (TRAINER_STATE, "adapter_model.safetensors")


class ResumeError(TooltuneError):
    pass


def checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints in step order."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := CHECKPOINT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    found = checkpoints(output_dir)
    return found[-1] if found else None


def checkpoint_step(checkpoint: Path | None) -> int:
    """The step a checkpoint was saved at (0 for none), from its own trainer state: a resumed run starts there
    (Trainer's private record of it is not there in every transformers 5.x)."""
    if checkpoint is None:
        return 0
    state = json.loads((Path(checkpoint) / TRAINER_STATE).read_text(encoding="utf-8"))
    return int(state.get("global_step", 0))


def promote(staging_root: Path, run_dir: Path, name: str) -> Path:
    """Move ``staging_root/name`` to ``run_dir/name`` in one rename (replacing an older save of the same step)."""
    staged = staging_root / name
    final = run_dir / name
    if final.exists():
        old = run_dir / f"{STAGING_DIR}-old-{name}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(staged, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staged, final)
    _fsync_dir(run_dir)
    if staging_root.is_dir() and not any(staging_root.iterdir()):
        staging_root.rmdir()
    return final


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def clear_stale_staging(output_dir: str | Path) -> None:
    root = Path(output_dir)
    for path in root.glob(f"{STAGING_DIR}*"):
        shutil.rmtree(path, ignore_errors=True)


def resolve_resume(output_dir: str | Path, resume_from_checkpoint: str | None) -> Path | None:
    """``true``/``last``/``latest`` → newest complete checkpoint in ``output_dir``; a path → that checkpoint."""
    if resume_from_checkpoint is None or resume_from_checkpoint.lower() in ("false", "no", "none", ""):
        return None
    if resume_from_checkpoint.lower() in ("true", "yes", "last", "latest"):
        found = latest_checkpoint(output_dir)
        if found is None:
            raise ResumeError(f"--resume_from_checkpoint {resume_from_checkpoint}: no checkpoint-N in {output_dir}")
        return found
    path = Path(resume_from_checkpoint)
    if not path.is_dir():
        raise ResumeError(f"--resume_from_checkpoint {path}: not a directory")
    missing = [f for f in RESUME_FILES if not (path / f).is_file()]
    if missing:
        raise ResumeError(f"--resume_from_checkpoint {path}: not a complete checkpoint (missing {', '.join(missing)})")
    return path
