"""watching_client: a client's disconnect cancels the request's work and surfaces as
ClientGoneError; any other cancellation stays a cancellation, even when both come together."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from proxy.errors import ClientGoneError
from proxy.http.disconnect import watching_client


class Client:
    """An ASGI receive() that says `http.disconnect` once `leave()` is called."""

    def __init__(self) -> None:
        self._gone = asyncio.Event()
        self.told = asyncio.Event()  # set in the same step that hands the watcher its answer

    def leave(self) -> None:
        self._gone.set()

    async def receive(self) -> dict[str, Any]:
        await self._gone.wait()
        self.told.set()
        return {"type": "http.disconnect"}


async def test_disconnect_cancels_the_work_and_raises_client_gone() -> None:
    client, started, cleaned = Client(), asyncio.Event(), asyncio.Event()

    async def work() -> None:
        started.set()
        try:
            await asyncio.Event().wait()  # a wait that only a cancel ends
        finally:
            cleaned.set()

    async def request() -> None:
        async with watching_client(client.receive):
            await work()

    task = asyncio.ensure_future(request())
    await started.wait()
    client.leave()
    with pytest.raises(ClientGoneError):
        await task
    assert cleaned.is_set()


@pytest.mark.parametrize("client_leaves_too", [False, True])
async def test_a_cancel_from_elsewhere_stays_a_cancel(client_leaves_too: bool) -> None:
    client, started = Client(), asyncio.Event()

    async def request() -> None:
        async with watching_client(client.receive):
            started.set()
            await asyncio.Event().wait()

    task = asyncio.ensure_future(request())
    await started.wait()
    if client_leaves_too:
        client.leave()
        await client.told.wait()  # the watcher has cancelled the request (it has not run yet)
    task.cancel()  # e.g. the server shutting down
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_disarmed_watch_ignores_the_disconnect() -> None:
    client, proceed = Client(), asyncio.Event()

    async def request() -> str:
        async with watching_client(client.receive) as watch:
            watch.armed = False  # e.g. the response is complete
            client.leave()
            await proceed.wait()
        return "done"

    task = asyncio.ensure_future(request())
    await client.told.wait()  # the watcher has seen the disconnect (and must ignore it)
    proceed.set()
    assert await task == "done"


async def test_work_that_swallows_the_cancel_keeps_its_result_and_the_cancel_is_taken_back() -> (
    None
):
    client, started = Client(), asyncio.Event()

    async def stubborn() -> str:
        started.set()
        with contextlib.suppress(asyncio.CancelledError):  # and finishes anyway
            await asyncio.Event().wait()
        return "a lease"

    async def request() -> tuple[str, int]:
        me = asyncio.current_task()
        assert me is not None
        async with watching_client(client.receive):
            got = await stubborn()
        return got, me.cancelling()

    task = asyncio.ensure_future(request())
    await started.wait()
    client.leave()
    # the result is the caller's to free (nothing is lost); outer timeouts keep working
    assert await task == ("a lease", 0)
