"""What status, /ready and the metrics read from the switching core: the live snapshot, the
group's phase, and a switch stuck past its own timeout."""

from __future__ import annotations

import asyncio

import pytest

from proxy.switching.group import STUCK_GRACE_S
from tests.unit.rig import build_config, rig, supervised, until

pytestmark = pytest.mark.looptime


async def test_the_live_snapshot_shows_queue_in_flight_and_switching() -> None:
    async with rig(build_config("model-a", "model-b")) as r:
        gate = r.server("model-a").hold("POST", "/wake_up")
        waiters = [r.request("model-a") for _ in range(2)]
        await gate.reached()
        await until(lambda: r.switcher.waiting["model-a"] == 2)
        backends, groups = r.switcher.live()
        assert [(b.model, b.state.value, b.inflight, b.queue_depth) for b in backends] == [
            ("model-a", "waking", 0, 2),
            ("model-b", "asleep", 0, 0),
        ]
        assert [(g.gpu, g.switching) for g in groups] == [("g0", True)]
        group = r.switcher.group_of("model-a")
        await asyncio.sleep(3)
        assert (group.phase, group.phase_s) == ("waking", 3)
        gate.open()
        await asyncio.gather(*waiters)
        backends, groups = r.switcher.live()
        assert [(b.model, b.inflight, b.queue_depth) for b in backends] == [
            ("model-a", 2, 0),
            ("model-b", 0, 0),
        ]
        assert [g.switching for g in groups] == [False]
        assert (group.phase, group.phase_s) == (None, 0.0)


async def test_start_up_holding_the_lock_is_not_a_switch() -> None:
    config = build_config("model-a", "model-b")
    async with rig(config, down={"model-a"}, reconcile=False) as r:
        start = asyncio.create_task(r.start_up())
        await asyncio.sleep(1)
        assert r.switcher.group_of("model-a").lock.locked()
        assert [g.switching for g in r.switcher.live()[1]] == [False]
        r.server("model-a").power_on(asleep=True)
        await start


async def test_a_switch_that_outlives_its_own_timeout_is_reported_stuck() -> None:
    """A wake that timed out, of an engine whose process SIGKILL does not reap: the switch waits
    in the kill, holding the group's lock; /ready says so once the phase outlived its limit."""
    config = build_config(supervised("model-a", timeouts={"wake_s": 10}), supervised("model-b"))
    async with rig(config) as r:
        r.server("model-a").hold("POST", "/wake_up")
        r.process("model-a").unkillable = True
        r.request("model-a")
        group = r.switcher.group_of("model-a")
        await asyncio.sleep(10 + STUCK_GRACE_S - 1)
        assert (group.phase, group.stuck) == ("waking", False)
        assert r.process("model-a").kills == 1
        await asyncio.sleep(2)
        assert group.stuck
