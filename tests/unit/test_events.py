"""The event stream's hub (observability/events.py): every subscriber gets every event from its
subscription on, a slow one loses its oldest with a notice, and publishing never blocks."""

from __future__ import annotations

import pytest

from proxy.observability import events as ev
from proxy.observability.events import Events

pytestmark = pytest.mark.looptime


async def test_each_subscriber_gets_the_events_published_while_it_listens() -> None:
    hub = Events()
    hub.publish("state", model="before")
    async with hub.subscribe() as one, hub.subscribe() as two:
        assert hub.subscribers == 2
        hub.publish("switch", to="a")
        hub.publish("state", model="a")
        for sub in (one, two):
            got = await sub.next(timeout_s=1)
            assert [(e.type, e.id) for e in got] == [("switch", 2), ("state", 3)]
    assert hub.subscribers == 0
    assert [e.id for e in hub.recent()] == [1, 2, 3]


async def test_a_quiet_stream_returns_nothing_after_its_timeout() -> None:
    hub = Events()
    async with hub.subscribe() as sub:
        assert await sub.next(timeout_s=15) == []


async def test_a_slow_subscriber_loses_its_oldest_events_and_is_told(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ev, "QUEUE", 3)
    hub = Events()
    async with hub.subscribe() as sub:
        for i in range(5):
            hub.publish("state", n=i)
        got = await sub.next(timeout_s=1)
    assert got[0].type == "dropped"
    assert got[0].data == {"count": 2}
    assert [e.data["n"] for e in got[1:]] == [2, 3, 4]
