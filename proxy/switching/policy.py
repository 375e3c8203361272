"""The scheduling policy: what one GPU group does next, as a pure function of a snapshot.

No I/O, no clock (`now` is an input), no logging: `decide(view, now)` is tested alone, at scale
(tests/unit/test_policy*.py), and the group's owner (switching/switcher.py) only carries out
what it returns. Stateless. docs/scheduling.md explains the rules with a timeline.

`default` - serve the resident first, never thrash, never starve:
  - the target is the waiting model (requests queued, not awake) with the highest `priority`,
    then the oldest waiting request (oldest-first bounds every wait; weighting by queue length
    would serve crowds faster but can starve a model with one request);
  - a free slot (`max_awake`): switch at once, nobody is evicted first;
  - otherwise each victim (the least recently used awake models, `plan.py`) must be evictable:
      * busy (requests in flight or queued): only once the target's oldest request waited
        `max_wait_s` less the switch's expected cost (the victim's sleep and the target's wake,
        measured: the request is served by `max_wait_s`) *and* the victim had the GPU
        `min_residency_s` (reason `max_wait`);
      * idle: once it has been idle longer than its round trip (sleep + wake + warm-up, measured)
        divided by the target's queue length (reason `early_sleep`). That is ski rental: waiting
        a switch's cost for the resident's next request costs at most as much as switching away
        and back, so a closed-loop client that sends again within milliseconds keeps its model
        (the round trip is the measured switch back for this pair once it ran). The wait is
        skipped when it has not paid lately: each of the victim's last RETURN_SAMPLES idle
        gaps (from its going idle to its next request) was longer than it (reason
        `no_return`) - one client hopping between models never comes back to the model it
        left while it waits for the next (measured on the H200: a lingering proxy doubled a
        two-model alternation's time to first token);
    until then the group holds, and `recheck_at` says when the answer can change on its own;
  - when the target fits beside the victims (NVML's free memory covers its measured or
    declared need, or every member's memory is declared, see `fits`), the target wakes first
    and the victims sleep afterwards (`wake_first`, reason `memory_fits`);
  - a busy victim marked `preemptible` is not drained once its eviction is due: it sleeps with
    mode=keep, its requests pause (reason `preempt`), and those paused requests are demand like
    queued ones (their model's turn comes back by the same rules).
`fifo` - the model of the oldest waiting request gets the GPU at once; requests for the model
  being switched to join that switch (as llama-swap). `naive` decides the same, and the switcher
  also starts requests strictly in arrival order across the group (no join). Both are kept for
  comparison (bench/scheduling.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from proxy.backends.state import BackendState
from proxy.switching.plan import Member, plan_switch

DEFAULT_COST_S = 0.5  # a round trip's cost before any switch of the model was measured
RETURN_SAMPLES = 4  # idle gaps that must all be longer than a linger before it is skipped
MEASURED_MARGIN_GIB = 1.0  # kept free beyond a measured need (allocator slack, CUDA graphs)


@dataclass(frozen=True)
class ModelView:
    """One member of the group, as the policy sees it."""

    name: str
    state: BackendState
    holds_memory: bool
    queue: tuple[float, ...] = ()  # arrival times of the requests waiting for it, oldest first
    in_flight: int = 0
    ready_since: float | None = None  # when it last became READY
    last_used: float | None = None  # when a request of it last started or ended
    sleep_cost_s: float = DEFAULT_COST_S  # measured moving averages
    wake_cost_s: float = DEFAULT_COST_S  # wake (or start) + warm-up
    priority: int = 0
    preemptible: bool = False  # a busy victim may be slept with mode=keep instead of drained
    memory_gib: float | None = None  # awake
    asleep_memory_gib: float | None = None  # asleep (None: as much as awake)
    wake_gib: float | None = None  # the most free memory one of its wakes took (NVML)
    idle_gaps: tuple[float, ...] = ()  # its last idle gaps: going idle to its next request

    def returns_within(self, linger_s: float) -> bool:
        """May its next request come within `linger_s` of its going idle? No only when each
        of its last RETURN_SAMPLES idle gaps was longer (too few seen: yes, as ski rental)."""
        gaps = self.idle_gaps[-RETURN_SAMPLES:]
        return len(gaps) < RETURN_SAMPLES or min(gaps) <= linger_s

    @property
    def busy(self) -> bool:
        return self.in_flight > 0 or bool(self.queue)

    def held_gib(self) -> float | None:
        """GPU memory it holds now; None when that is not declared. Asleep it still holds its
        residual (CUDA context, ...), though the plan counts no slot for it; so does a FAILED
        one that holds no more than that (confirmed asleep, or dead: counted, to be safe)."""
        if self.state is BackendState.STOPPED:
            return 0.0  # no process
        if self.holds_memory or self.memory_gib is None:  # a residual alone is not a footprint
            return self.memory_gib
        return self.asleep_memory_gib if self.asleep_memory_gib is not None else self.memory_gib


@dataclass(frozen=True)
class GroupView:
    name: str
    max_awake: int
    models: tuple[ModelView, ...]
    policy: str = "default"
    max_wait_s: float = 5.0
    min_residency_s: float = 2.0
    memory_gib: float | None = None  # the group's budget; None: wake-first is never tried
    free_gib: float | None = None  # free GPU memory now, measured (NVML); None: not measured
    # measured sleep + wake + warm-up of a switch from one model alone to another
    pair_costs: Mapping[tuple[str, str], float] = field(default_factory=dict)

    def model(self, name: str) -> ModelView:
        return next(m for m in self.models if m.name == name)

    def switch_back_s(self, victim: ModelView, target: ModelView) -> float:
        """What evicting `victim` for `target` now costs extra if the victim's next request
        comes soon: the switch back - measured for this pair when it ran before, else the
        victim's own sleep and wake."""
        back = self.pair_costs.get((target.name, victim.name))
        return back if back is not None else victim.sleep_cost_s + victim.wake_cost_s


