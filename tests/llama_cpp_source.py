"""llama.cpp's own Python converters, taken from the source package of the installed llama-cpp-python (the same
version whose runtime loads our files), for parity tests. Cached between runs like bench/gguf.py's baseline."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

CACHE = Path(os.environ.get("TOOLTUNE_BENCH_CACHE", Path(tempfile.gettempdir()) / "tooltune-bench"))


def llama_cpp_script(name: str) -> Path | None:
    """``vendor/llama.cpp/<name>`` from the llama-cpp-python sdist (fetched with pip once); None if unavailable."""
    try:
        from importlib.metadata import version

        llama_version = version("llama-cpp-python")
    except Exception:
        return None
    root = CACHE / f"llama-cpp-python-{llama_version}"
    script = root / "vendor" / "llama.cpp" / name
    if script.is_file():
        return script
    CACHE.mkdir(parents=True, exist_ok=True)
    result = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                             f"llama-cpp-python=={llama_version}", "-d", str(CACHE)], capture_output=True)
    archive = CACHE / f"llama_cpp_python-{llama_version}.tar.gz"
    if result.returncode != 0 or not archive.is_file():
        return None
    if not root.is_dir():
        with tarfile.open(archive) as tar:
            tar.extractall(CACHE, filter="data")
        (CACHE / f"llama_cpp_python-{llama_version}").rename(root)
    return script if script.is_file() else None
