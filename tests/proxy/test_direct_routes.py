"""DirectRoutes (the hot path past the router) serves exactly the documented forwarded routes."""

from __future__ import annotations

from typing import cast

from proxy.app import create_app
from proxy.config import ProxyConfig
from proxy.routes import openai as openai_routes
from proxy.routes.direct import DirectRoutes


def test_direct_routes_are_the_documented_post_routes_and_run_innermost() -> None:
    config = ProxyConfig.model_validate({"models": [{"name": "m", "url": "http://127.0.0.1:9"}]})
    app = create_app(config)
    spec = app.openapi()
    documented_posts = {p for p, ops in spec["paths"].items() if "post" in ops}
    assert set(openai_routes.FORWARDED) <= documented_posts, "each direct path is documented"
    # innermost user middleware: the header limit, keys and CORS all run before it
    assert app.user_middleware[-1].cls is cast(object, DirectRoutes)
