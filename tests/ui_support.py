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


MODELFILE = 'FROM ./quantize/model-Q4_K_M.gguf\nTEMPLATE """{{ .Prompt }}"""\nPARAMETER temperature 0\n'


def write_run(root: Path, name: str, losses: list[float], config: dict[str, Any] | None = None,
              eval_loss: float | None = None, shipped: bool = False) -> Path:
    """A run folder as the pipeline leaves it: manifest.json with stage records and train/trainer_log.jsonl;
    ``shipped`` adds the later stages' records (eval rows, GGUF files, Modelfile) in the shapes those stages write."""
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
    if shipped:
        manifest.order += ["eval", "quantize", "modelfile"]
        rows = [{"model": "base", "cases": 30, "format_valid": 9, "right_name": 7, "args_match": 4,
                 "tokens_per_second": 41.0},
                {"model": "tuned F16", "cases": 30, "format_valid": 29, "right_name": 27, "args_match": 22,
                 "tokens_per_second": 40.0}]
        manifest.stages["eval"] = StageRecord("done", "k3", 12.0, 40.0, 28.0, 700 << 20, summary="2 models",
                                              metrics={"rows": rows})
        files = [{"name": "model-F16.gguf", "type": "F16", "bytes": 271 << 20, "label": "tuned F16"},
                 {"name": "model-Q4_K_M.gguf", "type": "Q4_K_M", "bytes": 101 << 20, "label": "tuned Q4_K_M"}]
        manifest.stages["quantize"] = StageRecord("done", "k4", 40.0, 52.0, 12.0, 300 << 20, summary="1 file",
                                                  metrics={"files": files[1:]})
        manifest.stages["gguf"] = StageRecord("done", "k5", 52.0, 60.0, 8.0, 500 << 20, metrics={"files": files[:1]})
        from tooltune.pipeline.report import EVAL_PNG, plot_eval

        plot_eval(rows, run_dir / EVAL_PNG)
        manifest.stages["modelfile"] = StageRecord("done", "k6", 60.0, 60.1, 0.1, 90 << 20,
                                                   metrics={"text": MODELFILE, "name": name})
    manifest.save()
    lines = [json.dumps({"step": i + 1, "loss": loss}) for i, loss in enumerate(losses)]
    if eval_loss is not None:
        lines.append(json.dumps({"step": len(losses), "eval_loss": eval_loss}))
    (run_dir / "train" / "trainer_log.jsonl").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return run_dir
