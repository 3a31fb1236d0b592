"""``GET /``: the dashboard page from ``server/static/`` (or a placeholder if missing)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, HTMLResponse, Response

from server.deps import SettingsDep

router = APIRouter(tags=["dashboard"])

DEFAULT_STATIC = Path(__file__).resolve().parent.parent / "static"

PLACEHOLDER = """<!doctype html><html><head><meta charset="utf-8"><title>secagg-dp</title></head>
<body><h1>secagg-dp server</h1><p>The dashboard is not installed (no
<code>server/static/index.html</code>). The API is running: see <a href="/docs">/docs</a>,
<a href="/v1/status">/v1/status</a> and <a href="/v1/rounds">/v1/rounds</a>.</p></body></html>
"""


def static_dir(settings_dir: Path | None) -> Path:
    return settings_dir if settings_dir is not None else DEFAULT_STATIC


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def index(settings: SettingsDep) -> Response:
    page = static_dir(settings.static_dir) / "index.html"
    if await asyncio.to_thread(page.is_file):
        return FileResponse(page, media_type="text/html")
    return HTMLResponse(PLACEHOLDER)
