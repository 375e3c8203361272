"""/ready tells the truth after faults: not ready when no request could be served."""

from __future__ import annotations

import pytest

from proxy.http.routes.admin import readiness
from tests.unit.rig import build_config, rig, supervised, until

pytestmark = pytest.mark.looptime


async def test_ready_while_a_sleeping_model_can_be_woken() -> None:
    async with rig(build_config("model-a", "model-b")) as r:
        assert r.states() == {"model-a": "asleep", "model-b": "ready"}
        assert readiness(r.services) == []
        assert sorted(r.switcher.servable()) == ["model-a", "model-b"]


async def test_not_ready_when_a_failed_wake_blocks_the_only_group() -> None:
    """The failed model may hold memory: nothing else wakes next to it, and nothing is awake."""
    async with rig(build_config("model-a", "model-b")) as r:
        r.server("model-a").wake_oom()
        with pytest.raises(Exception, match="out of memory"):
            await r.lease("model-a")
        assert r.state("model-b") == "asleep", "could not be brought back next to model-a"
        assert r.switcher.servable() == []
        (problem,) = readiness(r.services)
        assert problem.startswith("no model can be served")
        assert "model-a: wake failed" in problem


async def test_ready_while_the_failed_models_group_still_serves_its_awake_model() -> None:
    config = build_config("model-a", "model-b", gpus={"g0": 2})
    async with rig(config, awake={"model-b"}) as r:
        r.server("model-a").wake_oom()
        with pytest.raises(Exception, match="out of memory"):
            await r.lease("model-a")
        assert r.state("model-b") == "ready"
        assert r.switcher.servable() == ["model-b"], "model-a failed for good (unsupervised)"
        assert readiness(r.services) == []


async def test_a_crash_loop_is_not_servable_but_a_restartable_crash_is() -> None:
    config = build_config(
        supervised("model-a", restart={"max_restarts": 0, "backoff_s": 0}),
    )
    async with rig(config) as r:
        r.process("model-a").crash(-9)
        await until(lambda: r.state("model-a") == "failed")
        assert r.switcher.servable() == []
        assert readiness(r.services) != []
