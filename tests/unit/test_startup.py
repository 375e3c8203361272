"""Start-up: reconciliation of attached backends (adopt, sleep extras, fail the unreachable),
the eager bootstrap of supervised ones (one at a time), and requests that come meanwhile."""

from __future__ import annotations

import asyncio

import pytest

from proxy.errors import BackendUnavailableError
from tests.unit.rig import build_config, rig, settle, supervised

pytestmark = pytest.mark.looptime
ABC = build_config("model-a", "model-b", "model-c")
ALL = {"model-a", "model-b", "model-c"}


async def test_awake_extras_beyond_max_awake_are_put_to_sleep() -> None:
    async with rig(ABC, awake=ALL, reconcile=False) as r:
        await r.start_up()
        assert r.states() == {"model-a": "ready", "model-b": "asleep", "model-c": "asleep"}
        assert r.switcher.groups()[0].reconciled.is_set()
    assert r.vllm.log() == [
        "model-a: GET /is_sleeping",
        "model-b: GET /is_sleeping",
        "model-c: GET /is_sleeping",
        "model-b: POST /sleep?level=1&mode=wait",
        "model-b: GET /is_sleeping",
        "model-c: POST /sleep?level=1&mode=wait",
        "model-c: GET /is_sleeping",
    ]


async def test_max_awake_two_keeps_two_awake() -> None:
    config = build_config("model-a", "model-b", "model-c", gpus={"g0": 2})
    async with rig(config, awake=ALL, reconcile=False) as r:
        await r.start_up()
        assert r.states() == {"model-a": "ready", "model-b": "ready", "model-c": "asleep"}


async def test_sleeping_backends_are_adopted_as_they_are() -> None:
    config = build_config("model-a", "model-b", "model-c")
    async with rig(config, awake={"model-c"}, reconcile=False) as r:
        await r.start_up()
        assert r.states() == {"model-a": "asleep", "model-b": "asleep", "model-c": "ready"}
        assert [b.holds_memory for b in r.services.backends.values()] == [False, False, True]
    assert r.vllm.log() == [f"model-{m}: GET /is_sleeping" for m in "abc"], "nothing slept"
    # a level-2 backend that says it sleeps is reset instead: tests/unit/test_startup_level2.py


@pytest.mark.parametrize("same_gpu", [True, False], ids=["same-gpu", "other-gpu"])
async def test_a_backend_that_never_comes_up_fails_holding_memory_and_blocks_its_group(
    same_gpu: bool,
) -> None:
    """vLLM allocates GPU memory before it listens: one still loading may hold it."""
    config = build_config(
        "model-a",
        "model-b",
        {"name": "model-c", "gpu": "g0" if same_gpu else "g1", "timeouts": {"start_s": 5}},
        gpus={"g0": 1, "g1": 1},
    )
    async with rig(config, down={"model-c"}, reconcile=False) as r:
        loop = asyncio.get_running_loop()
        await r.start_up()
        assert 5 < loop.time() <= 5.25  # one /health poll past start_s
        c = r.backend("model-c")
        assert (c.state.value, c.holds_memory) == ("failed", True)
        assert c.failure == "not reachable within 5s of start-up"
        assert all(g.reconciled.is_set() for g in r.switcher.groups()), "waiters go on, to a 503"
        with pytest.raises(BackendUnavailableError, match="not reachable within 5s"):
            await r.lease("model-c")
        if same_gpu:
            with pytest.raises(BackendUnavailableError) as blocked:
                await r.lease("model-a")
            assert "model-c failed and may still hold GPU memory" in blocked.value.message
        else:
            await r.served("model-a")


async def test_memory_is_not_touched_while_a_backend_still_starts() -> None:
    """Every attached backend must answer /health before any /is_sleeping or /sleep."""
    async with rig(ABC, awake=ALL, down={"model-c"}, reconcile=False) as r:
        loop = asyncio.get_running_loop()
        loop.call_later(10, r.server("model-c").power_on)
        start = asyncio.create_task(r.start_up())
        await asyncio.sleep(9.9)
        assert r.vllm.log() == [], "only /health polls while model-c starts"
        assert r.states() == {"model-a": "unknown", "model-b": "unknown", "model-c": "unknown"}
        await start
        assert r.states() == {"model-a": "ready", "model-b": "asleep", "model-c": "asleep"}


