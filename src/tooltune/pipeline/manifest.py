"""The run directory's ``manifest.json``: what each stage consumed, produced, cost, and whether it can be skipped.

A stage's *key* is a hash of its parameters, the content of its input files and the output fingerprints of the
stages it reads from. Re-running with the same key and intact outputs skips the stage; the same key after an
interrupted attempt resumes it (the stage keeps its working directory, so training finds its checkpoints).
Content hashes are cached by (size, mtime) so a re-run does not re-read gigabytes of unchanged weights.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from tooltune import __version__
from tooltune.atomic import write_text

MANIFEST_NAME = "manifest.json"
HASH_CHUNK = 1 << 20
StageStatus = Literal["running", "done", "failed", "interrupted"]
# Packages whose versions change what a stage produces; recorded so a run can be reproduced.
VERSIONED_PACKAGES = ("torch", "transformers", "peft", "accelerate", "gguf", "llama_cpp_python", "tokenizers")


@dataclass
class StageRecord:
    status: StageStatus
    key: str
    started: float
    finished: float | None = None
    wall_seconds: float | None = None
    peak_rss_bytes: int | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    outputs_fingerprint: str | None = None
    summary: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    attempts: int = 1


def package_versions() -> dict[str, str]:
    versions = {"tooltune": __version__, "python": platform.python_version(), "platform": platform.platform()}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=False)


def hash_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class FileHasher:
    """sha256 of files and directories, memoised by (path, size, mtime_ns) across runs via the manifest."""

    def __init__(self, cache: dict[str, list[Any]] | None = None) -> None:
        self.cache: dict[str, list[Any]] = cache if cache is not None else {}

    def file(self, path: Path) -> str:
        stat = path.stat()
        cache_key = str(path.resolve())
        cached = self.cache.get(cache_key)
        if cached and cached[0] == stat.st_size and cached[1] == stat.st_mtime_ns:
            return str(cached[2])
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            while chunk := handle.read(HASH_CHUNK):
                digest.update(chunk)
        hexdigest = digest.hexdigest()
        self.cache[cache_key] = [stat.st_size, stat.st_mtime_ns, hexdigest]
        return hexdigest

    def path(self, path: str | Path) -> str:
        """Content hash of a file, or of a directory's files and their relative names (temp files excluded)."""
        path = Path(path)
        if path.is_file():
            return self.file(path)
        if path.is_dir():
            digest = hashlib.sha256()
            for child in sorted(p for p in path.rglob("*") if p.is_file() and not _is_temporary(p, path)):
                digest.update(child.relative_to(path).as_posix().encode("utf-8"))
                digest.update(self.file(child).encode("ascii"))
            return digest.hexdigest()
        return "missing"


def _is_temporary(child: Path, root: Path) -> bool:
    # Hidden names are atomic-write temporaries or caches; they are not part of a stage's result.
    return any(part.startswith(".") for part in child.relative_to(root).parts)


class Manifest:
    """Load/save ``manifest.json``; every state change is written atomically at once so a kill loses nothing."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / MANIFEST_NAME
        data: dict[str, Any] = {}
        if self.path.is_file():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                data = {}  # a corrupt manifest only costs a re-run; never trust half of it
        self.config: dict[str, Any] = data.get("config", {})
        self.versions: dict[str, str] = data.get("versions", {})
        self.created: float = data.get("created", time.time())
        self.order: list[str] = data.get("stage_order", [])
        self.stages: dict[str, StageRecord] = {}
        for name, raw in data.get("stages", {}).items():
            try:
                self.stages[name] = StageRecord(**raw)
            except TypeError:
                continue
        self.hasher = FileHasher(data.get("hash_cache", {}))

    def save(self) -> None:
        payload = {
            "tooltune_manifest": 1,
            "created": self.created,
            "updated": time.time(),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            # Which process writes this run: a reader can tell a running stage from one whose process was killed
            # before it could record how the stage ended (SIGKILL, out of memory, a power cut).
            "pid": os.getpid(),
            "versions": self.versions,
            "config": self.config,
            "stage_order": self.order,
            "stages": {name: asdict(record) for name, record in self._ordered_stages()},
            "hash_cache": self.hasher.cache,
        }
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_text(self.path, json.dumps(payload, indent=2, default=str, ensure_ascii=False) + "\n")

    def _ordered_stages(self) -> list[tuple[str, StageRecord]]:
        rank = {name: i for i, name in enumerate(self.order)}
        return sorted(self.stages.items(), key=lambda item: rank.get(item[0], len(rank)))

    def resolve(self, stored: str) -> Path:
        """Outputs inside the run directory are stored relative to it, so a run directory can be moved."""
        path = Path(stored)
        return path if path.is_absolute() else self.run_dir / path

    def outputs_fingerprint(self, outputs: dict[str, str]) -> str:
        digests = {name: self.hasher.path(self.resolve(path)) for name, path in sorted(outputs.items())}
        return hash_text(canonical_json(digests))

    def outputs_intact(self, record: StageRecord) -> bool:
        if any(not self.resolve(path).exists() for path in record.outputs.values()):
            return False
        return self.outputs_fingerprint(record.outputs) == record.outputs_fingerprint


def stage_key(name: str, params: dict[str, Any], inputs: dict[str, str], upstream: dict[str, str]) -> str:
    return hash_text(canonical_json({"stage": name, "params": params, "inputs": inputs, "upstream": upstream}))


def read_manifest(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / MANIFEST_NAME
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
