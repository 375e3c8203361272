"""decide() rule by rule, on hand-made snapshots (proxy/switching/policy.py).

Snapshots carry the flags the real backends report (backends/backend.py): an ASLEEP or STOPPED
model has holds_memory=False, a READY one True, a FAILED one whatever its failure left.
At scale and as a simulation: test_policy_properties.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from proxy.backends.state import BackendState
from proxy.switching.policy import Decision, GroupView, ModelView, decide, fits

READY, ASLEEP, FAILED, STOPPED = (
    BackendState.READY,
    BackendState.ASLEEP,
    BackendState.FAILED,
    BackendState.STOPPED,
)


def awake(
    name: str,
    *,
    since: float = 0.0,
    used: float | None = None,
    busy: int = 0,
    queue: tuple[float, ...] = (),
    sleep: float = 0.0,  # 0: a busy victim is due exactly at max_wait_s (see the cost tests)
    wake: float = 0.5,
    **kw: Any,
) -> ModelView:
    return ModelView(
        name,
        READY,
        True,
        queue=queue,
        in_flight=busy,
        ready_since=since,
        last_used=used,
        sleep_cost_s=sleep,
        wake_cost_s=wake,
        **kw,
    )


def asleep(name: str, *queue: float, **kw: Any) -> ModelView:
    return ModelView(name, ASLEEP, False, queue=queue, **({"wake_cost_s": 0.0} | kw))


def group(*models: ModelView, max_awake: int = 1, **kw: Any) -> GroupView:
    return GroupView("g0", max_awake, models, **kw)


# ----- which model is next ---------------------------------------------------------------------
def test_nothing_waits_nothing_happens() -> None:
    d = decide(group(awake("a", busy=3), asleep("b")), now=10)
    assert d == Decision()
    assert not d.switch_now


def test_the_oldest_request_goes_first() -> None:
    view = group(asleep("b", 3.0), asleep("c", 1.0, 4.0), asleep("d", 2.0), max_awake=2)
    d = decide(view, now=5)
    assert (d.target, d.waiting) == ("c", ("c", "d", "b"))


def test_priority_goes_before_age() -> None:
    view = group(asleep("old", 1.0), asleep("vip", 4.0, priority=1), max_awake=2)
    assert decide(view, now=5).waiting == ("vip", "old")


def test_equal_arrivals_go_by_name() -> None:
    view = group(asleep("z", 1.0), asleep("y", 1.0), max_awake=2)
    assert decide(view, now=5).waiting == ("y", "z")


def test_fifo_ignores_priority() -> None:
    view = group(asleep("old", 1.0), asleep("vip", 4.0, priority=1), max_awake=2, policy="fifo")
    assert decide(view, now=5).waiting == ("old", "vip")


def test_a_ready_model_with_a_queue_is_not_waiting() -> None:
    # its requests are leased as soon as its drain allows: no switch serves them sooner
    view = group(awake("a", queue=(0.5,)), asleep("b", 2.0), max_awake=2)
    d = decide(view, now=5)
    assert (d.target, d.waiting) == ("b", ("b",))


# ----- free slot and blocked -------------------------------------------------------------------
@pytest.mark.parametrize(
    "others",
    [
        (),
        (asleep("x"), ModelView("s", STOPPED, False)),
        (ModelView("f", FAILED, False),),  # a dead process holds nothing
    ],
    ids=["empty", "asleep-and-stopped", "failed-without-memory"],
)
def test_a_free_slot_switches_at_once(others: tuple[ModelView, ...]) -> None:
    d = decide(group(asleep("t", 9.9), *others), now=10)
    assert (d.target, d.victims, d.reason, d.switch_now) == ("t", (), "free_slot", True)


def test_a_second_slot_is_free_even_next_to_a_busy_resident() -> None:
    view = group(awake("a", since=9.9, busy=4), asleep("t", 9.9), max_awake=2)
    d = decide(view, now=10)
    assert (d.victims, d.reason, d.switch_now) == ((), "free_slot", True)


@pytest.mark.parametrize("policy", ["default", "fifo"])
def test_a_failed_member_that_may_hold_memory_blocks(policy: str) -> None:
    view = group(ModelView("f", FAILED, True), asleep("t", 0.0), policy=policy)
    d = decide(view, now=100)
    assert (d.target, d.blocked_by, d.reason, d.recheck_at) == ("t", ("f",), "blocked", None)
    assert not d.switch_now


def test_a_failed_member_takes_a_slot_but_a_ready_one_can_still_make_room() -> None:
    view = group(ModelView("f", FAILED, True), awake("a"), asleep("t", 0.0), max_awake=2)
    d = decide(view, now=100)
    assert (d.blocked_by, d.victims, d.switch_now) == ((), ("a",), True)


# ----- a busy victim: max_wait_s and min_residency_s -------------------------------------------
@pytest.mark.parametrize(
    ("arrived", "woke", "now", "reason", "recheck"),
    [
        (10.0, 0.0, 11.0, "serving", 15.0),  # the wait decides: 10 + 5
        (10.0, 12.5, 13.0, "serving", 15.0),  # both unmet; max_wait ends later
        (10.0, 14.0, 15.0, "min_residency", 16.0),  # waited 5 s, resident only 1 s of 2
        (10.0, 13.5, 14.0, "serving", 15.5),  # both unmet; min_residency ends later
    ],
)
def test_a_busy_victim_is_held_until_both_bounds_passed(
    arrived: float, woke: float, now: float, reason: str, recheck: float
) -> None:
    view = group(awake("a", since=woke, used=now, busy=1), asleep("t", arrived, now))
    d = decide(view, now)
    assert (d.target, d.victims, d.evict, d.reason) == ("t", ("a",), False, reason)
    assert d.recheck_at == recheck
    assert not d.switch_now
    assert not decide(view, recheck - 1e-6).switch_now
    at = decide(view, recheck)
    assert (at.victims, at.reason, at.switch_now) == (("a",), "max_wait", True)


def test_a_queue_on_the_victim_makes_it_busy() -> None:
    view = group(awake("a", used=0.0, queue=(9.0,)), asleep("t", 9.0))
    assert decide(view, now=10).reason == "serving"  # not idle, however long since last use


def test_the_bounds_are_read_from_the_config() -> None:
    view = group(
        awake("a", since=0.0, busy=1), asleep("t", 10.0), max_wait_s=1.0, min_residency_s=12.0
    )
    assert decide(view, now=10.5).recheck_at == 12.0
    assert decide(view, now=11.5).reason == "min_residency"


@pytest.mark.parametrize(
    ("arrived", "max_wait"),
    [(0.7, 0.1), (5.268571514473693, 5.0)],  # the second: found by tests/unit/sim.py at once
)
def test_at_recheck_at_a_busy_victim_is_evicted(arrived: float, max_wait: float) -> None:
    """FAILS (bug): `now - arrived >= max_wait_s` is False at now = arrived + max_wait_s for
    these floats ((0.7 + 0.1) - 0.7 < 0.1), so the hold repeats with recheck_at == now: a
    switcher that sleeps until recheck_at spins at that instant (in virtual time, forever)."""
    view = group(
        awake("a", since=-10.0, busy=1),
        asleep("t", arrived),
        max_wait_s=max_wait,
        min_residency_s=0,
    )
    held = decide(view, arrived)
    assert held.recheck_at == arrived + max_wait
    at = decide(view, held.recheck_at)
    assert (at.switch_now, at.reason) == (True, "max_wait")


# ----- an idle victim: the ski-rental linger ---------------------------------------------------
@pytest.mark.parametrize(
    ("waiting", "linger"),
    [(1, 4.0), (2, 2.0), (4, 1.0)],  # (sleep 1 + wake 3) / queue length
)
def test_an_idle_victim_lingers_its_round_trip_over_the_queue(waiting: int, linger: float) -> None:
    queue = tuple(10.0 + i * 0.1 for i in range(waiting))
    view = group(awake("a", used=10.0, sleep=1.0, wake=3.0), asleep("t", *queue), max_wait_s=30)
    d = decide(view, now=10.5)
    assert (d.reason, d.recheck_at, d.switch_now) == ("linger", 10.0 + linger, False)
    assert not decide(view, 10.0 + linger - 1e-6).switch_now
    at = decide(view, 10.0 + linger)
    assert (at.victims, at.reason, at.switch_now) == (("a",), "early_sleep", True)


@pytest.mark.parametrize(
    ("gaps", "lingers"),
    [
        ((), True),  # nothing seen yet: ski rental
        ((5.0, 5.0, 5.0), True),  # too few gaps to tell
        ((5.0, 5.0, 5.0, 5.0), False),  # its client never came back within a linger (4 s)
        ((5.0, 5.0, 0.2, 5.0), True),  # once it did: worth waiting for again
        ((0.1, 5.0, 5.0, 5.0, 5.0), False),  # only the last RETURN_SAMPLES count
        ((4.0, 4.0, 4.0, 4.0), True),  # a gap of exactly the linger would have been caught
    ],
)
def test_an_idle_victim_whose_client_does_not_return_is_not_waited_for(
    gaps: tuple[float, ...], lingers: bool
) -> None:
    """One client hopping between models: the model it left is idle until it needs it again,
    which is after the target served - lingering only delays the target (H200: 2x TTFT)."""
    victim = awake("a", used=10.0, sleep=1.0, wake=3.0, idle_gaps=gaps)
    d = decide(group(victim, asleep("t", 10.0), max_wait_s=30), now=10.1)
    if lingers:
        assert (d.reason, d.switch_now, d.recheck_at) == ("linger", False, 14.0)
    else:
        assert (d.victims, d.reason, d.switch_now) == (("a",), "no_return", True)


def test_a_busy_victim_is_never_skipped_for_its_idle_gaps() -> None:
    victim = awake("a", since=0.0, used=10.0, busy=1, sleep=1.0, idle_gaps=(9.0,) * 4)
    d = decide(group(victim, asleep("t", 10.0, wake_cost_s=1.0)), now=10.1)
    assert (d.reason, d.switch_now) == ("serving", False)


def test_the_linger_ends_at_the_forced_time_when_that_is_earlier() -> None:
    view = group(awake("a", used=10.0, sleep=1.0, wake=10.0), asleep("t", 10.0))
    d = decide(view, now=11.0)
    assert (d.reason, d.recheck_at) == ("linger", 14.0)  # due at 10 + 5 - 1 before 11 s of linger
    assert decide(view, 14.0).reason == "max_wait"


@pytest.mark.parametrize(
    ("sleep", "wake", "due"),
    [(0.0, 0.0, 15.0), (0.3, 0.7, 14.0), (1.0, 3.0, 11.0), (4.0, 2.0, 10.0)],
)
def test_a_busy_victim_is_due_early_by_the_switchs_expected_cost(
    sleep: float, wake: float, due: float
) -> None:
    """max_wait_s bounds the wait, the switch included: the eviction starts the victim's sleep
    plus the target's wake (measured) before it; a switch that costs more starts at once."""
    view = group(awake("a", since=0.0, busy=1, sleep=sleep), asleep("t", 10.0, wake_cost_s=wake))
    held = decide(view, now=10.0)
    if due > 10.0:
        assert (held.reason, held.recheck_at) == ("serving", due)
    assert (decide(view, due).reason, decide(view, due).switch_now) == ("max_wait", True)


