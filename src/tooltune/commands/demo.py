"""``tooltune demo``: ``tooltune run`` on the bundled config — the embedded model, the bundled data, no download."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

import typer

DEMO_HELP = (
    "Fine-tune the embedded SmolLM2-135M-Instruct to call tools on the bundled glaive demo data, then merge, convert "
    "to GGUF, quantize, evaluate base vs tuned on held-out cases and write report.md (about 10 minutes on 2 CPU cores)."
)
DEMO_RUN_DIR = "runs/demo"


def demo_config_path() -> Path:
    resource = importlib.resources.files("tooltune") / "resources" / "configs" / "demo.yaml"
    return Path(str(resource))


def register(app: typer.Typer) -> None:
    from tooltune.cli import LF_CONTEXT

    @app.command(name="demo", help=DEMO_HELP, context_settings=LF_CONTEXT)
    def demo_command(ctx: typer.Context) -> None:
        from tooltune.commands.run import run_until_interrupted, split_stage_flags
        from tooltune.pipeline.config import load_pipeline_config
        from tooltune.pipeline.stages import STAGE_NAMES

        argv = list(ctx.args)
        if "-h" in argv or "--help" in argv:
            typer.echo("Usage: tooltune demo [--run_dir DIR] [--from STAGE | --only STAGE] [--key value ...]")
            typer.echo(f"\n{DEMO_HELP}\n\nConfig: {demo_config_path()}\nStages: {', '.join(STAGE_NAMES)}")
            raise typer.Exit(0)
        flags, rest = split_stage_flags(argv)
        config = load_pipeline_config([str(demo_config_path()), *rest])
        if not config.pipeline.run_dir:
            config.pipeline.run_dir = DEMO_RUN_DIR
        run_until_interrupted(config, flags)
