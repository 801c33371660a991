"""``tooltune run pipeline.yaml [--from STAGE] [--only STAGE] [--key value ...]``: the seed's whole guide in one run."""

from __future__ import annotations

from typing import Any

import typer

from tooltune.errors import TooltuneError

RUN_HELP = (
    "Run the whole pipeline from one config: preview → train → export → gguf → eval → quantize → eval_quants → "
    "modelfile → report. Re-running skips unchanged stages and resumes an interrupted one."
)
STAGE_FLAGS = ("from", "only")


class RunArgumentError(TooltuneError):
    pass


def split_stage_flags(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """Take ``--from STAGE`` / ``--only STAGE`` (also ``--from=STAGE``) out of ``argv``; the rest is the config."""
    flags: dict[str, str] = {}
    rest: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        name, _, inline = token[2:].partition("=") if token.startswith("--") else ("", "", "")
        if name.replace("-", "_") in ("from", "from_stage", "only"):
            key = "only" if name == "only" else "from"
            if inline:
                flags[key] = inline
                i += 1
                continue
            if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                raise RunArgumentError(f"--{name} needs a stage name")
            flags[key] = argv[i + 1]
            i += 2
            continue
        rest.append(token)
        i += 1
    return flags, rest


def _stop_request(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def run_until_interrupted(config: Any, flags: dict[str, str]) -> None:
    """Run the pipeline; on Ctrl-C say how to resume and exit 130 (the manifest already marks the stage interrupted).

    SIGTERM (``kill``, ``docker stop``, the web UI's Stop button) is a stop request too, handled as Ctrl-C: a process
    started in the background by a shell ignores SIGINT, so a stop sent as SIGINT would never arrive, and Python's
    default SIGTERM exits without marking the stage."""
    import signal
    import threading

    from tooltune.pipeline.stages import run_pipeline

    main_thread = threading.current_thread() is threading.main_thread()  # signal handlers live in the main thread
    previous = signal.signal(signal.SIGTERM, _stop_request) if main_thread else None
    try:
        run_pipeline(config, from_stage=flags.get("from"), only=flags.get("only"))
    except KeyboardInterrupt:
        typer.echo("interrupted: run the same command again to resume", err=True)
        raise typer.Exit(130) from None
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def register(app: typer.Typer) -> None:
    from tooltune.cli import LF_CONTEXT

    @app.command(name="run", help=RUN_HELP, context_settings=LF_CONTEXT)
    def run_command(ctx: typer.Context) -> None:
        from tooltune.args import format_help
        from tooltune.pipeline.config import CONFIG_CLASSES, load_pipeline_config
        from tooltune.pipeline.stages import STAGE_NAMES

        argv = list(ctx.args)
        if "-h" in argv or "--help" in argv:
            typer.echo("Usage: tooltune run PIPELINE.yaml [--from STAGE | --only STAGE] [--key value ...]")
            typer.echo(f"\n{RUN_HELP}")
            typer.echo(f"\nStages: {', '.join(STAGE_NAMES)}")
            typer.echo(format_help(CONFIG_CLASSES))
            raise typer.Exit(0)
        flags, rest = split_stage_flags(argv)
        run_until_interrupted(load_pipeline_config(rest), flags)
