"""Benchmark: reading a GGUF's metadata and tensor index — tooltune's struct reader against gguf-py's GGUFReader.

The quantize stage reads each file's header to check it, size it (bits/weight) and name its type, and the quality
table reads it again per file. gguf-py's reader makes one numpy view per element of every metadata array (49k
vocabulary strings, 48k merges on SmolLM2), so each read took seconds. Both readers run on the same file, best of
``--repeat``; the figures they produce (tensor bytes, weights, file type) are checked equal.

    python bench/gguf_header.py [GGUF ...] [--repeat 3]     # default: the embedded SmolLM2-135M Q4_1 GGUF
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

# bench/gguf.py sits beside this file: drop this folder from the import path so `import gguf` finds gguf-py.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import gguf  # noqa: E402

from tooltune.gguf.quantize import check_gguf, gguf_size  # noqa: E402


def with_gguf_py(path: Path) -> tuple[int, int, int]:
    reader = gguf.GGUFReader(path)
    return (sum(int(t.n_bytes) for t in reader.tensors), sum(int(t.n_elements) for t in reader.tensors),
            int(reader.fields["general.file_type"].contents()))


def with_tooltune(path: Path) -> tuple[int, int, int]:
    header = check_gguf(path)  # what the quantize stage now does: one read, checked, sized and typed
    size = gguf_size(header)
    return size.tensor_bytes, size.n_elements, int(header.metadata["general.file_type"])


def best_of(repeat: int, job, path: Path) -> tuple[float, tuple[int, int, int]]:
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = job(path)
        times.append(time.perf_counter() - start)
    return min(times), result  # type: ignore[return-value]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="*", type=Path)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if not args.files:
        from tooltune.default_model import default_gguf_path

        args.files = [default_gguf_path()]
    for path in args.files:
        theirs_s, theirs = best_of(args.repeat, with_gguf_py, path)
        ours_s, ours = best_of(args.repeat, with_tooltune, path)
        assert ours == theirs, (path, ours, theirs)  # the same figures from both readers
        print(f"{path.name}: gguf-py GGUFReader {theirs_s:.3f} s, tooltune {ours_s:.3f} s → "
              f"{theirs_s / ours_s:.1f}× faster; {theirs[0]:,} tensor bytes, {theirs[1]:,} weights, file type "
              f"{theirs[2]}")


if __name__ == "__main__":
    main()
