"""Peak resident memory of one stage, not of the whole process so far.

``ru_maxrss`` only ever grows, so after training every later stage would report training's peak. On Linux the
kernel lets a process reset its own high-water mark (``echo 5 > /proc/self/clear_refs``); elsewhere a sampling
thread takes the maximum of the current RSS every 50 ms. Child processes (e.g. a converter run as a subprocess)
are covered by ``RUSAGE_CHILDREN`` when their peak exceeds ours.
"""

from __future__ import annotations

import resource
import sys
import threading
from pathlib import Path

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")
SAMPLE_SECONDS = 0.05


def _status_kib(field: str) -> int | None:
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def current_rss_bytes() -> int:
    kib = _status_kib("VmRSS")
    if kib is not None:
        return kib * 1024
    return _maxrss_bytes(resource.RUSAGE_SELF)


def _maxrss_bytes(who: int) -> int:
    value = resource.getrusage(who).ru_maxrss
    return value if sys.platform == "darwin" else value * 1024  # Linux reports KiB, macOS bytes


def _reset_high_water_mark() -> bool:
    try:
        CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return _status_kib("VmHWM") is not None


class PeakMemory:
    """``with PeakMemory() as peak: ...`` then ``peak.bytes`` holds the stage's peak RSS."""

    def __init__(self) -> None:
        self.bytes = 0
        self._use_hwm = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._children_before = 0

    def __enter__(self) -> PeakMemory:
        self._children_before = _maxrss_bytes(resource.RUSAGE_CHILDREN)
        self._use_hwm = _reset_high_water_mark()
        self.bytes = current_rss_bytes()
        if not self._use_hwm:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            self.bytes = max(self.bytes, current_rss_bytes())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._use_hwm:
            self.bytes = max(self.bytes, (_status_kib("VmHWM") or 0) * 1024)
        self.bytes = max(self.bytes, current_rss_bytes())
        children = _maxrss_bytes(resource.RUSAGE_CHILDREN)
        if children > self._children_before:
            self.bytes = max(self.bytes, children)


def format_bytes(count: int | None) -> str:
    if count is None:
        return "-"
    if count >= 1 << 30:
        return f"{count / (1 << 30):.2f} GB"
    if count >= 1 << 20:
        return f"{count / (1 << 20):.0f} MB"
    return f"{count / 1024:.0f} KB"
