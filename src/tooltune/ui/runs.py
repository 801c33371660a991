"""The runs pages' figures, read from what ``tooltune run`` leaves in a run folder: ``manifest.json`` (stages, wall
time, peak memory, metrics), ``train/trainer_log.jsonl`` (the loss, one line per logging step), ``report.md``."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from tooltune.pipeline.manifest import MANIFEST_NAME, read_manifest
from tooltune.pipeline.report import EVAL_PNG, LOSS_PNG, REPORT_NAME, eval_rows
from tooltune.ui.workspace import UIError, Workspace

LOG_FILE = "trainer_log.jsonl"  # tooltune.train.callbacks.LOG_FILE (not imported: that module imports transformers)
TRAIN_STAGE = "train"
LAUNCH_LOG = "ui_launch.log"
RUN_IMAGES = (EVAL_PNG, LOSS_PNG)  # the report's charts: the only files of a run served as they are
TAIL_POLL_SECONDS = 0.1
TAIL_IDLE_SECONDS = 15.0  # a comment line this often keeps proxies from closing a quiet stream


def list_runs(workspace: Workspace) -> list[dict[str, Any]]:
    runs = []
    if workspace.runs_dir.is_dir():
        for run_dir in sorted(workspace.runs_dir.iterdir()):
            if run_dir.is_dir() and ((run_dir / MANIFEST_NAME).is_file() or (run_dir / LAUNCH_LOG).is_file()):
                runs.append(run_overview(run_dir))
    runs.sort(key=lambda r: r["updated"] or 0, reverse=True)
    return runs


def _read(run_dir: Path) -> dict[str, Any]:
    try:
        return read_manifest(run_dir)
    except (json.JSONDecodeError, OSError):
        return {}  # written atomically, so this is a manifest being replaced: show the run as empty for now


def process_alive(pid: Any) -> bool:
    """Whether the process that writes a run still runs (True when the manifest predates the pid field)."""
    if not isinstance(pid, int) or pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    try:  # an exited child this UI has not reaped yet is a zombie: gone for our purposes
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def run_overview(run_dir: Path) -> dict[str, Any]:
    manifest = _read(run_dir)
    stages = manifest.get("stages", {})
    if any(s.get("status") == "running" for s in stages.values()) and not process_alive(manifest.get("pid")):
        # Killed before it could write "interrupted" (the UI's Stop falls back to SIGKILL after 30 s; an OOM kill):
        # shown as what it is, a run to resume, not one running forever.
        stages = {name: {**s, "status": "interrupted" if s.get("status") == "running" else s.get("status")}
                  for name, s in stages.items()}
    statuses = [s.get("status") for s in stages.values()]
    status = ("running" if "running" in statuses else "failed" if "failed" in statuses
              else "interrupted" if "interrupted" in statuses else "done" if statuses else "starting")
    config = manifest.get("config", {})
    return {"name": run_dir.name, "status": status, "updated": manifest.get("updated"),
            "model": config.get("model_name_or_path"), "dataset": config.get("dataset"),
            "stages": {name: s.get("status") for name, s in stages.items()}}


def read_loss(run_dir: Path, after_line: int = 0) -> tuple[list[dict[str, Any]], int]:
    """Log records from line ``after_line`` on, and the number of complete lines read so far."""
    path = run_dir / TRAIN_STAGE / LOG_FILE
    if not path.is_file():
        return [], after_line
    lines = path.read_text(encoding="utf-8").split("\n")
    complete = lines[:-1]  # the last piece is a line still being written (or "")
    if len(complete) < after_line:  # the log was cut back after a resume: start over
        after_line = 0
    records = []
    for line in complete[after_line:]:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records, len(complete)


def loss_points(records: list[dict[str, Any]]) -> dict[str, list[list[float]]]:
    train = [[r["step"], r["loss"]] for r in records if isinstance(r.get("loss"), (int, float))]
    held_out = [[r["step"], r["eval_loss"]] for r in records if isinstance(r.get("eval_loss"), (int, float))]
    return {"train": train, "eval": held_out}


def run_detail(workspace: Workspace, name: str) -> dict[str, Any]:
    run_dir = workspace.run_dir(name)
    if not run_dir.is_dir():
        raise UIError(f"run {name!r}: not found under {workspace.runs_dir}", status=404)
    manifest = _read(run_dir)
    stages = manifest.get("stages", {})
    records, lines = read_loss(run_dir)
    metrics = {key: (stages.get(key, {}).get("metrics") or {}) for key in ("gguf", "quantize", "modelfile", "train")}
    report = run_dir / REPORT_NAME
    launch = run_dir / LAUNCH_LOG
    return {
        **run_overview(run_dir),
        "config": manifest.get("config", {}),
        "command": manifest.get("command"),
        "versions": manifest.get("versions", {}),
        "stage_rows": [
            {"name": key, "status": s.get("status"), "wall_seconds": s.get("wall_seconds"),
             "peak_rss_bytes": s.get("peak_rss_bytes"), "summary": s.get("summary") or s.get("error") or "",
             "attempts": s.get("attempts")}
            for key, s in stages.items()
        ],
        "loss": loss_points(records),
        "log_lines": lines,
        "eval_rows": eval_rows(stages),
        "gguf_files": list(metrics["gguf"].get("files", [])) + list(metrics["quantize"].get("files", [])),
        "gguf_report": metrics["quantize"].get("report"),
        "modelfile": metrics["modelfile"].get("text"),
        "train_figures": metrics["train"].get("figures", {}),
        "report": report.read_text(encoding="utf-8") if report.is_file() else None,
        "launch_log": _tail(launch) if launch.is_file() else None,
        "images": [name for name in RUN_IMAGES if (run_dir / name).is_file()],
    }


def run_image(workspace: Workspace, name: str, image: str) -> Path:
    if image not in RUN_IMAGES:
        raise UIError(f"{image!r}: a run's images are {', '.join(RUN_IMAGES)}", status=404)
    path = workspace.run_dir(name) / image
    if not path.is_file():
        raise UIError(f"run {name!r} has no {image}", status=404)
    return path


def _tail(path: Path, limit: int = 8000) -> str:
    data = path.read_bytes()[-limit:]
    return data.decode("utf-8", errors="replace")


def _flat(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False) if isinstance(value, (dict, list)) else str(value)


def compare(workspace: Workspace, left: str, right: str) -> dict[str, Any]:
    """Config keys that differ, and each figure of both runs side by side."""
    a, b = run_detail(workspace, left), run_detail(workspace, right)
    keys = sorted(set(a["config"]) | set(b["config"]))
    config_diff = [{"key": k, "left": a["config"].get(k), "right": b["config"].get(k)} for k in keys
                   if _flat(a["config"].get(k)) != _flat(b["config"].get(k))]
    figures = sorted(set(a["train_figures"]) | set(b["train_figures"]))
    metric_diff = [{"key": k, "left": a["train_figures"].get(k), "right": b["train_figures"].get(k)} for k in figures]
    stages = sorted({s["name"] for s in a["stage_rows"]} | {s["name"] for s in b["stage_rows"]})
    wall = {s["name"]: s for s in a["stage_rows"]}, {s["name"]: s for s in b["stage_rows"]}
    for stage in stages:
        metric_diff.append({"key": f"{stage} wall s", "left": wall[0].get(stage, {}).get("wall_seconds"),
                            "right": wall[1].get(stage, {}).get("wall_seconds")})
    for row_set, side in ((a["eval_rows"], "left"), (b["eval_rows"], "right")):
        for row in row_set:
            for key in ("format_valid", "right_name", "args_match"):
                if row.get("cases"):
                    label = f"eval {row.get('model')} {key}"
                    entry = next((m for m in metric_diff if m["key"] == label), None)
                    if entry is None:
                        entry = {"key": label, "left": None, "right": None}
                        metric_diff.append(entry)
                    entry[side] = round(row.get(key, 0) / row["cases"], 4)
    return {"left": a, "right": b, "config_diff": config_diff, "metric_diff": metric_diff}


async def tail_loss(run_dir: Path, after_line: int, disconnected: Any) -> AsyncIterator[str]:
    """Server-sent events: each new log line as ``data: {...}`` soon after training appends it. ``reset`` tells the
    page to drop its points: the log was cut back (a resumed run redoes the steps after its checkpoint)."""
    idle = 0.0
    while not await disconnected():
        before = after_line
        records, after_line = await asyncio.to_thread(read_loss, run_dir, after_line)
        reset = after_line < before or (records and after_line - len(records) < before)
        if records or reset:
            idle = 0.0
            payload = {"records": records, "line": after_line, "reset": bool(reset)}
            yield f"id: {after_line}\ndata: {json.dumps(payload)}\n\n"
        else:
            idle += TAIL_POLL_SECONDS
            if idle >= TAIL_IDLE_SECONDS:
                idle = 0.0
                yield ": keep-alive\n\n"
        await asyncio.sleep(TAIL_POLL_SECONDS)