@dataclass(frozen=True)
class Decision:
    """`target` set: the model chosen next. With `blocked_by` its wake must not happen (a failed
    member may hold memory); otherwise, if `victims` is set and `evict` is False, the group holds
    (reason says why) until an event or `recheck_at`; else switch now."""

    target: str | None = None
    victims: tuple[str, ...] = ()
    evict: bool = False
    wake_first: bool = False
    preempt: tuple[str, ...] = ()  # victims slept with mode=keep, their requests paused
    blocked_by: tuple[str, ...] = ()
    reason: str = "idle"
    recheck_at: float | None = None
    waiting: tuple[str, ...] = field(default=())  # every model with demand, in service order

    @property
    def switch_now(self) -> bool:
        return self.target is not None and not self.blocked_by and (self.evict or not self.victims)


HOLD = Decision()


def waiting_models(view: GroupView) -> list[ModelView]:
    """Models with queued requests that are not awake, in the order the policy serves them."""
    waiting = [m for m in view.models if m.queue and m.state is not BackendState.READY]
    if view.policy != "default":
        return sorted(waiting, key=lambda m: m.queue[0])
    return sorted(waiting, key=lambda m: (-m.priority, m.queue[0], m.name))


def wake_need_gib(target: ModelView) -> float | None:
    """Free memory `target`'s wake (or start) takes: declared (awake minus the residual it holds
    asleep; all of it when no residual is declared) and measured, the larger; None: unknown."""
    declared = None
    if target.memory_gib is not None:
        asleep = target.state is BackendState.ASLEEP  # it keeps its residual
        residual = (target.asleep_memory_gib or 0.0) if asleep else 0.0
        declared = max(target.memory_gib - residual, 0.0)
    known = [g for g in (declared, target.wake_gib) if g is not None]
    return max(known) if known else None


