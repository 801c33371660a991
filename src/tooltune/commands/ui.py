"""``tooltune ui [--workspace DIR]``: the data, runs, run form and playground pages on http://127.0.0.1:7860/ui/."""

from __future__ import annotations

import typer

DEFAULT_UI_PORT = 7860


def register(app: typer.Typer) -> None:
    @app.command("ui", help="Web UI: data as training sees it, runs with live loss, a run form, a tool playground.")
    def ui_command(
        workspace: str = typer.Option(".", "--workspace", help="Folder the UI may read and write (runs/ lives here)."),
        host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (loopback unless you say so)."),
        port: int = typer.Option(DEFAULT_UI_PORT, "--port"),
        api_key: str | None = typer.Option(None, "--api-key", "--api_key", envvar="TOOLTUNE_API_KEY",
                                           help="Require this key on every page and endpoint."),
        model_url: list[str] = typer.Option(
            [], "--model-url", "--model_url",
            help="A served model for the playground: URL or URL#MODEL of a `tooltune serve` (repeat for side by side).",
        ),
        model_api_key: str | None = typer.Option(None, "--model-api-key", "--model_api_key",
                                                 help="Bearer key the served models want."),
    ) -> None:
        from tooltune.ui.server import run_ui

        run_ui(workspace, host=host, port=port, api_key=api_key, model_urls=model_url, model_api_key=model_api_key)
