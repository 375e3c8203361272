"""The heart: two models on one GPU through the proxy, with real emulator processes."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import openai
import pytest

from tests.helpers.bodies import chat
from tests.helpers.fleet import Fleet, config_for, emulator_args
from tests.helpers.proxy_server import serve_proxy


def sdk(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


async def test_two_models_alternate_through_the_openai_sdk(fleet: Fleet) -> None:
    """Alternating A, B, A, B with and without streaming: each switch is 1 sleep + 1 wake."""
    fleet.start(("model-a", []), ("model-b", []))
    async with serve_proxy(config_for(fleet, [{"name": "model-a"}, {"name": "model-b"}])) as proxy:
        client = sdk(proxy.url)
        answers: dict[str, set[str]] = {"model-a": set(), "model-b": set()}
        for i, model in enumerate(["model-a", "model-b", "model-a", "model-b"]):
            if i % 2:
                stream = await client.chat.completions.create(
                    model=model,
                    messages=[{"role": "user", "content": "Hi"}],
                    max_tokens=6,
                    stream=True,
                )
                text = "".join(
                    [c.choices[0].delta.content or "" async for c in stream if c.choices]
                )
            else:
                r = await client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=6
                )
                assert r.model == model
                text = r.choices[0].message.content or ""
            assert text
            assert "!" not in text
            answers[model].add(text)
        await client.close()
        assert all(len(texts) == 1 for texts in answers.values()), (
            "same prompt, same model, same text"
        )
        assert proxy.state("model-b") == "ready"
        assert proxy.state("model-a") == "asleep"
    a, b = fleet.counters("model-a"), fleet.counters("model-b")
    assert (a["sleeps_level_1"], a["wakes_weights"]) == (
        3,
        2,
    )  # bootstrap sleep + two switches away
    assert (b["sleeps_level_1"], b["wakes_weights"]) == (2, 2)
    assert a["requests_finished_length"] == 2 + 2  # two requests + two warm-ups


async def test_stampede_shares_one_switch(fleet: Fleet) -> None:
    """50 concurrent first requests for a sleeping model: 1 sleep, 1 wake, 1 warm-up, 50 answers."""
    fleet.start(("model-a", []), ("model-b", []))
    limits = httpx.Limits(max_connections=100)
    async with (
        serve_proxy(config_for(fleet, [{"name": "model-a"}, {"name": "model-b"}])) as proxy,
        httpx.AsyncClient(base_url=proxy.url, timeout=60, limits=limits) as c,
    ):
        responses = await asyncio.gather(
            *(c.post("/v1/chat/completions", json=chat("model-a", 4)) for _ in range(50))
        )
    assert [r.status_code for r in responses] == [200] * 50
    a, b = fleet.counters("model-a"), fleet.counters("model-b")
    assert b["sleeps_level_1"] == 1
    assert a["wake_calls"] == 1
    assert a["requests_received"] == 51  # 50 clients + 1 warm-up
    assert {r.headers["x-vllm-switch-model"] for r in responses} == {"model-a"}


async def test_drain_lets_a_long_stream_finish_before_switching(fleet: Fleet) -> None:
    """A's long stream is not aborted when B is requested; B is served once it ended."""
    fleet.start(("model-b", []), ("model-a", ["--emu-itl-s", "0.01"]))
    body = chat("model-a", 150, stream=True, ignore_eos=True)
    async with (
        serve_proxy(config_for(fleet, [{"name": "model-a"}, {"name": "model-b"}])) as proxy,
        httpx.AsyncClient(base_url=proxy.url, timeout=60) as c,
    ):
        async with c.stream("POST", "/v1/chat/completions", json=body) as stream:
            lines = stream.aiter_lines()
            assert (await anext(lines)).startswith("data: ")
            other = asyncio.create_task(c.post("/v1/chat/completions", json=chat("model-b", 4)))
            events = [line[6:] async for line in lines if line.startswith("data: ")]
            stream_done = asyncio.get_running_loop().time()
            assert not other.done(), "B must wait for A's stream"
        response = await other
        served_at = asyncio.get_running_loop().time()
    finish = [
        ch["finish_reason"]
        for e in events[:-1]
        for ch in json.loads(e)["choices"]
        if ch.get("finish_reason")
    ]
    assert finish == ["length"]
    assert events[-1] == "[DONE]"
    assert response.status_code == 200
    assert served_at >= stream_done
    assert fleet.counters("model-a").get("requests_finished_abort", 0) == 0


