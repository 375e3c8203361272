"""A discrete-event simulator of one GPU group that does exactly what `decide` says.

The scheduling policy (proxy/switching/policy.py) at scale: tests/unit/test_policy_properties.py
drives it over long random workloads, bench/plot_scheduling.py draws its timeline for
docs/scheduling.md. Pure: virtual time, no processes, no sockets, no real sleeps.

It plays the switcher's side of the contract, as the policy sees it:
  - a request is leased at once when its model is READY and not draining, else it queues;
  - while no switch runs, the group decides after every event, and again at `recheck_at`;
  - a switch is single flight: drain the victims (no new leases for them; their in-flight
    requests finish), sleep them one after the other, wake the target; with `wake_first` the
    target wakes first and the victims are drained and slept afterwards; a victim in `preempt`
    is not drained: its running requests pause as it starts to sleep (mode=keep), count as
    demand since then (as switching/demand.py reports them), and run on at its next wake;
  - each snapshot is what switching/demand.py builds: `holds_memory` as backends/backend.py sets
    it (False once ASLEEP), `ready_since` when it last became READY, `last_used` at every lease
    and release, the model's switch costs.
It checks, after every event: at most `max_awake` models hold memory (plus the victims of a
wake-first switch while it runs), the true GPU memory stays within the group's budget, and a
hold's `recheck_at` is in the future; a run that ends with unserved requests deadlocked.

State: one Sim owns everything in it; nothing outside writes it.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial

from proxy.backends.state import BackendState
from proxy.switching.policy import Decision, GroupView, ModelView, decide

HOLDERS = (BackendState.READY, BackendState.WAKING, BackendState.SLEEPING)


class SimError(AssertionError):
    """The policy (or the simulator) broke a rule; the message has the snapshot."""


@dataclass(frozen=True)
class Spec:
    name: str
    sleep_s: float = 0.5
    wake_s: float = 1.0
    priority: int = 0
    memory_gib: float | None = None  # declared, and what it really holds awake
    asleep_memory_gib: float | None = None  # declared (None: the policy must assume memory_gib)
    residual_gib: float = 0.0  # what it really holds asleep (the ledger's truth)
    preemptible: bool = False


@dataclass
class Client:
    """Closed loop: sends its next request `think_s` after each answer."""

    model: str
    services: list[float]
    think_s: float = 0.0
    sent: int = 0


@dataclass
class Request:
    model: str
    arrival: float
    service_s: float
    client: Client | None = None
    start: float | None = None
    end: float | None = None
    due: float = 0.0  # when it ends if nothing pauses it (while paused: what is left of it)
    pauses: list[tuple[float, float]] = field(default_factory=list)  # (paused, resumed)
    runs: int = 0  # bumped by each pause and resume: a stale end event is ignored

    @property
    def wait(self) -> float:
        assert self.start is not None
        return self.start - self.arrival


@dataclass
class Switch:
    at: float
    target: str
    victims: tuple[str, ...]
    wake_first: bool
    reason: str
    end: float | None = None


@dataclass(frozen=True)
class Span:
    model: str
    state: BackendState
    start: float
    end: float


@dataclass
class _Member:
    spec: Spec
    state: BackendState = BackendState.ASLEEP
    queue: deque[Request] = field(default_factory=deque)
    running: list[Request] = field(default_factory=list)
    paused: list[Request] = field(default_factory=list)
    paused_since: float | None = None
    draining: bool = False
    ready_since: float | None = None
    last_used: float | None = None
    state_since: float = 0.0

    @property
    def in_flight(self) -> int:
        return len(self.running)


class Sim:
    def __init__(
        self,
        specs: Iterable[Spec],
        *,
        max_awake: int = 1,
        policy: str = "default",
        max_wait_s: float = 5.0,
        min_residency_s: float = 2.0,
        memory_gib: float | None = None,
        awake: Iterable[str] = (),
        decide_fn: Callable[[GroupView, float], Decision] = decide,
    ) -> None:
        self.now = 0.0
        self.max_awake = max_awake
        self.policy = policy
        self.max_wait_s = max_wait_s
        self.min_residency_s = min_residency_s
        self.memory_gib = memory_gib
        self._decide_fn = decide_fn  # the policy under test; others only to test the checks
        self.members = {s.name: _Member(s) for s in specs}
        for name in awake:
            m = self.members[name]
            m.state, m.ready_since = BackendState.READY, 0.0
        self.requests: list[Request] = []
        self.switches: list[Switch] = []
        self.spans: list[Span] = []
        self.decisions = 0
        self.events = 0
        self.max_overlap = 0  # most models holding memory at once, beyond max_awake
        self._events: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._rechecks: set[float] = set()
        self._switch: Switch | None = None
        self._steps: deque[Callable[[], None]] = deque()
        self._drain: tuple[str, ...] | None = None  # victims being drained, if any
        self._check()

    # ----- workload ------------------------------------------------------------------------------
    def arrive(self, at: float, model: str, service_s: float, client: Client | None = None) -> None:
        def enter() -> None:
            r = Request(model, self.now, service_s, client)
            self.requests.append(r)
            self.members[model].queue.append(r)

        self._at(at, enter)

    def client(self, client: Client, start: float = 0.0) -> None:
        self._send(client, start)

    def _send(self, client: Client, at: float) -> None:
        if client.sent < len(client.services):
            client.sent += 1
            self.arrive(at, client.model, client.services[client.sent - 1], client)

    # ----- the loop ------------------------------------------------------------------------------
    def run(self, max_events: int = 100_000) -> None:  # the tests' runs need < 2,000
        for _ in range(max_events):
            if not self._events:
                break
            self.events += 1
            at, _, step = heapq.heappop(self._events)
            self.now = at
            step()
            self._settle()
        else:
            raise SimError(f"no progress after {max_events} events at t={self.now}")
        for m in self.members.values():
            self.spans.append(Span(m.spec.name, m.state, m.state_since, self.now))
        left = [r for r in self.requests if r.end is None]
        if left or self._switch is not None:
            raise SimError(f"deadlock at t={self.now}: {len(left)} unserved; {self.view()}")

    def _at(self, at: float, step: Callable[[], None]) -> None:
        heapq.heappush(self._events, (at, next(self._seq), step))

    def _settle(self) -> None:
        self._admit()
        self._check()
        if self._switch is None:
            self._decide()
            self._admit()  # a free-slot switch with nothing to do changes nothing; cheap
            self._check()

    def _admit(self) -> None:
        for m in self.members.values():
            while m.queue and m.state is BackendState.READY and not m.draining:
                r = m.queue.popleft()
                r.start = self.now
                self._run(m, r, self.now + r.service_s)

    def _run(self, m: _Member, r: Request, due: float) -> None:
        m.running.append(r)
        m.last_used = self.now
        r.due, r.runs = due, r.runs + 1
        self._at(due, partial(self._done, r, r.runs))

    def _done(self, r: Request, run: int) -> None:
        if run != r.runs:
            return  # it was paused meanwhile
        m = self.members[r.model]
        r.end = self.now
        m.running.remove(r)
        m.last_used = self.now
        if r.client is not None:
            self._send(r.client, self.now + r.client.think_s)
        if self._drain is not None and all(self.members[v].in_flight == 0 for v in self._drain):
            self._drain = None
            self._next()

    # ----- what the policy sees and says ---------------------------------------------------------
    def view(self) -> GroupView:
        models = tuple(
            ModelView(
                name=m.spec.name,
                state=m.state,
                holds_memory=m.state in HOLDERS,
                queue=tuple(m.paused_since for _ in m.paused if m.paused_since is not None)
                + tuple(r.arrival for r in m.queue),
                in_flight=m.in_flight,
                ready_since=m.ready_since,
                last_used=m.last_used,
                sleep_cost_s=m.spec.sleep_s,
                wake_cost_s=m.spec.wake_s,
                priority=m.spec.priority,
                preemptible=m.spec.preemptible,
                memory_gib=m.spec.memory_gib,
                asleep_memory_gib=m.spec.asleep_memory_gib,
            )
            for m in self.members.values()
        )
        return GroupView(
            "g0",
            self.max_awake,
            models,
            policy=self.policy,
            max_wait_s=self.max_wait_s,
            min_residency_s=self.min_residency_s,
            memory_gib=self.memory_gib,
        )

    def _decide(self) -> None:
        view = self.view()
        d = self._decide_fn(view, self.now)
        self.decisions += 1
        if d.target is None:
            return
        if d.blocked_by:
            raise SimError(f"blocked without a failed member at t={self.now}: {d}; {view}")
        if d.switch_now:
            self._start(d)
            return
        if d.recheck_at is None:
            return  # until the next event (a run that has none left deadlocked)
        if d.recheck_at <= self.now:
            raise SimError(f"hold without a future recheck_at at t={self.now!r}: {d}; {view}")
        if d.recheck_at not in self._rechecks:
            self._rechecks.add(d.recheck_at)
            self._at(d.recheck_at, partial(self._rechecks.discard, d.recheck_at))

    # ----- a switch, step by step ----------------------------------------------------------------
    def _start(self, d: Decision) -> None:
        assert d.target is not None
        sw = Switch(self.now, d.target, d.victims, d.wake_first, d.reason)
        self._switch = sw
        self.switches.append(sw)
        if not set(d.preempt) <= set(d.victims):
            raise SimError(f"preempting a model that is not a victim: {d}")
        drained = tuple(v for v in d.victims if v not in d.preempt)
        drain_and_sleep: list[Callable[[], None]] = [partial(self._begin_drain, drained)]
        for v in d.victims:
            sleep = partial(self._transition, v, BackendState.SLEEPING, v in d.preempt)
            drain_and_sleep.append(sleep)
        wake: list[Callable[[], None]] = [partial(self._transition, sw.target, BackendState.WAKING)]
        steps = wake + drain_and_sleep if d.wake_first else drain_and_sleep + wake
        self._steps = deque([*steps, self._finish])
        self._next()

    def _next(self) -> None:
        self._steps.popleft()()

    def _begin_drain(self, victims: tuple[str, ...]) -> None:
        for v in victims:
            self.members[v].draining = True
        if all(self.members[v].in_flight == 0 for v in victims):
            self._next()
        else:
            self._drain = victims

    def _transition(self, name: str, via: BackendState, preempt: bool = False) -> None:
        m = self.members[name]
        assert m.state is (
            BackendState.READY if via is BackendState.SLEEPING else BackendState.ASLEEP
        )
        if preempt:  # mode=keep: what runs now pauses, and waits for the next wake
            for r in m.running:
                r.runs += 1
                r.due -= self.now
                r.pauses.append((self.now, -1.0))
            m.paused, m.running, m.paused_since = m.running, [], self.now
        assert m.in_flight == 0 or via is BackendState.WAKING
        self._set(m, via)
        cost = m.spec.sleep_s if via is BackendState.SLEEPING else m.spec.wake_s

        def land() -> None:
            if via is BackendState.SLEEPING:
                m.draining = False
                self._set(m, BackendState.ASLEEP)
            else:
                self._set(m, BackendState.READY)
                m.ready_since, m.paused_since = self.now, None
                for r in m.paused:
                    r.pauses[-1] = (r.pauses[-1][0], self.now)
                    self._run(m, r, self.now + r.due)
                m.paused = []
            self._next()

        self._at(self.now + cost, land)

    def _finish(self) -> None:
        assert self._switch is not None
        self._switch.end = self.now
        self._switch = None

    def _set(self, m: _Member, state: BackendState) -> None:
        self.spans.append(Span(m.spec.name, m.state, m.state_since, self.now))
        m.state, m.state_since = state, self.now

    # ----- invariants ----------------------------------------------------------------------------
    def _check(self) -> None:
        holders = [m for m in self.members.values() if m.state in HOLDERS]
        allowed = self.max_awake
        if self._switch is not None and self._switch.wake_first:
            allowed += len(self._switch.victims)
        if len(holders) > allowed:
            raise SimError(
                f"{len(holders)} awake, {allowed} allowed at t={self.now}: {self.view()}"
            )
        self.max_overlap = max(self.max_overlap, len(holders) - self.max_awake)
        if self.memory_gib is None or any(m.spec.memory_gib is None for m in holders):
            return
        used = sum(
            (m.spec.memory_gib or 0.0) if m.state in HOLDERS else m.spec.residual_gib
            for m in self.members.values()
        )
        if used > self.memory_gib + 1e-9:
            raise SimError(
                f"{used:g} GiB used of {self.memory_gib:g} at t={self.now}: {self.switches[-1]}"
            )
