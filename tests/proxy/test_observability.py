"""Metrics names and labels are a contract; /ready, /admin/status, the status CLI and logs."""

from __future__ import annotations

import asyncio
import json
import logging

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from proxy.config import ProxyConfig
from proxy.http.routes.admin import readiness
from proxy.observability.logs import JsonFormatter, PlainFormatter
from proxy.observability.statusview import render, run_status
from proxy.services import Services
from proxy.switching.group import STUCK_GRACE_S
from tests.helpers.bodies import chat
from tests.helpers.fleet import Fleet, config_for
from tests.helpers.processes import free_port
from tests.helpers.proxy_server import serve_proxy

MODELS = [{"name": "model-a"}, {"name": "model-b"}]

# name -> (type, label names): the public contract listed in the README
CONTRACT = {
    "vllm_switch_sleep_seconds": ("histogram", {"model", "level"}),
    "vllm_switch_wake_seconds": ("histogram", {"model", "level"}),
    "vllm_switch_warmup_seconds": ("histogram", {"model"}),
    "vllm_switch_switch_seconds": ("histogram", {"from_model", "to_model"}),
    "vllm_switch_queue_wait_seconds": ("histogram", {"model"}),
    "vllm_switch_request_seconds": ("histogram", {"model", "endpoint"}),
    "vllm_switch_ttft_seconds": ("histogram", {"model"}),
    "vllm_switch_requests": ("counter", {"model", "endpoint", "status"}),
    "vllm_switch_switches": ("counter", {"from_model", "to_model", "result"}),
    "vllm_switch_wake_failures": ("counter", {"model", "reason"}),
    "vllm_switch_rejected": ("counter", {"model", "reason"}),
    "vllm_switch_switching_seconds": ("counter", {"gpu"}),
    "vllm_switch_decisions": ("counter", {"gpu", "reason"}),
    "vllm_switch_restarts": ("counter", {"model"}),
    "vllm_switch_backend_state": ("gauge", {"model", "state"}),
    "vllm_switch_inflight_requests": ("gauge", {"model"}),
    "vllm_switch_queue_depth": ("gauge", {"model"}),
    "vllm_switch_switch_in_progress": ("gauge", {"gpu"}),
}


def families(text: str) -> dict[str, tuple[str, set[str], list[tuple[str, dict[str, str], float]]]]:
    out = {}
    for fam in text_string_to_metric_families(text):
        if fam.name.startswith("vllm_switch_"):
            labels = {k for s in fam.samples for k in s.labels if k not in ("le",)}
            out[fam.name] = (fam.type, labels, [(s.name, s.labels, s.value) for s in fam.samples])
    return out


def value(
    fams: dict[str, tuple[str, set[str], list[tuple[str, dict[str, str], float]]]],
    sample: str,
    **labels: str,
) -> float:
    name = sample.removesuffix("_total").removesuffix("_count")
    for s_name, s_labels, v in fams[name][2]:
        if s_name == sample and all(s_labels.get(k) == val for k, val in labels.items()):
            return v
    raise KeyError(f"{sample}{labels}")


