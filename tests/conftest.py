"""Shared fixtures: real tokenizers, the embedded default GGUF, demo data and tiny random models built once."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).parent
sys.path.insert(0, str(TESTS_DIR))

from tiny_models import QWEN_TOKENIZER, SMOLLM2_TOKENIZER, make_tiny_llama, make_tiny_qwen2  # noqa: E402

DEMO_DATA_DIR = TESTS_DIR.parent / "src" / "tooltune" / "resources" / "data"


@pytest.fixture(scope="session")
def qwen_tokenizer_dir() -> Path:
    return QWEN_TOKENIZER


@pytest.fixture(scope="session")
def smollm2_tokenizer_dir() -> Path:
    return SMOLLM2_TOKENIZER


@pytest.fixture(scope="session")
def demo_data_dir() -> Path:
    return DEMO_DATA_DIR


@pytest.fixture(scope="session")
def default_gguf() -> Path:
    from tooltune.default_model import default_gguf_path

    return default_gguf_path()


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny_llama") / "model")


@pytest.fixture(scope="session")
def tiny_qwen2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_qwen2(tmp_path_factory.mktemp("tiny_qwen2") / "model")


@pytest.fixture(scope="session")
def tiny_family_model(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``get(family)``: the family's tiny random model (tiny_models.FAMILY_BUILDERS), built on first use and shared by
    every test module of the session (GGUF parity, serving)."""
    from tiny_models import FAMILY_BUILDERS

    built: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in built:
            built[family] = FAMILY_BUILDERS[family](tmp_path_factory.mktemp(f"family-{family}") / family)
        return built[family]

    return get

