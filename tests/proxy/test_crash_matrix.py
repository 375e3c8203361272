"""The faults matrix of issue 17: the proxy itself dies, or loses its working directory, at a bad
moment - mid-stream, mid-switch, mid level-2 wake - and what the proxy started again does; a
backend that ignores SIGTERM at shutdown and at an operator's restart.

Each test runs `vllm-switch serve` as its own process (tests/helpers/serve_process.py) over
supervised emulators on one fake 80 GiB GPU that fits one model awake. A moment is reached by
an emulator that is slow at exactly that step and by polling /admin/status (and the emulator's
own /_emulator/stats) until the step is under way - never by sleeping. "Gone" is read from
/proc per process group (each backend's PID, from /admin/status, is its group's). Every group
seen is SIGKILLed at teardown if a test left it alive.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import stat
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from proxy.emulator.launcher import emulate_command
from tests.helpers.bodies import chat
from tests.helpers.fleet import GPU, MECHANICS, emulator_args
from tests.helpers.processes import free_port
from tests.helpers.serve_process import BackendGroups, ServeProcess, group_alive, poll, serving
from tests.proxy.test_supervision import ledger, supervised

pytestmark = pytest.mark.process

STUBBORN = Path(__file__).resolve().parents[1] / "helpers" / "stubborn_emulator.py"
GONE_WITHIN_S = 3  # every backend after the proxy's death (issue 17)
SLOW_S = 4  # the one slow emulator step a test kills the proxy in


@pytest.fixture
def groups() -> Iterator[BackendGroups]:
    seen = BackendGroups()
    yield seen
    seen.kill_leftovers()


def write_config(path: Path, tmp: Path, *models: dict[str, Any]) -> Path:
    """A config of `models` on the fake GPU; the proxy's records of its backends in tmp/."""
    top = {"host": "127.0.0.1", "port": 0, "runtime_dir": str(tmp / "runtime")}
    gpus = [{"name": GPU, "scheduling": MECHANICS}]
    path.write_text(yaml.safe_dump({**top, "gpus": gpus, "models": list(models)}))
    return path


def slow(model: dict[str, Any], *emulator_flags: str) -> dict[str, Any]:
    return {**model, "command": [*model["command"], *emulator_flags]}


async def answer(c: httpx.AsyncClient, name: str, **extra: Any) -> str:
    r = await c.post("/v1/chat/completions", json=chat(name, **extra))
    assert r.status_code == 200, r.text
    content: str = r.json()["choices"][0]["message"]["content"]
    return content


async def backends_gone(groups: BackendGroups) -> float:
    async def gone() -> bool:
        return not groups.alive()

    return await poll(gone, GONE_WITHIN_S, "every backend gone after the proxy's death")


async def a_new_proxy_serves(config: Path, groups: BackendGroups, order: Sequence[str]) -> None:
    """The same config started again: ready, and each model of `order` answers in turn, all
    within 60 s."""
    t0 = time.monotonic()
    with serving(config, groups) as again:
        await again.ready(60)
        async with httpx.AsyncClient(base_url=again.url, timeout=30) as c:
            for name in order:
                await answer(c, name)
    assert time.monotonic() - t0 < 60


async def under_way(proxy: ServeProcess, phase: str, states: dict[str, str]) -> None:
    """Poll until the GPU group is in `phase` with these model states (the step under way)."""

    async def seen() -> bool:
        status = await proxy.status()
        models = {m["name"]: m["state"] for m in status["models"]}
        return status["gpus"][0]["phase"] == phase and all(
            models[name] == state for name, state in states.items()
        )

    await poll(seen, 20, f"the group in phase {phase} with {states}")


async def data_lines(lines: AsyncIterator[str], count: int) -> list[str]:
    got: list[str] = []
    async for line in lines:
        if line.startswith("data: "):
            got.append(line)
            if len(got) == count:
                break
    return got


LONG_STREAM = chat("model-b", 400, stream=True, ignore_eos=True)