async def test_metrics_contract_after_a_switching_workload(fleet: Fleet) -> None:
    fleet.start(("model-a", []), ("model-b", []))
    async with (
        serve_proxy(config_for(fleet, MODELS)) as proxy,
        httpx.AsyncClient(base_url=proxy.url, timeout=30) as c,
    ):
        assert (await c.post("/v1/chat/completions", json=chat("model-a"))).status_code == 200
        async with c.stream("POST", "/v1/chat/completions", json=chat("model-b", stream=True)) as s:
            _ = [line async for line in s.aiter_lines()]
        assert (await c.post("/v1/chat/completions", json=chat("nope"))).status_code == 404
        scrape = await c.get("/metrics")
    assert scrape.headers["content-type"].startswith("text/plain")
    fams = families(scrape.text)
    assert {name: (t, labels) for name, (t, labels, _) in fams.items()} == CONTRACT
    assert (
        value(
            fams,
            "vllm_switch_switches_total",
            from_model="model-b",
            to_model="model-a",
            result="ok",
        )
        == 1
    )
    assert (
        value(
            fams,
            "vllm_switch_switches_total",
            from_model="model-a",
            to_model="model-b",
            result="ok",
        )
        == 1
    )
    assert value(fams, "vllm_switch_wake_seconds_count", model="model-a", level="1") == 1
    assert value(fams, "vllm_switch_warmup_seconds_count", model="model-b") == 1
    assert value(fams, "vllm_switch_ttft_seconds_count", model="model-b") == 1
    assert (
        value(
            fams,
            "vllm_switch_requests_total",
            model="model-a",
            endpoint="/v1/chat/completions",
            status="200",
        )
        == 1
    )
    assert value(fams, "vllm_switch_rejected_total", model="unknown", reason="not_found") == 1
    assert value(fams, "vllm_switch_backend_state", model="model-b", state="ready") == 1
    assert value(fams, "vllm_switch_switching_seconds_total", gpu="g0") > 0
    fifo = value(fams, "vllm_switch_decisions_total", gpu="g0", reason="fifo")  # the mechanics'
    assert fifo >= 1


async def test_admin_status_and_the_status_cli(fleet: Fleet) -> None:
    fleet.start(("model-a", []), ("model-b", []))
    async with (
        serve_proxy(config_for(fleet, MODELS)) as proxy,
        httpx.AsyncClient(base_url=proxy.url, timeout=30) as c,
    ):
        await c.post("/v1/chat/completions", json=chat("model-a"))
        status = (await c.get("/admin/status")).json()
        ready = await c.get("/ready")
        console = Console(record=True, width=200)
        code = await asyncio.to_thread(run_status, proxy.url, as_json=False, console=console)
    assert ready.status_code == 200
    assert ready.json() == {"ready": True, "problems": []}
    by_name = {m["name"]: m for m in status["models"]}
    assert (by_name["model-a"]["state"], by_name["model-b"]["state"]) == ("ready", "asleep")
    assert by_name["model-a"]["last_wake_ms"] > 0
    assert by_name["model-b"]["last_sleep_ms"] > 0
    assert status["gpus"] == [
        {
            "name": "g0",
            "max_awake": 1,
            "switch_in_progress": False,
            "phase": None,
            "phase_s": 0.0,
            "reconciled": True,
        }
    ]
    text = console.export_text()
    assert code == 0
    assert "ready" in text
    assert "model-a" in text
    assert "model-b" in text


def test_status_cli_reports_an_unreachable_proxy() -> None:
    port = free_port()
    console = Console(record=True)
    assert run_status(f"http://127.0.0.1:{port}", as_json=False, console=console) == 2
    assert "cannot read" in console.export_text()


def test_readiness_reports_a_stuck_switch() -> None:
    config = ProxyConfig.model_validate({"models": [{"name": "m", "url": "http://127.0.0.1:1"}]})
    services = Services.build(config)
    (group,) = services.switcher.groups()
    group.reconciled.set()
    services.backends["m"].set_state(services.backends["m"].state.READY)
    assert readiness(services) == []
    group.enter("waking", 0.0)  # timed out just now: cleanup may still run, not stuck yet
    assert readiness(services) == []
    group.enter("waking", -STUCK_GRACE_S - 1)  # past its timeout and the cleanup grace
    assert readiness(services) == [f"gpu {group.name}: switch stuck in waking for 0s"]


def test_readiness_with_only_lazy_backends_is_ready() -> None:
    """Nothing runs yet, but the first request will start one: a load balancer must send it."""
    config = ProxyConfig.model_validate(
        {
            "models": [
                {
                    "name": "m",
                    "url": "http://127.0.0.1:1",
                    "command": "vllm serve m",
                    "start": "lazy",
                }
            ]
        }
    )
    services = Services.build(config)
    (group,) = services.switcher.groups()
    group.reconciled.set()
    services.backends["m"].set_state(services.backends["m"].state.STOPPED)
    assert readiness(services) == []


