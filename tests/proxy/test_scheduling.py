"""The scheduling policy through the real proxy and emulator processes: two closed-loop clients,
each on its own model of one GPU. `fifo` switches for (nearly) every request; the default
policy serves the resident up to max_wait_s and switches a few times for the whole run."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from tests.helpers.bodies import chat
from tests.helpers.fleet import Fleet, config_for
from tests.helpers.proxy_server import RunningProxy, serve_proxy

MODELS = [{"name": "model-a"}, {"name": "model-b"}]
RUN_S = 3.0


async def closed_loop(proxy: RunningProxy, model: str, until: float) -> int:
    """One client: the next request right after each answer, until the deadline."""
    done = 0
    loop = asyncio.get_running_loop()
    async with httpx.AsyncClient(base_url=proxy.url, timeout=30) as client:
        while loop.time() < until:
            r = await client.post("/v1/chat/completions", json=chat(model, max_tokens=4))
            assert r.status_code == 200, r.text
            done += 1
    return done


def switches(proxy: RunningProxy) -> float:
    total = 0.0
    for metric in proxy.services.metrics.registry.collect():
        if metric.name == "vllm_switch_switches":
            total += sum(
                s.value
                for s in metric.samples
                if s.name.endswith("_total") and s.labels["result"] == "ok"
            )
    return total


async def run(fleet: Fleet, policy: str) -> tuple[int, float]:
    gpus = [{"name": "g0", "scheduling": {"policy": policy, "max_wait_s": 1.0}}]
    async with serve_proxy(config_for(fleet, MODELS, gpus=gpus)) as proxy:
        until = asyncio.get_running_loop().time() + RUN_S
        served = await asyncio.gather(*(closed_loop(proxy, m["name"], until) for m in MODELS))
        return sum(served), switches(proxy)


@pytest.mark.parametrize("policy", ["default", "fifo"])
async def test_two_closed_loop_clients(fleet: Fleet, policy: str) -> None:
    fleet.start(("model-a", []), ("model-b", []))
    requests, switched = await run(fleet, policy)
    assert requests >= 20, "both clients were served throughout"
    if policy == "fifo":
        assert switched >= requests / 3, "the control: fifo switches for most requests"
    else:
        # one switch per max_wait_s (1 s) at most, each way: a handful for the whole run
        assert switched <= RUN_S / 1.0 + 2
        assert switched <= requests / 10


async def aborted(fleet: Fleet, name: str) -> None:
    """The backend aborted the request the proxy closed (it sees the close a moment later)."""
    async with asyncio.timeout(10):
        while fleet.stats(name)["state"]["running"]:
            await asyncio.sleep(0.01)  # poll the emulator until it saw the abort
    assert fleet.counters(name)["requests_cancelled_by_client"] == 1, "vLLM aborted it"


# max_wait_s 0.3 s, then max_hold_s 0.5 s of drain
HOLD_GPUS = [
    {"name": "g0", "scheduling": {"max_wait_s": 0.3, "min_residency_s": 0, "max_hold_s": 0.5}}
]


async def test_max_hold_ends_a_long_stream_with_an_error_event_and_serves_the_other(
    fleet: Fleet,
) -> None:
    """model-b streams 400 tokens at 10 ms each (4 s); model-a waits. After max_wait_s (0.3 s)
    the switch drains model-b, after max_hold_s (0.5 s) more it ends the stream: an SSE error
    event and [DONE], and model-a is served."""
    fleet.start(("model-a", []), ("model-b", ["--emu-itl-s", "0.01"]))
    async with (
        serve_proxy(config_for(fleet, MODELS, gpus=HOLD_GPUS)) as proxy,
        httpx.AsyncClient(base_url=proxy.url, timeout=30) as client,
    ):
        assert proxy.state("model-b") == "ready"
        body = chat("model-b", max_tokens=400, stream=True, ignore_eos=True)
        async with client.stream("POST", "/v1/chat/completions", json=body) as stream:
            lines = stream.aiter_lines()
            first = await anext(lines)
            assert first.startswith("data: "), "the stream runs"
            other = asyncio.create_task(client.post("/v1/chat/completions", json=chat("model-a")))
            rest = [line async for line in lines if line]
        served = await other
    assert served.status_code == 200
    assert rest[-1] == "data: [DONE]"
    error = rest[-2]
    assert '"code": "backend_unavailable"' in error
    assert "max_hold_s=0.5s" in error
    assert len(rest) < 300, "ended long before its 400 tokens"
    await aborted(fleet, "model-b")  # (the emulator once missed the close: fixed in frontend.py)


async def test_max_hold_ends_a_non_streamed_answer_still_in_generation(fleet: Fleet) -> None:
    """The same for a non-streamed request (vLLM sends nothing until the whole answer is
    generated): its client gets a 503 that names max_hold_s, vLLM aborts it, model-a is served."""
    fleet.start(("model-a", []), ("model-b", ["--emu-itl-s", "0.01"]))
    async with (
        serve_proxy(config_for(fleet, MODELS, gpus=HOLD_GPUS)) as proxy,
        httpx.AsyncClient(base_url=proxy.url, timeout=30) as client,
    ):
        body = chat("model-b", max_tokens=400, ignore_eos=True)
        long = asyncio.create_task(client.post("/v1/chat/completions", json=body))
        b = proxy.services.backends["model-b"]
        async with asyncio.timeout(10):
            while b.leases == 0:  # until the proxy forwards it (a condition, not a delay)
                await asyncio.sleep(0.005)
        served = await client.post("/v1/chat/completions", json=chat("model-a"))
        ended = await long
    assert served.status_code == 200
    assert ended.status_code == 503
    error = ended.json()["error"]
    assert error["code"] == "backend_unavailable"
    assert "max_hold_s=0.5s" in error["message"]
    assert ended.headers["retry-after"] == "5"
    await aborted(fleet, "model-b")


async def test_a_preemptible_model_pauses_its_stream_and_finishes_it_after_the_other(
    fleet: Fleet,
) -> None:
    """model-b (preemptible) streams 300 tokens at 10 ms each; model-a waits. After max_wait_s
    model-b sleeps with mode=keep - its stream stalls, nothing is aborted - model-a is served,
    and model-b wakes again for its paused request: the same stream runs to its end."""
    fleet.start(("model-a", []), ("model-b", ["--emu-itl-s", "0.01"]))
    models: list[dict[str, Any]] = [{"name": "model-a"}, {"name": "model-b", "preemptible": True}]
    gpus = [{"name": "g0", "scheduling": {"max_wait_s": 0.3, "min_residency_s": 0}}]
    async with (
        serve_proxy(config_for(fleet, models, gpus=gpus)) as proxy,
        httpx.AsyncClient(base_url=proxy.url, timeout=30) as client,
    ):
        body = chat("model-b", max_tokens=300, stream=True, ignore_eos=True)
        async with client.stream("POST", "/v1/chat/completions", json=body) as stream:
            lines = stream.aiter_lines()
            assert (await anext(lines)).startswith("data: ")
            other = asyncio.create_task(client.post("/v1/chat/completions", json=chat("model-a")))
            rest = [line async for line in lines if line]
            served_first = other.done()
        served = await other
    assert served.status_code == 200
    assert served_first, "model-a was served while model-b's stream was paused, not after it"
    assert rest[-1] == "data: [DONE]"
    assert not any('"error"' in line for line in rest), "nothing ended the stream early"
    assert '"finish_reason":"length"' in rest[-2].replace(" ", "")
    b = fleet.counters("model-b")
    assert b.get("requests_cancelled_by_client", 0) == 0
    assert b.get("requests_finished_abort", 0) == 0
    assert b["sleeps_level_1"] >= 1