async def test_a_proxy_killed_mid_stream_drops_the_stream_and_leaves_no_backend(
    tmp_path: Path, groups: BackendGroups
) -> None:
    a = supervised("model-a", tmp_path)
    b = slow(supervised("model-b", tmp_path), "--emu-itl-s", "0.05")  # 400 tokens: 20 s
    config = write_config(tmp_path / "config.yaml", tmp_path, a, b)
    with serving(config, groups) as proxy:
        await proxy.ready()
        async with (
            httpx.AsyncClient(base_url=proxy.url, timeout=10) as c,
            c.stream("POST", "/v1/chat/completions", json=LONG_STREAM) as r,
        ):
            assert r.status_code == 200
            lines = r.aiter_lines()
            got = await data_lines(lines, 3)
            await proxy.status()  # the groups as they are now
            proxy.kill()
            with pytest.raises(httpx.TransportError):  # the connection dropped mid-body
                async with asyncio.timeout(5):
                    got += [line async for line in lines]
    assert len(got) >= 3
    assert "data: [DONE]" not in got, "a dead proxy's stream must not look complete"
    await backends_gone(groups)
    await a_new_proxy_serves(config, groups, ["model-b", "model-a"])
    assert ledger(tmp_path)["oom_events"] == 0


@pytest.mark.parametrize("step", ["sleeping", "waking"])
async def test_a_proxy_killed_mid_switch_leaves_no_backend_and_a_new_one_serves_both(
    tmp_path: Path, groups: BackendGroups, step: str
) -> None:
    """model-a is resident, a request for model-b switches: the proxy dies while model-a's
    /sleep runs (its second sleep: the first, at start-up, is instant) or while model-b's
    /wake_up runs."""
    a, b = supervised("model-a", tmp_path), supervised("model-b", tmp_path)
    if step == "sleeping":
        a = slow(a, "--emu-sleep-l1-s", str(SLOW_S))
    else:
        b = slow(b, "--emu-wake-weights-l1-s", str(SLOW_S))
    config = write_config(tmp_path / "config.yaml", tmp_path, a, b)
    with serving(config, groups) as proxy:
        await proxy.ready()
        async with httpx.AsyncClient(base_url=proxy.url, timeout=30) as c:
            await answer(c, "model-a")  # model-b sleeps (instant), model-a wakes: resident
            switch = asyncio.create_task(c.post("/v1/chat/completions", json=chat("model-b")))
            if step == "sleeping":
                await under_way(proxy, "sleeping", {"model-a": "sleeping", "model-b": "asleep"})
            else:
                await under_way(proxy, "waking", {"model-a": "asleep", "model-b": "waking"})
            proxy.kill()
            with pytest.raises(httpx.TransportError):  # no answer: the connection dropped
                await switch
    await backends_gone(groups)
    await a_new_proxy_serves(config, groups, ["model-b", "model-a"])  # slow steps not needed
    assert ledger(tmp_path)["oom_events"] == 0


async def test_a_proxy_killed_mid_level2_wake_and_the_new_one_serves_valid_weights(
    tmp_path: Path, groups: BackendGroups
) -> None:
    """model-b sleeps at level 2 (weights discarded); the proxy dies in its staged wake, while
    reload_weights runs. The proxy started again serves model-b after a level-2 sleep and
    staged wake of its own, with the text of valid weights (a wake without the reload would
    answer "!!!!")."""
    a = supervised("model-a", tmp_path)
    b = slow(supervised("model-b", tmp_path, sleep_level=2), "--emu-reload-s", "2")
    config = write_config(tmp_path / "config.yaml", tmp_path, a, b)
    prompt = {"temperature": 0, "seed": 7}
    with serving(config, groups) as proxy:
        await proxy.ready()
        async with httpx.AsyncClient(base_url=proxy.url, timeout=30) as c:
            valid = await answer(c, "model-b", **prompt)  # awake since start-up
            await answer(c, "model-a")  # model-b sleeps at level 2
            wake = asyncio.create_task(c.post("/v1/chat/completions", json=chat("model-b")))
            await under_way(proxy, "waking", {"model-a": "asleep", "model-b": "waking"})

            async def reloading() -> bool:  # weights mapped again, still invalid: reload runs
                engine = (await c.get(f"{b['url']}/_emulator/stats")).json()["state"]
                return bool(engine["sleeping_tags"] == ["kv_cache"] and not engine["weights_valid"])

            await poll(reloading, 10, "model-b's reload_weights under way")
            proxy.kill()
            with pytest.raises(httpx.TransportError):
                await wake
    await backends_gone(groups)
    assert set(valid) != {"!"}
    with serving(config, groups) as again:
        await again.ready(60)
        async with httpx.AsyncClient(base_url=again.url, timeout=30) as c:
            await answer(c, "model-a")  # model-b sleeps at level 2 again
            assert await answer(c, "model-b", **prompt) == valid
            stats = (await c.get(f"{b['url']}/_emulator/stats")).json()["stats"]
    assert stats["sleeps_level_2"] == 1
    assert stats["reloads"] == 1, "served after a level-2 sleep: only a reload makes it valid"
    assert ledger(tmp_path)["oom_events"] == 0


