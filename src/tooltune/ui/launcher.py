"""Start ``tooltune run`` from the form: fields validated by the CLI's own config parser, then a child process.

The form's values become a pipeline YAML in the run folder, so the run is exactly what ``tooltune run that.yaml``
would do, and a run started from the CLI shows up on the runs page the same way (both write the manifest).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from typing import Any

import yaml

from tooltune.errors import TooltuneError
from tooltune.ui.runs import LAUNCH_LOG
from tooltune.ui.workspace import UIError, Workspace, is_plain_name

CONFIG_NAME = "ui_pipeline.yaml"


@dataclass(frozen=True)
class FormField:
    key: str  # the pipeline config key (LLaMA-Factory spelling)
    kind: type
    low: float | None = None
    high: float | None = None
    path: bool = False  # a workspace-relative path


# The fields the form shows; everything else keeps the CLI's default.
FIELDS: tuple[FormField, ...] = (
    FormField("model_name_or_path", str, path=True),
    FormField("dataset", str),
    FormField("dataset_dir", str, path=True),
    FormField("template", str),
    FormField("cutoff_len", int, 16, 1 << 20),
    FormField("max_samples", int, 1, 10**9),
    FormField("val_size", float, 0, 10**9),
    FormField("lora_target", str),
    FormField("lora_rank", int, 1, 1024),
    FormField("learning_rate", float, 1e-8, 1.0),
    FormField("num_train_epochs", float, 0.01, 1000),
    FormField("max_steps", int, -1, 10**9),
    FormField("per_device_train_batch_size", int, 1, 4096),
    FormField("gradient_accumulation_steps", int, 1, 4096),
    FormField("logging_steps", int, 1, 10**9),
    FormField("save_steps", int, 1, 10**9),
    FormField("quantize", str),
    FormField("eval_max_cases", int, 1, 10**6),
)
FIELD_KEYS = {f.key for f in FIELDS}


def form_defaults() -> dict[str, Any]:
    """The CLI's defaults for the form's fields (read from the config dataclasses, not repeated here), in form order.

    Paths default to empty, meaning what the CLI does without them (bundled demo data, the embedded model)."""
    import dataclasses

    from tooltune.pipeline.config import CONFIG_CLASSES

    found: dict[str, Any] = {}
    for cls in CONFIG_CLASSES:
        for f in dataclasses.fields(cls):
            if f.name in FIELD_KEYS and f.name not in found:
                value = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
                found[f.name] = ",".join(value) if isinstance(value, list) else value
    return {spec.key: None if spec.path else found.get(spec.key) for spec in FIELDS}


def validate_form(workspace: Workspace, form: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(run name, config dict) from the submitted form; ``UIError`` names the first bad field."""
    name = str(form.get("name", "")).strip()
    if not is_plain_name(name):
        raise UIError(f"name {name!r}: use letters, digits, '-', '_' and '.' (at most 100, not starting with '.')")
    unknown = sorted(set(form) - FIELD_KEYS - {"name"})
    if unknown:
        raise UIError(f"{unknown[0]}: not a field of this form")
    config: dict[str, Any] = {}
    for spec in FIELDS:
        raw = form.get(spec.key)
        if raw is None or str(raw).strip() == "":
            continue
        text = str(raw).strip()
        if spec.path:
            workspace.resolve(text, spec.key)  # raises for anything outside the workspace
            config[spec.key] = text
        elif spec.kind is str:
            if "\n" in text or len(text) > 500:
                raise UIError(f"{spec.key}: one line of at most 500 characters")
            config[spec.key] = text
        else:
            try:
                value = spec.kind(text)
            except ValueError:
                raise UIError(f"{spec.key}: {text!r} is not a {'whole number' if spec.kind is int else 'number'}") \
                    from None
            if value != value or (spec.low is not None and value < spec.low) or (
                    spec.high is not None and value > spec.high):
                raise UIError(f"{spec.key}: {value} is outside {spec.low}..{spec.high}")
            config[spec.key] = value
    if config.get("dataset"):
        # The data page's check: data files, and files a dataset_info.json entry names, must lie in the workspace.
        from tooltune.ui.data_view import DataCache, DataQuery

        DataCache(workspace).data_arguments(DataQuery(str(config["dataset"]), str(config.get("dataset_dir", ""))))
    config["run_dir"] = f"runs/{name}"
    _check_with_cli_parser(workspace, config)
    return name, config


def _check_with_cli_parser(workspace: Workspace, config: dict[str, Any]) -> None:
    """The CLI's own parse and checks (required keys, types, quantize names) on the values."""
    from tooltune.args import ArgumentError
    from tooltune.pipeline.config import load_pipeline_config

    argv: list[str] = []
    for key, value in config.items():
        argv += [f"--{key}", str(value)]
    try:
        # Only argument parsing and value checks: relative paths are not opened here, so the cwd does not matter.
        load_pipeline_config(argv)
    except (TooltuneError, ArgumentError, ValueError) as exc:
        raise UIError(str(exc)) from None


class Launcher:
    """The ``tooltune run`` processes this UI started, by run name."""

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.lock = threading.Lock()

    def start(self, form: dict[str, Any]) -> dict[str, Any]:
        name, config = validate_form(self.workspace, form)
        run_dir = self.workspace.run_dir(name)
        with self.lock:
            running = self.processes.get(name)
            if running is not None and running.poll() is None:
                raise UIError(f"run {name!r} is already running (pid {running.pid})", status=409)
            run_dir.mkdir(parents=True, exist_ok=True)
            config_path = run_dir / CONFIG_NAME
            config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
            log = (run_dir / LAUNCH_LOG).open("ab")
            env = {**os.environ, "COLUMNS": "160", "TOKENIZERS_PARALLELISM": "false"}
            process = subprocess.Popen(
                [sys.executable, "-m", "tooltune", "run", str(config_path.relative_to(self.workspace.root))],
                cwd=self.workspace.root, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                start_new_session=True,  # its own group, so Stop reaches the workers it starts too
            )
            log.close()
            self.processes[name] = process
        return {"name": name, "pid": process.pid, "config": config}

    def stop(self, name: str) -> dict[str, Any]:
        """A stop request (SIGTERM, which ``tooltune run`` takes as Ctrl-C) to the run's process group: the stage is
        marked interrupted and can be resumed. Not SIGINT: a UI started in the background by a shell passes SIGINT
        on as ignored, and the run would go on until the SIGKILL below."""
        self.workspace.run_dir(name)
        with self.lock:
            process = self.processes.get(name)
        if process is None or process.poll() is not None:
            raise UIError(f"run {name!r} was not started by this UI or has ended", status=404)
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        return {"name": name, "returncode": process.returncode}
