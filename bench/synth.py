"""``tooltune synth`` throughput: the offline generator, and the teacher generator at 1 vs N concurrent requests.

Offline: the seed-tools spec with every count scaled by ``--scale`` (so thousands of conversations), generated,
verified (jsonschema + grounding), de-duplicated and split; the best of ``--repeat`` runs is reported as verified
conversations per second, beside the same run with verification skipped (the cost of checking every sample), and
against the issue's goal of 1,000/s.

Teacher: a real ``tooltune serve`` of the embedded GGUF on 127.0.0.1 (started here), ``--teacher-items`` plan items
rewritten with 1 and then ``--concurrency`` requests in flight, each with a fresh cache; prints requests/s and the
ratio. The server gets ``--parallel N`` slots, so the N requests in flight are decoded in one batch.
``--no-teacher`` skips it.

    python bench/synth.py [--scale 20] [--repeat 3] [--teacher-items 8] [--concurrency 4] [--n-threads 2]
"""

from __future__ import annotations

import argparse
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
SPEC = ROOT / "src" / "tooltune" / "resources" / "examples" / "seed_tools" / "synth.yaml"


def offline_rate(scale: int, repeat: int, verify: bool) -> tuple[float, int, int]:
    """Best verified-conversations/s over ``repeat`` runs; also the planned and kept counts."""
    import tooltune.synth.build as build
    from tooltune.synth import load_spec, prepare, synthesize

    spec = load_spec(SPEC)
    spec.counts = {k: v * scale for k, v in spec.counts.items()}
    best, planned, kept = 0.0, 0, 0
    original = build.Verifier
    for _ in range(repeat):
        if not verify:  # the same pipeline with a verifier that accepts everything
            build.Verifier = type("NoCheck", (), {"__init__": lambda self, spec: None,
                                                  "check": lambda self, record: None})
        try:
            start = time.perf_counter()
            plan, offline = prepare(spec)
            result = synthesize(spec, plan, offline=offline)
            seconds = time.perf_counter() - start
        finally:
            build.Verifier = original
        kept = len(result.train) + len(result.test)
        planned = len(plan.items)
        best = max(best, kept / seconds)
    return best, planned, kept


def _serve(n_threads: int, parallel: int) -> tuple[subprocess.Popen, str]:
    from tooltune.default_model import default_gguf_path

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "tooltune", "serve", str(default_gguf_path()), "--port",
                                str(port), "--n-threads", str(n_threads), "--n-ctx", "4096", "--name", "teacher",
                                # as many llama.cpp slots as requests in flight, as OLLAMA_NUM_PARALLEL / vLLM batch
                                "--parallel", str(parallel)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import httpx

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}", timeout=1).status_code == 200:
                return process, f"http://127.0.0.1:{port}/v1"
        except httpx.HTTPError:
            time.sleep(0.2)
    process.terminate()
    raise SystemExit("tooltune serve did not come up")


def teacher_rate(url: str, items: int, concurrency: int) -> tuple[float, int]:
    from rich.console import Console

    from tooltune.synth import load_spec, prepare
    from tooltune.synth.teacher import TeacherConfig, TeacherGenerator

    spec = load_spec(SPEC, {"languages": ["en"]})
    plan, offline = prepare(spec)
    chosen = [i for i in plan.items if i.pattern != "example"][:items]
    with tempfile.TemporaryDirectory() as cache:
        config = TeacherConfig(base_url=url, model="teacher", concurrency=concurrency, cache_dir=Path(cache),
                               max_tokens=48, temperature=0.0)
        teacher = TeacherGenerator(spec, offline, config, console=Console(stderr=True, quiet=True))
        teacher.generate_all(chosen)
    return teacher.stats.requests / teacher.stats.seconds, teacher.stats.failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--teacher-items", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--n-threads", type=int, default=2)
    parser.add_argument("--no-teacher", action="store_true")
    args = parser.parse_args()
    # A `timeout` or Ctrl-C must still stop the server this script started (the finally below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    checked, planned, kept = offline_rate(args.scale, args.repeat, verify=True)
    unchecked, _, unchecked_kept = offline_rate(args.scale, args.repeat, verify=False)
    print(f"offline: {planned} planned, {kept} verified and kept (unverified run keeps {unchecked_kept})")
    print(f"  verified:   {checked:10,.0f} conversations/s  ({checked / 1000:.2f}x the 1,000/s goal)")
    print(f"  unverified: {unchecked:10,.0f} conversations/s  (verification costs {unchecked / checked:.2f}x)")
    if args.no_teacher:
        return
    process, url = _serve(args.n_threads, max(1, args.concurrency))
    try:
        one, failed_one = teacher_rate(url, args.teacher_items, 1)
        many, failed_many = teacher_rate(url, args.teacher_items, args.concurrency)
    finally:
        process.terminate()
        process.wait(20)
    print(f"teacher (tooltune serve --parallel {max(1, args.concurrency)}, embedded SmolLM2 GGUF, "
          f"{args.n_threads} threads, {args.teacher_items} items):")
    print(f"  1 concurrent:  {one:.3f} requests/s ({failed_one} unusable answers)")
    print(f"  {args.concurrency} concurrent:  {many:.3f} requests/s ({failed_many} unusable answers) · "
          f"{many / one:.2f}x")


if __name__ == "__main__":
    main()
