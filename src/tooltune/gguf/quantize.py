"""Quantize a GGUF with llama.cpp's own quantizer (``llama_model_quantize`` from llama-cpp-python).

The quantizer runs in-process from the same llama.cpp build that later loads the file, so converter, quantizer and
runtime cannot drift apart, and no llama.cpp checkout or ``llama-quantize`` binary is needed.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import gguf
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from tooltune.atomic import atomic_path
from tooltune.errors import TooltuneError
from tooltune.gguf.convert import make_readable
from tooltune.gguf.header import GGUFHeader, GGUFHeaderError, read_gguf_header
from tooltune.gguf.quantize_log import Fallbacks, llama_log_to_file, parse_fallbacks

# llama-quantize's types → llama_ftype values (llama.h). Aliases map like the CLI's (Q4_K → Q4_K_M).
QUANT_TYPES: dict[str, int] = {
    "Q1_0": 40, "Q2_0": 41,
    "Q4_0": 2, "Q4_1": 3, "Q5_0": 8, "Q5_1": 9, "Q8_0": 7,
    "MXFP4_MOE": 38,
    "IQ2_XXS": 19, "IQ2_XS": 20, "IQ2_S": 28, "IQ2_M": 29, "IQ1_S": 24, "IQ1_M": 31,
    "TQ1_0": 36, "TQ2_0": 37,
    "Q2_K": 10, "Q2_K_S": 21,
    "IQ3_XXS": 23, "IQ3_S": 26, "IQ3_M": 27, "IQ3_XS": 22,
    "Q3_K": 12, "Q3_K_S": 11, "Q3_K_M": 12, "Q3_K_L": 13,
    "IQ4_NL": 25, "IQ4_XS": 30,
    "Q4_K": 15, "Q4_K_S": 14, "Q4_K_M": 15,
    "Q5_K": 17, "Q5_K_S": 16, "Q5_K_M": 17,
    "Q6_K": 18,
    "F16": 1, "BF16": 32, "F32": 0,
}
# Very low-bit types that llama.cpp refuses to produce without an importance matrix.
# (llama-quant.cpp: IQ1_*, IQ2_XXS/XS/S and IQ3_XXS tensors, and the Q2_K tensors of a Q2_K_S file.)
NEEDS_IMATRIX = frozenset({"IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ3_XXS", "Q2_K_S"})
_FLOAT_TYPES = (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.BF16)


class QuantizeError(TooltuneError):
    pass


@dataclass(frozen=True)
class GGUFSize:
    file_bytes: int
    tensor_bytes: int
    n_elements: int

    @property
    def bits_per_weight(self) -> float:
        return self.tensor_bytes * 8 / self.n_elements if self.n_elements else 0.0


@dataclass(frozen=True)
class QuantizeResult:
    input: Path
    output: Path
    qtype: str
    size_bytes: int
    bits_per_weight: float
    seconds: float
    threads: int
    log_path: Path | None = None
    fallbacks: Fallbacks = field(default_factory=Fallbacks)

    def summary(self) -> str:
        text = (f"{self.qtype}: {self.output} · {self.size_bytes / 2**20:.1f} MiB · "
                f"{self.bits_per_weight:.2f} bits/weight"
                f" · {self.seconds:.1f}s on {self.threads} threads")
        if self.log_path is not None:
            text += f" · {self.fallbacks.summary()} (llama.cpp log: {self.log_path})"
        return text


def quantize_log_path(out: Path) -> Path:
    """Where llama.cpp's per-tensor log of quantizing into ``out`` is kept: beside it, ``<stem>.quantize.log``."""
    return out.with_name(f"{out.stem}.quantize.log")


def check_gguf(
    path: Path, error: type[TooltuneError] | None = None, hint: str = "; convert it first with `tooltune gguf`"
) -> GGUFHeader:
    """Read ``path``'s metadata and tensor index, or raise ``error`` (QuantizeError by default) in one line saying
    what it is instead. The struct reader takes ~0.05 s where gguf-py's GGUFReader took ~2.3 s on SmolLM2's 49k-token
    vocabulary (one numpy view per element, bench/gguf_header.py); a file shorter than its tensors is damaged."""
    error = error or QuantizeError
    if not path.is_file():
        raise error(f"{path}: no such file")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise error(f"{path}: not a GGUF file (starts with {magic!r}){hint}")
    try:
        header = read_gguf_header(path)
    except GGUFHeaderError as exc:
        raise error(f"{path}: damaged GGUF ({exc})") from None
    end = max((header.data_offset + t.offset + t.nbytes for t in header.tensors.values()), default=0)
    size = path.stat().st_size
    if end > size:
        raise error(f"{path}: damaged GGUF (truncated: its tensors end at byte {end:,}, the file has {size:,})")
    return header


