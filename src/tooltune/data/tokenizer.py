"""Load the tokenizer a dataset is encoded with: an HF folder, or a .gguf file (the embedded default model).

Reading a tokenizer out of a GGUF with transformers takes tens of seconds on a small CPU, so the converted tokenizer
is saved once under the cache folder, keyed by the file's name, size and mtime.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tooltune.data.errors import DataError


def _gguf_cache(path: Path) -> Path:
    from tooltune.default_model import cache_dir

    stat = path.stat()
    return cache_dir() / "tokenizers" / f"{path.stem}-{stat.st_size}-{int(stat.st_mtime)}"


def load_tokenizer(model_name_or_path: str | Path | None = None, trust_remote_code: bool = False) -> Any:
    """``AutoTokenizer.from_pretrained`` on local files only (no hub, no remote code unless asked)."""
    from transformers import AutoTokenizer

    if model_name_or_path is None:
        from tooltune.default_model import default_gguf_path

        path = default_gguf_path()
    else:
        path = Path(model_name_or_path)
    if not path.exists():
        raise DataError(f"{path}: no such model folder or file (tooltune loads local files only)")
    if path.is_file() and path.suffix == ".gguf":
        cached = _gguf_cache(path)
        if (cached / "tokenizer_config.json").is_file():
            return AutoTokenizer.from_pretrained(cached, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
        from tooltune.atomic import atomic_dir

        with atomic_dir(cached) as tmp:
            tokenizer.save_pretrained(tmp)
        return tokenizer
    if path.is_file():
        path = path.parent
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot load a tokenizer ({exc})") from exc
