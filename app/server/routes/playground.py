"""The playground: ``GET /playground``, one page (plain HTML, CSS and JavaScript from
``app/server/static``: no build step, no CDN, works offline) that lists the models, streams a
generation over ``ws /stream`` token by token and shows each token's probability and alternatives.

``GET /`` from a browser (``Accept: text/html``) is redirected there; any other ``GET /`` answers
405 as before (``POST /`` is TGI's route). None of these routes is part of the OpenAPI document.
"""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from starlette.exceptions import HTTPException

router = APIRouter(tags=["playground"], include_in_schema=False)

PAGE = "/playground"
ASSETS = {  # the files the page loads, by name: nothing else under static/ is served
    "playground.js": "text/javascript; charset=utf-8",
    "playground.css": "text/css; charset=utf-8",
    "attention.js": "text/javascript; charset=utf-8",
}
PUBLIC = (PAGE, *(f"{PAGE}/{name}" for name in ASSETS))  # open with API keys on: the page asks for a key
# The page runs only its own files and talks only to this server ('self' covers ws:// of the same host).
HEADERS = {
    "cache-control": "no-cache",
    "x-content-type-options": "nosniff",
    "content-security-policy": "default-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
}


def static_file(name: str) -> bytes:
    return resources.files("app.server").joinpath("static", name).read_bytes()


@router.get(PAGE)
async def playground() -> Response:
    """The page."""
    return Response(static_file("playground.html"), media_type="text/html; charset=utf-8", headers=HEADERS)


@router.get(PAGE + "/{name}")
async def asset(name: str) -> Response:
    """The page's script and style sheet."""
    if name not in ASSETS:
        raise HTTPException(404, "Not Found")
    return Response(static_file(name), media_type=ASSETS[name], headers=HEADERS)


@router.get("/")
async def root(request: Request) -> Response:
    """A browser asking for ``/`` gets the playground; other clients get 405 (only ``POST /`` exists)."""
    if "text/html" in request.headers.get("accept", ""):
        return RedirectResponse(PAGE, status_code=303)
    raise HTTPException(405, "Method Not Allowed", headers={"Allow": "POST"})