async def test_level2_switch_serves_real_text_after_staged_wake(fleet: Fleet) -> None:
    fleet.start(("model-a", []), ("model-b", []))
    config = config_for(fleet, [{"name": "model-a", "sleep_level": 2}, {"name": "model-b"}])
    async with serve_proxy(config) as proxy, httpx.AsyncClient(base_url=proxy.url, timeout=60) as c:
        texts = []
        for model in ["model-a", "model-b", "model-a"]:
            r = await c.post("/v1/chat/completions", json=chat(model, 8, temperature=0))
            assert r.status_code == 200
            if model == "model-a":
                texts.append(r.json()["choices"][0]["message"]["content"])
    assert texts[0] == texts[1]
    assert "!" not in texts[0]
    a = fleet.counters("model-a")
    # start-up found model-a asleep (the fleet fits one awake model) and, level 2, reset it:
    # one full wake (a reload) and a level-2 sleep; then one switch to it and one back
    assert a["sleeps_level_2"] == 2
    assert a["reloads"] == 3


async def test_timing_headers_show_what_a_request_paid(fleet: Fleet) -> None:
    """The resident model's request paid nothing; the switched one paid B's sleep and A's wake,
    which the emulators are told to take 0.3 s and 0.2 s (B's sleep is its first one)."""
    fleet.start(
        ("model-a", ["--emu-wake-weights-l1-s", "0.2"]), ("model-b", ["--emu-first-sleep-s", "0.3"])
    )
    async with (
        serve_proxy(config_for(fleet, [{"name": "model-a"}, {"name": "model-b"}])) as proxy,
        httpx.AsyncClient(base_url=proxy.url, timeout=60) as c,
    ):
        resident = await c.post("/v1/chat/completions", json=chat("model-b"))
        switched = await c.post("/v1/chat/completions", json=chat("model-a"))
    paid = {
        name: {k: float(r.headers[f"x-vllm-switch-{k}-ms"]) for k in ("sleep", "wake", "warmup")}
        for name, r in (("resident", resident), ("switched", switched))
    }
    assert {"x-vllm-switch-queue-ms"} <= set(resident.headers) & set(switched.headers)
    assert paid["resident"] == {"sleep": 0.0, "wake": 0.0, "warmup": 0.0}
    assert paid["switched"]["sleep"] >= 300, paid
    assert paid["switched"]["wake"] >= 200, paid
    assert paid["switched"]["warmup"] > 0, paid
    assert switched.headers["x-vllm-switch-model"] == "model-a"
    assert (
        fleet.counters("model-b")["sleeps_level_1"],
        fleet.counters("model-a")["wake_calls"],
    ) == (
        1,
        1,
    )


async def test_startup_adopts_backends_and_sleeps_the_extra(fleet: Fleet) -> None:
    """Two servers awake on a big GPU; the config allows one: the proxy sleeps the second."""
    for name in ("model-a", "model-b"):
        fleet.spawn(name, [*_big_gpu(fleet, name)])
    async with serve_proxy(config_for(fleet, [{"name": "model-a"}, {"name": "model-b"}])) as proxy:
        assert (proxy.state("model-a"), proxy.state("model-b")) == ("ready", "asleep")
    assert httpx.get(f"{fleet.url('model-b')}/is_sleeping").json() == {"is_sleeping": True}


def _big_gpu(fleet: Fleet, name: str, util: float = 0.4) -> list[str]:
    """Room for every model awake at once: only the config's max_awake limits them."""
    return emulator_args(name, fleet.ledger_dir, util=util)


@pytest.mark.parametrize(("max_awake", "switches"), [(1, 2), (2, 0)])
async def test_max_awake_two_keeps_both_models_awake(
    fleet: Fleet, max_awake: int, switches: int
) -> None:
    """Two models that both fit: with max_awake 2 A, B, A switches nothing; with 1 (the control)
    the same requests switch twice, so the counts below can tell the two apart."""
    for name in ("model-a", "model-b"):
        fleet.spawn(name, _big_gpu(fleet, name))
    config = config_for(
        fleet,
        [{"name": "model-a"}, {"name": "model-b"}],
        gpus=[{"name": "g0", "max_awake": max_awake}],
    )
    async with serve_proxy(config) as proxy, httpx.AsyncClient(base_url=proxy.url, timeout=60) as c:
        for model in ["model-a", "model-b", "model-a"]:
            assert (await c.post("/v1/chat/completions", json=chat(model))).status_code == 200
    a, b = fleet.counters("model-a"), fleet.counters("model-b")
    wakes = a.get("wake_calls", 0) + b.get("wake_calls", 0)
    sleeps = a.get("sleeps_level_1", 0) + b.get("sleeps_level_1", 0)
    extra = 1 if max_awake == 1 else 0  # start-up sleeps the model beyond max_awake
    assert (wakes, sleeps) == (switches, switches + extra)