def test_status_view_shows_failures_verbatim() -> None:
    status = {
        "version": "x",
        "uptime_s": 1,
        "ready": False,
        "problems": ["gpu [g0]: stuck [/oops]"],
        "gpus": [],
        "models": [
            {
                "name": "m",
                "gpu": "g",
                "state": "failed",
                "inflight": 0,
                "queue_depth": 0,
                "awake_since": None,
                "last_sleep_ms": None,
                "last_wake_ms": None,
                "last_warmup_ms": None,
                "failure": "wake failed: [core.py:700] CUDA Error [/x]",
            }
        ],
    }
    console = Console(record=True, width=200)
    render(status, console)
    text = console.export_text()
    assert "[core.py:700] CUDA Error [/x]" in text
    assert "stuck [/oops]" in text


async def test_a_client_that_leaves_mid_stream_counts_as_499(fleet: Fleet) -> None:
    fleet.start(("model-b", []), ("model-a", ["--emu-itl-s", "0.01"]))
    async with serve_proxy(config_for(fleet, MODELS)) as proxy:
        async with httpx.AsyncClient(base_url=proxy.url, timeout=30) as c:
            body = chat("model-a", 2000, stream=True, ignore_eos=True)
            async with c.stream("POST", "/v1/chat/completions", json=body) as s:
                assert (await anext(s.aiter_lines())).startswith("data: ")
        async with asyncio.timeout(10):
            while proxy.services.backends["model-a"].leases:
                await asyncio.sleep(0.01)  # poll until the proxy finished the response
        async with httpx.AsyncClient(base_url=proxy.url) as c:
            fams = families((await c.get("/metrics")).text)
    assert (
        value(
            fams,
            "vllm_switch_requests_total",
            model="model-a",
            endpoint="/v1/chat/completions",
            status="499",
        )
        == 1
    )


async def test_ready_is_503_when_no_backend_is_reachable(fleet: Fleet) -> None:
    port = free_port()
    config = ProxyConfig.model_validate(
        {"models": [{"name": "m", "url": f"http://127.0.0.1:{port}", "timeouts": {"start_s": 0.2}}]}
    )
    async with serve_proxy(config) as proxy, httpx.AsyncClient(base_url=proxy.url) as c:
        r = await c.get("/ready")
        health = await c.get("/health")
    assert r.status_code == 503
    (problem,) = r.json()["problems"]
    assert problem.startswith("no model can be served")
    assert "m: not reachable within 0.2s of start-up" in problem
    assert health.status_code == 200


async def test_one_log_line_per_request_and_per_switch(
    fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    fleet.start(("model-a", []), ("model-b", []))
    caplog.set_level(logging.INFO)
    async with (
        serve_proxy(config_for(fleet, MODELS)) as proxy,
        httpx.AsyncClient(base_url=proxy.url, timeout=30) as c,
    ):
        r = await c.post(
            "/v1/chat/completions", json=chat("model-a"), headers={"x-request-id": "req-42"}
        )
    assert r.headers["x-request-id"] == "req-42"
    requests = [rec for rec in caplog.records if getattr(rec, "event", None) == "request"]
    switches = [rec for rec in caplog.records if getattr(rec, "event", None) == "switch"]
    assert len(requests) == 1
    assert len(switches) == 1
    line = json.loads(JsonFormatter().format(requests[0]))
    assert (line["request_id"], line["model"], line["status"]) == ("req-42", "model-a", 200)
    assert {"queue_ms", "sleep_ms", "wake_ms", "warmup_ms", "duration_ms"} <= set(line)
    switch = json.loads(JsonFormatter().format(switches[0]))
    assert (switch["from_model"], switch["to_model"]) == ("model-b", "model-a")
    assert switch["wake_ms"] > 0
    plain = PlainFormatter().format(switches[0])
    assert "from_model=model-b" in plain
    assert "to_model=model-a" in plain
