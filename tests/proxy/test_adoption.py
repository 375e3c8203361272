"""A starting proxy adopts what already serves at a supervised model's URL instead of starting
a second process on a busy port: a previous proxy's backend that outlived it (its reaper was
killed too), if started from the same command - else it is ended and started anew - and a vLLM
started by hand. Real processes: `vllm-switch serve` and emulators.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import yaml

from proxy.backends.host import group_members
from proxy.backends.release import wait_released
from proxy.clock import SystemClock
from tests.helpers.bodies import chat
from tests.helpers.fleet import GPU, MECHANICS
from tests.helpers.processes import launched
from tests.helpers.serve_process import group_alive
from tests.proxy.test_crash_safety import ready, until
from tests.proxy.test_supervision import ledger, supervised

pytestmark = pytest.mark.process


def write_config(tmp: Path, models: list[dict[str, Any]]) -> Path:
    config = {
        "host": "127.0.0.1",
        "port": 0,
        "gpus": [{"name": GPU, "scheduling": MECHANICS}],
        "runtime_dir": str(tmp / "run"),
        "models": models,
    }
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def model_of(status: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(m for m in status["models"] if m["name"] == name)
    return found


@contextlib.contextmanager
def ended(groups: list[int]) -> Iterator[list[int]]:
    """Whatever happens, SIGKILL the process groups this test made survive (by their ids)."""
    try:
        yield groups
    finally:
        for g in groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(g, signal.SIGKILL)


def listener_of(group: int) -> int:
    """The emulator of a backend group (the reaper's child): the one process of the group
    that is not its leader."""
    members = [p for p in group_alive(group) if p != group]
    assert len(members) == 1, members
    return members[0]


async def survive_proxy(path: Path) -> tuple[int, int]:
    """Run a proxy with model-a, then SIGKILL model-a's reaper and the proxy - leaving its
    emulator running, as a previous proxy's backend. Returns (its group, the emulator's pid)."""
    with launched(["serve", "--config", str(path)], "vllm-switch listening on") as (proc, url):
        group = model_of(await ready(url, 60), "model-a")["process"]["pid"]
        emulator = listener_of(group)
        os.kill(group, signal.SIGKILL)  # the reaper (the group's leader): the emulator lives on
        os.kill(proc.pid, signal.SIGKILL)  # then the proxy, by the PID this test started
    return group, emulator


async def test_a_previous_proxys_backend_is_adopted_not_started_twice(tmp_path: Path) -> None:
    path = write_config(tmp_path, [supervised("model-a", tmp_path)])
    group, emulator = await survive_proxy(path)
    with ended([group]):
        with launched(["serve", "--config", str(path)], "vllm-switch listening on") as (p, url):
            status = await ready(url, 30)
            a = model_of(status, "model-a")
            assert a["process"]["pid"] == emulator, "the running emulator is kept, not replaced"
            assert a["process"]["adopted"] is True
            assert "previous proxy" in a["process"]["last_lines"][0]
            async with httpx.AsyncClient(base_url=url, timeout=30) as c:
                r = await c.post("/v1/chat/completions", json=chat("model-a"))
                assert r.status_code == 200, r.text
            p.send_signal(signal.SIGTERM)  # shutdown stops what it adopted, as its own
            p.wait(30)
        await until(lambda: not group_alive(group), 10, "the adopted backend stopped")
    assert ledger(tmp_path)["oom_events"] == 0


async def test_a_previous_proxys_backend_from_another_command_is_replaced(
    tmp_path: Path,
) -> None:
    model = supervised("model-a", tmp_path)
    path = write_config(tmp_path, [model])
    group, emulator = await survive_proxy(path)
    with ended([group]):
        write_config(tmp_path, [{**model, "env": {"CHANGED": "1"}}])  # another fingerprint
        with launched(["serve", "--config", str(path)], "vllm-switch listening on") as (_, url):
            a = model_of(await ready(url, 30), "model-a")
            assert a["state"] == "ready", a
            assert a["process"]["pid"] != emulator
            assert a["process"]["adopted"] is False
            assert not group_alive(group), "the old backend was ended before the new start"
            async with httpx.AsyncClient(base_url=url, timeout=30) as c:
                r = await c.post("/v1/chat/completions", json=chat("model-a"))
                assert r.status_code == 200, r.text
    assert ledger(tmp_path)["oom_events"] == 0


async def test_a_vllm_started_by_hand_is_adopted_and_a_stranger_refused(tmp_path: Path) -> None:
    a, b = supervised("model-a", tmp_path), supervised("model-b", tmp_path)
    path = write_config(tmp_path, [a, b])
    by_hand = by_hand_in(a["command"], tmp_path)
    # on model-b's port: an emulator serving another model, on a fake GPU of its own
    argv = [*b["command"]]
    argv[argv.index("--served-model-name") + 1] = "someone-else"
    argv[argv.index("--emu-ledger-dir") + 1] = str(tmp_path / "elsewhere")
    stranger = by_hand_in(argv, tmp_path)
    with ended([by_hand.pid, stranger.pid]):
        for port in (a["url"], b["url"]):
            await ready_backend(port)
        with launched(["serve", "--config", str(path)], "vllm-switch listening on") as (_, url):
            status = await ready(url, 30)
            ma, mb = model_of(status, "model-a"), model_of(status, "model-b")
            assert ma["process"]["pid"] == by_hand.pid
            assert mb["state"] == "failed"
            port = b["url"].rsplit(":", 1)[1]
            assert port in mb["failure"]
            assert "taken by another process" in mb["failure"]
            assert str(stranger.pid) in mb["failure"], "the message names what listens there"
            async with httpx.AsyncClient(base_url=url, timeout=30) as c:
                r = await c.post("/v1/chat/completions", json=chat("model-a"))
                assert r.status_code == 200, r.text
                r = await c.post("/v1/chat/completions", json=chat("model-b"))
                assert r.status_code == 503
                assert "taken by another process" in r.json()["error"]["message"]
        assert stranger.poll() is None, "a stranger is never touched"
    for p in (by_hand, stranger):
        p.wait(10)


async def test_an_adopted_backends_leftovers_are_killed_when_it_dies(tmp_path: Path) -> None:
    """vLLM 0.26's engine core outlives a SIGKILLed API server and keeps its GPU memory (seen
    on the H200): no reaper is behind an adopted backend, so the proxy ends what it left."""
    a = supervised("model-a", tmp_path)
    path = write_config(tmp_path, [{**a, "restart": {"release_s": 30, "release_settle_s": 0}}])
    # by hand, as vLLM runs: the API server (the emulator, by exec) with a child that lives on
    engine = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])"
    launcher = (
        f"{engine}; import os; os.execv(sys.executable, {[sys.executable, *a['command'][1:]]!r})"
    )
    by_hand = by_hand_in([sys.executable, "-c", launcher], tmp_path)
    with ended([by_hand.pid]):
        await ready_backend(a["url"])
        (child,) = psutil.Process(by_hand.pid).children()
        with launched(["serve", "--config", str(path)], "vllm-switch listening on") as (_, url):
            assert model_of(await ready(url, 30), "model-a")["process"]["adopted"] is True
            os.kill(by_hand.pid, signal.SIGKILL)  # the API server alone, by the PID we started
            by_hand.wait(10)
            await until(
                lambda: not psutil.pid_exists(child.pid) or child.status() == "zombie",
                10,
                "the engine it left was ended",
            )
            async with httpx.AsyncClient(base_url=url, timeout=60) as c:
                answers: list[str] = []
                r = await c.post("/v1/chat/completions", json=chat("model-a"))
                while r.status_code == 503 and len(answers) < 20:  # within the restart backoff
                    answers.append(r.text)
                    await asyncio.sleep(float(r.headers.get("retry-after", "1")))  # as it says
                    r = await c.post("/v1/chat/completions", json=chat("model-a"))
                assert r.status_code == 200, (answers, r.text)  # restarted, under a reaper
            restarted = model_of(await ready(url, 30), "model-a")["process"]
            assert restarted["adopted"] is False
            assert restarted["restarts"] == 1


def by_hand_in(argv: list[str], cwd: Path) -> subprocess.Popen[bytes]:
    """An emulator started like an operator would by hand (its own session: killed by group)."""
    env = {**os.environ, "VLLM_SERVER_DEV_MODE": "1"}  # as docs/deploy.md says to
    return subprocess.Popen(argv, start_new_session=True, cwd=cwd, env=env)


async def ready_backend(url: str) -> None:
    """Poll the emulator's /health (a condition with a deadline) until it answers."""
    async with httpx.AsyncClient(base_url=url, timeout=2) as c:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if (await c.get("/health")).status_code == 200:
                    return
            await asyncio.sleep(0.05)
    raise AssertionError(f"{url} never came up")


