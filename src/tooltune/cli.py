"""The ``tooltune`` command line.

Each verb lives in ``tooltune/commands/<verb>.py`` as a thin ``register(app)`` that calls a typed function in the
module that does the work, so the CLI never holds logic of its own.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console

from tooltune import __version__, commands
from tooltune.args import ArgumentError, format_help, parse_into
from tooltune.errors import TooltuneError

app = typer.Typer(
    name="tooltune",
    help="Fine-tune an open LLM to call your tools, then ship it: "
    "dataset → preview → LoRA → merge → GGUF → serve → eval.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err_console = Console(stderr=True)

LF_CONTEXT = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


def lf_command(
    app: typer.Typer,
    name: str,
    classes: tuple[type, ...],
    run: Callable[..., Any],
    help: str,
    positional_names: tuple[str, ...] = (),
    aliases: tuple[str, ...] = (),
) -> None:
    """Register a command whose arguments follow LLaMA-Factory (see ``tooltune.args``).

    ``run`` receives one instance per dataclass in ``classes``.
    """

    def command(ctx: typer.Context) -> None:
        argv = list(ctx.args)
        if "-h" in argv or "--help" in argv:
            typer.echo(f"Usage: tooltune {name} [CONFIG.yaml] [--key value ...]\n\n{help}")
            typer.echo(format_help(classes))
            raise typer.Exit(0)
        try:
            parsed = parse_into(classes, argv, positional_names=positional_names)
        except ArgumentError as exc:
            err_console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from None
        run(*parsed)

    for command_name in (name, *aliases):
        app.command(name=command_name, help=help, context_settings=LF_CONTEXT, hidden=command_name != name)(command)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"tooltune {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version."
    ),
) -> None:
    """tooltune."""


def _register_commands() -> None:
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(app)


_register_commands()


def run() -> None:
    try:
        app()
    except TooltuneError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        sys.exit(1)


if __name__ == "__main__":
    run()
