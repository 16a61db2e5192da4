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
from api.routes import events, health, history, keys, pricing, recommendations, reconciliation, rules, webhooks
from api.webhooks import service as webhook_service
from api.limits import RequestLimits
from core.db import init_db
from core.settings import Settings, get_settings

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
    for module in (health, asyncapi, history, reconciliation, ws, pricing, recommendations, keys, events, rules, webhooks):
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

    @app.get("/dashboard", include_in_schema=False)
    def dashboard():
        return RedirectResponse("/")

    return app
