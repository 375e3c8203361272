"""Supervised backends on FakeProcesses: lazy start, crashes, restarts with backoff, crash
loops, kills of engines that cannot be trusted, shutdown."""

from __future__ import annotations

import asyncio

import pytest

from proxy.backends import BackendState
from proxy.errors import BackendUnavailableError
from tests.unit.rig import Rig, build_config, rig, settle, supervised, until

pytestmark = pytest.mark.looptime
TWO = build_config(supervised("model-a"), supervised("model-b"))  # bootstrap leaves model-b READY


async def crash(r: Rig, name: str, code: int = -9) -> None:
    """The process dies on its own; the exit watcher sees it."""
    r.process(name).crash(code)
    await until(lambda: r.state(name) == "failed")


async def test_bootstrap_leaves_the_last_one_awake() -> None:
    async with rig(TWO) as r:
        assert r.states() == {"model-a": "asleep", "model-b": "ready"}
        assert [p.starts for p in r.processes.values()] == [1, 1]
        assert r.supervisor.restarts("model-a") == 0


async def test_a_lazy_backend_starts_on_its_first_request() -> None:
    config = build_config(supervised("model-a"), supervised("model-b", start="lazy"))
    async with rig(config, boot_s=3) as r:
        b = r.process("model-b")
        assert r.states() == {"model-a": "ready", "model-b": "stopped"}
        assert (b.starts, b.pid) == (0, None)
        assert r.backend("model-b").holds_memory is False
        timings = await r.served("model-b")
        assert r.states() == {"model-a": "asleep", "model-b": "ready"}
        assert 3000 <= timings.wake_ms <= 3250, "the start (to /health) is reported as the wake"
        assert b.starts == 1
        assert r.vllm.log() == [
            "model-a: POST /sleep?level=1&mode=wait",
            "model-a: GET /is_sleeping",
            "model-b: START",
            "model-b: POST /v1/completions",
        ]


async def test_a_crash_fails_the_backend_with_its_memory_free() -> None:
    async with rig(TWO) as r:
        await crash(r, "model-b", 137)
        b = r.backend("model-b")
        assert (b.state, b.holds_memory, b.failure) == (
            BackendState.FAILED,
            False,
            "process exited with 137",
        )
        assert r.supervisor.restart_wait(b) == 2.0  # restart.backoff_s
        with pytest.raises(BackendUnavailableError) as refused:
            await r.lease("model-b")
        assert "restarting it in 2s" in refused.value.message
        assert refused.value.retry_after_s == 2.0
        await r.served("model-a")  # a dead process holds no memory: the GPU stays usable


async def test_a_crashed_backend_is_restarted_by_a_request_after_its_backoff() -> None:
    async with rig(TWO) as r:
        b = r.process("model-b")
        old_pid = b.pid
        await crash(r, "model-b")
        r.forget()
        await asyncio.sleep(2)
        assert r.supervisor.restart_wait(r.backend("model-b")) == 0
        await r.served("model-b")
        assert r.state("model-b") == "ready"
        assert (b.starts, b.running) == (2, True)
        assert b.pid != old_pid
        assert r.supervisor.restarts("model-b") == 1
        assert r.vllm.log() == ["model-b: START", "model-b: POST /v1/completions"], "not woken"
    assert r.counter("vllm_switch_restarts_total", model="model-b") == 1


async def test_the_backoff_doubles_per_crash_up_to_its_maximum() -> None:
    config = build_config(
        supervised("model-a"),
        supervised("model-b", restart={"backoff_s": 2, "max_backoff_s": 10, "max_restarts": 5}),
    )
    waits = []
    async with rig(config) as r:
        for _ in range(4):
            await crash(r, "model-b")
            wait = r.supervisor.restart_wait(r.backend("model-b"))
            assert wait is not None
            waits.append(wait)
            await asyncio.sleep(wait)
            await r.served("model-b")
    assert waits == [2, 4, 8, 10]


async def test_a_request_queued_behind_a_switch_respects_a_crash_that_came_meanwhile() -> None:
    config = build_config(supervised("model-a"), supervised("model-b"), supervised("model-c"))
    async with rig(config) as r:
        gate = r.server("model-b").hold("POST", "/wake_up")
        to_b = r.request("model-b")
        await gate.reached()
        to_a = r.request("model-a")  # waits for the group's lock behind the switch to model-b
        await until(lambda: r.switcher.waiting["model-a"] == 1)
        await crash(r, "model-a")  # its (sleeping) process dies meanwhile
        gate.open()
        lease, _ = await to_b
        lease.release()
        with pytest.raises(BackendUnavailableError, match="restarting it in 2s"):
            await to_a
        assert r.process("model-a").starts == 1, "no restart before its backoff"


