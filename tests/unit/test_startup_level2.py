"""A proxy killed in the middle of a level-2 wake leaves a backend that holds its weights but
says `is_sleeping: true`. Start-up must not adopt that as asleep: it wakes it in full and
sleeps it again, with nothing else awake on the GPU, before anything can wake next to it."""

from __future__ import annotations

import pytest

from tests.unit.rig import build_config, rig

pytestmark = pytest.mark.looptime
CONFIG = build_config({"name": "model-a", "sleep_level": 2}, "model-b")  # model-b awake


async def test_a_half_woken_level_2_backend_is_reset_before_anything_wakes() -> None:
    async with rig(CONFIG, reconcile=False) as r:
        half = r.server("model-a")
        half.sleeping_tags = {"kv_cache"}  # weights mapped again: the proxy died right there
        await r.start_up()
        assert r.states() == {"model-a": "asleep", "model-b": "asleep"}
        assert half.sleeping_tags == {"weights", "kv_cache"}, "asleep in full: its memory freed"
        log = r.vllm.log()
        reset = [
            "model-a: POST /wake_up?tags=weights",
            "model-a: POST /collective_rpc reload_weights",
            "model-a: POST /wake_up?tags=kv_cache",
            "model-a: POST /reset_prefix_cache",
            "model-a: POST /sleep?level=2&mode=wait",
        ]
        assert [line for line in log if line in reset] == reset
        assert log.index("model-b: POST /sleep?level=1&mode=wait") < log.index(reset[0]), (
            "model-b slept first: the reset wakes model-a with nothing else awake"
        )
        await r.served("model-a")  # and it serves valid weights afterwards


async def test_a_level_2_reset_that_fails_blocks_the_group() -> None:
    async with rig(CONFIG, reconcile=False) as r:
        r.server("model-a").fail("POST", "/collective_rpc", "reload failed")
        await r.start_up()
        assert r.state("model-a") == "failed"
        assert r.backend("model-a").holds_memory is True, "nobody knows what it holds"
        assert r.switcher.servable() == []


async def test_level_1_backends_are_adopted_as_they_say() -> None:
    config = build_config("model-a", "model-b")
    async with rig(config, reconcile=False) as r:
        await r.start_up()
        assert r.states() == {"model-a": "asleep", "model-b": "ready"}
        assert not any("wake_up" in line for line in r.vllm.log())
