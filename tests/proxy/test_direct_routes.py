"""DirectRoutes (the hot path past the router) serves exactly the documented forwarded routes."""

from __future__ import annotations

from typing import Any, cast

import httpx
import pytest

from proxy.app import create_app
from proxy.config import ProxyConfig
from proxy.http.routes import openai as openai_routes
from proxy.http.routes.direct import DirectRoutes


def test_direct_routes_are_the_documented_post_routes_and_run_innermost() -> None:
    config = ProxyConfig.model_validate({"models": [{"name": "m", "url": "http://127.0.0.1:9"}]})
    app = create_app(config)
    spec = app.openapi()
    documented_posts = {p for p, ops in spec["paths"].items() if "post" in ops}
    assert set(openai_routes.FORWARDED) <= documented_posts, "each direct path is documented"
    # innermost user middleware: the header limit, keys and CORS all run before it
    assert app.user_middleware[-1].cls is cast(object, DirectRoutes)


async def test_a_forwarded_post_never_enters_the_router(monkeypatch: pytest.MonkeyPatch) -> None:
    config = ProxyConfig.model_validate({"models": [{"name": "m", "url": "http://127.0.0.1:9"}]})
    app = create_app(config)
    routed: list[str] = []
    router_type = type(app.router)
    original = router_type.__call__

    async def spy(self: Any, scope: Any, receive: Any, send: Any) -> None:
        routed.append(scope["path"])
        await original(self, scope, receive, send)

    monkeypatch.setattr(router_type, "__call__", spy)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://proxy"
    ) as client:
        # no lifespan ran: the model is not reconciled, so /tokenize answers 503 at once
        direct = await client.post("/tokenize", json={"model": "m", "prompt": "x"})
        listed = await client.get("/v1/models")
    assert direct.status_code == 503
    assert direct.json()["error"]["code"] == "backend_unavailable"
    assert listed.status_code == 200
    assert routed == ["/v1/models"], "the forwarded POST went past the router"
