"""Web UI speed, measured in headless Chromium against a real `tooltune ui` server on 127.0.0.1.

- Data page, 10,000 samples (the demo data repeated): time from navigation to the first sample on screen, cold
  (encoding included) — side by side with `tooltune preprocess` on the same data, which does the same encoding and
  nothing else (ratio = page / preprocess; the UI's overhead is the ratio above 1) — then warm: the next page and a
  search over all 10,000 samples.
- Run page with a 5,000-step training log: time to the stages table and the full loss chart.
- Live loss: delay from a training step appended to trainer_log.jsonl to its point on the chart (goal: < 1 s),
  over ``--steps`` appended steps.

    PYTHONPATH=src python bench/ui.py [--samples 10000] [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from ui_support import CHROMIUM, CHROMIUM_FLAGS, RunningApp, make_workspace, write_run  # noqa: E402

from tooltune.ui.server import build_ui  # noqa: E402

DEMO = ROOT / "src" / "tooltune" / "resources" / "data" / "glaive_toolcall_en_demo.json"


def write_big_dataset(workspace: Path, samples: int) -> str:
    records = json.loads(DEMO.read_text(encoding="utf-8"))
    out = workspace / "big.jsonl"
    with out.open("w", encoding="utf-8") as handle:
        for i in range(samples):
            handle.write(json.dumps(records[i % len(records)], ensure_ascii=False) + "\n")
    return out.name


def time_preprocess(workspace: Path, dataset: str) -> float:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tooltune", "preprocess", "--dataset", str(workspace / dataset),
                    "--model_name_or_path", str(workspace / "tok"), "--out", str(workspace / "pre.jsonl")],
                   check=True, capture_output=True, env=env)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        workspace = make_workspace(Path(tmp) / "ws")
        dataset = write_big_dataset(workspace, args.samples)
        run_dir = write_run(workspace, "long", [2.5 * 0.9995**i + 0.5 for i in range(5000)])
        live_dir = write_run(workspace, "live", [2.0])
        server = RunningApp(build_ui(str(workspace)))
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
                page = browser.new_page(viewport={"width": 1280, "height": 860})
                page.set_default_timeout(600_000)

                started = time.perf_counter()
                page.goto(f"{server.url}/ui/data?dataset={dataset}&model=tok")
                page.wait_for_selector("#main:not([data-loading]) .sample")
                cold = time.perf_counter() - started
                started = time.perf_counter()
                page.click("button:has-text('next')")
                page.wait_for_function("document.querySelector('#page-info').textContent.startsWith('page 2 ')")
                page.wait_for_selector("#main:not([data-loading]) .sample")
                next_page = time.perf_counter() - started
                started = time.perf_counter()
                page.fill("input[name=q]", "calculate_tip")
                page.click("button[type=submit]")
                page.wait_for_selector("#main:not([data-loading]) .sample")
                search = time.perf_counter() - started
                matched = page.inner_text("#page-info")

                started = time.perf_counter()
                page.goto(f"{server.url}/ui/run?name=long")
                page.wait_for_function("document.querySelector('#loss-chart')?.dataset.points === '5000'")
                run_page = time.perf_counter() - started
                del run_dir

                page.goto(f"{server.url}/ui/run?name=live")
                page.wait_for_selector("#stages")
                log = live_dir / "train" / "trainer_log.jsonl"
                delays = []
                for step in range(2, args.steps + 2):
                    with log.open("a", encoding="utf-8") as handle:
                        written = time.time() * 1000
                        handle.write(json.dumps({"step": step, "loss": 2.0 - step / 100}) + "\n")
                    page.wait_for_function(f"document.querySelector('#loss-chart').dataset.points === '{step}'")
                    delays.append(page.evaluate("window.__lastChartUpdate") - written)
                    time.sleep(0.05)
                browser.close()
        finally:
            server.stop()
        preprocess = time_preprocess(workspace, dataset)
        shutil.rmtree(workspace, ignore_errors=True)

    print(f"data page, {args.samples} samples, cold first render: {cold:.2f} s  |  tooltune preprocess same data: "
          f"{preprocess:.2f} s  |  ratio {cold / preprocess:.2f}x")
    print(f"data page warm: next page {next_page * 1000:.0f} ms, search over all samples {search * 1000:.0f} ms "
          f"({matched})")
    print(f"run page with a 5000-step log: {run_page * 1000:.0f} ms to the full chart")
    print(f"live loss delay, log line → chart point, {len(delays)} steps: median {statistics.median(delays):.0f} ms, "
          f"max {max(delays):.0f} ms (goal < 1000 ms)")


if __name__ == "__main__":
    main()
