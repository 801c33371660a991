"""``tooltune serve MODEL``: the Ollama API and the OpenAI API on 127.0.0.1:11434, so the seed's curl works verbatim."""

from __future__ import annotations

import ipaddress
import threading
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from tooltune.errors import TooltuneError
from tooltune.serve.limits import RequestLimits

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 11434  # Ollama's port: clients and the seed's curl need no change

console = Console(stderr=True)


class ServeError(TooltuneError, ValueError):
    pass


def resolve_chat_template(value: str | None) -> str | None:
    """``--chat-template`` through the one resolver every command uses (``tooltune.families.registry``)."""
    from tooltune.families.registry import resolve_chat_template as resolve

    return resolve(value, ServeError, warn=lambda w: console.print(f"[yellow]warning:[/yellow] {w}"))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_server(model: str | None, *, name: str | None = None, modelfile: str | None = None,
                 chat_template: str | None = None, system: str | None = None, api_key: str | None = None,
                 n_ctx: int = 4096, n_threads: int | None = None, max_body_mb: float = 8.0,
                 max_tokens_limit: int | None = None, parameters: dict[str, Any] | None = None,
                 stream_interval_ms: float = 50.0, limits: Any = None,
                 wedge_seconds: float | None = None, parallel: int = 1, lora: list[str] | None = None,
                 bare_json_calls: bool = False, constrain_calls: bool = True) -> Any:
    """Start the model runner and return the FastAPI app (the typed entry point the CLI and the pipeline call).

    The model is loaded in a runner subprocess (``tooltune.serve.runner``): this process never imports native
    inference code, and a crash there costs the requests it held a 503, not the server.

    ``lora`` (``NAME=ADAPTER.gguf`` each) and a Modelfile's ``ADAPTER`` lines add served names over the same base:
    checked here, before the runner starts, then loaded once in the runner and applied per request.
    """
    from tooltune.default_model import default_gguf_path
    from tooltune.serve.adapters import AdapterServeError, check_served_models, parse_lora_option
    from tooltune.serve.app import create_app
    from tooltune.serve.modelfile import parse_modelfile
    from tooltune.serve.runner_client import DEFAULT_WEDGE_SECONDS, RunnerEngine

    defaults: dict[str, Any] = {}
    messages: list[dict[str, Any]] = []
    modelfile_text = ""
    adapter_specs: list[tuple[str, list[Path], str]] = []
    if modelfile:
        spec = parse_modelfile(modelfile)
        if model and Path(model).resolve() != spec.from_.resolve():
            raise ServeError(f"both MODEL ({model}) and --modelfile FROM ({spec.from_}) given; pass one")
        model = str(spec.from_)
        defaults.update(spec.parameters)
        system = system or spec.system
        messages = spec.messages
        modelfile_text = spec.text
        if spec.adapters:
            # The Modelfile describes the adapted model: it answers to --name (default: the first adapter's file
            # name), and the base stays available under its own file name.
            adapter_specs.append((name or spec.adapters[0].stem, spec.adapters, f"{modelfile}: ADAPTER"))
            name = None
        if spec.template and not chat_template:
            console.print("[yellow]note:[/yellow] the Modelfile's Go TEMPLATE is for Ollama; tooltune renders the "
                          "model's Jinja chat template (the one it was trained with); --chat-template changes it.")
    if "num_ctx" in defaults and n_ctx == 4096:
        n_ctx = int(defaults["num_ctx"])
    defaults.update({k: v for k, v in (parameters or {}).items() if v is not None})
    model_path = Path(model) if model else default_gguf_path()
    served_name = name or model_path.stem
    try:
        for value in lora or []:
            lora_name, lora_path = parse_lora_option(value)
            adapter_specs.append((lora_name, [lora_path], f"--lora {value}"))
        adapters = check_served_models(model_path, served_name, adapter_specs)
    except AdapterServeError as exc:
        raise ServeError(str(exc)) from exc
    engine = RunnerEngine(model_path, n_ctx=n_ctx, n_threads=n_threads,
                          chat_template=resolve_chat_template(chat_template),
                          wedge_seconds=wedge_seconds or DEFAULT_WEDGE_SECONDS, parallel=parallel,
                          adapters=adapters, stream_interval=max(0.0, stream_interval_ms) / 1000)
    app = create_app(engine, served_name, defaults=defaults, system=system, messages=messages, api_key=api_key,
                     max_body_bytes=int(max_body_mb * 1024 * 1024), max_tokens_limit=max_tokens_limit,
                     modelfile_text=modelfile_text, stream_interval=max(0.0, stream_interval_ms) / 1000,
                     limits=limits or RequestLimits(), adapters=adapters, bare_json_calls=bare_json_calls,
                     constrain_calls=constrain_calls)
    return app