def open_gguf_reader(path: Path, error: type[TooltuneError] | None = None, hint: str = "") -> gguf.GGUFReader:
    """gguf-py's reader, for callers that need the tensor data as numpy arrays (slow to open: see check_gguf)."""
    error = error or QuantizeError
    check_gguf(path, error, hint)
    try:
        return gguf.GGUFReader(path)
    except Exception as exc:  # gguf-py raises ValueError/struct.error on damaged or truncated files
        raise error(f"{path}: damaged GGUF ({exc})") from None


def gguf_size(header: GGUFHeader) -> GGUFSize:
    """File size, tensor bytes and weight count of a file already read; bits/weight = tensor bytes × 8 / weights, as
    llama-quantize prints."""
    tensors = header.tensors.values()
    return GGUFSize(header.path.stat().st_size, sum(t.nbytes for t in tensors),
                    sum(math.prod(t.shape) for t in tensors))


def measure_gguf(path: str | Path) -> GGUFSize:
    """``gguf_size`` of the file at ``path``, checked first."""
    return gguf_size(check_gguf(Path(path)))


def normalise_type(qtype: str) -> str:
    name = qtype.strip().upper()
    if name not in QUANT_TYPES:
        raise QuantizeError(f"unknown quantization type {qtype!r}; choose one of: {', '.join(QUANT_TYPES)}")
    return name


def quantize_gguf(
    inp: str | Path,
    out: str | Path,
    qtype: str,
    threads: int | None = None,
    allow_requantize: bool = False,
    show_progress: bool = True,
) -> QuantizeResult:
    """Quantize ``inp`` into ``out`` as ``qtype`` with llama.cpp, writing under a temporary name first."""
    inp, out = Path(inp), Path(out)
    name = normalise_type(qtype)
    if name in NEEDS_IMATRIX:
        raise QuantizeError(f"{name} needs an importance matrix, which tooltune quantize does not compute; use Q2_K, "
                            f"Q3_K_M or IQ3_M and up")
    header = check_gguf(inp)
    quantized = sorted({t.qtype.name for t in header.tensors.values() if t.qtype not in _FLOAT_TYPES})
    if quantized and not allow_requantize:
        raise QuantizeError(f"{inp}: already quantized ({', '.join(quantized)}); requantizing loses quality, pass "
                            f"--allow-requantize to do it anyway (better: quantize the F16/BF16 file)")
    if inp.resolve() == out.resolve():
        raise QuantizeError(f"{out}: output would overwrite the input")

    import llama_cpp

    from tooltune.engines import default_threads

    n_threads = threads or default_threads()  # TOOLTUNE_THREADS, as every engine
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANT_TYPES[name]
    params.nthread = n_threads
    params.allow_requantize = allow_requantize

    log_path = quantize_log_path(out)
    start = time.perf_counter()
    with atomic_path(out) as tmp:
        # One llama.cpp line per tensor goes to the log file, not the terminal; the summary line counts fallbacks.
        with llama_log_to_file(log_path):
            status = _run_with_progress(lambda: llama_cpp.llama_model_quantize(
                str(inp).encode(), str(tmp).encode(), params), tmp, name, show_progress)
        if status == 0:
            make_readable(tmp)
        if status != 0:
            raise QuantizeError(f"llama.cpp could not quantize {inp} to {name} (status {status}; see {log_path}; "
                                f"very low-bit IQ types may need an importance matrix)")
    seconds = time.perf_counter() - start
    size = measure_gguf(out)
    fallbacks = parse_fallbacks(log_path.read_text(encoding="utf-8", errors="replace"))
    return QuantizeResult(inp, out, name, size.file_bytes, size.bits_per_weight, seconds, n_threads, log_path,
                          fallbacks)


def _run_with_progress(job: callable, watched: Path, label: str, show: bool) -> int:  # type: ignore[valid-type]
    """Run the blocking llama.cpp call on a thread and show the output growing, since it reports no progress itself."""
    outcome: dict[str, int | BaseException] = {}

    def target() -> None:
        try:
            outcome["status"] = job()
        except BaseException as exc:  # re-raised on the caller's thread
            outcome["error"] = exc

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    if show:
        with Progress(SpinnerColumn(), TextColumn("quantize {task.description}"), TextColumn("{task.fields[size]}"),
                      TimeElapsedColumn(), transient=True) as progress:
            task = progress.add_task(label, size="")
            while worker.is_alive():
                worker.join(0.2)
                written = watched.stat().st_size if watched.exists() else 0
                progress.update(task, size=f"{written / 2**20:.1f} MiB written")
    worker.join()
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return int(outcome["status"])  # type: ignore[arg-type]
