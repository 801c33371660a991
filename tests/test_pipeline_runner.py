"""The stage runner on small real stages: skip if unchanged, re-run what changed, resume, fail, --from/--only."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from rich.console import Console

from tooltune.errors import TooltuneError
from tooltune.pipeline.manifest import read_manifest
from tooltune.pipeline.runner import PipelineError, Stage, StageContext, StageOutput, run_stages


@dataclass
class ToyConfig:
    text_file: Path
    factor: int = 2
    steps: int = 5
    interrupt_at: int | None = None  # raise KeyboardInterrupt before this step (simulates Ctrl-C)
    fail_double: bool = False


calls: list[str] = []


def count_words(ctx: StageContext) -> StageOutput:
    calls.append("count")
    words = ctx.config.text_file.read_text().split()
    out = ctx.work_dir / "counts.json"
    out.write_text(json.dumps({"words": len(words)}))
    return StageOutput({"counts": out}, summary=f"{len(words)} words", metrics={"words": len(words)})


def multiply(ctx: StageContext) -> StageOutput:
    calls.append("double")
    if ctx.config.fail_double:
        raise TooltuneError("counts.json: factor rejected on purpose")
    words = json.loads(ctx.upstream_output("count", "counts").read_text())["words"]
    out = ctx.work_dir / "scaled.txt"
    out.write_text(str(words * ctx.config.factor))
    return StageOutput({"scaled": out}, summary=f"{words * ctx.config.factor}")


def checkpointed_loop(ctx: StageContext) -> StageOutput:
    """Like training: one checkpoint file per step; an interrupted attempt continues after its last checkpoint."""
    done = sorted(int(p.stem.split("-")[1]) for p in ctx.work_dir.glob("checkpoint-*.txt"))
    start = (done[-1] + 1) if done else 0
    calls.append(f"loop from {start} resume={ctx.resume}")
    for step in range(start, ctx.config.steps):
        if ctx.config.interrupt_at == step:
            raise KeyboardInterrupt
        (ctx.work_dir / f"checkpoint-{step}.txt").write_text(str(step))
    final = ctx.work_dir / "final.txt"
    final.write_text(f"steps {ctx.config.steps} started at {start}")
    return StageOutput({"final": final}, summary=f"started at step {start}")


def toy_stages() -> list[Stage]:
    return [
        Stage("count", count_words, inputs=lambda c: {"text": c.text_file}),
        Stage("double", multiply, deps=("count",), params=lambda c: {"factor": c.factor}),
        Stage(
            "loop",
            checkpointed_loop,
            deps=("double",),
            params=lambda c: {"steps": c.steps},
            enabled=lambda c: c.steps > 0,
        ),
    ]


@pytest.fixture()
def toy(tmp_path: Path) -> ToyConfig:
    calls.clear()
    text = tmp_path / "in.txt"
    text.write_text("one two three")
    return ToyConfig(text_file=text)


def run(config: ToyConfig, run_dir: Path, **kwargs: object):
    return run_stages(toy_stages(), config, run_dir, console=Console(quiet=True), **kwargs)


def test_second_run_skips_every_stage_and_manifest_records_costs(toy: ToyConfig, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    first = run(toy, run_dir)
    assert [s.action for s in first.stages] == ["ran", "ran", "ran"]
    assert (run_dir / "double" / "scaled.txt").read_text() == "6"
    calls.clear()
    second = run(toy, run_dir)
    assert [s.action for s in second.stages] == ["skipped", "skipped", "skipped"]
    assert calls == []
    manifest = read_manifest(run_dir)
    assert "torch" in manifest["versions"] and "tooltune" in manifest["versions"]
    for name in ("count", "double", "loop"):
        record = manifest["stages"][name]
        assert record["status"] == "done"
        assert record["wall_seconds"] >= 0
        assert record["peak_rss_bytes"] > 10 * 1024 * 1024  # a Python process with torch imported
        assert record["outputs_fingerprint"]
    assert manifest["stages"]["count"]["inputs"]["files"]["text"] != "missing"
    assert manifest["stages"]["count"]["outputs"]["counts"] == "count/counts.json"  # relative: run dir can move


def test_changed_input_reruns_dependants_and_changed_param_reruns_only_its_stage(
    toy: ToyConfig, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    run(toy, run_dir)
    toy.factor = 3
    report = run(toy, run_dir)
    assert [s.action for s in report.stages] == ["skipped", "ran", "ran"]  # loop reads double's changed output
    assert (run_dir / "double" / "scaled.txt").read_text() == "9"
    toy.text_file.write_text("one two three four")
    report = run(toy, run_dir)
    assert [s.action for s in report.stages] == ["ran", "ran", "ran"]
    assert (run_dir / "double" / "scaled.txt").read_text() == "12"


def test_unchanged_upstream_output_keeps_downstream_skipped(toy: ToyConfig, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run(toy, run_dir)
    toy.text_file.write_text("uno dos tres")  # different file, same word count → same counts.json
    report = run(toy, run_dir)
    assert [s.action for s in report.stages] == ["ran", "skipped", "skipped"]


def test_deleted_or_edited_output_is_rebuilt(toy: ToyConfig, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run(toy, run_dir)
    (run_dir / "double" / "scaled.txt").write_text("tampered")
    report = run(toy, run_dir)
    assert report.action("double") == "ran"
    assert (run_dir / "double" / "scaled.txt").read_text() == "6"
    (run_dir / "count" / "counts.json").unlink()
    report = run(toy, run_dir)
    assert report.action("count") == "ran"


def test_failed_stage_stops_the_run_and_keeps_earlier_outputs(toy: ToyConfig, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    toy.fail_double = True
    with pytest.raises(PipelineError, match=r"stage 'double' failed: counts.json: factor rejected on purpose"):
        run(toy, run_dir)
    assert calls == ["count", "double"]  # loop never started
    manifest = read_manifest(run_dir)
    assert manifest["stages"]["count"]["status"] == "done"
    assert manifest["stages"]["double"]["status"] == "failed"
    assert "rejected on purpose" in manifest["stages"]["double"]["error"]
    assert "loop" not in manifest["stages"]
    assert (run_dir / "count" / "counts.json").is_file()
    assert "Traceback" in (run_dir / "double" / "error.log").read_text()
    toy.fail_double = False
    calls.clear()
    report = run(toy, run_dir)
    assert [s.action for s in report.stages] == ["skipped", "resumed", "ran"]


def test_interrupted_stage_resumes_from_its_last_checkpoint(toy: ToyConfig, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    toy.interrupt_at = 3
    with pytest.raises(KeyboardInterrupt):
        run(toy, run_dir)
    assert read_manifest(run_dir)["stages"]["loop"]["status"] == "interrupted"
    assert sorted(p.name for p in (run_dir / "loop").glob("checkpoint-*")) == [f"checkpoint-{i}.txt" for i in range(3)]
    toy.interrupt_at = None
    calls.clear()
    report = run(toy, run_dir)
    assert [s.action for s in report.stages] == ["skipped", "skipped", "resumed"]
    assert calls == ["loop from 3 resume=True"]
    assert (run_dir / "loop" / "final.txt").read_text() == "steps 5 started at 3"
    assert read_manifest(run_dir)["stages"]["loop"]["attempts"] == 2


def test_interrupted_stage_with_changed_inputs_starts_over(toy: ToyConfig, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    toy.interrupt_at = 3
    with pytest.raises(KeyboardInterrupt):
        run(toy, run_dir)
    toy.interrupt_at = None
    toy.steps = 6  # a different training run: old checkpoints must not leak into it
    calls.clear()
    run(toy, run_dir)
    assert calls == ["loop from 0 resume=False"]


def test_from_and_only_force_their_stages(toy: ToyConfig, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run(toy, run_dir)
    calls.clear()
    report = run(toy, run_dir, from_stage="double")
    assert [s.action for s in report.stages] == ["skipped", "ran", "ran"]
    assert calls == ["double", "loop from 0 resume=False"]
    calls.clear()
    report = run(toy, run_dir, only="count")
    assert [s.action for s in report.stages] == ["ran", "skipped", "skipped"]
    assert calls == ["count"]


def test_only_needs_upstream_done_and_stage_names_are_checked(toy: ToyConfig, tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="needs stage 'count', which has not completed"):
        run(toy, tmp_path / "fresh", only="double")
    with pytest.raises(PipelineError, match="did you mean 'double'"):
        run(toy, tmp_path / "fresh", from_stage="doubel")
    toy.text_file.unlink()
    with pytest.raises(PipelineError, match="input text not found"):
        run(toy, tmp_path / "other")


def test_disabled_stage_drops_its_old_record(toy: ToyConfig, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run(toy, run_dir)
    toy.steps = 0
    report = run(toy, run_dir)
    assert [s.action for s in report.stages] == ["skipped", "skipped", "disabled"]
    manifest = read_manifest(run_dir)
    assert "loop" not in manifest["stages"]  # no stale figures for the report
    assert manifest["stage_order"] == ["count", "double", "loop"]