async def test_a_backend_whose_is_sleeping_fails_at_start_up_is_failed_holding_memory() -> None:
    async with rig(ABC, reconcile=False) as r:
        r.server("model-b").fail("GET", "/is_sleeping", "boom")
        await r.start_up()
        b = r.backend("model-b")
        assert (b.state.value, b.holds_memory) == ("failed", True)
        assert b.failure is not None
        assert b.failure.startswith("/is_sleeping failed at start-up")


@pytest.mark.parametrize(("asleep_after_all", "holds_memory"), [(True, False), (False, True)])
async def test_a_failed_sleep_at_start_up_fails_the_extra_honestly(
    asleep_after_all: bool, holds_memory: bool
) -> None:
    """/sleep of an extra answers 500: FAILED, holding memory unless /is_sleeping says it sleeps."""
    async with rig(ABC, awake={"model-a", "model-b"}, reconcile=False) as r:
        server = r.server("model-b")
        gate = server.hold("POST", "/sleep")
        server.fail("POST", "/sleep", "boom")
        start = asyncio.create_task(r.start_up())
        await gate.reached()  # the probe said awake; now the confirmation will say:
        server.fail("GET", "/is_sleeping", status=200, body={"is_sleeping": asleep_after_all})
        gate.open()
        await start
        b = r.backend("model-b")
        assert (b.state.value, b.holds_memory) == ("failed", holds_memory)
        assert b.failure is not None
        assert b.failure.startswith("sleep at start-up failed")


async def test_eager_bootstrap_starts_one_at_a_time_after_sleeping_attached_ones() -> None:
    """No vLLM may profile memory while another on the GPU is awake: attached awake backends
    sleep first, then each supervised one starts, warms up and sleeps before the next starts;
    the last stays awake. Lazy ones stay STOPPED."""
    config = build_config(
        "model-x",
        supervised("model-s1"),
        supervised("model-s2"),
        supervised("model-s3", start="lazy"),
    )
    async with rig(config, awake={"model-x"}, reconcile=False) as r:
        await r.start_up()
        assert r.states() == {
            "model-x": "asleep",
            "model-s1": "asleep",
            "model-s2": "ready",
            "model-s3": "stopped",
        }
        assert r.vllm.log() == [
            "model-x: GET /is_sleeping",
            "model-x: POST /sleep?level=1&mode=wait",
            "model-x: GET /is_sleeping",
            "model-s1: START",
            "model-s1: POST /v1/completions",
            "model-s1: POST /sleep?level=1&mode=wait",
            "model-s1: GET /is_sleeping",
            "model-s2: START",
            "model-s2: POST /v1/completions",
        ]
        assert r.process("model-s3").starts == 0


async def test_no_eager_start_next_to_a_member_that_may_hold_memory() -> None:
    config = build_config({"name": "model-x", "timeouts": {"start_s": 5}}, supervised("model-s"))
    async with rig(config, down={"model-x"}, reconcile=False) as r:
        await r.start_up()
        assert r.backend("model-x").holds_memory is True
        assert r.process("model-s").starts == 0, "it would profile memory next to model-x"


async def test_a_failed_eager_start_does_not_stop_the_bootstrap() -> None:
    config = build_config(supervised("model-a"), supervised("model-b"), supervised("model-c"))
    async with rig(config, reconcile=False) as r:
        r.process("model-b").exit_on_start = 3
        await r.start_up()
        assert r.states() == {"model-a": "asleep", "model-b": "failed", "model-c": "ready"}
        assert r.backend("model-b").holds_memory is False, "its process is dead"
        await r.served("model-a")


async def test_requests_during_start_up_wait_for_it_and_do_not_deadlock() -> None:
    """Requests for the model start-up keeps awake and for one it puts to sleep both arrive
    while a third backend still starts: the switch to the second drains the first, whose own
    early request is served first instead of waiting behind that very switch."""
    async with rig(ABC, awake=ALL, down={"model-c"}, reconcile=False) as r:
        asyncio.get_running_loop().call_later(5, r.server("model-c").power_on)
        start = asyncio.create_task(r.start_up())
        early_a = r.request("model-a")
        early_b = r.request("model-b")
        await settle()
        assert not early_a.done()
        assert r.switcher.waiting == {"model-a": 1, "model-b": 1}
        await start
        lease_a, _ = await early_a
        assert r.backend("model-a").draining, "model-b's switch waits for model-a's request"
        lease_a.release()
        lease_b, _ = await early_b
        lease_b.release()
        assert r.states() == {"model-a": "asleep", "model-b": "ready", "model-c": "asleep"}
