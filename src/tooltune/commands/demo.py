"""``tooltune demo``: ``tooltune run`` on a bundled config — the embedded model, bundled data, no download.

``--example glaive`` (default): the glaive demo data. ``--example seed-tools``: the seed guide's own five tools,
synthesized into training and held-out data by ``tooltune synth``, and at the end the tuned model is served and asked
the seed's own curl question.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

import typer

DEMO_HELP = (
    "Fine-tune the embedded SmolLM2-135M-Instruct to call tools on the bundled glaive demo data, then merge, convert "
    "to GGUF, quantize, evaluate base vs tuned on held-out cases and write report.md (about 10 minutes on 2 CPU "
    "cores). "
    "--example seed-tools: the seed's own five tools instead, data made by `tooltune synth`, finishing with the "
    "seed's curl body sent to the served model."
)
DEMO_RUN_DIR = "runs/demo"
EXAMPLES = {"glaive": ("demo.yaml", DEMO_RUN_DIR), "seed-tools": ("seed_tools.yaml", "runs/seed-tools")}


def demo_config_path(example: str = "glaive") -> Path:
    resource = importlib.resources.files("tooltune") / "resources" / "configs" / EXAMPLES[example][0]
    return Path(str(resource))


def _pop_example(argv: list[str]) -> str:
    """``--example NAME`` / ``--example=NAME`` out of the pass-through arguments."""
    example = "glaive"
    for i, arg in enumerate(list(argv)):
        if arg == "--example" and i + 1 < len(argv):
            example = argv[i + 1]
            del argv[i : i + 2]
            break
        if arg.startswith("--example="):
            example = arg.split("=", 1)[1]
            del argv[i]
            break
    if example not in EXAMPLES:
        raise typer.BadParameter(f"--example {example!r}: choose one of {', '.join(EXAMPLES)}")
    return example


def register(app: typer.Typer) -> None:
    from tooltune.cli import LF_CONTEXT

    @app.command(name="demo", help=DEMO_HELP, context_settings=LF_CONTEXT)
    def demo_command(ctx: typer.Context) -> None:
        from tooltune.commands.run import run_until_interrupted, split_stage_flags
        from tooltune.pipeline.config import load_pipeline_config
        from tooltune.pipeline.stages import STAGE_NAMES

        argv = list(ctx.args)
        if "-h" in argv or "--help" in argv:
            typer.echo("Usage: tooltune demo [--example glaive|seed-tools] [--run_dir DIR] [--from STAGE | --only "
                       "STAGE] [--key value ...]")
            typer.echo(f"\n{DEMO_HELP}\n\nConfigs: {', '.join(str(demo_config_path(e)) for e in EXAMPLES)}"
                       f"\nStages: {', '.join(STAGE_NAMES)}")
            raise typer.Exit(0)
        example = _pop_example(argv)
        flags, rest = split_stage_flags(argv)
        config = load_pipeline_config([str(demo_config_path(example)), *rest])
        if not config.pipeline.run_dir:
            config.pipeline.run_dir = EXAMPLES[example][1]
        run_until_interrupted(config, flags)
        if example == "seed-tools" and not flags:
            from rich.console import Console

            from tooltune.pipeline.config import default_serve_name
            from tooltune.synth.seed_demo import serve_and_send_seed_curl

            serve_and_send_seed_curl(config.run_dir / "modelfile" / "Modelfile", default_serve_name(config),
                                     Console())
