"""Client and admin API keys, CORS off by default, input limits, no redirects, JSON early errors."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from proxy.config import ConfigError, parse_config
from proxy.services import Services
from tests.helpers.bodies import chat
from tests.helpers.fleet import Fleet, config_for
from tests.helpers.proxy_server import serve_proxy

CLIENT, ADMIN, BACKEND = "sk-client-0123", "sk-admin-0123", "sk-backend-0123"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_client_and_admin_keys_guard_their_paths(fleet: Fleet) -> None:
    fleet.start(("model-b", []), ("model-a", ["--api-key", BACKEND]))
    models: list[dict[str, Any]] = [{"name": "model-a", "api_key": BACKEND}, {"name": "model-b"}]
    auth = {"api_keys": [CLIENT], "admin_keys": [ADMIN], "metrics_public": False}
    async with (
        serve_proxy(config_for(fleet, models, auth=auth)) as proxy,
        httpx.AsyncClient(base_url=proxy.url, timeout=30) as c,
    ):
        missing = await c.post("/v1/chat/completions", json=chat("model-a"))
        wrong = await c.post(
            "/v1/chat/completions", json=chat("model-a"), headers=bearer("sk-wrong-0123")
        )
        ok = await c.post("/v1/chat/completions", json=chat("model-a"), headers=bearer(CLIENT))
        tokenize = await c.post("/tokenize", json={"model": "model-a", "prompt": "x"})
        admin_with_client_key = await c.get("/admin/status", headers=bearer(CLIENT))
        admin = await c.get("/admin/status", headers=bearer(ADMIN))
        metrics_open = await c.get("/metrics")
        metrics = await c.get("/metrics", headers=bearer(ADMIN))
        probes = [(await c.get(p)).status_code for p in ("/health", "/ready")]
    for r in (missing, wrong, tokenize, admin_with_client_key, metrics_open):
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == "Bearer"
        assert r.json()["error"]["code"] == "invalid_api_key"
        assert CLIENT not in r.text
        assert ADMIN not in r.text
    assert ok.status_code == 200, "the backend got its own key, not the client's"
    assert admin.status_code == 200
    assert metrics.status_code == 200
    assert 'vllm_switch_rejected_total{model="unknown",reason="auth"} 5.0' in metrics.text
    assert probes == [200, 200]


def test_short_or_empty_keys_are_a_config_error() -> None:
    text = "models:\n  - name: m\n    url: http://127.0.0.1:1\nauth:\n  api_keys: ['${KEY:-}']\n"
    with pytest.raises(ConfigError, match="at least 8 characters"):
        parse_config(text, env={})


@pytest.mark.parametrize("cors", [False, True], ids=["no-cors", "cors-configured"])
async def test_cors_only_when_configured(fleet: Fleet, cors: bool) -> None:
    fleet.start(("model-a", []), ("model-b", []))
    auth = {"cors_origins": ["https://app.example"]} if cors else {}
    async with (
        serve_proxy(
            config_for(fleet, [{"name": "model-a"}, {"name": "model-b"}], auth=auth)
        ) as proxy,
        httpx.AsyncClient(base_url=proxy.url) as c,
    ):
        r = await c.options(
            "/v1/chat/completions",
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "POST",
            },
        )
    allowed = r.headers.get("access-control-allow-origin")
    assert allowed == ("https://app.example" if cors else None)


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"model": "m" * 300, "messages": []}, "longer than 256 characters"),
        (
            {"model": "model-a", "messages": [], "x": json.loads("[" * 80 + "]" * 80)},
            "nested deeper than 64 levels",
        ),
    ],
    ids=["model-name-too-long", "json-too-deep"],
)
async def test_input_limits(fleet: Fleet, body: dict[str, Any], needle: str) -> None:
    fleet.start(("model-a", []), ("model-b", []))
    async with (
        serve_proxy(config_for(fleet, [{"name": "model-a"}, {"name": "model-b"}])) as proxy,
        httpx.AsyncClient(base_url=proxy.url) as c,
    ):
        r = await c.post("/v1/chat/completions", json=body)
    assert r.status_code == 400
    assert needle in r.json()["error"]["message"]


async def test_oversized_headers_get_an_openai_431(fleet: Fleet) -> None:
    """20 KB of headers: past the default 16 KiB limit, but inside the HTTP server's own
    buffer, so the answer is a JSON 431 that names the limit, not uvicorn's bare 400."""
    fleet.start(("model-a", []), ("model-b", []))
    async with (
        serve_proxy(config_for(fleet, [{"name": "model-a"}, {"name": "model-b"}])) as proxy,
        httpx.AsyncClient(base_url=proxy.url, timeout=30) as c,
    ):
        big = await c.post(
            "/v1/chat/completions", json=chat("model-a"), headers={"x-pad": "p" * 20_000}
        )
        fine = await c.post(
            "/v1/chat/completions", json=chat("model-a"), headers={"x-pad": "p" * 8_000}
        )
        metrics = (await c.get("/metrics")).text
    assert big.status_code == 431
    assert big.json()["error"]["code"] == "headers_too_large"
    assert "the limit is 16384" in big.json()["error"]["message"]
    assert fine.status_code == 200
    assert 'vllm_switch_rejected_total{model="unknown",reason="too_large"} 1.0' in metrics


