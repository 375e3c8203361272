"""watching_client: run the current task's work, and stop it when the client disconnects (or
when the server ends it: `Watch.end`, used by max_hold_s for an answer not yet begun).

The work runs in the request's own task; one watcher task waits for ASGI's `http.disconnect`
and cancels the request task. Inside the block that surfaces as `ClientGoneError`, any other
cancellation (server shutdown, an outer timeout) stays a cancellation. Work that is cancelled
this way must clean up after itself (the switcher's lease() leaves its queue; the upstream
transport closes a half-used connection), exactly as under any other cancellation.

Why not two tasks (work, watcher) and wait for the first: that costs a task and a context
switch more per request and needs a callback to free what the abandoned work still produces.

State: a `Watch` is owned by one request; `armed` is the owner's switch for whether a
disconnect still matters (uvicorn also reports one after a response is complete).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from starlette.types import Receive

from proxy.errors import ClientGoneError, ProxyError


@dataclass
class Watch:
    armed: bool = True
    left: bool = False  # the client disconnected while armed
    ended: ProxyError | None = None  # the server ended the work (`end`)
    _task: asyncio.Task[object] | None = None

    def end(self, error: ProxyError) -> None:
        """Stop the enclosed work from outside it (a switch that held the model past
        max_hold_s): the block raises `error`. Once; never after the client left."""
        if self.armed and not self.left and self.ended is None and self._task is not None:
            self.ended = error
            self._task.cancel()

    @property
    def stopped(self) -> bool:
        return self.left or self.ended is not None


@contextlib.asynccontextmanager
async def watching_client(receive: Receive) -> AsyncIterator[Watch]:
    """Cancel the enclosed work if the client disconnects (it then raises `ClientGoneError`)
    or if `Watch.end(error)` is called (it then raises `error`)."""
    me = asyncio.current_task()
    assert me is not None
    watch = Watch(_task=me)

    async def wait() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        if watch.armed and watch.ended is None:
            watch.left = True
            me.cancel()

    watcher = asyncio.ensure_future(wait())
    try:
        yield watch
    except asyncio.CancelledError:
        if watch.stopped and me.uncancel() == 0:  # our own cancel, and nobody else's
            if watch.ended is not None:
                raise watch.ended from None
            raise ClientGoneError from None
        raise
    except BaseException:
        if watch.stopped:  # the work turned our cancel into another error: take the cancel back
            me.uncancel()
        raise
    else:
        # The work swallowed our cancel and finished: take the cancel back and let its result
        # stand - the caller owns what it got (a lease, a response) and frees it as usual; the
        # next wait (or the response's own watch) sees the client gone.
        if watch.stopped:
            me.uncancel()
    finally:
        watcher.cancel()