def test_idle_counts_from_the_wake_when_the_model_was_not_used_since() -> None:
    view = group(awake("a", since=20.0, used=5.0, sleep=1.0, wake=1.0), asleep("t", 19.0))
    assert decide(view, now=21.0).recheck_at == 22.0


def test_min_residency_does_not_keep_an_idle_model() -> None:
    view = group(awake("a", since=10.0, used=10.0), asleep("t", 10.0), min_residency_s=30)
    d = decide(view, now=11.0)  # linger 0.5 + 0.5 passed; resident 1 s of 30
    assert (d.reason, d.switch_now) == ("early_sleep", True)


def test_two_victims_hold_until_the_first_can_change() -> None:
    # two awake after start-up with max_awake 1: both must sleep, the group waits for both
    view = group(
        awake("idle", since=0.0, used=9.0, sleep=2.0, wake=2.0),
        awake("busy", since=0.0, used=8.0, busy=1),
        asleep("t", 9.0),
    )
    d = decide(view, now=10.0)
    assert (d.victims, d.switch_now, d.reason) == (("idle", "busy"), False, "linger")
    assert d.recheck_at == 12.0  # idle's due (9 + 5 - its 2 s sleep) before its linger (13)
    assert decide(view, 12.0).reason == "serving"  # idle may go, busy not yet (due at 14)
    assert decide(view, 14.0).switch_now