async def test_trailing_slash_paths_are_json_404s_never_redirects(fleet: Fleet) -> None:
    """Starlette would answer 307 with a `Location` built from the client's Host."""
    fleet.start(("model-a", []), ("model-b", []))
    evil = {"Host": "evil.example"}
    paths = ("/v1/models/", "/health/", "/ready/", "/metrics/", "/admin/status/", "/openapi.json/")
    async with (
        serve_proxy(config_for(fleet, [{"name": "model-a"}, {"name": "model-b"}])) as proxy,
        httpx.AsyncClient(base_url=proxy.url, timeout=30) as c,
    ):
        post = await c.post("/v1/chat/completions/", json=chat("model-a"), headers=evil)
        gets = [await c.get(path, headers=evil) for path in paths]
        ok = await c.post("/v1/chat/completions", json=chat("model-a"))
    for r in (post, *gets):
        assert r.status_code == 404, r.request.url
        assert "location" not in r.headers
        assert r.json()["error"]["code"] == "not_found"
    assert ok.status_code == 200


async def test_a_refused_cors_preflight_is_an_openai_error(fleet: Fleet) -> None:
    fleet.start(("model-a", []), ("model-b", []))
    auth = {"cors_origins": ["https://app.example"]}
    preflight = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    async with (
        serve_proxy(
            config_for(fleet, [{"name": "model-a"}, {"name": "model-b"}], auth=auth)
        ) as proxy,
        httpx.AsyncClient(base_url=proxy.url) as c,
    ):
        r = await c.options("/v1/chat/completions", headers=preflight)
    assert r.status_code == 400
    assert r.headers["content-type"] == "application/json"
    assert "origin" in r.json()["error"]["message"]
    assert "access-control-allow-origin" not in r.headers


async def test_an_unexpected_exception_is_an_openai_500(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: object) -> None:
        raise RuntimeError("a bug with a secret in its text")

    monkeypatch.setattr(Services, "resolve", broken)
    fleet.start(("model-a", []), ("model-b", []))
    async with (
        serve_proxy(config_for(fleet, [{"name": "model-a"}, {"name": "model-b"}])) as proxy,
        httpx.AsyncClient(base_url=proxy.url, timeout=30) as c,
    ):
        r = await c.post("/v1/chat/completions", json=chat("model-a"))
        health = await c.get("/health")
    assert r.status_code == 500
    assert r.headers["content-type"] == "application/json"
    assert r.json()["error"]["code"] == "internal_error"
    assert "secret" not in r.text  # the exception's text is logged, never sent
    assert health.status_code == 200
