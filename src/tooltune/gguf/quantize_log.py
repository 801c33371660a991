"""Keep llama.cpp's quantizer log in a file and sum it up in one line.

``llama_model_quantize`` logs one line per tensor (and one warning per tensor whose row length does not fit the
target type's block — every tensor of SmolLM2, whose rows are 576 wide), which floods a terminal. While it runs, the
llama.cpp log callback writes to a file instead; afterwards the fallbacks are counted from that text.
"""

from __future__ import annotations

import ctypes
import re
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

# llama-quant.cpp, tensor_type_fallback():
#   "warning: <name> - ncols 576 not divisible by 256 (required for type q4_K) [(WARNING: must use F16 ...)]
#    -> falling back to q5_0"
_FALLBACK = re.compile(
    r"ncols\s+(?P<ncols>\d+)\s+not divisible by\s+(?P<block>\d+)\s+\(required for type\s+(?P<target>\S+)\)"
    r"\s*(?:\(WARNING:[^)]*\)\s*)?->\s*falling back to\s+(?P<fallback>\S+)"
)
_TENSOR_COUNT = re.compile(r"(\d+) of (\d+) tensor\(s\) required fallback quantization")


@dataclass(frozen=True)
class Fallbacks:
    """How many tensors llama.cpp could not store in the asked type, and why (grouped)."""

    # (row length, block size, asked type, type used) → tensor count
    groups: dict[tuple[int, int, str, str], int] = field(default_factory=dict)
    total_tensors: int | None = None

    @property
    def count(self) -> int:
        return sum(self.groups.values())

    def summary(self) -> str:
        if not self.groups:
            return "no tensor fell back"
        of = f" of {self.total_tensors}" if self.total_tensors else ""
        parts = [
            f"{n}× {target}→{fallback} (rows of {ncols} not divisible by {block})"
            for (ncols, block, target, fallback), n in sorted(self.groups.items(), key=lambda kv: -kv[1])
        ]
        return f"{self.count}{of} tensors fell back: {', '.join(parts)}"


def parse_fallbacks(log_text: str) -> Fallbacks:
    groups: Counter[tuple[int, int, str, str]] = Counter()
    for match in _FALLBACK.finditer(log_text):
        groups[(int(match["ncols"]), int(match["block"]), match["target"], match["fallback"])] += 1
    total = _TENSOR_COUNT.search(log_text)
    return Fallbacks(dict(groups), int(total.group(2)) if total else None)


@contextmanager
def llama_log_to_file(path: Path) -> Iterator[Path]:
    """Send llama.cpp's log (from any thread) to ``path`` while the block runs, then restore the previous callback."""
    import llama_cpp

    lock = threading.Lock()
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("w", encoding="utf-8")

    # ggml_log_callback(level, text, user_data); kept referenced for the whole block so ctypes does not free it.
    @llama_cpp.llama_log_callback
    def to_file(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        with lock:
            handle.write(text.decode("utf-8", errors="replace"))

    previous = _current_callback(llama_cpp)
    llama_cpp.llama_log_set(to_file, ctypes.c_void_p(0))
    try:
        yield path
    finally:
        if previous is None:
            from llama_cpp import _logger

            llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
        else:
            llama_cpp.llama_log_set(*previous)
        with lock:
            handle.close()


def _current_callback(llama_cpp: object) -> tuple[object, ctypes.c_void_p] | None:
    get = getattr(llama_cpp, "llama_log_get", None)
    if get is None:  # older llama.cpp: fall back to llama-cpp-python's own logger
        return None
    callback = llama_cpp.llama_log_callback()  # type: ignore[attr-defined]
    user_data = ctypes.c_void_p()
    get(ctypes.byref(callback), ctypes.byref(user_data))
    return (callback, user_data) if callback else None