class Draining:
    """Free memory that rises by 2 GiB per read three times, then holds (a driver freeing)."""

    def __init__(self) -> None:
        self.reads = 0

    def free_gib(self) -> float | None:
        self.reads += 1
        return 10.0 + 2.0 * min(self.reads, 4)


async def test_the_release_wait_waits_for_the_pids_then_for_free_memory_to_settle() -> None:
    child = await sleeper()
    memory = Draining()
    waiting = asyncio.create_task(
        wait_released("m", {child.pid}, memory, SystemClock(), settle_s=0.01, limit_s=30)
    )
    await asyncio.sleep(0.3)  # a real process: give the wait time to (wrongly) end
    assert not waiting.done(), "its process still runs"
    assert memory.reads == 0
    child.kill()
    await child.wait()
    _, released = await asyncio.wait_for(waiting, 10)
    assert released is True
    assert memory.reads == 5, "read until two reads in a row were within 0.25 GiB"


async def test_the_release_wait_is_bounded() -> None:
    child = await sleeper()
    try:
        took, released = await wait_released(
            "m", {child.pid}, None, SystemClock(), settle_s=0, limit_s=0.2
        )
        assert 0.2 <= took < 5
        assert released is False, "the wait gave up: the caller must not be told it is released"
        assert child.returncode is None
    finally:
        child.kill()
        await child.wait()