def run_server(app: Any, host: str, port: int, shutdown_seconds: float) -> None:
    """uvicorn, stopped cleanly by SIGTERM/SIGINT with exit status 0.

    On a signal uvicorn stops accepting at once, lets in-flight requests finish for up to ``shutdown_seconds``,
    cancels the rest (each cancel stops its decode within a token), runs the lifespan shutdown (which stops the
    runner) and returns. Stock uvicorn then re-raises the signal, so a clean stop would look like a crash (status
    143/130) to systemd, Docker and CI; this server does not. A second SIGINT/SIGTERM stops without waiting.
    """
    import signal

    import uvicorn

    stopping: list[float] = []
    scheduler = app.state.tooltune.scheduler
    reason = "the server is shutting down; retry the request"
    # uvicorn cancels what still runs at its deadline, which cuts a stream without a word: end those streams a
    # little before it, in-band in each API's shape, while their connections can still carry the error event.
    end_streams_after = max(0.0, shutdown_seconds - 0.5)

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            if self.should_exit:
                scheduler.end_streams(reason)
                self.force_exit = True
                return
            stopping.append(time.perf_counter())
            console.print(f"{signal.Signals(sig).name}: stopping (in-flight requests get up to "
                          f"{shutdown_seconds:g} s)")
            timer = threading.Timer(end_streams_after, scheduler.end_streams, (reason,))
            timer.daemon = True
            timer.start()
            self.should_exit = True

    config = uvicorn.Config(app, host=host, port=port, log_level="warning",
                            timeout_graceful_shutdown=max(0.1, shutdown_seconds))
    Server(config).run()
    if stopping:
        console.print(f"stopped in {time.perf_counter() - stopping[0]:.2f} s")


def serve(model: str | None, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          shutdown_seconds: float = 3.0, **kwargs: Any) -> None:
    if not is_loopback(host):
        console.print(f"[yellow]warning:[/yellow] listening on {host}: reachable from other machines"
                      + ("" if kwargs.get("api_key") else " without --api-key"))
    app = build_server(model, **kwargs)
    state = app.state.tooltune
    engine = state.engine
    adapter_names = [m.name for m in state.models if m.adapter]
    console.print(
        f"serving [bold]{state.name}[/bold]"
        + (f" and {len(adapter_names)} adapter model(s) [bold]{', '.join(adapter_names)}[/bold]" if adapter_names
           else "")
        + f" ({getattr(engine, 'kind', engine.__class__.__name__)} in runner pid "
        f"{getattr(engine, 'runner_pid', '-')}, ctx {engine.context_length}, loaded in {engine.load_seconds:.1f}s) "
        f"on http://{host}:{port} — Ollama /api/* and OpenAI /v1/*"
    )
    try:
        run_server(app, host, port, shutdown_seconds)
    finally:
        engine.close()


