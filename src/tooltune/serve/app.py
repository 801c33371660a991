"""The FastAPI application: both APIs over one engine, one scheduler, one error policy.

Errors are answered in the calling API's own shape (``{"error": "..."}`` for Ollama's ``/api``, ``{"error": {...}}``
for OpenAI's ``/v1``), and no bad request can take the process down: every handler's failure becomes a response.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote_to_bytes

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from tooltune.engines import Engine
from tooltune.serve import ollama_api, openai_api, wire
from tooltune.serve.limits import RequestLimits
from tooltune.serve.scheduler import DEFAULT_STREAM_INTERVAL
from tooltune.serve.state import DEFAULT_MAX_BODY_BYTES, ApiError, ServeConfig, ServerState

log = logging.getLogger("tooltune.serve")


def error_body(path: str, status: int, message: str, code: str | None = None,
               param: str | None = None) -> dict[str, Any]:
    if path.startswith("/v1"):
        return wire.openai_error(message, status, code, param)
    return wire.ollama_error(message)


class GuardMiddleware:
    """Bearer-key check and body-size limit before a request reaches a handler (pure ASGI: streaming stays intact)."""

    def __init__(self, app: ASGIApp, api_key: str | None, max_body_bytes: int) -> None:
        self.app = app
        self.api_key = api_key
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        raw_path = scope.get("raw_path") or b""
        if b"%" in raw_path:
            try:  # the server decodes percent-escapes leniently (U+FFFD); a model name must be real text
                unquote_to_bytes(raw_path.split(b"?", 1)[0]).decode("utf-8")
            except UnicodeDecodeError:
                await self._reject(scope, send, 400, "request path is not valid UTF-8 once percent-decoded",
                                   "invalid_text")
                return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self.api_key and path not in ("/", ""):
            given = headers.get("authorization", "")
            token = given[7:] if given.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(token.encode(), self.api_key.encode()):
                await self._reject(scope, send, 401, "missing or wrong API key (send 'Authorization: Bearer KEY')",
                                   "invalid_api_key")
                return
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            await self._reject(scope, send, 413, f"request body is {length} bytes; the limit is {self.max_body_bytes}",
                               "request_too_large")
            return
        await self.app(scope, self._limited(receive, scope, send), send)

    def _limited(self, receive: Receive, scope: Scope, send: Send) -> Receive:
        """Count chunked bodies too, which carry no Content-Length."""
        seen = 0
        limit = self.max_body_bytes

        async def wrapped() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise ApiError(413, f"request body is over the limit of {limit} bytes", "request_too_large")
            return message

        return wrapped

    async def _reject(self, scope: Scope, send: Send, status: int, message: str, code: str) -> None:
        body = json.dumps(error_body(scope.get("path", ""), status, message, code)).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if status == 401:
            headers.append((b"www-authenticate", b"Bearer"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def create_app(engine: Engine, name: str, *, defaults: dict[str, Any] | None = None, system: str | None = None,
               messages: list[dict[str, Any]] | None = None, api_key: str | None = None,
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, max_tokens_limit: int | None = None,
               max_waiting: int = 64, modelfile_text: str = "",
               stream_interval: float = DEFAULT_STREAM_INTERVAL, limits: RequestLimits | None = None,
               adapters: dict[str, list[Path]] | None = None, bare_json_calls: bool = False,
               constrain_calls: bool = True) -> FastAPI:
    """Both APIs serving ``engine`` under the model name ``name`` (and each adapter name in ``adapters``)."""
    config = ServeConfig(name=name, defaults=dict(defaults or {}), system=system, messages=list(messages or []),
                         api_key=api_key, max_body_bytes=max_body_bytes, max_tokens_limit=max_tokens_limit,
                         max_waiting=max_waiting, modelfile_text=modelfile_text, stream_interval=stream_interval,
                         limits=limits or RequestLimits(), adapters=dict(adapters or {}),
                         bare_json_calls=bare_json_calls, constrain_calls=constrain_calls)
    state = ServerState(engine, config)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        state.scheduler.shutdown()

    app = FastAPI(title="tooltune serve", version=wire.OLLAMA_VERSION, docs_url=None, redoc_url=None,
                  openapi_url=None, lifespan=lifespan)
    app.state.tooltune = state

    @app.get("/")
    @app.head("/")
    async def root() -> PlainTextResponse:
        return PlainTextResponse("Ollama is running")  # what Ollama answers; some clients probe for it

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(error_body(request.url.path, exc.status, exc.message, exc.code, exc.param),
                            status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(error_body(request.url.path, exc.status_code, str(exc.detail)), status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(error_body(request.url.path, 400, str(exc)), status_code=400)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("request failed: %s", request.url.path)
        return JSONResponse(error_body(request.url.path, 500, f"internal error: {exc}"), status_code=500)

    app.include_router(ollama_api.build_router(state))
    app.include_router(openai_api.build_router(state))
    app.add_middleware(GuardMiddleware, api_key=api_key, max_body_bytes=max_body_bytes)
    from tooltune.ui import mount_on_serve  # the web UI at /ui/ with this model in its playground (same key)

    mount_on_serve(app, api_key)
    return app
