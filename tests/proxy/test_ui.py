"""The operator page's files over real HTTP: open while /admin/* needs its key, strict headers,
nothing outside the three files, nothing in /openapi.json. The page itself, in a browser, is
tests/browser/test_ui_browser.py."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.helpers.fleet import Fleet, config_for
from tests.helpers.proxy_server import serve_proxy

pytestmark = pytest.mark.process

ADMIN = "sk-admin-ui-0123"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
FILES = {
    "/ui": "text/html; charset=utf-8",
    "/ui/": "text/html; charset=utf-8",
    "/ui/app.js": "text/javascript; charset=utf-8",
    "/ui/app.css": "text/css; charset=utf-8",
}


async def test_page_and_assets_are_open_with_strict_headers(fleet: Fleet) -> None:
    fleet.start(("model-a", []))
    auth = {"admin_keys": [ADMIN]}
    async with (
        serve_proxy(config_for(fleet, [{"name": "model-a"}], auth=auth)) as proxy,
        httpx.AsyncClient(base_url=proxy.url, timeout=30) as c,
    ):
        answers = {path: await c.get(path) for path in FILES}
        status_without_key = await c.get("/admin/status")
        events_without_key = await c.get("/admin/events")
        status_with_key = await c.get("/admin/status", headers={"Authorization": f"Bearer {ADMIN}"})
    for path, media_type in FILES.items():
        r = answers[path]
        assert r.status_code == 200, (path, r.text)
        assert r.headers["content-type"] == media_type, path
        assert r.headers["content-security-policy"] == CSP, path
        assert r.headers["x-content-type-options"] == "nosniff", path
        assert r.headers["referrer-policy"] == "no-referrer", path
        assert r.headers["cache-control"] == "no-cache", path
        assert "location" not in r.headers, "the same page, not a redirect"
        assert ADMIN not in r.text, "the files hold no secret"
    assert answers["/ui"].content == answers["/ui/"].content
    for r in (status_without_key, events_without_key):
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "invalid_api_key"
    assert status_with_key.status_code == 200
    assert [m["name"] for m in status_with_key.json()["models"]] == ["model-a"]


async def test_the_page_loads_only_its_own_assets_and_writes_no_markup(fleet: Fleet) -> None:
    """What the CSP allows is all the page needs: its script and style from /ui, no inline
    code, no other origin; and the script builds the DOM from text only."""
    fleet.start(("model-a", []))
    async with (
        serve_proxy(config_for(fleet, [{"name": "model-a"}])) as proxy,
        httpx.AsyncClient(base_url=proxy.url, timeout=30) as c,
    ):
        html = (await c.get("/ui")).text
        script = (await c.get("/ui/app.js")).text
        loaded = re.findall(r'(?:src|href)="([^"]*)"', html)
        fetched = {url: (await c.get(url)).status_code for url in loaded if url.startswith("/")}
    assert sorted(loaded) == ["/ui/app.css", "/ui/app.js", "data:,"]
    assert fetched == {"/ui/app.css": 200, "/ui/app.js": 200}
    assert "<script>" not in html
    assert "<style" not in html
    assert " style=" not in html
    assert not re.search(r"\son\w+=", html), "no inline event handlers"
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script, sink
    assert "http://" not in script
    assert "https://" not in script
    assert "textContent" in script


async def test_unknown_ui_paths_are_json_404s_and_the_page_is_not_in_openapi(
    fleet: Fleet,
) -> None:
    fleet.start(("model-a", []))
    async with (
        serve_proxy(config_for(fleet, [{"name": "model-a"}])) as proxy,
        httpx.AsyncClient(base_url=proxy.url, timeout=30) as c,
    ):
        missing = [await c.get(p) for p in ("/ui/x", "/ui/index.html", "/ui/app.js/", "/uix")]
        post = await c.post("/ui")
        spec = (await c.get("/openapi.json")).json()
    for r in missing:
        assert r.status_code == 404, r.request.url
        assert r.headers["content-type"] == "application/json"
        assert r.json()["error"]["type"] == "invalid_request_error"
        assert "location" not in r.headers
    assert post.status_code == 405
    assert post.json()["error"]["message"].startswith("method not allowed")
    assert not [p for p in spec["paths"] if p.startswith("/ui")]
