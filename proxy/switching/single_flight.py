"""SingleFlight: at most one run of an operation at a time; concurrent callers share it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    """Owns the one in-flight task of `fn` (if any).

    The shared task is never cancelled by a caller leaving (client disconnect, caller
    deadline): a half-finished switch is worse than a finished one nobody waited for. Bound it
    with timeouts *inside* `fn`. After it ends, the next caller starts a new run.
    """

    def __init__(self, fn: Callable[[], Coroutine[Any, Any, T]], *, name: str) -> None:
        self._fn = fn
        self._name = name
        self._task: asyncio.Task[T] | None = None

    @property
    def in_flight(self) -> bool:
        return self._task is not None

    async def __call__(self) -> T:
        if self._task is None:  # registered before any await: one task per flight
            self._task = asyncio.create_task(self._fn(), name=self._name)
            self._task.add_done_callback(self._on_done)
        return await asyncio.shield(self._task)

    def _on_done(self, task: asyncio.Task[T]) -> None:
        self._task = None
        if not task.cancelled():
            task.exception()  # retrieved: waiters got it through the shield

    async def cancel(self) -> None:
        """Shutdown only."""
        task = self._task
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
