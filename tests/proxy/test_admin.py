"""The operator API over HTTP: POST /admin/models/{name}/{action} with the admin key, and the
event stream GET /admin/events that shows what the actions (and requests) did, live.
The actions themselves are tested rule by rule in tests/unit/test_operator.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from tests.helpers.bodies import chat
from tests.helpers.fleet import Fleet, config_for
from tests.helpers.proxy_server import RunningProxy, serve_proxy

ADMIN = "sk-admin-0123456789"
CLIENT = "sk-client-0123456789"
AUTH = {"api_keys": [CLIENT], "admin_keys": [ADMIN]}


@asynccontextmanager
async def admin(fleet: Fleet) -> AsyncIterator[tuple[RunningProxy, httpx.AsyncClient]]:
    fleet.start(("model-a", []), ("model-b", []))
    models: list[dict[str, Any]] = [{"name": "model-a", "aliases": ["org/a"]}, {"name": "model-b"}]
    async with (
        serve_proxy(config_for(fleet, models, auth=AUTH)) as proxy,
        httpx.AsyncClient(
            base_url=proxy.url, timeout=30, headers={"authorization": f"Bearer {ADMIN}"}
        ) as client,
    ):
        yield proxy, client


async def read_events(
    client: httpx.AsyncClient, want: int, into: list[dict[str, Any]], ready: asyncio.Event
) -> None:
    """Parse the SSE stream (event + data lines) until `want` events after the status one."""
    async with client.stream("GET", "/admin/events") as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        kind = ""
        async for line in r.aiter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                into.append({"event": kind, **json.loads(line[6:])})
                if kind == "status":
                    ready.set()
                if len(into) > want:
                    return


async def test_sleep_and_wake_over_http_show_in_the_event_stream(fleet: Fleet) -> None:
    async with admin(fleet) as (proxy, client):
        seen: list[dict[str, Any]] = []
        subscribed = asyncio.Event()
        reader = asyncio.create_task(read_events(client, 200, seen, subscribed))
        await asyncio.wait_for(subscribed.wait(), 10)
        slept = await client.post("/admin/models/model-b/sleep")
        assert slept.status_code == 200, slept.text
        assert slept.json()["state"] == "asleep"
        woke = await client.post("/admin/models/org/a/wake")  # an alias, with a slash
        assert woke.status_code == 200, woke.text
        assert (woke.json()["model"], woke.json()["state"]) == ("model-a", "ready")
        async with asyncio.timeout(10):
            while not any(e["event"] == "switch" and e.get("to") == "model-a" for e in seen):
                await asyncio.sleep(0.01)  # polling what the reader collected, bounded
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
    assert seen[0]["event"] == "status"
    assert {m["name"] for m in seen[0]["models"]} == {"model-a", "model-b"}
    ops = [(e["action"], e["model"]) for e in seen if e["event"] == "operator"]
    assert ops == [("sleep", "model-b"), ("wake", "model-a")]
    states = [(e["model"], e["state"]) for e in seen if e["event"] == "state"]
    assert ("model-b", "asleep") in states
    assert ("model-a", "ready") in states
    assert proxy.state("model-b") == "asleep"


async def test_the_admin_api_needs_the_admin_key_and_names_what_is_wrong(fleet: Fleet) -> None:
    async with admin(fleet) as (_, client):
        anonymous = await client.post("/admin/models/model-a/wake", headers={"authorization": ""})
        with_client_key = await client.post(
            "/admin/models/model-a/wake", headers={"authorization": f"Bearer {CLIENT}"}
        )
        events = await client.get("/admin/events", headers={"authorization": ""})
        unknown_model = await client.post("/admin/models/nope/sleep")
        unknown_action = await client.post("/admin/models/model-a/explode")
        attached = await client.post("/admin/models/model-a/restart")
        not_failed = await client.post("/admin/models/model-a/reset")
        served = await client.post(
            "/v1/chat/completions",
            json=chat("model-a"),
            headers={"authorization": f"Bearer {CLIENT}"},
        )
    assert (anonymous.status_code, with_client_key.status_code, events.status_code) == (
        401,
        401,
        401,
    )
    assert unknown_model.status_code == 404
    assert "available models" in unknown_model.json()["error"]["message"]
    assert unknown_action.status_code == 404
    assert "sleep, wake, restart, reset" in unknown_action.json()["error"]["message"]
    assert attached.status_code == 409
    assert "POST .../reset" in attached.json()["error"]["message"]
    assert not_failed.status_code == 409
    assert served.status_code == 200, "nothing of that touched the models"