# ----- wake first on declared memory -----------------------------------------------------------
def memory_view(budget: float | None = 80, **asleep_kw: Any) -> GroupView:
    return group(
        awake("a", used=0.0, memory_gib=30),
        asleep("t", 0.0, memory_gib=40, asleep_memory_gib=2),
        asleep("c", **({"memory_gib": 40, "asleep_memory_gib": 5} | asleep_kw)),
        memory_gib=budget,
    )


def test_a_target_that_fits_wakes_first() -> None:
    d = decide(memory_view(), now=100)  # 30 + 5 + 40 <= 80
    assert (d.victims, d.evict, d.wake_first, d.reason) == (("a",), True, True, "memory_fits")


@pytest.mark.parametrize(
    ("view", "case"),
    [
        (memory_view(budget=None), "no budget"),
        (memory_view(budget=74), "75 > 74"),
        (memory_view(memory_gib=None, asleep_memory_gib=None), "a member undeclared"),
        (
            group(awake("a", memory_gib=30), asleep("t", 0.0), memory_gib=80),
            "target undeclared",
        ),
        (group(awake("a"), asleep("t", 0.0, memory_gib=40), memory_gib=80), "victim undeclared"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_no_wake_first_without_declared_room(view: GroupView, case: str) -> None:
    d = decide(view, now=100)
    assert (d.switch_now, d.wake_first, d.reason) == (True, False, "max_wait"), case


def test_wake_first_never_hurries_a_busy_victim() -> None:
    view = group(
        awake("a", since=0.0, busy=1, memory_gib=30), asleep("t", 9.0, memory_gib=40), memory_gib=80
    )
    assert decide(view, now=10).reason == "serving"
    assert decide(view, now=14).wake_first


def test_an_asleep_member_counts_its_declared_residual() -> None:
    """FAILS (bug): an ASLEEP backend reports holds_memory=False (backends/backend.py), and
    held_gib() returns 0 for it before it looks at the state, so the 5 GiB that `c` keeps
    asleep are not counted: 30 + 5 + 40 > 74, yet the target wakes first."""
    view = memory_view(budget=74)
    assert not fits(view, view.model("t"))


def test_an_undeclared_residual_counts_as_awake() -> None:
    """FAILS (bug), as above: `c` declares no asleep_memory_gib, so it must count its 40 GiB
    awake footprint (never a guess): 30 + 40 + 40 > 100."""
    view = memory_view(budget=100, asleep_memory_gib=None)
    assert not fits(view, view.model("t"))
    assert fits(memory_view(budget=110, asleep_memory_gib=None), view.model("t"))


def test_a_stopped_member_holds_nothing_and_the_target_counts_once() -> None:
    # t's own asleep residual becomes part of its 40 GiB awake: 30 + 0 + 40 <= 70
    view = group(
        awake("a", memory_gib=30),
        asleep("t", 0.0, memory_gib=40, asleep_memory_gib=2),
        ModelView("s", STOPPED, False, memory_gib=40),
        memory_gib=70,
    )
    assert fits(view, view.model("t"))
    assert not fits(group(*view.models, memory_gib=69.9), view.model("t"))


# ----- fifo ------------------------------------------------------------------------------------
def test_fifo_evicts_at_once() -> None:
    view = group(
        awake("a", since=10.0, used=10.0, busy=3), asleep("t", 10.0), policy="fifo", memory_gib=1
    )
    d = decide(view, now=10.0)  # a just woke and is busy: the default policy would hold 5 s
    assert (d.target, d.victims, d.reason, d.switch_now) == ("t", ("a",), "fifo", True)
    assert decide(group(*view.models), now=10.0).reason == "serving"


def test_fifo_evicts_the_least_recently_used() -> None:
    view = group(
        awake("new", used=9.0), awake("old", used=3.0), asleep("t", 9.5), max_awake=2, policy="fifo"
    )
    assert decide(view, now=10.0).victims == ("old",)


def test_an_idle_model_makes_room_before_a_busy_one() -> None:
    view = group(
        awake("streaming", used=1.0, busy=1),  # one long stream since t=1
        awake("idle", used=2.0),  # its last request ended at t=2
        asleep("t", 3.0),
        max_awake=2,
    )
    d = decide(view, now=3.0)  # idle for 1 s = its round trip (0.5 + 0.5): it may go now
    assert (d.victims, d.switch_now) == (("idle",), True)  # today: holds 'serving' until 8.0
