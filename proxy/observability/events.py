"""Events: what happened to the models, as a stream for operators (`GET /admin/events`, SSE).

The switching core publishes - a backend's state change, each switch with its timings, each
scheduling decision that holds or switches a group - and every subscriber gets every event
from its subscription on. Publishing is synchronous and never blocks: a subscriber that does
not keep up loses its oldest events (its next read says how many, `dropped`), never slows a
switch. The last few events are kept for a subscriber that just arrived (`recent`).

State: an Events object (one per Services) owns its subscribers' queues and the recent ring;
publishers only call `publish`, the HTTP route only subscribes.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from proxy.backends import Backend

RECENT = 100  # events replayed to a new subscriber
QUEUE = 1000  # events kept per subscriber that reads slower than they come


@dataclass(frozen=True)
class Event:
    id: int
    type: str  # state | switch | decision | dropped
    at: float  # wall clock, seconds since the epoch
    data: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "type": self.type, "at": round(self.at, 3), **self.data}


@dataclass(eq=False)  # hashed by identity: the subscribers are a set
class Subscription:
    queue: deque[Event] = field(default_factory=lambda: deque(maxlen=QUEUE))
    dropped: int = 0
    _ready: asyncio.Event = field(default_factory=asyncio.Event)

    def put(self, event: Event) -> None:
        if len(self.queue) == self.queue.maxlen:
            self.dropped += 1
        self.queue.append(event)
        self._ready.set()

    async def next(self, timeout_s: float) -> list[Event]:
        """The events waiting (after a `dropped` notice if some were lost), or [] after
        `timeout_s` without any."""
        if not self.queue:
            self._ready.clear()
            try:
                async with asyncio.timeout(timeout_s):
                    await self._ready.wait()
            except TimeoutError:
                return []
        events = list(self.queue)
        self.queue.clear()
        if self.dropped:
            lost = Event(0, "dropped", time.time(), {"count": self.dropped})
            events.insert(0, lost)
            self.dropped = 0
        return events


class Events:
    def __init__(self) -> None:
        self._subscribers: set[Subscription] = set()
        self._recent: deque[Event] = deque(maxlen=RECENT)
        self._ids = itertools.count(1)

    def publish(self, type_: str, **data: Any) -> None:
        event = Event(next(self._ids), type_, time.time(), data)
        self._recent.append(event)
        for sub in self._subscribers:
            sub.put(event)

    def recent(self) -> list[Event]:
        return list(self._recent)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[Subscription]:
        sub = Subscription()
        self._subscribers.add(sub)
        try:
            yield sub
        finally:
            self._subscribers.discard(sub)


def state_changes(events: Events, backend: Backend) -> Callable[[], None]:
    """A backend listener that publishes its state changes as `state` events (its other
    changes - leases, drain - are not events). Owns the last state it published."""
    last = [backend.state]

    def changed() -> None:
        if backend.state is not last[0]:
            events.publish(
                "state",
                model=backend.name,
                gpu=backend.config.gpu,
                state=backend.state.value,
                previous=last[0].value,
                failure=backend.failure,
            )
            last[0] = backend.state

    return changed
