"""Run the UI with uvicorn (the typed entry point ``tooltune ui`` calls)."""

from __future__ import annotations

from rich.console import Console

from tooltune.ui.app import UIContext, standalone_app
from tooltune.ui.playground import check_url
from tooltune.ui.workspace import Workspace

console = Console(stderr=True)


def parse_targets(model_urls: list[str], api_key: str | None) -> list[dict[str, str]]:
    targets = []
    for item in model_urls:
        url, _, model = item.partition("#")
        entry = {"label": f"{model or 'model'} @ {check_url(url)}", "url": check_url(url), "model": model}
        if api_key:
            entry["api_key"] = api_key
        targets.append(entry)
    return targets


def build_ui(workspace: str, *, api_key: str | None = None, model_urls: list[str] | None = None,
             model_api_key: str | None = None) -> object:
    ctx = UIContext(Workspace(workspace), api_key=api_key, targets=parse_targets(model_urls or [], model_api_key))
    return standalone_app(ctx)


def run_ui(workspace: str, *, host: str = "127.0.0.1", port: int = 7860, api_key: str | None = None,
           model_urls: list[str] | None = None, model_api_key: str | None = None) -> None:
    import uvicorn

    from tooltune.commands.serve import is_loopback

    app = build_ui(workspace, api_key=api_key, model_urls=model_urls, model_api_key=model_api_key)
    if not is_loopback(host):
        console.print(f"[yellow]warning:[/yellow] listening on {host}: reachable from other machines"
                      + ("" if api_key else " without --api-key"))
    console.print(f"tooltune ui on http://{host}:{port}/ui/ (workspace {Workspace(workspace).root})")
    uvicorn.run(app, host=host, port=port, log_level="warning")
