"""Helpers of the web UI tests: the UI (or any ASGI app) on a real 127.0.0.1 port, a workspace with a tokenizer,
headless Chromium from Debian's package driven by playwright, and run folders written like `tooltune run` writes."""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Any

import uvicorn

from tiny_models import QWEN_TOKENIZER

CHROMIUM = os.environ.get("TOOLTUNE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOTS = os.environ.get("TOOLTUNE_UI_SCREENSHOTS")  # a folder: the browser tests save each page there


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RunningApp:
    """An ASGI app served by uvicorn in a thread, on a free loopback port."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def make_workspace(root: Path) -> Path:
    """A workspace with the Qwen tokenizer under tok/ (the data page encodes with it)."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(QWEN_TOKENIZER, root / "tok", dirs_exist_ok=True)
    return root


def write_run(root: Path, name: str, losses: list[float], config: dict[str, Any] | None = None,
              eval_loss: float | None = None) -> Path:
    """A finished run folder as the pipeline leaves it: manifest.json with stage records and train/trainer_log.jsonl."""
    from tooltune.pipeline.manifest import Manifest, StageRecord

    run_dir = root / "runs" / name
    (run_dir / "train").mkdir(parents=True, exist_ok=True)
    manifest = Manifest(run_dir)
    manifest.config = {"model_name_or_path": "tiny", "dataset": "glaive_toolcall_en_demo", "learning_rate": 1e-3,
                       "lora_rank": 4} | (config or {})
    manifest.order = ["preview", "train"]
    manifest.stages["preview"] = StageRecord("done", "k1", 1.0, 2.0, 1.0, 200 << 20, summary="24 samples")
    manifest.stages["train"] = StageRecord(
        "done", "k2", 2.0, 12.0, 10.0, 900 << 20, summary=f"{len(losses)} steps",
        metrics={"figures": {"train_loss": sum(losses) / len(losses), "train_runtime": 10.0}},
    )
    manifest.save()
    lines = [json.dumps({"step": i + 1, "loss": loss}) for i, loss in enumerate(losses)]
    if eval_loss is not None:
        lines.append(json.dumps({"step": len(losses), "eval_loss": eval_loss}))
    (run_dir / "train" / "trainer_log.jsonl").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return run_dir
