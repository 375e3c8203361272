"""The seed experiment's probes through a running proxy: the proxy's switch counters, which
model sleeps, a stampede of first requests, and switch-inclusive time to first token. Stateless
functions of an httpx client and the proxy's URL (bench/seed_experiment.py calls them).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

Chat = Callable[..., dict[str, Any]]


def counters(http: httpx.Client, url: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(http.get(f"{url}/metrics").text):
        for s in fam.samples:
            if s.name in (
                "vllm_switch_switches_total",
                "vllm_switch_wake_seconds_count",
                "vllm_switch_warmup_seconds_count",
            ):
                out[s.name] = out.get(s.name, 0.0) + s.value
    return out


def asleep(http: httpx.Client, url: str, timeout_s: float = 30) -> str:
    """The model that sleeps (after a wake-first switch the other one's sleep may still be
    under way: polled, bounded)."""
    deadline = time.monotonic() + timeout_s
    while True:
        models = http.get(f"{url}/admin/status").json()["models"]
        names = [m["name"] for m in models if m["state"] == "asleep"]
        if len(names) == 1:
            return str(names[0])
        if time.monotonic() > deadline:
            raise TimeoutError(f"no single model asleep: {[m['state'] for m in models]}")
        time.sleep(0.05)  # polling the proxy's state, bounded by the deadline


def stampede(http: httpx.Client, url: str, chat: Chat, tokens: int, n: int = 32) -> dict[str, Any]:
    before = counters(http, url)
    target = asleep(http, url)

    async def fire() -> list[int]:
        async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=n)) as c:
            rs = await asyncio.gather(
                *(
                    c.post(f"{url}/v1/chat/completions", json=chat(target, "stampede", tokens))
                    for _ in range(n)
                )
            )
        return [r.status_code for r in rs]

    t0 = time.monotonic()
    statuses = asyncio.run(fire())
    after = counters(http, url)
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    return {
        "target": target,
        "requests": n,
        "statuses": statuses,
        "seconds": time.monotonic() - t0,
        "switches": delta.get("vllm_switch_switches_total"),
        "wakes": delta.get("vllm_switch_wake_seconds_count"),
        "warmups": delta.get("vllm_switch_warmup_seconds_count"),
    }


def ttft(
    http: httpx.Client,
    url: str,
    chat: Chat,
    tokens: int,
    prompts: Sequence[str],
    samples: int = 10,
) -> dict[str, Any]:
    """Streaming requests, each to the model that sleeps: seconds to the first non-empty
    content delta (None when a stream had none: a random model may sample empty tokens)."""
    out: list[dict[str, Any]] = []
    for i in range(samples):
        target = asleep(http, url)
        t0 = time.monotonic()
        body = chat(target, prompts[i % len(prompts)], tokens, stream=True)
        with http.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
            first = None
            for line in r.iter_lines():
                if first is None and '"content":"' in line and '"content":""' not in line:
                    first = time.monotonic() - t0
        out.append(
            {
                "model": target,
                "ttft_s": first,
                "wake_s": float(r.headers["x-vllm-switch-wake-ms"]) / 1000,
                "sleep_s": float(r.headers["x-vllm-switch-sleep-ms"]) / 1000,
                "warmup_s": float(r.headers["x-vllm-switch-warmup-ms"]) / 1000,
            }
        )
    seen = [float(s["ttft_s"]) for s in out if s["ttft_s"] is not None]
    return {
        "samples": out,
        "p50_s": statistics.median(seen) if seen else None,
        "max_s": max(seen) if seen else None,
    }
