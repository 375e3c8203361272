"""Backends the proxy starts itself: sequential bootstrap, crash restarts, lazy start, shutdown."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy.config import ProxyConfig
from proxy.emulator.launcher import emulate_command
from tests.helpers.bodies import chat
from tests.helpers.fleet import GPU, MECHANICS, emulator_args
from tests.helpers.processes import alive, free_port
from tests.helpers.proxy_server import RunningProxy, serve_proxy

pytestmark = pytest.mark.process  # the proxy under uvicorn starts emulators as its backends


def supervised(name: str, tmp: Path, **extra: Any) -> dict[str, Any]:
    """A model whose backend the proxy starts: an emulator that fits the GPU only alone."""
    port = free_port()
    command = emulate_command(emulator_args(name, tmp / "ledger", port=port, startup_s=0.3))
    return {
        "name": name,
        "url": f"http://127.0.0.1:{port}",
        "gpu": GPU,
        "command": command,
        "log_file": str(tmp / f"{name}.log"),
        "timeouts": {"start_s": 30},
        **extra,
    }


def config(*models: dict[str, Any]) -> ProxyConfig:
    gpus = [{"name": GPU, "scheduling": MECHANICS}]
    return ProxyConfig.model_validate({"models": list(models), "gpus": gpus})


def ledger(tmp: Path) -> dict[str, Any]:
    import json

    data: dict[str, Any] = json.loads((tmp / "ledger" / f"{GPU}.json").read_text())
    return data


async def crash(proxy: RunningProxy, name: str) -> int:
    """SIGKILL a supervised backend's process group; wait until the proxy saw it. Its old PID."""
    proc = proxy.services.supervisor.process(name)
    assert proc is not None
    assert proc.pid is not None
    pid = proc.pid
    os.killpg(pid, signal.SIGKILL)
    async with asyncio.timeout(10):
        while proxy.state(name) != "failed":
            await asyncio.sleep(0.01)  # poll until the watcher saw the crash
    return pid


async def test_bootstrap_starts_one_at_a_time_and_shutdown_stops_all(tmp_path: Path) -> None:
    """Both fit only alone: starting them concurrently would make the second refuse to start."""
    cfg = config(supervised("model-a", tmp_path), supervised("model-b", tmp_path))
    async with serve_proxy(cfg) as proxy, httpx.AsyncClient(base_url=proxy.url, timeout=30) as c:
        assert (proxy.state("model-a"), proxy.state("model-b")) == ("asleep", "ready")
        for model in ("model-a", "model-b", "model-a"):
            assert (await c.post("/v1/chat/completions", json=chat(model))).status_code == 200
        status = (await c.get("/admin/status")).json()
        pids = [m["process"]["pid"] for m in status["models"]]
        assert len(pids) == 2
        assert all(m["process"]["running"] for m in status["models"])
        assert any(
            "Starting vLLM server" in line for line in status["models"][0]["process"]["last_lines"]
        )
    assert not [pid for pid in pids if alive(pid)], "shutdown must stop every started backend"
    assert ledger(tmp_path)["oom_events"] == 0
    assert ledger(tmp_path)["peak_used_bytes"] <= 80 * 1024**3
    assert "Starting vLLM server" in (tmp_path / "model-a.log").read_text()


async def test_crashed_backend_is_restarted_by_the_next_request(tmp_path: Path) -> None:
    cfg = config(
        supervised("model-a", tmp_path), supervised("model-b", tmp_path, restart={"backoff_s": 0})
    )
    async with serve_proxy(cfg) as proxy, httpx.AsyncClient(base_url=proxy.url, timeout=30) as c:
        proc = proxy.services.supervisor.process("model-b")
        assert proc is not None
        old_pid = await crash(proxy, "model-b")
        r = await c.post("/v1/chat/completions", json=chat("model-b"))
        assert r.status_code == 200
        assert proc.pid != old_pid
        metrics = (await c.get("/metrics")).text
    assert 'vllm_switch_restarts_total{model="model-b"} 1.0' in metrics


async def test_crash_loop_leaves_the_backend_failed(tmp_path: Path) -> None:
    cfg = config(
        supervised("model-a", tmp_path),
        supervised("model-b", tmp_path, restart={"max_restarts": 0}),
    )
    async with serve_proxy(cfg) as proxy, httpx.AsyncClient(base_url=proxy.url, timeout=30) as c:
        await crash(proxy, "model-b")
        r = await c.post("/v1/chat/completions", json=chat("model-b"))
        other = await c.post("/v1/chat/completions", json=chat("model-a"))
    assert r.status_code == 503
    assert "restart starts it again" in r.json()["error"]["message"]
    assert other.status_code == 200, "a dead process holds no memory: the GPU stays usable"


