"""The UI's HTTP surface: static pages under ``/ui/`` and their JSON endpoints under ``/ui/api/``.

One FastAPI app (``create_ui_app``) serves both ``tooltune ui`` and, through ``mount_on_serve``, ``tooltune serve``.
``UIGate`` sits in front of it: with an API key, a request needs ``Authorization: Bearer KEY`` or the cookie that
``/ui/login`` sets after the key is typed in (a browser cannot send a header on a page load). Requests for other
paths go on to the wrapped app unchanged, so the serve API keeps its own guard.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import json
from dataclasses import dataclass, field
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from tooltune.errors import TooltuneError
from tooltune.ui import data_view, playground, runs
from tooltune.ui.launcher import Launcher, form_defaults
from tooltune.ui.workspace import UIError, Workspace

PREFIX = "/ui"
COOKIE = "tooltune_ui"
MAX_BODY_BYTES = 1 << 20
STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
PAGES = ("data", "runs", "run", "compare", "start", "playground")


@dataclass
class UIContext:
    workspace: Workspace
    api_key: str | None = None
    targets: list[dict[str, str]] = field(default_factory=list)  # {"label", "url", "model"} the playground offers
    data: data_view.DataCache = field(init=False)
    launcher: Launcher = field(init=False)

    def __post_init__(self) -> None:
        self.data = data_view.DataCache(self.workspace)
        self.launcher = Launcher(self.workspace)


def _cookie_value(api_key: str) -> str:
    # The cookie holds a digest, not the key, so a leaked cookie jar does not hand out the API key.
    return hashlib.sha256(f"tooltune-ui:{api_key}".encode()).hexdigest()


def safe_next(target: str | None) -> str | None:
    """The page to return to after logging in, or None when it is not one of this UI's own pages.

    Only a local path under /ui/ is followed: anything with a scheme, a host (``//evil``), a backslash (browsers read
    it as a slash) or a ``..`` segment could send the user off the UI once the key is typed in (an open redirect).
    """
    if not target or len(target) > 2000 or "\\" in target or any(ord(c) < 0x20 for c in target):
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not parts.path.startswith(PREFIX + "/") or parts.path == PREFIX + "/login":
        return None
    if any(segment in (".", "..") for segment in parts.path.split("/")):
        return None
    return target


def _login_html(next_page: str | None, error: str | None = None) -> bytes:
    page = _static("login.html")
    if next_page:
        hidden = f'<input type="hidden" name="next" value="{html.escape(next_page, quote=True)}">'
        page = page.replace(b"<!--next-->", hidden.encode("utf-8"))
    if error:
        page = page.replace(b"<!--error-->", f"<p class=error>{html.escape(error)}</p>".encode())
    return page


def _static(name: str) -> bytes:
    return resources.files("tooltune.ui").joinpath("static", name).read_bytes()


def create_ui_app(ctx: UIContext) -> FastAPI:
    app = FastAPI(title="tooltune ui", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.ui = ctx

    @app.exception_handler(UIError)
    async def ui_error(_: Request, exc: UIError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": f"{request.url.path}: {exc.detail}"}, status_code=exc.status_code)

    @app.exception_handler(TooltuneError)
    async def tooltune_error(_: Request, exc: TooltuneError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=400)

    @app.get(PREFIX)
    @app.get(PREFIX + "/")
    async def home() -> RedirectResponse:
        return RedirectResponse(f"{PREFIX}/data", status_code=303)

    @app.get(PREFIX + "/login")
    async def login_page(request: Request) -> HTMLResponse:
        return HTMLResponse(_login_html(safe_next(request.query_params.get("next"))))

    @app.post(PREFIX + "/login")
    async def login(request: Request) -> Response:
        # Parsed by hand: an urlencoded body needs no multipart dependency.
        form = parse_qs((await request.body()).decode("utf-8", errors="replace"))
        key = (form.get("key") or [""])[0]
        target = safe_next((form.get("next") or [""])[0])
        if not ctx.api_key or not hmac.compare_digest(key.encode(), ctx.api_key.encode()):
            return HTMLResponse(_login_html(target, error="wrong key"), status_code=401)
        # Back to the page that asked for the key, as a user who opened a bookmarked page expects.
        response = RedirectResponse(target or f"{PREFIX}/data", status_code=303)
        response.set_cookie(COOKIE, _cookie_value(ctx.api_key), httponly=True, samesite="strict", path=PREFIX)
        return response

    for page in PAGES:
        app.add_api_route(f"{PREFIX}/{page}", _page_handler(), methods=["GET"], response_class=HTMLResponse)

    @app.get(PREFIX + "/static/{name}")
    async def static(name: str) -> Response:
        suffix = "." + name.rsplit(".", 1)[-1] if "." in name else ""
        if "/" in name or "\\" in name or name.startswith(".") or suffix not in STATIC_TYPES:
            raise UIError(f"{name!r}: no such file", status=404)
        try:
            body = _static(name)
        except (FileNotFoundError, IsADirectoryError):
            raise UIError(f"{name!r}: no such file", status=404) from None
        return Response(body, media_type=STATIC_TYPES[suffix], headers={"cache-control": "no-cache"})

    # ---- data
    @app.get(PREFIX + "/api/data/summary")
    async def data_summary(request: Request) -> dict[str, Any]:
        query = data_view.DataQuery.from_params(dict(request.query_params))
        loaded = await _to_thread(ctx.data.get, query)
        return data_view.summary(loaded)

    @app.get(PREFIX + "/api/data/samples")
    async def data_samples(request: Request) -> dict[str, Any]:
        params = dict(request.query_params)
        query = data_view.DataQuery.from_params(params)
        number = data_view.parse_int(params.get("page") or "0", "page", 0, 10**9)
        size = data_view.parse_int(params.get("size") or "20", "size", 1, data_view.PAGE_SIZE_MAX)
        search = params.get("q") or ""
        if len(search) > 500:
            raise UIError("q: at most 500 characters")
        loaded = await _to_thread(ctx.data.get, query)
        return await _to_thread(data_view.page, loaded, number, size, search)

    # ---- runs
    @app.get(PREFIX + "/api/runs")
    async def list_runs() -> dict[str, Any]:
        return {"runs": await _to_thread(runs.list_runs, ctx.workspace)}

    @app.get(PREFIX + "/api/runs/{name}")
    async def run_detail(name: str) -> dict[str, Any]:
        return await _to_thread(runs.run_detail, ctx.workspace, name)

    @app.get(PREFIX + "/api/runs/{name}/image/{image}")
    async def run_image(name: str, image: str) -> Response:
        path = runs.run_image(ctx.workspace, name, image)
        return Response(await _to_thread(path.read_bytes), media_type="image/png")

    @app.get(PREFIX + "/api/compare")
    async def compare(left: str, right: str) -> dict[str, Any]:
        return await _to_thread(runs.compare, ctx.workspace, left, right)

    @app.get(PREFIX + "/api/runs/{name}/loss-stream")
    async def loss_stream(name: str, request: Request, after: int = 0) -> StreamingResponse:
        run_dir = ctx.workspace.run_dir(name)
        if after < 0:
            raise UIError("after: must be >= 0")
        last = request.headers.get("last-event-id")
        if last and last.isdigit():
            after = int(last)  # EventSource reconnects with the last id it saw: resume from there
        return StreamingResponse(runs.tail_loss(run_dir, after, request.is_disconnected),
                                 media_type="text/event-stream", headers={"cache-control": "no-cache"})

    @app.get(PREFIX + "/api/form")
    async def form() -> dict[str, Any]:
        return {"defaults": form_defaults()}

    @app.post(PREFIX + "/api/runs")
    async def start_run(request: Request) -> JSONResponse:
        body = await _json_object(request)
        return JSONResponse(await _to_thread(ctx.launcher.start, body), status_code=201)

    @app.post(PREFIX + "/api/runs/{name}/stop")
    async def stop_run(name: str) -> dict[str, Any]:
        return await _to_thread(ctx.launcher.stop, name)

    # ---- playground
    @app.get(PREFIX + "/api/targets")
    async def targets() -> dict[str, Any]:
        return {"targets": [{k: v for k, v in t.items() if k != "api_key"} for t in ctx.targets]}

    @app.post(PREFIX + "/api/chat")
    async def chat(request: Request) -> dict[str, Any]:
        body = await _json_object(request)
        target = _target(ctx, request, body.get("target"))
        return await playground.chat(target, body)

    return app


def _page_handler() -> Any:
    async def page() -> HTMLResponse:
        return HTMLResponse(_static("index.html"))

    return page


async def _to_thread(fn: Any, *args: Any) -> Any:
    import asyncio

    return await asyncio.to_thread(fn, *args)


async def _json_object(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body() or b"null")
    except json.JSONDecodeError as exc:
        raise UIError(f"request body is not JSON ({exc.msg})") from None
    if not isinstance(body, dict):
        raise UIError("request body must be a JSON object")
    return body


def _target(ctx: UIContext, request: Request, raw: Any) -> playground.Target:
    if not isinstance(raw, dict):
        raise UIError("target: expected {url, model}")
    url = str(raw.get("url") or "")
    model = str(raw.get("model") or "")
    if url == playground.SELF:
        server = request.scope.get("server") or ("127.0.0.1", 0)
        return playground.Target(f"http://127.0.0.1:{server[1]}", model, ctx.api_key)
    known = next((t for t in ctx.targets if t["url"] == url), None)
    return playground.Target(playground.check_url(url), model, known.get("api_key") if known else None)


class UIGate:
    """Routes ``/ui`` requests to the UI app after the key check; everything else to ``inner`` untouched."""

    def __init__(self, app: ASGIApp, ui_app: ASGIApp, api_key: str | None) -> None:
        self.inner = app
        self.ui_app = ui_app
        self.api_key = api_key
        self.cookie = _cookie_value(api_key) if api_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not (path == PREFIX or path.startswith(PREFIX + "/")):
            await self.inner(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > MAX_BODY_BYTES:
            await _send_json(send, 413, {"error": f"request body is over {MAX_BODY_BYTES} bytes"})
            return
        if self.api_key and path != PREFIX + "/login" and not self._allowed(headers):
            if path.startswith(PREFIX + "/api/"):
                await _send_json(send, 401, {"error": "missing or wrong API key (log in at /ui/login or send "
                                                      "'Authorization: Bearer KEY')"})
            else:
                query = scope.get("query_string", b"").decode("latin-1")
                wanted = path + ("?" + query if query else "")
                location = f"{PREFIX}/login" + (f"?next={quote(wanted, safe='')}" if safe_next(wanted) else "")
                await send({"type": "http.response.start", "status": 303,
                            "headers": [(b"location", location.encode("latin-1")), (b"content-length", b"0")]})
                await send({"type": "http.response.body", "body": b""})
            return
        await self.ui_app(scope, receive, send)

    def _allowed(self, headers: dict[str, str]) -> bool:
        assert self.api_key is not None and self.cookie is not None
        given = headers.get("authorization", "")
        token = given[7:] if given.lower().startswith("bearer ") else ""
        if token and hmac.compare_digest(token.encode(), self.api_key.encode()):
            return True
        for part in headers.get("cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == COOKIE and hmac.compare_digest(value.encode(), self.cookie.encode()):
                return True
        return False


async def _send_json(send: Send, status: int, payload: dict[str, Any]) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def _not_found(scope: Scope, receive: Receive, send: Send) -> None:
    await _send_json(send, 404, {"error": f"{scope.get('path')}: not found (the UI is under {PREFIX}/)"})


def standalone_app(ctx: UIContext) -> ASGIApp:
    """What ``tooltune ui`` serves: the UI behind its gate, a redirect from ``/``, 404 for the rest."""
    ui_app = create_ui_app(ctx)

    async def outside(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await ui_app(scope, receive, send)
            return
        if scope.get("path") in ("/", ""):
            await send({"type": "http.response.start", "status": 303,
                        "headers": [(b"location", f"{PREFIX}/data".encode()), (b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return
        await _not_found(scope, receive, send)

    return UIGate(outside, ui_app, ctx.api_key)


def mount_on_serve(app: FastAPI, api_key: str | None, workspace: str = ".") -> None:
    """``tooltune serve``'s hook: the UI at ``/ui/`` with this server's own model in the playground.

    Added as the outermost middleware, so the UI answers its own paths (with the same key) before the API guard."""
    try:
        ws = Workspace(workspace)
    except UIError:
        return
    ctx = UIContext(ws, api_key=api_key, targets=[{"label": "this server", "url": playground.SELF, "model": ""}])
    app.add_middleware(UIGate, ui_app=create_ui_app(ctx), api_key=api_key)
