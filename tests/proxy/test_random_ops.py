"""Seeded random workloads against three models on one fake GPU (max_awake 2).

Random mixes of streaming and non-streaming requests, clients that give up at random moments and
injected wake failures. Afterwards the design's invariants must hold: the GPU ledger never went
over budget and no wake failed for lack of memory (the fake GPU fits two models awake, not three,
so a third awake model would have been an OOM); no request reached a sleeping backend; every
request ended with a response or a clean OpenAI error, none hung.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import httpx
import pytest

from tests.helpers.bodies import chat
from tests.helpers.fleet import Fleet, config_for
from tests.helpers.proxy_server import serve_proxy

MODELS = ("model-a", "model-b", "model-c")
OPS = 60


async def one_request(c: httpx.AsyncClient, rng: random.Random, model: str) -> str:
    body = chat(model, rng.choice([1, 4, 16]), stream=rng.random() < 0.5, ignore_eos=True)
    if body["stream"]:
        async with c.stream("POST", "/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                await r.aread()
                assert r.json()["error"]["code"], r.text
                return str(r.status_code)
            lines = [line async for line in r.aiter_lines() if line.startswith("data: ")]
            assert lines[-1] == "data: [DONE]"
            return "200"
    r = await c.post("/v1/chat/completions", json=body)
    if r.status_code != 200:
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    return str(r.status_code)


@pytest.mark.faults  # wake OOMs are injected on purpose; the ledger is checked here instead
@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_random_operations_keep_the_invariants(fleet: Fleet, seed: int) -> None:
    rng = random.Random(seed)
    extra = ["--gpu-memory-utilization", "0.45", "--emu-itl-s", "0.002"]
    fleet.start(*((m, extra) for m in MODELS))
    config = config_for(
        fleet,
        [{"name": m} for m in MODELS],
        gpus=[{"name": "g0", "max_awake": 2}],
        limits={"queue_timeout_s": 20},
    )
    outcomes: list[str] = []
    async with (
        serve_proxy(config) as proxy,
        httpx.AsyncClient(
            base_url=proxy.url, timeout=30, limits=httpx.Limits(max_connections=200)
        ) as c,
    ):
        tasks: list[asyncio.Task[str]] = []
        for _ in range(OPS):
            roll = rng.random()
            model = rng.choice(MODELS)
            if roll < 0.05:  # the next wake of this model fails like a CUDA OOM
                httpx.post(f"{fleet.url(model)}/_emulator/faults", json={"add": ["wake_oom"]})
                continue
            task = asyncio.create_task(one_request(c, rng, model))
            tasks.append(task)
            if roll < 0.2:  # a client that gives up after a random moment
                await asyncio.sleep(rng.random() * 0.05)
                task.cancel()
            elif roll < 0.5:
                await asyncio.sleep(rng.random() * 0.02)
        async with asyncio.timeout(60):
            results = await asyncio.gather(*tasks, return_exceptions=True)
        for r in results:
            if isinstance(r, asyncio.CancelledError):
                outcomes.append("cancelled")
            elif isinstance(r, BaseException):
                raise r
            else:
                outcomes.append(r)
        states = [proxy.state(m) for m in MODELS]
    assert set(outcomes) <= {"200", "503", "cancelled"}, outcomes
    assert "200" in outcomes
    assert sum(s == "ready" for s in states) <= 2
    ledger = fleet.ledger()
    assert ledger["oom_events"] == 0, "the proxy woke a model into too little memory"
    assert ledger["peak_used_bytes"] <= 80 * 1024**3
    for m in MODELS:
        stats: dict[str, Any] = fleet.stats(m)
        assert stats["stats"].get("requests_queued_while_asleep", 0) == 0, (
            f"a request reached {m} asleep"
        )
        assert stats["state"]["running"] == 0, f"{m} still generates for a gone client"