def register(app: typer.Typer) -> None:
    @app.command("serve", help="Serve a GGUF file or HF model directory with the Ollama and OpenAI APIs.")
    def serve_command(
        model: str | None = typer.Argument(None, help="GGUF file or HF directory (default: the embedded model)."),
        name: str | None = typer.Option(None, "--name", "--model-name", "--model_name",
                                        help="Model name clients use (default: the file name)."),
        modelfile: str | None = typer.Option(None, "--modelfile", help="Serve what a Modelfile describes."),
        chat_template: str | None = typer.Option(None, "--chat-template", "--chat_template",
                                                 help="Chat template: a name (qwen, qwen2.5, qwen3, mistral...), "
                                                      "a Jinja file or a model folder."),
        system: str | None = typer.Option(None, "--system", help="Default system prompt."),
        host: str = typer.Option(DEFAULT_HOST, "--host", help="Address to bind (loopback unless you say so)."),
        port: int = typer.Option(DEFAULT_PORT, "--port"),
        api_key: str | None = typer.Option(None, "--api-key", "--api_key", envvar="TOOLTUNE_API_KEY",
                                           help="Require 'Authorization: Bearer KEY' on both APIs."),
        n_ctx: int = typer.Option(4096, "--n-ctx", "--n_ctx", "--num-ctx", help="Context length."),
        n_threads: int | None = typer.Option(None, "--n-threads", "--n_threads", help="CPU threads."),
        max_body_mb: float = typer.Option(8.0, "--max-body-mb", help="Largest request body accepted."),
        max_tokens_limit: int | None = typer.Option(None, "--max-tokens-limit",
                                                    help="Largest num_predict/max_tokens (default: context)."),
        temperature: float | None = typer.Option(None, "--temperature"),
        top_p: float | None = typer.Option(None, "--top-p", "--top_p"),
        top_k: int | None = typer.Option(None, "--top-k", "--top_k"),
        repeat_penalty: float | None = typer.Option(None, "--repeat-penalty", "--repeat_penalty"),
        stream_interval_ms: float = typer.Option(
            50.0, "--stream-interval-ms", "--stream_interval_ms",
            help="Streamed tokens leave at most this often (first token at once; 0: every token as made).",
        ),
        engine: str = typer.Option("auto", "--engine",
                                   help="auto (llama.cpp for .gguf, transformers for a directory) or vllm."),
        max_schema_bytes: int = typer.Option(64 * 1024, "--max-schema-bytes", "--max_schema_bytes",
                                             help="Largest JSON schema turned into a grammar (bytes)."),
        max_schema_depth: int = typer.Option(32, "--max-schema-depth", "--max_schema_depth",
                                             help="Deepest nesting of such a schema."),
        max_schema_repeat: int = typer.Option(1000, "--max-schema-repeat", "--max_schema_repeat",
                                              help="Largest minLength/maxLength/minItems/maxItems or regex {n,m} "
                                                   "in such a schema (each becomes grammar rules)."),
        max_json_depth: int = typer.Option(64, "--max-json-depth", "--max_json_depth",
                                           help="Deepest nesting of a request body."),
        shutdown_seconds: float = typer.Option(3.0, "--shutdown-timeout", "--shutdown_timeout",
                                               help="On SIGTERM/SIGINT, seconds in-flight requests may take."),
        parallel: int = typer.Option(1, "--parallel", "--num-parallel", "--num_parallel",
                                     help="Requests decoded together in one batch (llama.cpp slots); each gets "
                                          "--n-ctx tokens of context."),
        lora: list[str] | None = typer.Option(None, "--lora", "--lora-adapter", "--lora_adapter",
                                              help="NAME=ADAPTER.gguf: also serve the base with this LoRA GGUF as "
                                                   "model NAME (repeatable; switched per request)."),
        runner_timeout: float = typer.Option(120.0, "--runner-timeout", "--runner_timeout",
                                             help="A runner silent this long while holding requests is restarted."),
        bare_json_calls: bool = typer.Option(False, "--bare-json-calls", "--bare_json_calls",
                                             help="tool_choice auto: also take a bare JSON object or ```json fence "
                                                  "naming an offered tool (arguments fitting its schema) as a call."),
        constrain_calls: bool = typer.Option(True, "--constrain-calls/--no-constrain-calls",
                                             "--constrain_calls/--no_constrain_calls",
                                             help="tool_choice auto: once the model opens a tool call, hold it to the "
                                                  "offered tools' schemas with a grammar (names, required arguments, "
                                                  "types, enums), as llama.cpp's server does; GGUF models only."),
    ) -> None:
        if engine == "vllm":
            if lora:  # vLLM takes HF-format adapters with --enable-lora, not LoRA GGUFs: say so, never drop them
                raise TooltuneError("--lora serves LoRA GGUFs with llama.cpp; for vLLM, `tooltune vllm-command "
                                    "ADAPTER_DIR` prints `vllm serve` with --enable-lora --lora-modules")
            serve_with_vllm(model, host=host, port=port, name=name, chat_template=chat_template)
            return
        if engine != "auto":
            raise TooltuneError(f"--engine must be auto or vllm, got {engine!r}")
        serve(model, host=host, port=port, name=name, modelfile=modelfile, chat_template=chat_template,
              system=system, api_key=api_key, n_ctx=n_ctx, n_threads=n_threads, max_body_mb=max_body_mb,
              max_tokens_limit=max_tokens_limit, stream_interval_ms=stream_interval_ms,
              shutdown_seconds=shutdown_seconds, wedge_seconds=runner_timeout, parallel=max(1, parallel), lora=lora,
              bare_json_calls=bare_json_calls, constrain_calls=constrain_calls,
              limits=RequestLimits(max_json_depth=max_json_depth, max_schema_bytes=max_schema_bytes,
                                   max_schema_depth=max_schema_depth, max_schema_repeat=max_schema_repeat),
              parameters={"temperature": temperature, "top_p": top_p, "top_k": top_k,
                          "repeat_penalty": repeat_penalty})


def serve_with_vllm(model: str | None, *, host: str, port: int, name: str | None, chat_template: str | None) -> None:
    """Start ``vllm serve`` with tool-call parsing on (the command ``tooltune vllm-command`` prints) and wait on it."""
    from tooltune.vllm.launch import is_vllm_available, start_vllm, stop

    if model is None:
        raise TooltuneError("--engine vllm needs a model directory (a merged or vllm-export checkpoint)")
    if not is_vllm_available():
        raise TooltuneError(
            "--engine vllm needs the `vllm` package in this environment (pip install vllm, on a CUDA machine); "
            "`tooltune vllm-command MODEL` prints the command to run it elsewhere"
        )
    if not is_loopback(host):
        typer.secho(f"warning: vLLM will listen on {host}, reachable from other machines", fg="yellow", err=True)
    process = start_vllm(model, host=host, port=port, served_model_name=name,
                         chat_template=resolve_chat_template(chat_template))
    typer.echo(f"vLLM is answering on http://{host}:{port}/v1 (Ctrl-C stops it)")
    try:
        process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        stop(process)