# --- the working directory pulled away under a running proxy ---------------------------------


def deploy(app: Path, tmp: Path, ports: dict[str, int], *, relative_logs: bool = False) -> None:
    """What a user deploys into `app`: the config and a start script, named relatively (the
    default cwd of a backend is the config file's directory); logs in tmp/, or in logs/."""
    app.mkdir()
    script = app / "serve-model.sh"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m proxy emulate "$@"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    models = []
    for name, port in ports.items():
        models.append(
            {
                "name": name,
                "url": f"http://127.0.0.1:{port}",
                "gpu": GPU,
                "command": [
                    "./serve-model.sh",
                    *emulator_args(name, tmp / "ledger", port=port, startup_s=0.3),
                ],
                "log_file": f"logs/{name}.log" if relative_logs else str(tmp / f"{name}.log"),
                "restart": {"backoff_s": 0},
            }
        )
    write_config(app / "config.yaml", tmp, *models)


def cwd_of(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/cwd")


async def crash_and_serve(proxy: ServeProcess, c: httpx.AsyncClient, name: str) -> int:
    """SIGKILL a backend's process group (by the PID /admin/status gave), wait until the proxy
    saw it, then a request restarts it. The new PID."""
    old = (await proxy.model(name))["process"]["pid"]
    os.killpg(old, signal.SIGKILL)

    async def seen() -> bool:
        state: str = (await proxy.model(name))["state"]
        return state == "failed"

    await poll(seen, 10, f"the proxy saw {name} crash")
    await answer(c, name)
    new: int = (await proxy.model(name))["process"]["pid"]
    assert new != old
    return new


async def test_a_redeploy_under_a_running_proxy_restarts_backends_in_the_new_directory(
    tmp_path: Path, groups: BackendGroups
) -> None:
    """The proxy runs in app/ with a relative config and start script; app/ is renamed away,
    removed and deployed again. A crashed backend and one an operator restarts both start in
    the new app/ (by path), not in the proxy's deleted working directory."""
    app = tmp_path / "app"
    ports = {"model-a": free_port(), "model-b": free_port()}
    deploy(app, tmp_path, ports)
    with serving(Path("config.yaml"), groups, cwd=app) as proxy:
        await proxy.ready()
        app.rename(tmp_path / "app.old")
        shutil.rmtree(tmp_path / "app.old")
        deploy(app, tmp_path, ports)
        assert cwd_of(proxy.pid).endswith("(deleted)")
        async with httpx.AsyncClient(base_url=proxy.url, timeout=30) as c:
            crashed = await crash_and_serve(proxy, c, "model-b")
            r = await c.post("/admin/models/model-a/restart")
            assert r.status_code == 200, r.text
            restarted = (await proxy.model("model-a"))["process"]["pid"]
            await answer(c, "model-a")
            for pid in (crashed, restarted):
                assert {cwd_of(p) for p in group_alive(pid)} == {str(app)}
    assert ledger(tmp_path)["oom_events"] == 0


async def test_a_removed_working_directory_fails_the_restart_naming_it(
    tmp_path: Path, groups: BackendGroups
) -> None:
    """app/ removed for good: the restart of a backend fails at once with an error naming the
    directory - in the answer, in /admin/status and in the log - and the other model, whose
    process still runs, serves."""
    app = tmp_path / "app"
    deploy(app, tmp_path, {"model-a": free_port(), "model-b": free_port()})
    with serving(Path("config.yaml"), groups, cwd=app) as proxy:
        await proxy.ready()
        shutil.rmtree(app)
        missing = f"working directory {app} does not exist"
        async with httpx.AsyncClient(base_url=proxy.url, timeout=30) as c:
            r = await c.post("/admin/models/model-b/restart")
            assert r.status_code == 503, r.text
            assert missing in r.json()["error"]["message"]
            again = await c.post("/v1/chat/completions", json=chat("model-b"))
            assert again.status_code == 503
            assert missing in again.json()["error"]["message"]
            await answer(c, "model-a")
        b = await proxy.model("model-b")
        assert b["state"] == "failed"
        assert missing in b["failure"]

        async def logged() -> bool:
            return missing in proxy.output()

        await poll(logged, 5, "the log names the missing directory")


async def test_a_relative_log_file_follows_the_config_directory_after_a_redeploy(
    tmp_path: Path, groups: BackendGroups
) -> None:
    app = tmp_path / "app"
    ports = {"model-a": free_port(), "model-b": free_port()}
    deploy(app, tmp_path, ports, relative_logs=True)
    with serving(Path("config.yaml"), groups, cwd=app) as proxy:
        await proxy.ready()
        app.rename(tmp_path / "app.old")
        shutil.rmtree(tmp_path / "app.old")
        deploy(app, tmp_path, ports, relative_logs=True)
        async with httpx.AsyncClient(base_url=proxy.url, timeout=30) as c:
            await crash_and_serve(proxy, c, "model-b")
        lines = (await proxy.model("model-b"))["process"]["last_lines"]
        assert any("Starting vLLM server" in line for line in lines), lines
        assert "Starting vLLM server" in (app / "logs" / "model-b.log").read_text()


# --- a backend that ignores SIGTERM ------------------------------------------------------------

GRACE_S = 1.0
MARGIN_S = 5.0  # a 2-core machine shared with other tests


def with_a_stubborn_backend(tmp: Path) -> Path:
    """model-a, and model-b an emulator that ignores SIGTERM (tests/helpers/stubborn_emulator.py)."""
    b = supervised("model-b", tmp, stop_grace_s=GRACE_S)
    plain = emulate_command([])
    assert b["command"][: len(plain)] == plain
    b["command"] = [sys.executable, str(STUBBORN), *b["command"][len(plain) :]]
    return write_config(tmp / "config.yaml", tmp, supervised("model-a", tmp), b)


async def test_shutdown_kills_a_backend_that_ignores_sigterm_after_its_grace(
    tmp_path: Path, groups: BackendGroups
) -> None:
    config = with_a_stubborn_backend(tmp_path)
    with serving(config, groups) as proxy:
        await proxy.ready()
        pid = (await proxy.model("model-b"))["process"]["pid"]
        t0 = time.monotonic()
        os.kill(proxy.pid, signal.SIGTERM)
        code = proxy.proc.wait(timeout=GRACE_S + MARGIN_S)
        took = time.monotonic() - t0
    assert code == 0
    assert not group_alive(pid)
    assert took >= GRACE_S, "it ignored SIGTERM: only the SIGKILL after the grace ended it"


async def test_the_shutdown_log_says_a_backend_that_ignored_sigterm_was_killed(
    tmp_path: Path, groups: BackendGroups
) -> None:
    config = with_a_stubborn_backend(tmp_path)
    with serving(config, groups) as proxy:
        await proxy.ready()
        os.kill(proxy.pid, signal.SIGTERM)
        proxy.proc.wait(timeout=GRACE_S + MARGIN_S)
    stopped = re.search(r"stopped model-b \(exit (-?\d+)\)", proxy.output())
    assert stopped is not None, proxy.output()
    assert int(stopped[1]) in (-signal.SIGKILL, 128 + signal.SIGKILL)


async def test_an_operator_restart_kills_a_backend_that_ignores_sigterm_after_its_grace(
    tmp_path: Path, groups: BackendGroups
) -> None:
    config = with_a_stubborn_backend(tmp_path)
    with serving(config, groups) as proxy:
        await proxy.ready()
        old = (await proxy.model("model-b"))["process"]["pid"]
        async with httpx.AsyncClient(base_url=proxy.url, timeout=30) as c:
            t0 = time.monotonic()
            r = await c.post("/admin/models/model-b/restart")
            took = time.monotonic() - t0
            assert r.status_code == 200, r.text
            assert not group_alive(old)
            new = (await proxy.model("model-b"))["process"]["pid"]
            assert new != old
            await answer(c, "model-b")
    assert GRACE_S <= took <= GRACE_S + MARGIN_S
    assert ledger(tmp_path)["oom_events"] == 0