async def test_a_crash_loop_leaves_the_backend_failed_and_says_it_needs_a_restart() -> None:
    config = build_config(
        supervised("model-a"), supervised("model-b", restart={"max_restarts": 2, "backoff_s": 0})
    )
    async with rig(config) as r:
        for _ in range(2):
            await crash(r, "model-b")
            await r.served("model-b")
        await crash(r, "model-b")
        assert r.supervisor.restart_wait(r.backend("model-b")) is None
        with pytest.raises(
            BackendUnavailableError,
            match="process exited with -9; POST /admin/models/model-b/restart starts it again",
        ):
            await r.lease("model-b")
        assert r.process("model-b").starts == 3
        await r.served("model-a")  # a dead process holds no memory: the group is not blocked


async def test_a_crash_loop_is_not_forgiven_when_its_window_passes() -> None:
    config = build_config(
        supervised("model-a"),
        supervised("model-b", restart={"max_restarts": 1, "backoff_s": 0, "window_s": 600}),
    )
    async with rig(config) as r:
        await crash(r, "model-b")
        await r.served("model-b")
        await crash(r, "model-b")
        assert r.supervisor.restart_wait(r.backend("model-b")) is None
        await asyncio.sleep(601)
        assert r.supervisor.restart_wait(r.backend("model-b")) is None, "FAILED for good"


async def test_a_failed_wake_kills_the_process_and_brings_the_victim_back() -> None:
    async with rig(TWO) as r:
        a = r.process("model-a")
        r.server("model-a").wake_oom()
        with pytest.raises(BackendUnavailableError, match="out of memory"):
            await r.lease("model-a")
        assert (a.kills, a.running) == (1, False), "only a dead process surely frees its memory"
        assert (r.state("model-a"), r.backend("model-a").holds_memory) == ("failed", False)
        assert r.state("model-b") == "ready", "woken back before the 503 went out"
        served = r.switcher.lease_now("model-b")
        assert served is not None
        served[0].release()
        # the kill is not a crash: the next request starts a fresh process at once
        assert r.supervisor.restart_wait(r.backend("model-a")) == 0
        r.forget()
        await r.served("model-a")
        assert a.starts == 2
        assert "model-a: START" in r.vllm.log()
    assert r.switches("model-a", "model-b", "restored") == 1


async def test_a_hung_sleep_of_a_supervised_victim_kills_it_and_the_gpu_recovers() -> None:
    config = build_config(
        supervised("model-a"), supervised("model-b", timeouts={"sleep_s": 5, "control_s": 1})
    )
    async with rig(config) as r:
        r.server("model-b").hold("POST", "/sleep")
        with pytest.raises(BackendUnavailableError, match="timed out after 5s"):
            await r.lease("model-a")
        b = r.backend("model-b")
        assert (b.state, b.holds_memory, r.process("model-b").running) == (
            BackendState.FAILED,
            False,
            False,
        )
        await r.served("model-a")
        assert r.states() == {"model-a": "ready", "model-b": "failed"}


async def test_a_backend_that_exits_while_starting_fails_with_its_output() -> None:
    config = build_config(supervised("model-a"), supervised("model-b", start="lazy"))
    async with rig(config) as r:
        r.process("model-b").exit_on_start = 3
        with pytest.raises(BackendUnavailableError, match="could not start 'model-b'"):
            await r.lease("model-b")
        b = r.backend("model-b")
        assert b.failure is not None
        assert "process exited with 3 while starting" in b.failure
        assert "boom: no such model" in b.failure
        assert (b.state, b.holds_memory) == (BackendState.FAILED, False)
        assert r.state("model-a") == "ready", "model-a, slept for it, was woken back"


async def test_a_command_that_cannot_be_spawned_fails_the_backend_without_blocking() -> None:
    """A former bug, fixed: create_subprocess_exec raises (no such file): nothing was started, but
    _abandon_start still kills it, and the kill waits on a process that never existed
    (ManagedProcess.wait asserts): an AssertionError escapes the switch instead of the 503, and
    the backend stays FAILED holding (imaginary) memory, blocking its GPU group."""
    config = build_config(supervised("model-a"), supervised("model-b", start="lazy"))
    async with rig(config) as r:
        r.process("model-b").start_raises = FileNotFoundError(2, "No such file or directory")
        with pytest.raises(BackendUnavailableError, match="could not start 'model-b'"):
            await r.lease("model-b")
        assert (r.state("model-b"), r.backend("model-b").holds_memory) == ("failed", False)
        await r.served("model-a")


async def test_a_crash_while_starting_counts_as_a_crash() -> None:
    config = build_config(supervised("model-a"), supervised("model-b", start="lazy"))
    async with rig(config, boot_s=10) as r:
        request = r.request("model-b")
        await until(lambda: r.state("model-b") == "starting")
        await asyncio.sleep(5.1)  # between two /health polls
        r.process("model-b").crash(1)
        with pytest.raises(BackendUnavailableError, match="exited with 1 while starting"):
            await request
        wait = r.supervisor.restart_wait(r.backend("model-b"))
        assert wait is not None
        assert 1.5 < wait < 2.0, "its backoff runs from the crash (seen at the next poll)"


