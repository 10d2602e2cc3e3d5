"""The web console at `/`: plain HTML, CSS and JavaScript, no build step.

The page holds no secret: the API key stays in the browser's sessionStorage and goes out only
as an `Authorization` header; output streams arrive over the signed `events_url`s.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

_FILES = Path(__file__).parent / "console"
# Only this origin's own scripts, styles and connections: an injected tag could do nothing.
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)

router = APIRouter(include_in_schema=False)


class ConsoleConfig(BaseModel):
    """What the page needs to know about this deployment."""

    jaeger_url: str | None


@router.get("/")
async def console() -> FileResponse:
    return FileResponse(
        _FILES / "index.html",
        headers={
            "Content-Security-Policy": _CSP,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-cache",
        },
    )


@router.get("/console/config.json")
async def console_config(request: Request) -> ConsoleConfig:
    return ConsoleConfig(jaeger_url=request.app.state.settings.jaeger_url)


def install_console(app: FastAPI) -> None:
    app.include_router(router)
    app.mount("/console", StaticFiles(directory=_FILES), name="console")
