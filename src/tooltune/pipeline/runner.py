"""Run a graph of stages in one run directory: skip what is unchanged, resume what was interrupted, stop on failure.

Each stage is a plain function ``run(ctx) -> StageOutput`` plus what its result depends on (parameters from the
config, input files, upstream stages). The runner owns everything around it: the working directory
``run_dir/<stage>/``, the manifest record, wall time, peak memory, and the one summary line per stage.
"""

from __future__ import annotations

import contextlib
import difflib
import fcntl
import shutil
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from tooltune.errors import TooltuneError
from tooltune.pipeline.manifest import Manifest, StageRecord, package_versions, stage_key
from tooltune.pipeline.memory import PeakMemory, format_bytes

LOCK_NAME = ".lock"
ERROR_LOG = "error.log"


class PipelineError(TooltuneError):
    pass


@dataclass
class StageOutput:
    """What a stage hands back: its output paths (fingerprinted for skipping), one summary line, and figures."""

    outputs: dict[str, str | Path]
    summary: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class StageContext:
    name: str
    config: Any
    run_dir: Path
    work_dir: Path
    resume: bool
    records: dict[str, StageRecord]
    console: Console

    def upstream_output(self, stage: str, key: str) -> Path:
        record = self.records.get(stage)
        if record is None or key not in record.outputs:
            raise PipelineError(f"stage '{self.name}' needs output '{key}' of stage '{stage}', which has not run")
        return resolve_output(self.run_dir, record.outputs[key])

    def upstream_metrics(self, stage: str) -> dict[str, Any]:
        record = self.records.get(stage)
        return dict(record.metrics) if record else {}


@dataclass
class Stage:
    name: str
    run: Callable[[StageContext], StageOutput]
    description: str = ""
    deps: tuple[str, ...] = ()
    # Everything in the config that changes this stage's result; hashed into the stage key.
    params: Callable[[Any], dict[str, Any]] = lambda config: {}
    # Files or directories outside the run directory whose content the stage reads (dataset, base model).
    inputs: Callable[[Any], dict[str, str | Path]] = lambda config: {}
    enabled: Callable[[Any], bool] = lambda config: True


@dataclass
class StageReport:
    name: str
    action: str  # "ran" | "resumed" | "skipped" | "disabled"
    wall_seconds: float | None
    peak_rss_bytes: int | None
    summary: str


@dataclass
class RunReport:
    run_dir: Path
    stages: list[StageReport]
    wall_seconds: float

    def action(self, name: str) -> str:
        return next(s.action for s in self.stages if s.name == name)


def resolve_output(run_dir: Path, stored: str) -> Path:
    path = Path(stored)
    return path if path.is_absolute() else run_dir / path


def _store_output(run_dir: Path, path: str | Path) -> str:
    path = Path(path).resolve()
    try:
        return path.relative_to(run_dir.resolve()).as_posix()
    except ValueError:
        return str(path)


def _check_stage_name(name: str, stages: list[Stage], flag: str) -> None:
    names = [s.name for s in stages]
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise PipelineError(f"{flag} {name}: no such stage{hint}; stages are {', '.join(names)}")


