"""What an evaluation runs against: a model file/dir decoded here, or a running server.

Target spec strings (``tooltune eval --model SPEC``):

* ``path/to/model.gguf``            llama.cpp (``tooltune.engines``)
* ``path/to/hf_dir``                transformers (``tooltune.engines``)
* ``base.gguf#adapter.gguf``        llama.cpp with that LoRA GGUF applied over the base (unmerged, as served)
* ``http://host:port/v1[#model]``   OpenAI-compatible chat completions (``tooltune serve``, vLLM, llama-server ...)
* ``openai:http://host:port[#model]``  the same, explicitly
* ``ollama:http://host:port[#model]``  Ollama's ``/api/chat`` (``tooltune serve`` or real Ollama); a plain URL on
  port 11434 is taken as Ollama too

Without ``#model`` the server's first listed model is used. Local targets render the prompt with the model's own chat
template (training stores the training layout there), or ``chat_template`` when given (a file, or a bundled template
name such as ``qwen``). Servers render with theirs; their parsed ``tool_calls`` are what a client program receives, so
they are scored as such (strict), and their content is re-parsed only in lenient scoring.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tooltune.conversation import ConversationError, ToolCall
from tooltune.errors import TooltuneError
from tooltune.eval.cases import Case

OLLAMA_DEFAULT_PORT = 11434
_PROBE_TOOL = "tooltune_probe_tool"


class TargetError(TooltuneError):
    """A target that cannot be opened (missing file, unreachable server, template without tool support)."""


@dataclass
class DecodeConfig:
    """Deterministic by default: greedy decoding with a fixed seed."""

    max_tokens: int = 256
    temperature: float = 0.0
    seed: int = 0
    # A call the model opens is held to the tools' schemas, as `tooltune serve` serves it (model files on llama.cpp;
    # a server target answers as that server is configured).
    constrain_calls: bool = True


@dataclass
class Generation:
    text: str  # raw model text (local targets) or the message content (servers)
    api_calls: list[ToolCall] | None = None  # calls a server already parsed; None when ``text`` is raw output
    latency_s: float = 0.0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    errors: list[str] = field(default_factory=list)  # request failures or unparsable server calls
    family: str | None = None  # model family whose parser reads ``text`` (local targets); None: Hermes tags


class Target:
    kind: str
    label: str

    def generate(self, case: Case, config: DecodeConfig) -> Generation:
        raise NotImplementedError

    def close(self) -> None:
        pass


def resolve_chat_template(value: str | None) -> str | None:
    """``--chat-template`` through the one resolver every command uses (``tooltune.families.registry``)."""
    from rich.console import Console

    from tooltune.families.registry import resolve_chat_template as resolve

    return resolve(value, TargetError, warn=lambda w: Console(stderr=True).print(f"[yellow]warning:[/yellow] {w}"))


# --------------------------------------------------------------------------------------------------------------------
# Local engines


class EngineTarget(Target):
    """An HF directory or GGUF file through ``tooltune.engines.load_engine``."""

    def __init__(self, path: Path, chat_template: str | None = None, n_ctx: int = 4096,
                 adapter: Path | None = None) -> None:
        from tooltune.engines import load_engine

        adapters = {"adapter": [adapter]} if adapter is not None else None
        self.adapter = "adapter" if adapter is not None else None
        self.engine = load_engine(path, n_ctx=n_ctx, chat_template=chat_template, adapters=adapters)
        self.kind = "gguf" if path.suffix.lower() == ".gguf" else "hf"
        self.label = path.name if adapter is None else f"{path.name}+{adapter.name}"
        self._check_template_shows_tools()

    def _check_template_shows_tools(self) -> None:
        """A template that drops tools (SmolLM2's own) would score the model on a prompt without them."""
        if not self.engine.chat_template:
            from tooltune.families.detect import from_gguf_metadata

            family = from_gguf_metadata(getattr(self.engine, "metadata", None) or {})
            hint = (f"its architecture says {family.name}: pass --chat-template {family.name}"
                    if family is not None and family.shipped_template else "pass --chat-template FILE (e.g. qwen)")
            raise TargetError(f"{self.label}: the model has no chat template; {hint}")
        probe = [{"type": "function", "function": {"name": _PROBE_TOOL, "parameters": {"type": "object"}}}]
        rendered = self.engine.render([{"role": "user", "content": "hi"}], probe, add_generation_prompt=True)
        if _PROBE_TOOL not in rendered:
            raise TargetError(
                f"{self.label}: the model's chat template ignores tools, so the model would never see them; "
                "pass --chat-template with a tool-aware template (e.g. --chat-template qwen)"
            )

    def generate(self, case: Case, config: DecodeConfig) -> Generation:
        from tooltune.engines import EngineError, SamplingParams
        from tooltune.families.respond import RespondOptions, respond

        started = time.perf_counter()
        params = SamplingParams(max_tokens=config.max_tokens, temperature=config.temperature, seed=config.seed,
                                adapter=self.adapter)
        try:
            # The same turn as `tooltune chat`; scoring re-reads the raw text (strict and lenient from one decode).
            reply = respond(self.engine, case.messages, case.tools or None,
                            RespondOptions(params=params, constrain_calls=config.constrain_calls))
        except (EngineError, TooltuneError) as exc:  # e.g. a prompt longer than the context: this case fails
            return Generation(text="", latency_s=time.perf_counter() - started, errors=[str(exc)])
        return Generation(
            text=reply.raw,
            latency_s=time.perf_counter() - started,
            prompt_tokens=reply.prompt_tokens,
            completion_tokens=reply.completion_tokens,
            finish_reason=reply.finish_reason,
            family=reply.family,
        )

    def close(self) -> None:
        self.engine.close()


# --------------------------------------------------------------------------------------------------------------------
# Servers


def openai_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI wire messages: call arguments as JSON strings, and call ids linking results to calls (datasets rarely
    have ids; strict servers such as vLLM require them)."""
    out: list[dict[str, Any]] = []
    pending_ids: list[str] = []
    counter = 0
    for message in messages:
        item = {k: v for k, v in message.items() if k != "tool_calls"}
        if message.get("tool_calls"):
            calls = []
            for call in message["tool_calls"]:
                body = call.get("function", call)
                call_id = call.get("id") or f"call_{counter}"
                counter += 1
                pending_ids.append(call_id)
                arguments = body.get("arguments", {})
                calls.append({
                    "id": call_id,
                    "type": "function",
                    "function": {"name": body["name"], "arguments": json.dumps(arguments, ensure_ascii=False)},
                })  # fmt: skip
            item["tool_calls"] = calls
            item["content"] = message.get("content") or None
        elif message.get("role") == "tool" and not message.get("tool_call_id"):
            item["tool_call_id"] = pending_ids.pop(0) if pending_ids else f"call_{counter}"
        out.append(item)
    return out


def ollama_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ollama wire messages: arguments stay objects, a tool result names its tool as ``tool_name``."""
    out = []
    for message in messages:
        item: dict[str, Any] = {"role": message["role"], "content": message.get("content") or ""}
        if message.get("tool_calls"):
            bodies = [call.get("function", call) for call in message["tool_calls"]]
            item["tool_calls"] = [
                {"function": {"name": body["name"], "arguments": body.get("arguments") or {}}} for body in bodies
            ]
        if message.get("role") == "tool" and message.get("name"):
            item["tool_name"] = message["name"]
        out.append(item)
    return out


def _split_spec(spec: str) -> tuple[str | None, str, str | None]:
    """(api or None, base url, model or None) from ``[api:]url[#model]``."""
    api = None
    for prefix in ("openai:", "ollama:"):
        if spec.startswith(prefix):
            api, spec = prefix[:-1], spec[len(prefix) :]
    url, _, model = spec.partition("#")
    return api, url.rstrip("/"), model or None


class OpenAITarget(Target):
    kind = "openai"

    def __init__(self, url: str, model: str | None, timeout: float = 600.0) -> None:
        import openai

        base = url if url.endswith("/v1") else f"{url}/v1"
        self._openai = openai
        self.client = openai.OpenAI(
            base_url=base, api_key=os.environ.get("OPENAI_API_KEY", "none"), max_retries=0, timeout=timeout
        )
        try:
            listed = [m.id for m in self.client.models.list().data] if model is None else []
        except openai.APIConnectionError as exc:
            raise TargetError(f"{base}: server not reachable ({exc})") from exc
        except openai.APIError as exc:
            raise TargetError(f"{base}/models: {exc}") from exc
        if model is None and not listed:
            raise TargetError(f"{base}: the server lists no models; name one as {url}#MODEL")
        self.model = model or listed[0]
        self.label = f"{self.model} @ {urlsplit(base).netloc} (openai)"

    def generate(self, case: Case, config: DecodeConfig) -> Generation:
        request: dict[str, Any] = {
            "model": self.model,
            "messages": openai_messages(case.messages),
            "temperature": config.temperature,
            "seed": config.seed,
            "max_tokens": config.max_tokens,
        }
        if case.tools:
            request["tools"] = case.tools
        started = time.perf_counter()
        try:
            response = self.client.chat.completions.create(**request)
        except self._openai.APIConnectionError as exc:
            raise TargetError(f"{self.label}: server went away ({exc})") from exc
        except self._openai.APIError as exc:
            return Generation(text="", latency_s=time.perf_counter() - started, errors=[f"request failed: {exc}"])
        latency = time.perf_counter() - started
        choice = response.choices[0]
        calls, errors = [], []
        for raw in choice.message.tool_calls or []:
            try:
                calls.append(ToolCall.from_any(raw.model_dump()))
            except ConversationError as exc:
                errors.append(f"server returned an unusable tool call: {exc}")
        usage = response.usage
        return Generation(
            text=choice.message.content or "",
            api_calls=calls,
            latency_s=latency,
            prompt_tokens=usage.prompt_tokens if usage else None,
            completion_tokens=usage.completion_tokens if usage else None,
            finish_reason=choice.finish_reason,
            errors=errors,
        )

    def close(self) -> None:
        self.client.close()


class OllamaTarget(Target):
    kind = "ollama"

    def __init__(self, url: str, model: str | None, timeout: float = 600.0) -> None:
        import httpx
        import ollama

        self._ollama = ollama
        self._connect_errors = (httpx.ConnectError, ConnectionError)
        self.client = ollama.Client(host=url, timeout=timeout)
        try:
            listed = [m.model for m in self.client.list().models] if model is None else []
        except self._connect_errors as exc:
            raise TargetError(f"{url}: Ollama server not reachable ({exc})") from exc
        except ollama.ResponseError as exc:
            raise TargetError(f"{url}/api/tags: {exc}") from exc
        if model is None and not listed:
            raise TargetError(f"{url}: the server lists no models; name one as ollama:{url}#MODEL")
        self.model = model or str(listed[0])
        self.label = f"{self.model} @ {urlsplit(url).netloc} (ollama)"

    def generate(self, case: Case, config: DecodeConfig) -> Generation:
        options = {"temperature": config.temperature, "seed": config.seed, "num_predict": config.max_tokens}
        started = time.perf_counter()
        try:
            response = self.client.chat(
                model=self.model, messages=ollama_messages(case.messages), tools=case.tools or None, options=options
            )
        except self._connect_errors as exc:
            raise TargetError(f"{self.label}: server went away ({exc})") from exc
        except self._ollama.ResponseError as exc:
            return Generation(text="", latency_s=time.perf_counter() - started, errors=[f"request failed: {exc}"])
        latency = time.perf_counter() - started
        message = response.message
        calls = [
            ToolCall(name=c.function.name, arguments=dict(c.function.arguments or {})) for c in message.tool_calls or []
        ]
        return Generation(
            text=message.content or "",
            api_calls=calls,
            latency_s=latency,
            prompt_tokens=response.prompt_eval_count,
            completion_tokens=response.eval_count,
            finish_reason=response.done_reason,
        )


def open_target(spec: str, chat_template: str | None = None, n_ctx: int = 4096) -> Target:
    """Open one ``--model`` spec (see the module docstring)."""
    api, url, model = _split_spec(spec)
    if api or url.startswith(("http://", "https://")):
        if api is None:
            api = "ollama" if urlsplit(url).port == OLLAMA_DEFAULT_PORT else "openai"
        # --chat-template only concerns model files: a server renders with its own template.
        return OllamaTarget(url, model) if api == "ollama" else OpenAITarget(url, model)
    adapter = None
    if model is not None:  # base.gguf#adapter.gguf: the LoRA applied over the base by llama.cpp
        from tooltune.gguf.adapter import AdapterGGUFError, check_adapter_gguf

        try:
            adapter = check_adapter_gguf(Path(model).expanduser(), Path(url).expanduser()).path
        except AdapterGGUFError as exc:
            raise TargetError(f"{spec}: {exc}") from exc
        spec = url
    path = Path(spec).expanduser()
    if not path.exists():
        raise TargetError(f"{spec}: no such model file or directory (or give a server URL)")
    if path.is_file() and path.suffix.lower() != ".gguf":
        raise TargetError(f"{spec}: expected a .gguf file, an HF model directory or a server URL")
    return EngineTarget(path, chat_template=resolve_chat_template(chat_template), n_ctx=n_ctx, adapter=adapter)