async def test_requests_during_startup_wait_for_reconciliation(fleet: Fleet) -> None:
    """Requests that arrive while a backend is still starting wait; nothing deadlocks when
    start-up then puts their (extra) model to sleep."""
    for name in ("model-a", "model-b"):
        fleet.spawn(name, _big_gpu(fleet, name, 0.25))
    fleet.spawn_later("model-c", [*_big_gpu(fleet, "model-c", 0.25), "--emu-startup-s", "1.5"])
    models = [{"name": "model-a"}, {"name": "model-b"}, {"name": "model-c"}]
    async with serve_proxy(config_for(fleet, models), reconciled=False) as proxy:
        async with httpx.AsyncClient(base_url=proxy.url, timeout=30) as c:
            early = asyncio.create_task(c.post("/v1/chat/completions", json=chat("model-b")))
            assert proxy.state("model-b") == "unknown"
            r = await asyncio.wait_for(early, 20)
        assert r.status_code == 200
        assert proxy.state("model-b") == "ready"
        assert [proxy.state(m) for m in ("model-a", "model-c")] == ["asleep", "asleep"]


async def test_early_requests_for_both_models_do_not_deadlock(fleet: Fleet) -> None:
    """Requests for the sleeping and the awake model both arrive before start-up finished:
    the switch to the sleeping one drains the awake one, whose own early request is served
    first instead of waiting behind that very switch."""
    fleet.start(("model-a", []), ("model-b", []))
    fleet.spawn_later("model-c", [*_big_gpu(fleet, "model-c", 0.25), "--emu-startup-s", "1.5"])
    models = [{"name": "model-a"}, {"name": "model-b"}, {"name": "model-c"}]
    async with (
        serve_proxy(config_for(fleet, models), reconciled=False) as proxy,
        httpx.AsyncClient(base_url=proxy.url, timeout=30) as c,
    ):
        a = asyncio.create_task(c.post("/v1/chat/completions", json=chat("model-a")))
        b = asyncio.create_task(c.post("/v1/chat/completions", json=chat("model-b")))
        ra, rb = await asyncio.wait_for(asyncio.gather(a, b), 20)
    assert (ra.status_code, rb.status_code) == (200, 200)


async def test_idle_model_is_put_to_sleep_after_its_ttl(fleet: Fleet) -> None:
    fleet.start(("model-a", []), ("model-b", []))
    models: list[dict[str, Any]] = [{"name": "model-a"}, {"name": "model-b", "idle_sleep_s": 0.3}]
    async with (
        serve_proxy(config_for(fleet, models)) as proxy,
        httpx.AsyncClient(base_url=proxy.url, timeout=30) as c,
    ):
        assert (await c.post("/v1/chat/completions", json=chat("model-b"))).status_code == 200
        async with asyncio.timeout(10):
            while proxy.state("model-b") != "asleep":
                await asyncio.sleep(0.05)  # poll until the idle pass ran
        assert proxy.state("model-a") == "asleep"
        assert (await c.post("/v1/chat/completions", json=chat("model-a"))).status_code == 200
        assert (
            float(
                (await c.post("/v1/chat/completions", json=chat("model-a"))).headers[
                    "x-vllm-switch-sleep-ms"
                ]
            )
            == 0
        )


async def test_a_request_that_came_during_a_drain_is_served_by_the_next_wake(fleet: Fleet) -> None:
    """W arrives for A while A drains (too late for A's current turn). It must be first in line
    for A's next wake: when a switch to B is already queued behind that wake, B's drain has
    to wait for W instead of sleeping A under it again (found by the soak as 30 s starvation
    while two models ping-ponged)."""
    fleet.start(
        ("model-b", []), ("model-a", ["--emu-itl-s", "0.01", "--emu-wake-weights-l1-s", "0.5"])
    )
    models: list[dict[str, Any]] = [{"name": "model-a"}, {"name": "model-b"}]
    async with (
        serve_proxy(config_for(fleet, models)) as proxy,
        httpx.AsyncClient(base_url=proxy.url, timeout=60) as c,
    ):
        a = proxy.services.backends["model-a"]
        body = chat("model-a", 60, stream=True, ignore_eos=True)
        async with c.stream("POST", "/v1/chat/completions", json=body) as stream:
            lines = stream.aiter_lines()
            assert (await anext(lines)).startswith("data: ")
            b1 = asyncio.create_task(c.post("/v1/chat/completions", json=chat("model-b")))
            async with asyncio.timeout(10):
                while not a.draining:
                    await asyncio.sleep(0.005)  # poll until B's switch drains A
            w = asyncio.create_task(c.post("/v1/chat/completions", json=chat("model-a")))
            async with asyncio.timeout(10):
                while proxy.services.switcher.waiting["model-a"] < 1:
                    await asyncio.sleep(0.005)  # poll until W waits
            _ = [line async for line in lines]
        assert (await b1).status_code == 200
        async with asyncio.timeout(10):
            while a.state.value != "waking":
                await asyncio.sleep(0.005)  # poll until A's next wake (for W) runs
        b2 = asyncio.create_task(c.post("/v1/chat/completions", json=chat("model-b")))
        served = await w
        wakes_when_w_was_served = fleet.counters("model-a")["wake_calls"]
        assert (await b2).status_code == 200
    assert served.status_code == 200
    assert wakes_when_w_was_served == 1, "W waited through another turn of B"
