"""The FastAPI application: routers, the live hub, and the dashboard's static files (Plotly.js
served from the installed `plotly` package, never from a CDN)."""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, HTTPException
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from api import asyncapi, ws
from api.hub import Hub
from api.routes import (billing_imports, events, forecast, health, history, keys, metrics, pricing, recommendations,
                        reconciliation, receiver, rules, services, webhooks)
from api.webhooks import service as webhook_service
from api.limits import RequestLimits
from core.db import init_db
from core.settings import Settings, get_settings

#: No inline script and no eval anywhere; data reaches the page only as text (web/static/app.js).
#: Plotly sets inline styles on the elements it draws, hence style-src 'unsafe-inline' (styles only).
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
       "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
       "form-action 'self'")
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),  # the dashboard URL may carry ?api_key=
    (b"x-frame-options", b"DENY"),
]


class SecurityHeaders:
    """Adds SECURITY_HEADERS to every HTTP response (pure ASGI: no buffering of bodies)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [
                    (k, v) for k, v in SECURITY_HEADERS if k not in names]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _plotly_js() -> Path:
    import plotly

    return Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        init_db(settings)
        await app.state.hub.start()
        services = [events, rules, pricing, webhook_service]  # background tasks: each has start(app) / stop(app)
        for svc in services:
            await svc.start(app)
        try:
            yield
        finally:
            for svc in reversed(services):
                await svc.stop(app)
            await app.state.hub.stop()

    app = FastAPI(title="gpucost", version="0.1.0", lifespan=lifespan,
                  description="Real-time GPU cost monitor: live spend, history, alerts, pricing and recommendations.")
    app.state.settings = settings
    app.state.hub = Hub(settings)
    app.add_middleware(RequestLimits, max_bytes=settings.max_request_bytes)
    app.add_middleware(SecurityHeaders)
    for module in (health, asyncapi, history, reconciliation, ws, pricing, recommendations, services, keys, events,
                   rules, webhooks, receiver, forecast, billing_imports, metrics):
        app.include_router(module.router)

    import web

    web_dir = Path(web.__file__).parent / "static"
    plotly_js = _plotly_js()

    @app.get("/static/plotly.min.js", include_in_schema=False)
    def plotly_bundle():
        if not plotly_js.exists():
            raise HTTPException(500, "plotly.min.js not found in the plotly package")
        return FileResponse(plotly_js, media_type="application/javascript")

    app.mount("/static", StaticFiles(directory=web_dir), name="static")

    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(web_dir / "index.html")

    @app.get("/webhooks/log", include_in_schema=False)
    def webhook_log_page():
        return FileResponse(web_dir / "index.html")  # the dashboard's webhook log view

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon():
        return FileResponse(web_dir / "favicon.svg", media_type="image/svg+xml")

    @app.get("/dashboard", include_in_schema=False)
    def dashboard():
        return RedirectResponse("/")

    return app