async def sleeper(*, new_session: bool = False) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import time; time.sleep(60)", start_new_session=new_session
    )


async def test_a_reused_group_id_is_not_a_previous_proxys_group() -> None:
    """A record names group G and when its leader started: a new process that got G as its
    pid (the old group all gone) and leads a group of its own is not that group."""
    proc = await sleeper(new_session=True)
    try:
        started = psutil.Process(proc.pid).create_time()
        assert group_members(proc.pid, started) == {proc.pid}
        assert group_members(proc.pid, started - 100) == set(), "its leader started later"
    finally:
        proc.kill()
        await proc.wait()


async def test_a_second_proxy_on_the_same_backends_is_refused_them(tmp_path: Path) -> None:
    """Two proxies must not share backends (whichever stops first would kill them): a proxy
    that finds the record of a live one leaves the model FAILED, naming it."""
    path = write_config(tmp_path, [supervised("model-a", tmp_path)])
    with launched(["serve", "--config", str(path)], "vllm-switch listening on") as (first, url):
        group = model_of(await ready(url, 30), "model-a")["process"]["pid"]
        with launched(["serve", "--config", str(path)], "vllm-switch listening on") as (_, url2):
            async with httpx.AsyncClient(base_url=url2, timeout=30) as c, asyncio.timeout(30):
                status = (await c.get("/admin/status")).json()
                while model_of(status, "model-a")["state"] == "unknown":
                    await asyncio.sleep(0.05)  # poll until its start-up decided
                    status = (await c.get("/admin/status")).json()
            a = model_of(status, "model-a")
            assert a["state"] == "failed"
            assert f"another vllm-switch (pid {first.pid})" in a["failure"]
        assert group_alive(group), "the first proxy's backend is untouched"
