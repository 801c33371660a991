"""The playground's one request: a chat turn sent to a served model through its public OpenAI API, answered with
what the page shows — the prompt the server's chat template renders (template read from Ollama's ``/api/show``),
the raw reply, the parsed tool calls and any reasoning.

Only loopback servers are reachable from here, so the page cannot be used to make this machine call elsewhere.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from tooltune.conversation import ConversationError, Message, Tool
from tooltune.ui.workspace import UIError

SELF = "self"  # the target "this server" when the UI runs inside `tooltune serve`
TOOL_CHOICES = ("auto", "none", "required")
MAX_TOKENS_LIMIT = 4096
THINK = re.compile(r"<think>(.*?)</think>\s*", re.DOTALL)
TIMEOUT_SECONDS = 300.0


@dataclass(frozen=True)
class Target:
    url: str  # base URL of the server, no trailing slash
    model: str  # "" : the first model of /v1/models
    api_key: str | None = None


def check_url(url: str) -> str:
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UIError(f"server {url!r}: expected http://127.0.0.1:PORT")
    host = parts.hostname
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise UIError(f"server {url!r}: only servers on this machine (127.0.0.1, localhost) can be reached")
    return f"{parts.scheme}://{parts.netloc}"


def _options(raw: Any) -> dict[str, Any]:
    """Sampling options, each checked and kept only when given."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UIError("options: expected an object")
    rules = {"temperature": (float, 0.0, 5.0), "top_p": (float, 0.0, 1.0), "top_k": (int, 0, 10_000),
             "max_tokens": (int, 1, MAX_TOKENS_LIMIT), "seed": (int, 0, 2**31 - 1)}
    options: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in rules:
            raise UIError(f"options.{key}: unknown option (one of {', '.join(rules)})")
        if value is None or value == "":
            continue
        kind, low, high = rules[key]
        try:
            number = kind(value)
        except (TypeError, ValueError):
            raise UIError(f"options.{key}: {value!r} is not a number") from None
        if not low <= number <= high:
            raise UIError(f"options.{key}: {number} is outside {low}..{high}")
        options[key] = number
    return options


def build_request(body: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], Any, dict[str, Any]]:
    """(messages, tools in OpenAI shape, tool_choice, options) from the page's request, all validated."""
    raw_messages = body.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise UIError("messages: a non-empty list is required")
    messages = []
    system = body.get("system")
    if system:
        if not isinstance(system, str):
            raise UIError("system: expected text")
        messages.append({"role": "system", "content": system})
    for position, raw in enumerate(raw_messages):
        try:
            messages.append(Message.from_openai(raw).to_openai())
        except ConversationError as exc:
            raise UIError(f"messages[{position}]: {exc}") from None
    raw_tools = body.get("tools") or []
    try:
        tools = [tool.to_openai() for tool in Tool.parse_list(raw_tools)]  # any of the three shapes → OpenAI's
    except ConversationError as exc:
        raise UIError(f"tools: {exc}") from None
    choice = body.get("tool_choice") or "auto"
    if isinstance(choice, str) and choice not in TOOL_CHOICES:
        names = {t["function"]["name"] for t in tools}
        if choice not in names:
            raise UIError(f"tool_choice {choice!r}: not auto/none/required nor a tool's name ({', '.join(names)})")
        choice = {"type": "function", "function": {"name": choice}}
    elif not isinstance(choice, str):
        raise UIError("tool_choice: expected auto, none, required or a tool name")
    return messages, tools, choice, _options(body.get("options"))


async def _show(client: httpx.AsyncClient, target: Target, model: str) -> dict[str, Any]:
    """Ollama's ``/api/show`` of the model (its chat template and default system prompt), or {} when not served."""
    try:
        response = await client.post(f"{target.url}/api/show", json={"model": model})
    except httpx.HTTPError:
        return {}
    if response.status_code != 200:
        return {}  # an OpenAI-only server: the page says the prompt is not available
    body = response.json()
    return body if isinstance(body, dict) else {}


def render_prompt(template: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> str:
    from tooltune.chat_template import ChatTemplateError, render

    try:
        templated = [Message.from_openai(m).to_template() for m in messages]
        return render(template, templated, tools=tools or None, add_generation_prompt=True)
    except (ChatTemplateError, ConversationError) as exc:
        return f"(cannot render the server's chat template here: {exc})"


async def chat(target: Target, body: dict[str, Any]) -> dict[str, Any]:
    messages, tools, choice, options = build_request(body)
    headers = {"Authorization": f"Bearer {target.api_key}"} if target.api_key else {}
    async with httpx.AsyncClient(timeout=TIMEOUT_SECONDS, headers=headers) as client:
        model = target.model
        if not model:
            listed = await client.get(f"{target.url}/v1/models")
            if listed.status_code != 200:
                raise UIError(f"{target.url}/v1/models answered {listed.status_code}: {listed.text[:300]}", 502)
            data = listed.json().get("data") or []
            if not data:
                raise UIError(f"{target.url} serves no model", 502)
            model = data[0]["id"]
        request: dict[str, Any] = {"model": model, "messages": messages, **options}
        if tools:
            request |= {"tools": tools, "tool_choice": choice}
        show = await _show(client, target, model)
        try:
            response = await client.post(f"{target.url}/v1/chat/completions", json=request)
        except httpx.HTTPError as exc:
            raise UIError(f"{target.url}: {exc}", 502) from None
    try:
        payload = response.json()
    except json.JSONDecodeError:
        raise UIError(f"{target.url} answered {response.status_code} with no JSON: {response.text[:300]}", 502) \
            from None
    if response.status_code != 200:
        error = payload.get("error") if isinstance(payload, dict) else None
        message = error.get("message") if isinstance(error, dict) else str(error or payload)
        raise UIError(f"the model server refused the request ({response.status_code}): {message}", 502)
    message = payload["choices"][0]["message"]
    content = message.get("content") or ""
    reasoning = message.get("reasoning_content") or "\n".join(m.strip() for m in THINK.findall(content)) or None
    return {
        "model": model,
        "request": request,
        "prompt": _prompt(show, messages, tools),
        "raw": payload,
        "content": THINK.sub("", content),
        "reasoning": reasoning,
        "tool_calls": [
            {"id": call.get("id"), "name": call["function"]["name"], "arguments": _arguments(call["function"])}
            for call in message.get("tool_calls") or []
        ],
        "finish_reason": payload["choices"][0].get("finish_reason"),
        "assistant_message": message,
    }


def _prompt(show: dict[str, Any], messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> str | None:
    template = show.get("template")
    if not template:
        return None
    if show.get("system") and not any(m.get("role") == "system" for m in messages):
        messages = [{"role": "system", "content": show["system"]}, *messages]  # the server adds its default system
    return render_prompt(template, messages, tools)


def _arguments(function: dict[str, Any]) -> Any:
    raw = function.get("arguments")
    if isinstance(raw, str):
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return raw
    return raw