def fits(view: GroupView, target: ModelView) -> bool:
    """`target` can wake with every member as it is now - measured (free memory minus a margin
    covers its wake's need) or declared (the budget covers every member's footprint). Never a
    guess: False when neither is known."""
    if view.free_gib is not None:
        need = wake_need_gib(target)
        if need is not None and need + MEASURED_MARGIN_GIB <= view.free_gib:
            return True
    if view.memory_gib is None or target.memory_gib is None:
        return False
    held = 0.0
    for m in view.models:
        if m.name == target.name:
            continue
        gib = m.held_gib()
        if gib is None:
            return False
        held += gib
    return held + target.memory_gib <= view.memory_gib


def decide(view: GroupView, now: float) -> Decision:
    """Pure: the group's next move. See the module docstring for the rules."""
    order = waiting_models(view)
    if not order:
        return HOLD
    names = tuple(m.name for m in order)
    target = order[0]
    members = [
        Member(m.name, m.state, m.holds_memory, m.last_used or 0.0, busy=m.busy)
        for m in view.models
    ]
    plan = plan_switch(target.name, members, view.max_awake)
    if plan.blocked_by:
        return Decision(target.name, blocked_by=plan.blocked_by, reason="blocked", waiting=names)
    if not plan.victims:
        return Decision(target.name, evict=True, reason="free_slot", waiting=names)
    if view.policy != "default":
        return Decision(target.name, plan.victims, evict=True, reason=view.policy, waiting=names)
    victims = [view.model(v) for v in plan.victims]
    verdicts = [_evictable(v, target, view, now) for v in victims]
    reasons = [reason for _, reason, _ in verdicts]
    if all(ok for ok, _, _ in verdicts):
        wake_first = fits(view, target)
        paused = [v.name for v, r in zip(victims, reasons, strict=True) if r == "preempt"]
        return Decision(
            target.name,
            plan.victims,
            evict=True,
            wake_first=wake_first,
            preempt=() if wake_first else tuple(paused),
            reason="memory_fits" if wake_first else _strongest(reasons),
            waiting=names,
        )
    recheck = [at for ok, _, at in verdicts if not ok and at is not None]
    hold_reason = next(reason for ok, reason, _ in verdicts if not ok)
    return Decision(
        target.name,
        plan.victims,
        reason=hold_reason,
        recheck_at=min(recheck) if recheck else None,
        waiting=names,
    )


def _strongest(reasons: list[str]) -> str:
    for reason in ("preempt", "max_wait"):
        if reason in reasons:
            return reason
    return reasons[0]


def _evictable(
    victim: ModelView, target: ModelView, view: GroupView, now: float
) -> tuple[bool, str, float | None]:
    """(may it be put to sleep for `target` now, why (not), when that may change)."""
    since = victim.ready_since if victim.ready_since is not None else now
    # the switch starts its expected cost early, so that the request is served by max_wait_s
    due = target.queue[0] + max(view.max_wait_s - victim.sleep_cost_s - target.wake_cost_s, 0.0)
    # compared as the deadlines recheck_at is made of: no rounding between the two
    waited_enough = now >= due
    resided_enough = now >= since + view.min_residency_s
    if waited_enough and resided_enough:
        if not (victim.busy and victim.preemptible):
            return True, "max_wait", None
        # a busy preemptible victim pauses (mode=keep) instead of draining - once it has held
        # the GPU for its own round trip: else two of them trade it forever, each paused the
        # moment it wakes (found by the simulator with min_residency_s 0)
        paused_at = since + victim.sleep_cost_s + victim.wake_cost_s
        if now >= paused_at:
            return True, "preempt", None
        return False, "min_residency", paused_at
    forced_at = max(due, since + view.min_residency_s)
    if victim.busy:
        return False, "min_residency" if waited_enough else "serving", forced_at
    idle_since = max(victim.last_used or since, since)
    linger = view.switch_back_s(victim, target) / len(target.queue)
    if now >= idle_since + linger:
        return True, "early_sleep", None
    if not victim.returns_within(linger):
        return True, "no_return", None
    return False, "linger", min(idle_since + linger, forced_at)
