"""The operator page: GET /ui (and /ui/, the same page, no redirect), /ui/app.js, /ui/app.css.

Three static files of the package `proxy.http.ui`, read once at import. They hold no secrets
and are open (http/auth.py guards /admin/*, not /ui): the page asks for the admin key itself
and sends it to /admin/* as a Bearer header. Each answer carries a strict Content-Security-
Policy (only this origin's script, style and fetch; no inline code, no frames, no forms), so
a string from the proxy that reached the page as markup still could not run. Not in
/openapi.json: it is not part of the API.

Stateless: the files' bytes, fixed at import.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import Response

router = APIRouter(include_in_schema=False)

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}


def _read(name: str) -> bytes:
    return (files("proxy.http.ui") / name).read_bytes()


PAGE = _read("index.html")
SCRIPT = _read("app.js")
STYLE = _read("app.css")


def _answer(body: bytes, media_type: str) -> Response:
    return Response(body, media_type=media_type, headers=HEADERS)


@router.get("/ui")
@router.get("/ui/")
async def page() -> Response:
    return _answer(PAGE, "text/html; charset=utf-8")


@router.get("/ui/app.js")
async def script() -> Response:
    return _answer(SCRIPT, "text/javascript; charset=utf-8")


@router.get("/ui/app.css")
async def style() -> Response:
    return _answer(STYLE, "text/css; charset=utf-8")
