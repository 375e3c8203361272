"""plan_switch is pure: which backends must sleep so a target can wake."""

from __future__ import annotations

import pytest

from proxy.backends import BackendState
from proxy.switching.plan import Member, Plan, plan_switch

R, A, F = BackendState.READY, BackendState.ASLEEP, BackendState.FAILED


def members(*specs: tuple[str, BackendState, bool, float]) -> list[Member]:
    return [Member(name, state, holds, used) for name, state, holds, used in specs]


@pytest.mark.parametrize(
    ("group", "max_awake", "plan"),
    [
        (members(("t", A, False, 0), ("b", R, True, 1)), 1, Plan(victims=("b",))),
        (members(("t", A, False, 0), ("b", A, False, 1)), 1, Plan()),
        (members(("t", A, False, 0), ("b", R, True, 1)), 2, Plan()),
        (
            members(("t", A, False, 0), ("b", R, True, 5), ("c", R, True, 2)),
            2,
            Plan(victims=("c",)),
        ),
        (
            members(("t", A, False, 0), ("b", R, True, 5), ("c", R, True, 2)),
            1,
            Plan(victims=("c", "b")),
        ),
        (members(("t", A, False, 0), ("f", F, True, 1)), 1, Plan(blocked_by=("f",))),
        (members(("t", A, False, 0), ("f", F, False, 1)), 1, Plan()),
        (
            members(("t", A, False, 0), ("f", F, True, 1), ("b", R, True, 1)),
            2,
            Plan(victims=("b",)),
        ),
    ],
    ids=[
        "sleep-resident",
        "nothing-awake",
        "room-for-two",
        "lru-first",
        "two-victims",
        "blocked-by-failed",
        "failed-without-memory",
        "failed-takes-a-slot",
    ],
)
def test_plan(group: list[Member], max_awake: int, plan: Plan) -> None:
    assert plan_switch("t", group, max_awake) == plan