async def test_lazy_backend_starts_on_its_first_request(tmp_path: Path) -> None:
    cfg = config(supervised("model-a", tmp_path), supervised("model-b", tmp_path, start="lazy"))
    async with serve_proxy(cfg) as proxy, httpx.AsyncClient(base_url=proxy.url, timeout=30) as c:
        assert (proxy.state("model-a"), proxy.state("model-b")) == ("ready", "stopped")
        assert proxy.services.supervisor.process("model-b").pid is None  # type: ignore[union-attr]
        tok = await c.post(
            "/tokenize", json={"model": "model-b", "prompt": "hi"}, headers={"x-request-id": "t-1"}
        )
        assert tok.status_code == 503, "no process yet to answer, and /tokenize never starts one"
        assert tok.headers["x-request-id"] == "t-1"
        r = await c.post("/v1/chat/completions", json=chat("model-b"))
        assert r.status_code == 200
        assert (proxy.state("model-a"), proxy.state("model-b")) == ("asleep", "ready")
        assert float(r.headers["x-vllm-switch-wake-ms"]) > 0  # the start, reported as the wake
    assert ledger(tmp_path)["oom_events"] == 0


async def test_backend_that_exits_while_starting_fails_with_its_output(tmp_path: Path) -> None:
    bad = supervised("model-b", tmp_path)
    bad["command"] = [sys.executable, "-c", "print('boom: no such model'); raise SystemExit(3)"]
    async with (
        serve_proxy(config(supervised("model-a", tmp_path), bad)) as proxy,
        httpx.AsyncClient(base_url=proxy.url, timeout=30) as c,
    ):
        assert proxy.state("model-b") == "failed"
        r = await c.post("/v1/chat/completions", json=chat("model-b"))
        ok = await c.post("/v1/chat/completions", json=chat("model-a"))
    failure = proxy.services.backends["model-b"].failure
    assert failure is not None
    assert "exited with 3 while starting" in failure
    assert "boom: no such model" in failure, "the failure carries the process's last output"
    assert r.status_code == 503
    assert "exited with 3" in r.json()["error"]["message"], r.text
    assert ok.status_code == 200


async def test_requests_during_restart_backoff_get_503_with_retry_after(tmp_path: Path) -> None:
    cfg = config(
        supervised("model-a", tmp_path), supervised("model-b", tmp_path, restart={"backoff_s": 30})
    )
    async with serve_proxy(cfg) as proxy, httpx.AsyncClient(base_url=proxy.url, timeout=30) as c:
        await crash(proxy, "model-b")
        r = await c.post("/v1/chat/completions", json=chat("model-b"))
    assert r.status_code == 503
    assert "restarting it in" in r.json()["error"]["message"]
    assert 25 <= int(r.headers["retry-after"]) <= 30


async def test_hung_sleep_of_a_supervised_backend_kills_it_and_the_gpu_recovers(
    tmp_path: Path,
) -> None:
    hung = supervised(
        "model-b",
        tmp_path,
        restart={"backoff_s": 0},
        timeouts={"start_s": 30, "sleep_s": 0.5, "control_s": 0.3},
    )
    hung["command"] = [*hung["command"], "--emu-fault", "hang_sleep"]
    async with (
        serve_proxy(config(supervised("model-a", tmp_path), hung)) as proxy,
        httpx.AsyncClient(base_url=proxy.url, timeout=30) as c,
    ):
        first = await c.post("/v1/chat/completions", json=chat("model-a"))
        assert first.status_code == 503
        assert "timed out after 0.5s" in first.json()["error"]["message"]
        assert proxy.services.backends["model-b"].holds_memory is False, (
            "killed: its memory is free"
        )
        again = await c.post("/v1/chat/completions", json=chat("model-a"))
        assert again.status_code == 200
        assert (await c.get("/ready")).status_code == 200
    assert ledger(tmp_path)["oom_events"] == 0


async def test_failed_wake_brings_the_previous_model_back(tmp_path: Path) -> None:
    """model-a's wake runs out of memory: it is killed (freeing the GPU), and model-b, put to
    sleep for it, is woken back before the 503 goes out, so model-b's users see no switch."""
    oom = supervised("model-a", tmp_path, restart={"backoff_s": 30})
    oom["command"] = [*oom["command"], "--emu-fault", "wake_oom"]
    async with (
        serve_proxy(config(oom, supervised("model-b", tmp_path))) as proxy,
        httpx.AsyncClient(base_url=proxy.url, timeout=30) as c,
    ):
        assert (proxy.state("model-a"), proxy.state("model-b")) == ("asleep", "ready")
        failed = await c.post("/v1/chat/completions", json=chat("model-a"))
        assert failed.status_code == 503
        assert "out of memory" in failed.json()["error"]["message"]
        assert (proxy.state("model-a"), proxy.state("model-b")) == ("failed", "ready")
        served = await c.post("/v1/chat/completions", json=chat("model-b"))
        metrics = (await c.get("/metrics")).text
    assert served.status_code == 200
    assert float(served.headers["x-vllm-switch-wake-ms"]) == 0, "already awake again"
    assert (
        'vllm_switch_switches_total{from_model="model-a",result="restored",to_model="model-b"} 1.0'
        in metrics
    )
    assert ledger(tmp_path)["peak_used_bytes"] <= 80 * 1024**3