@contextlib.contextmanager
def _run_lock(run_dir: Path) -> Iterator[None]:
    """Two runs writing one run directory would corrupt each other's outputs; refuse the second."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with (run_dir / LOCK_NAME).open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PipelineError(f"{run_dir}: another `tooltune run` is using this run directory") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def run_stages(
    stages: list[Stage],
    config: Any,
    run_dir: str | Path,
    *,
    config_record: dict[str, Any] | None = None,
    from_stage: str | None = None,
    only: str | None = None,
    console: Console | None = None,
) -> RunReport:
    """Run ``stages`` in order. ``from_stage``/``only`` force those stages to run and leave earlier ones untouched."""
    console = console or Console()
    run_dir = Path(run_dir)
    if from_stage and only:
        raise PipelineError("--from and --only cannot be combined")
    for flag, name in (("--from", from_stage), ("--only", only)):
        if name:
            _check_stage_name(name, stages, flag)
    names = [s.name for s in stages]
    if only:
        forced = {only}
    elif from_stage:
        forced = set(names[names.index(from_stage) :])
    else:
        forced = set()
    started = time.perf_counter()
    reports: list[StageReport] = []
    with _run_lock(run_dir):
        manifest = Manifest(run_dir)
        manifest.config = config_record if config_record is not None else {}
        manifest.versions = package_versions()
        manifest.order = names
        manifest.save()
        enabled = {s.name for s in stages if s.enabled(config)}
        for position, stage in enumerate(stages, start=1):
            label = f"[{position}/{len(stages)}] {stage.name}"
            if stage.name not in enabled:
                # A record from an earlier config would otherwise feed stale figures into the report.
                if manifest.stages.pop(stage.name, None) is not None:
                    manifest.save()
                console.print(f"[dim]– {label}: disabled by the config[/dim]")
                reports.append(StageReport(stage.name, "disabled", None, None, ""))
                continue
            if forced and stage.name not in forced:
                reports.append(StageReport(stage.name, "skipped", None, None, "not selected"))
                continue
            report = _run_one(stage, config, run_dir, manifest, enabled, stage.name in forced, label, console)
            reports.append(report)
    total = time.perf_counter() - started
    ran = sum(r.action in ("ran", "resumed") for r in reports)
    skipped = sum(r.action == "skipped" for r in reports)
    peak = max((r.peak_rss_bytes or 0 for r in reports), default=0)
    console.print(
        f"[bold]run done[/bold] in {total:.1f} s: {ran} stage(s) ran, {skipped} skipped, "
        f"peak memory {format_bytes(peak or None)} → {run_dir}"
    )
    return RunReport(run_dir, reports, total)


def _run_one(
    stage: Stage,
    config: Any,
    run_dir: Path,
    manifest: Manifest,
    enabled: set[str],
    forced: bool,
    label: str,
    console: Console,
) -> StageReport:
    upstream: dict[str, str] = {}
    for dep in stage.deps:
        if dep not in enabled:
            continue
        dep_record = manifest.stages.get(dep)
        if dep_record is None or dep_record.status != "done":
            raise PipelineError(
                f"stage '{stage.name}' needs stage '{dep}', which has not completed in {run_dir}; "
                f"run without --from/--only first"
            )
        upstream[dep] = dep_record.outputs_fingerprint or ""
    params = stage.params(config)
    inputs = {name: manifest.hasher.path(path) for name, path in stage.inputs(config).items()}
    missing = [name for name, digest in inputs.items() if digest == "missing"]
    if missing:
        paths = stage.inputs(config)
        raise PipelineError(f"stage '{stage.name}': input {missing[0]} not found: {paths[missing[0]]}")
    key = stage_key(stage.name, params, inputs, upstream)
    previous = manifest.stages.get(stage.name)

    if not forced and previous and previous.status == "done" and previous.key == key:
        if manifest.outputs_intact(previous):
            console.print(f"[dim]↷ {label}: skipped, inputs unchanged[/dim]")
            return StageReport(stage.name, "skipped", previous.wall_seconds, previous.peak_rss_bytes, previous.summary)
        console.print(f"[yellow]{label}: outputs changed or missing since the last run; running again[/yellow]")

    resume = (
        not forced
        and previous is not None
        and previous.status in ("running", "failed", "interrupted")
        and previous.key == key
    )
    work_dir = run_dir / stage.name
    if not resume and work_dir.exists():
        shutil.rmtree(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    record = StageRecord(
        status="running",
        key=key,
        started=time.time(),
        inputs={"params": params, "files": inputs, "upstream": upstream},
        attempts=(previous.attempts + 1) if resume and previous else 1,
    )
    manifest.stages[stage.name] = record
    manifest.save()
    verb = ("retrying" if previous and previous.status == "failed" else "resuming") if resume else "running"
    console.rule(f"[bold cyan]{label}[/bold cyan] {verb}{': ' + stage.description if stage.description else ''}")
    ctx = StageContext(stage.name, config, run_dir, work_dir, resume, manifest.stages, console)
    clock = time.perf_counter()
    try:
        with PeakMemory() as peak:
            result = stage.run(ctx)
    except KeyboardInterrupt:
        record.status = "interrupted"
        record.wall_seconds = time.perf_counter() - clock
        manifest.save()
        console.print(f"[yellow]{label}: interrupted; re-run the same command to resume[/yellow]")
        raise
    except Exception as exc:
        record.status = "failed"
        record.wall_seconds = time.perf_counter() - clock
        record.error = f"{type(exc).__name__}: {exc}" if not isinstance(exc, TooltuneError) else str(exc)
        (work_dir / ERROR_LOG).write_text(traceback.format_exc(), encoding="utf-8")
        manifest.save()
        log = work_dir / ERROR_LOG
        console.print(f"[red]✗ {label} failed after {record.wall_seconds:.1f} s[/red] (traceback: {log})")
        raise PipelineError(f"stage '{stage.name}' failed: {record.error}") from exc
    record.outputs = {name: _store_output(run_dir, path) for name, path in result.outputs.items()}
    missing_outputs = [name for name, path in record.outputs.items() if not resolve_output(run_dir, path).exists()]
    if missing_outputs:
        record.status = "failed"
        record.error = f"declared output '{missing_outputs[0]}' was not written"
        manifest.save()
        raise PipelineError(f"stage '{stage.name}' failed: {record.error}")
    record.outputs_fingerprint = manifest.outputs_fingerprint(record.outputs)
    record.status = "done"
    record.finished = time.time()
    record.wall_seconds = time.perf_counter() - clock
    record.peak_rss_bytes = peak.bytes
    record.summary = result.summary
    record.metrics = result.metrics
    manifest.save()
    console.print(
        f"[green]✓ {label}[/green] {record.wall_seconds:.1f} s, peak {format_bytes(peak.bytes)}"
        + (f" │ {result.summary}" if result.summary else "")
    )
    return StageReport(stage.name, "resumed" if resume else "ran", record.wall_seconds, peak.bytes, result.summary)
