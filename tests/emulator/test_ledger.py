"""The shared fake-GPU ledger refuses what a real H100 refuses, and leaks what it leaks."""

from __future__ import annotations

import asyncio
import json
import time

import httpx

from tests.helpers.processes import Spawn, emulator_stats

GIB = 1024**3
SLEEPY = [
    "--enable-sleep-mode",
    "--emu-gpu-memory-gib",
    "80",
    "--emu-weights-gib",
    "1",
    "--emu-residual-gib",
    "1.5",
]


def ledger(url: str) -> dict[str, int]:
    return emulator_stats(url)["ledger"]  # type: ignore[return-value]


def test_startup_refused_when_free_memory_is_below_the_requested_share(spawn: Spawn) -> None:
    a = spawn(*SLEEPY, "--gpu-memory-utilization", "0.6", name="a")
    a.wait_listening()
    b = spawn(*SLEEPY, "--gpu-memory-utilization", "0.6", name="b")
    assert b.wait_exit() == 1
    assert not b.port_file.exists(), "a refused start must never listen"
    log = b.log()
    assert (
        "ValueError: Free memory on device cuda:0 (32.00/80.00 GiB) on startup is less than desired GPU memory utilization (0.6, 48.00 GiB)"
        in log
    )
    assert "RuntimeError: Engine core initialization failed" in log
    assert ledger(a.url)["used_bytes"] == int(0.6 * 80 * GIB)


def test_second_model_starts_once_the_first_sleeps(spawn: Spawn) -> None:
    a = spawn(*SLEEPY, "--gpu-memory-utilization", "0.6", name="a")
    a.wait_listening()
    assert httpx.post(f"{a.url}/sleep", params={"level": 1}).status_code == 200
    assert ledger(a.url)["used_bytes"] == int(1.5 * GIB)
    b = spawn(*SLEEPY, "--gpu-memory-utilization", "0.6", name="b")
    b.wait_listening()
    assert ledger(b.url)["used_bytes"] == int(1.5 * GIB) + int(0.6 * 80 * GIB)


def test_wake_into_too_little_memory_fails_wedges_and_leaks_until_exit(spawn: Spawn) -> None:
    a = spawn(*SLEEPY, "--gpu-memory-utilization", "0.6", name="a")
    a.wait_listening()
    assert httpx.post(f"{a.url}/sleep", params={"level": 1}).status_code == 200
    b = spawn(*SLEEPY, "--gpu-memory-utilization", "0.6", name="b")
    b.wait_listening()

    r = httpx.post(f"{a.url}/wake_up")
    assert r.status_code == 500
    assert r.json() == {
        "error": {
            "message": "Call to wake_up method failed: CUDA Error: out of memory at <path>:163",
            "type": "InternalServerError",
            "param": None,
            "code": 500,
        }
    }
    state = ledger(a.url)
    assert state["oom_events"] == 1
    assert state["used_bytes"] == 80 * GIB, "the failed wake keeps what it mapped: the GPU is full"

    # the instance is wedged, yet looks healthy
    assert httpx.get(f"{a.url}/health").status_code == 200
    assert httpx.get(f"{a.url}/is_sleeping").json() == {"is_sleeping": True}
    assert httpx.post(f"{b.url}/sleep", params={"level": 1}).status_code == 200
    retry = httpx.post(f"{a.url}/wake_up")
    assert retry.status_code == 500
    assert "CUDA Error: invalid argument at <path>:169" in retry.json()["error"]["message"]
    with httpx.Client(timeout=1.0) as c:
        try:
            c.post(
                f"{a.url}/v1/chat/completions",
                json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
            )
            raise AssertionError("a wedged engine must hang requests")
        except httpx.ReadTimeout:
            pass
    leaked = ledger(a.url)["holders"][str(a.proc.pid)]["bytes"]  # type: ignore[index]
    assert leaked > int(1.5 * GIB), "the partially mapped memory stays held"

    a.stop()  # only killing the process frees it
    after = ledger(b.url)
    assert str(a.proc.pid) not in after["holders"]  # type: ignore[operator]
    assert after["used_bytes"] == int(1.5 * GIB)


def test_sleep_without_sleep_mode_frees_nothing(spawn: Spawn) -> None:
    a = spawn("--emu-gpu-memory-gib", "80", "--gpu-memory-utilization", "0.5", name="a")
    a.wait_listening()
    before = ledger(a.url)["used_bytes"]
    assert httpx.post(f"{a.url}/sleep", params={"level": 1}).status_code == 200
    assert httpx.get(f"{a.url}/is_sleeping").json() == {"is_sleeping": True}
    assert ledger(a.url)["used_bytes"] == before
    assert httpx.post(f"{a.url}/wake_up").status_code == 200
    r = httpx.post(f"{a.url}/v1/completions", json={"prompt": "hi", "max_tokens": 2})
    assert r.status_code == 200


def test_memory_freed_by_a_neighbour_during_profiling_fails_startup(spawn: Spawn) -> None:
    a = spawn(*SLEEPY, "--gpu-memory-utilization", "0.4", name="a")
    a.wait_listening()
    b = spawn(*SLEEPY, "--gpu-memory-utilization", "0.4", "--emu-startup-s", "6", name="b")
    ledger_file = a.log_path.parent / "ledger" / "fake-h100-0.json"
    deadline = time.monotonic() + 10
    while str(b.proc.pid) not in json.loads(ledger_file.read_text())["holders"]:
        assert time.monotonic() < deadline, "b never reached its memory check"
        time.sleep(0.01)
    # b now profiles for 0.4 x 6 s; a neighbour going to sleep frees memory under it
    assert httpx.post(f"{a.url}/sleep", params={"level": 1}).status_code == 200
    assert b.wait_exit() == 1
    assert "AssertionError: Error in memory profiling" in b.log()


async def test_peak_usage_is_recorded(spawn: Spawn) -> None:
    a = spawn(*SLEEPY, "--gpu-memory-utilization", "0.5", name="a")
    await asyncio.to_thread(a.wait_listening)
    state = ledger(a.url)
    assert state["peak_used_bytes"] == state["used_bytes"] == int(0.5 * 80 * GIB)
