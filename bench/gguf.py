"""Benchmark: `tooltune gguf` against llama.cpp's convert_hf_to_gguf.py on the same checkpoint.

Both run as fresh processes on the imported SmolLM2-135M checkpoint (or --model-dir); wall time and peak RSS come from
``os.wait4``. The baseline is the converter shipped in the llama-cpp-python source package of the installed version
(with its bundled gguf-py), fetched with ``pip download --no-deps --no-binary :all:`` unless --llama-cpp-src is given.
The two output files are then compared tensor by tensor (type, shape, bytes) and key by key.

    python bench/gguf.py [--model-dir DIR] [--outtype f16] [--repeat 1] [--llama-cpp-src DIR]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

# This file is named gguf.py: drop its own folder from the import path so `import gguf` finds gguf-py, not itself.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import gguf  # noqa: E402
import numpy as np  # noqa: E402

CACHE = Path(os.environ.get("TOOLTUNE_BENCH_CACHE", Path(tempfile.gettempdir()) / "tooltune-bench"))


def run_measured(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"command failed: {' '.join(cmd)}\n{stderr[-2000:]}")
    return seconds, usage.ru_maxrss / 1024  # Linux reports KiB


def llama_cpp_converter(explicit: str | None) -> Path | None:
    if explicit:
        script = Path(explicit) / "convert_hf_to_gguf.py"
        return script if script.is_file() else None
    try:
        from importlib.metadata import version

        llama_version = version("llama-cpp-python")
    except Exception:
        return None
    root = CACHE / f"llama-cpp-python-{llama_version}"
    script = root / "vendor" / "llama.cpp" / "convert_hf_to_gguf.py"
    if script.is_file():
        return script
    CACHE.mkdir(parents=True, exist_ok=True)
    result = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                             f"llama-cpp-python=={llama_version}", "-d", str(CACHE)], capture_output=True)
    archive = CACHE / f"llama_cpp_python-{llama_version}.tar.gz"
    if result.returncode != 0 or not archive.is_file():
        return None
    with tarfile.open(archive) as tar:
        tar.extractall(CACHE, filter="data")
    (CACHE / f"llama_cpp_python-{llama_version}").rename(root)
    return script if script.is_file() else None


def compare(ours: Path, theirs: Path) -> tuple[int, int, list[str]]:
    a, b = gguf.GGUFReader(ours), gguf.GGUFReader(theirs)
    ta, tb = {t.name: t for t in a.tensors}, {t.name: t for t in b.tensors}
    differing = sorted(set(ta) ^ set(tb))
    for name in set(ta) & set(tb):
        x, y = ta[name], tb[name]
        same = (x.tensor_type == y.tensor_type and list(x.shape) == list(y.shape)
                and np.asarray(x.data).tobytes() == np.asarray(y.data).tobytes())
        if not same:
            differing.append(name)
    key_diffs = []
    for key in sorted(set(a.fields) | set(b.fields)):
        if key.startswith("GGUF."):
            continue
        fa, fb = a.fields.get(key), b.fields.get(key)
        if fa is None or fb is None or fa.contents() != fb.contents():
            key_diffs.append(key)
    return len(differing), len(ta), key_diffs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", help="HF checkpoint (default: the embedded SmolLM2-135M, imported)")
    parser.add_argument("--outtype", default="f16", choices=["f16", "bf16", "f32", "q8_0"])
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--llama-cpp-src", help="llama.cpp source dir holding convert_hf_to_gguf.py")
    args = parser.parse_args()

    if args.model_dir:
        model_dir = Path(args.model_dir)
    else:
        from tooltune.gguf.import_gguf import ensure_default_model

        model_dir = ensure_default_model()
    work = Path(tempfile.mkdtemp(prefix="bench-gguf-"))
    ours_out, theirs_out = work / "ours.gguf", work / "theirs.gguf"
    ours_cmd = [sys.executable, "-c", "from tooltune.cli import run; run()", "gguf", str(model_dir),
                "--outfile", str(ours_out), "--outtype", args.outtype]
    script = llama_cpp_converter(args.llama_cpp_src)

    ours_runs = [run_measured(ours_cmd) for _ in range(args.repeat)]
    ours_s, ours_rss = min(r[0] for r in ours_runs), max(r[1] for r in ours_runs)
    print(f"model: {model_dir} · outtype {args.outtype} · best of {args.repeat}")
    print(f"tooltune gguf          : {ours_s:7.1f} s  peak RSS {ours_rss:7.0f} MiB")
    if script is None:
        print("llama.cpp convert_hf_to_gguf.py: unavailable (no llama-cpp-python sdist); no baseline this run")
        return
    theirs_cmd = [sys.executable, str(script), str(model_dir), "--outfile", str(theirs_out), "--outtype", args.outtype]
    theirs_runs = [run_measured(theirs_cmd) for _ in range(args.repeat)]
    theirs_s, theirs_rss = min(r[0] for r in theirs_runs), max(r[1] for r in theirs_runs)
    print(f"convert_hf_to_gguf.py  : {theirs_s:7.1f} s  peak RSS {theirs_rss:7.0f} MiB  ({script})")
    print(f"ratio tooltune/llama.cpp: time {ours_s / theirs_s:.2f}x · peak RSS {ours_rss / theirs_rss:.2f}x")
    n_diff, n_total, key_diffs = compare(ours_out, theirs_out)
    print(f"tensors differing: {n_diff} of {n_total} · metadata keys differing: {len(key_diffs)} {key_diffs or ''}")
    print(f"files byte-identical: {ours_out.read_bytes() == theirs_out.read_bytes()}")


if __name__ == "__main__":
    main()
