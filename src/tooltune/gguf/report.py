"""The seed's format-comparison table, measured: size, bits/weight, perplexity, KL divergence and decode speed.

llama.cpp (through llama-cpp-python) evaluates every file on the same held-out tokens, chunk by chunk with fresh
context, like ``llama-perplexity``. The first file is the reference: its next-token log-probabilities are kept on disk
(a memory map, so a large vocabulary never has to fit in RAM twice) and every other file's mean KL divergence from
it is computed position by position, which is what ``llama-perplexity --kl-divergence`` reports.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from tooltune.errors import TooltuneError
from tooltune.gguf.header import GGUFHeader
from tooltune.gguf.quantize import check_gguf, gguf_size

DEMO_TEXT_FILE = Path(__file__).resolve().parent.parent / "resources" / "data" / "glaive_toolcall_en_demo.json"


class ReportError(TooltuneError):
    pass


@dataclass
class FileRow:
    file: str
    file_type: str
    size_mib: float
    bits_per_weight: float
    perplexity: float
    mean_kl: float | None  # None for the reference file itself
    top1_agreement: float | None  # share of positions whose argmax equals the reference's
    decode_tokens_per_s: float


@dataclass
class Report:
    reference: str
    text_source: str
    n_tokens_scored: int
    chunk_size: int
    threads: int
    rows: list[FileRow] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def to_markdown(self) -> str:
        lines = [
            f"Reference: `{self.reference}` · {self.n_tokens_scored} tokens of {self.text_source} scored in chunks of "
            f"{self.chunk_size} · decode speed on {self.threads} CPU threads",
            "",
            "| file | type | size (MiB) | bits/weight | perplexity | mean KL vs ref | top-1 agree | decode tok/s |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for row in self.rows:
            kl = "—" if row.mean_kl is None else f"{row.mean_kl:.5f}"
            agree = "—" if row.top1_agreement is None else f"{row.top1_agreement * 100:.1f}%"
            lines.append(f"| {Path(row.file).name} | {row.file_type} | {row.size_mib:.1f} | "
                         f"{row.bits_per_weight:.2f} | "
                         f"{row.perplexity:.3f} | {kl} | {agree} | {row.decode_tokens_per_s:.1f} |")
        return "\n".join(lines) + "\n"


def default_text() -> tuple[str, str]:
    """Held-out text when none is given: the English tool-calling demo conversations, flattened to plain text."""
    records = json.loads(DEMO_TEXT_FILE.read_text(encoding="utf-8"))
    parts = []
    for record in records:
        for turn in record.get("conversations", []):
            parts.append(str(turn.get("value", "")))
    return "\n\n".join(parts), DEMO_TEXT_FILE.name


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _file_type(header: GGUFHeader) -> str:
    import gguf

    value = header.metadata.get("general.file_type")
    if value is None:
        return "?"
    try:
        return gguf.LlamaFileType(int(value)).name.removeprefix("MOSTLY_").removeprefix("ALL_")
    except ValueError:
        return str(value)


def _load(path: Path, n_ctx: int, threads: int) -> Any:
    from llama_cpp import Llama

    return Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, logits_all=True,
                 n_threads=threads, n_threads_batch=threads, verbose=False, seed=0)


def _decode_speed(llm: Any, prompt: list[int], n_tokens: int) -> float:
    """Greedy decode tokens/s after the prompt is evaluated (prompt time excluded, as llama-bench's tg test)."""
    llm.reset()
    llm.eval(prompt)
    start = time.perf_counter()
    for _ in range(n_tokens):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        llm.eval([token])
    return n_tokens / (time.perf_counter() - start)


def gguf_report(
    files: list[str | Path],
    text: str | None = None,
    text_file: str | Path | None = None,
    max_tokens: int = 1024,
    chunk_size: int = 256,
    decode_tokens: int = 64,
    threads: int | None = None,
    show_progress: bool = True,
) -> Report:
    """Measure every GGUF in ``files`` against the first one on the same held-out text."""
    paths = [Path(f) for f in files]
    if not paths:
        raise ReportError("give at least one GGUF file (the first is the reference)")
    headers = [check_gguf(path) for path in paths]  # each file read once: checked here, sized and typed below
    if text is None and text_file is not None:
        source = Path(text_file)
        if not source.is_file():
            raise ReportError(f"{source}: no such text file")
        text, source_name = source.read_text(encoding="utf-8"), source.name
    elif text is None:
        text, source_name = default_text()
    else:
        source_name = "the given text"
    from tooltune.engines import default_threads

    n_threads = threads or default_threads()  # TOOLTUNE_THREADS, as every engine

    reference = _load(paths[0], chunk_size, n_threads)
    tokens = reference.tokenize(text.encode("utf-8"), add_bos=False, special=False)[:max_tokens]
    n_chunks = len(tokens) // chunk_size
    if n_chunks == 0:
        raise ReportError(f"{source_name}: only {len(tokens)} tokens; need at least one chunk of {chunk_size}")
    tokens = tokens[: n_chunks * chunk_size]
    n_vocab = reference.n_vocab()
    # Each chunk scores its positions 1..n-1 (position 0 has no context), like llama-perplexity's first half skip
    # but keeping more positions because our texts are short.
    scored_per_chunk = chunk_size - 1
    rows: list[FileRow] = []
    decode_prompt = tokens[:32]
    # The same context scores chunks and then times decoding after a prompt: it must hold both.
    n_ctx = max(chunk_size, len(decode_prompt) + decode_tokens)
    del reference

    with tempfile.TemporaryDirectory(prefix="tooltune-report-") as tmp:
        ref_logprobs = np.lib.format.open_memmap(Path(tmp) / "ref.npy", mode="w+", dtype=np.float32,
                                                 shape=(n_chunks * scored_per_chunk, n_vocab))
        progress = Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), transient=True,
                            disable=not show_progress)
        with progress:
            for index, (path, header) in enumerate(zip(paths, headers, strict=True)):
                task = progress.add_task(f"evaluate {path.name}", total=n_chunks + 1)
                llm = _load(path, n_ctx, n_threads)
                if llm.n_vocab() != n_vocab:
                    raise ReportError(f"{path}: vocabulary of {llm.n_vocab()} tokens, the reference has {n_vocab}")
                nll_sum, kl_sum, agree = 0.0, 0.0, 0
                for chunk in range(n_chunks):
                    ids = tokens[chunk * chunk_size:(chunk + 1) * chunk_size]
                    llm.reset()
                    llm.eval(ids)
                    logprobs = _log_softmax(np.asarray(llm.scores[: chunk_size - 1], dtype=np.float64))
                    targets = np.asarray(ids[1:])
                    nll_sum -= float(logprobs[np.arange(chunk_size - 1), targets].sum())
                    rows_slice = slice(chunk * scored_per_chunk, (chunk + 1) * scored_per_chunk)
                    if index == 0:
                        ref_logprobs[rows_slice] = logprobs
                    else:
                        ref = np.asarray(ref_logprobs[rows_slice], dtype=np.float64)
                        kl_sum += float((np.exp(ref) * (ref - logprobs)).sum())
                        agree += int((ref.argmax(axis=-1) == logprobs.argmax(axis=-1)).sum())
                    progress.advance(task)
                n_scored = n_chunks * scored_per_chunk
                speed = _decode_speed(llm, decode_prompt, decode_tokens)
                progress.advance(task)
                size = gguf_size(header)
                rows.append(FileRow(
                    file=str(path),
                    file_type=_file_type(header),
                    size_mib=size.file_bytes / 2**20,
                    bits_per_weight=size.bits_per_weight,
                    perplexity=float(np.exp(nll_sum / n_scored)),
                    mean_kl=None if index == 0 else kl_sum / n_scored,
                    top1_agreement=None if index == 0 else agree / n_scored,
                    decode_tokens_per_s=speed,
                ))
                del llm
        del ref_logprobs
    return Report(str(paths[0]), source_name, n_chunks * scored_per_chunk, chunk_size, n_threads, rows)