async def test_a_process_that_exits_at_once_counts_as_a_crash() -> None:
    """A former bug (race), fixed: the start sees the process gone and gives up; _abandon_start then kills it,
    and kill() sets `stopping` before the exit watcher resumes and reads it: the exit is taken
    for our own kill, not counted as a crash - no backoff, and it never reaches max_restarts."""
    config = build_config(supervised("model-a"), supervised("model-b", start="lazy"))
    async with rig(config) as r:
        r.process("model-b").exit_on_start = 3
        with pytest.raises(BackendUnavailableError):
            await r.lease("model-b")
        assert r.supervisor.restart_wait(r.backend("model-b")) == 2.0


async def test_a_backend_that_never_answers_health_is_killed_after_start_s() -> None:
    config = build_config(
        supervised("model-a"), supervised("model-b", start="lazy", timeouts={"start_s": 5})
    )
    async with rig(config) as r:
        r.process("model-b").boot_s = 1e9
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(BackendUnavailableError, match=r"start failed: timed out after 5s"):
            await r.lease("model-b")
        assert loop.time() - t0 == 5
        assert (r.process("model-b").kills, r.backend("model-b").holds_memory) == (1, False)
    assert r.counter("vllm_switch_wake_failures_total", model="model-b", reason="timeout") == 1


async def test_a_crash_mid_wake_fails_the_switch_and_brings_the_victim_back() -> None:
    """The exit watcher (no group lock) and the switch (under it) both see the death."""
    async with rig(TWO) as r:
        gate = r.server("model-a").hold("POST", "/wake_up")
        waiters = [r.request("model-a") for _ in range(3)]
        await gate.reached()
        r.process("model-a").crash(-11)
        for result in await asyncio.gather(*waiters, return_exceptions=True):
            assert isinstance(result, BackendUnavailableError)
            assert "could not wake 'model-a'" in result.message
        a = r.backend("model-a")
        assert (a.state, a.holds_memory) == (BackendState.FAILED, False)
        assert r.state("model-b") == "ready"


async def test_a_crash_mid_wake_counts_as_a_crash() -> None:
    """A former bug (race) as above, fixed: the failed wake's kill() of the already dead process sets
    `stopping` before the exit watcher resumes, so the crash is not counted: no backoff."""
    async with rig(TWO) as r:
        gate = r.server("model-a").hold("POST", "/wake_up")
        request = r.request("model-a")
        await gate.reached()
        r.process("model-a").crash(-11)
        with pytest.raises(BackendUnavailableError):
            await request
        assert r.supervisor.restart_wait(r.backend("model-a")) == 2.0


async def test_a_victim_that_crashes_mid_drain_does_not_fail_the_switch() -> None:
    """A former bug, fixed: the exit watcher marks the draining victim FAILED with its memory free; once the
    drain ends, put_to_sleep still sleeps it - an illegal FAILED -> SLEEPING, caught as a
    failed sleep - kills it again and answers 503, though the target could simply wake."""
    async with rig(TWO) as r:
        stream, _ = await r.lease("model-b")
        a = r.request("model-a")
        await until(lambda: r.backend("model-b").draining)
        await crash(r, "model-b")
        stream.release()  # its request ended with the process
        await a
        assert r.states() == {"model-a": "ready", "model-b": "failed"}


async def test_a_crash_with_requests_in_flight_leaves_the_counts_right() -> None:
    async with rig(TWO) as r:
        leases = [(await r.lease("model-b"))[0] for _ in range(3)]
        await crash(r, "model-b")
        for lease in leases:
            lease.release()
        assert r.backend("model-b").leases == 0
        await settle()
        await r.served("model-a")


async def test_shutdown_stops_every_process_and_marks_them_stopped() -> None:
    config = build_config(
        supervised("model-a"), supervised("model-b"), supervised("model-c", start="lazy")
    )
    async with rig(config) as r:
        await crash(r, "model-a")
        await r.supervisor.stop_all()
        assert r.states() == {"model-a": "stopped", "model-b": "stopped", "model-c": "stopped"}
        assert [p.running for p in r.processes.values()] == [False, False, False]
        assert r.process("model-c").starts == 0
        assert all(b.holds_memory is False for b in r.services.backends.values())


async def test_nothing_wakes_on_the_gpu_until_a_dead_members_memory_is_released(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """model-b (resident) dies; model-a's request must not wake it next to memory the dead
    process still holds: the wake waits for the release (here: until its pid is gone), and
    the crash is reported at once all the same (FAILED, its backoff running)."""
    running = {4242}  # the dead backend's worker, still exiting
    monkeypatch.setattr("proxy.backends.release._alive", lambda pids: sorted(set(pids) & running))
    async with rig(TWO) as r:
        r.process("model-b").release_pids = {4242}
        await crash(r, "model-b")
        assert r.supervisor.restart_wait(r.backend("model-b")) == 2.0, "accounted at once"
        serving = asyncio.create_task(r.served("model-a"))
        await settle()
        assert not serving.done()
        assert "model-a: POST /wake_up" not in r.vllm.log(), "no wake next to freeing memory"
        running.clear()
        await serving
        assert "model-a: POST /wake_up" in r.vllm.log()
