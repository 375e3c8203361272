"""A switch that fails: every waiter gets the 503, the backend that failed is FAILED with an
honest `holds_memory`, a group that may hold leaked memory is blocked, victims come back when
there is room, and a failed (unsupervised) backend is never woken again."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from proxy.backends import BackendState
from proxy.errors import BackendUnavailableError
from tests.unit.fake_vllm import FakeServer
from tests.unit.rig import TWO_GROUPS, build_config, rig

pytestmark = pytest.mark.looptime
AB = build_config("model-a", "model-b")


async def test_a_failed_wake_reaches_every_waiter_and_is_never_retried() -> None:
    async with rig(AB) as r:
        a = r.backend("model-a")
        r.server("model-a").wake_oom()
        first = await asyncio.gather(
            *(r.lease("model-a") for _ in range(5)), return_exceptions=True
        )
        for error in first:
            assert isinstance(error, BackendUnavailableError)
            assert (error.status_code, error.retry_after_s) == (503, 5)
            assert "could not wake 'model-a'" in error.message
            assert "out of memory" in error.message
        assert (a.state, a.holds_memory) == (BackendState.FAILED, True)
        assert a.failure is not None
        assert "out of memory" in a.failure
        for _ in range(3):
            with pytest.raises(
                BackendUnavailableError, match="then POST /admin/models/model-a/reset"
            ):
                await r.lease("model-a")
            await asyncio.sleep(3600)
    assert r.server("model-a").count("POST /wake_up") == 1, "a failed instance is never woken again"
    assert r.counter("vllm_switch_wake_failures_total", model="model-a", reason="oom") == 1


async def test_a_failed_wake_blocks_its_gpu_group_naming_the_failed_model() -> None:
    """vLLM 0.26 does not roll a failed wake back: it may hold memory, so nothing else may wake
    next to it - not even the victim slept for it."""
    async with rig(AB) as r:
        r.server("model-a").wake_oom()
        with pytest.raises(BackendUnavailableError):
            await r.lease("model-a")
        assert r.states() == {"model-a": "failed", "model-b": "asleep"}
        with pytest.raises(BackendUnavailableError) as blocked:
            await r.lease("model-b")
        assert blocked.value.status_code == 503
        assert blocked.value.message == (
            "GPU group 'g0' is blocked: model-a failed and may still hold GPU memory; POST "
            "/admin/models/NAME/restart (supervised) or fix its engine and POST "
            "/admin/models/NAME/reset"
        )
    assert r.server("model-b").count("POST /wake_up") == 0


async def test_a_failure_in_one_gpu_group_leaves_the_other_alone() -> None:
    async with rig(TWO_GROUPS, awake={"model-b", "model-d"}) as r:
        r.server("model-a").wake_oom()
        with pytest.raises(BackendUnavailableError):
            await r.lease("model-a")
        await r.served("model-c")
        await r.served("model-d")
        assert r.states()["model-c"] == "asleep"


async def test_a_failed_warm_up_sleeps_the_model_and_brings_the_victim_back() -> None:
    """The wake worked but the warm-up did not: the model is put back to sleep (best effort),
    so its memory is free, and model-b - slept for it - is woken back before the 503 goes out."""
    async with rig(AB) as r:
        r.server("model-a").fail("POST", "/v1/completions", "boom")
        with pytest.raises(
            BackendUnavailableError, match=r"could not warm up 'model-a' \(warm-up failed"
        ):
            await r.lease("model-a")
        a = r.backend("model-a")
        assert (a.state, a.holds_memory) == (BackendState.FAILED, False)
        assert r.state("model-b") == "ready"
        assert r.switcher.lease_now("model-b") is not None, "model-b's users see no switch"
    assert r.vllm.log() == [
        "model-b: POST /sleep?level=1&mode=wait",
        "model-b: GET /is_sleeping",
        "model-a: POST /wake_up",
        "model-a: GET /is_sleeping",
        "model-a: POST /v1/completions",
        "model-a: POST /sleep?level=1&mode=wait",
        "model-a: GET /is_sleeping",
        "model-b: POST /wake_up",
        "model-b: GET /is_sleeping",
        "model-b: POST /v1/completions",
    ]
    assert r.switches("model-a", "model-b", "restored") == 1
    assert r.counter("vllm_switch_wake_failures_total", model="model-a", reason="warmup") == 1


def _sleep_fails(server: FakeServer) -> None:
    server.fail("POST", "/sleep", "boom")


def _sleep_not_confirmed(server: FakeServer) -> None:
    server.lie_is_sleeping = False


def _sleep_hangs(server: FakeServer) -> None:
    server.hold("POST", "/sleep")


@pytest.mark.parametrize(
    "fault",
    [_sleep_fails, _sleep_not_confirmed, _sleep_hangs],
    ids=["sleep-fails", "sleep-not-confirmed", "sleep-hangs"],
)
async def test_a_failed_warm_up_that_cannot_sleep_holds_memory_and_blocks(
    fault: Callable[[FakeServer], None],
) -> None:
    config = build_config({"name": "model-a", "timeouts": {"sleep_s": 5}}, "model-b")
    async with rig(config) as r:
        r.check_leases = False
        r.server("model-a").fail("POST", "/v1/completions", "boom")
        fault(r.server("model-a"))
        with pytest.raises(BackendUnavailableError, match="warm-up failed"):
            await r.lease("model-a")
        a = r.backend("model-a")
        assert (a.state, a.holds_memory) == (BackendState.FAILED, True)
        assert r.state("model-b") == "asleep", "never woken next to memory in doubt"
        with pytest.raises(BackendUnavailableError, match="is blocked: model-a failed"):
            await r.lease("model-b")


async def test_a_hung_wake_times_out_after_wake_s() -> None:
    config = build_config({"name": "model-a", "timeouts": {"wake_s": 10}}, "model-b")
    async with rig(config) as r:
        loop = asyncio.get_running_loop()
        r.server("model-a").hold("POST", "/wake_up")
        with pytest.raises(BackendUnavailableError) as failed:
            await r.lease("model-a")
        assert loop.time() == 10
        assert failed.value.message == "could not wake 'model-a' (wake failed: timed out after 10s)"
        assert (r.state("model-a"), r.backend("model-a").holds_memory) == ("failed", True)
    assert r.counter("vllm_switch_wake_failures_total", model="model-a", reason="timeout") == 1


async def test_wake_s_bounds_the_wake_and_the_warm_up_together() -> None:
    config = build_config({"name": "model-a", "timeouts": {"wake_s": 10}}, "model-b")
    async with rig(config) as r:
        loop = asyncio.get_running_loop()
        wake = r.server("model-a").hold("POST", "/wake_up")
        r.server("model-a").hold("POST", "/v1/completions")  # never answers
        request = r.request("model-a")
        await wake.reached()
        await asyncio.sleep(4)
        wake.open()
        with pytest.raises(BackendUnavailableError, match=r"warm-up failed: timed out after 10s"):
            await request
        assert loop.time() == 10, "the warm-up had what the wake left of wake_s"
        assert r.backend("model-a").holds_memory is False, "then it was put back to sleep"


async def test_a_hung_sleep_of_the_victim_fails_it_and_nothing_wakes_next_to_it() -> None:
    config = build_config("model-a", {"name": "model-b", "timeouts": {"sleep_s": 5}})
    async with rig(config) as r:
        loop = asyncio.get_running_loop()
        r.server("model-b").hold("POST", "/sleep")
        with pytest.raises(BackendUnavailableError) as failed:
            await r.lease("model-a")
        assert loop.time() == 5
        assert (
            "could not put 'model-b' to sleep (sleep failed: timed out after 5s)"
            in failed.value.message
        )
        b = r.backend("model-b")
        assert (b.state, b.holds_memory) == (BackendState.FAILED, True)
        assert r.state("model-a") == "asleep"
        with pytest.raises(BackendUnavailableError, match="is blocked: model-b failed"):
            await r.lease("model-a")
    assert r.server("model-a").count("POST /wake_up") == 0, "never wake next to a backend in doubt"


async def test_a_sleep_that_answered_but_did_not_happen_fails_the_victim() -> None:
    async with rig(AB) as r:
        r.server("model-b").lie_is_sleeping = False
        with pytest.raises(BackendUnavailableError, match="/is_sleeping is false"):
            await r.lease("model-a")
        assert (r.state("model-b"), r.backend("model-b").holds_memory) == ("failed", True)
    assert r.server("model-a").count("POST /wake_up") == 0


async def test_a_victim_whose_sleep_failed_but_is_asleep_frees_the_group() -> None:
    """/sleep answered 500, yet /is_sleeping says it sleeps: FAILED, but holding no memory."""
    async with rig(AB) as r:
        r.server("model-b").fail("POST", "/sleep", "boom")
        r.server("model-b").lie_is_sleeping = True
        with pytest.raises(BackendUnavailableError, match="sleep failed"):
            await r.lease("model-a")
        assert (r.state("model-b"), r.backend("model-b").holds_memory) == ("failed", False)
        r.check_leases = False  # model-a's server is awake; model-b's lie is no concern here
        await r.served("model-a")
        assert r.state("model-a") == "ready"
