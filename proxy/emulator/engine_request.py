"""One generation request inside the emulated engine, and the engine's change signal.

An `EngineRequest` is created by an HTTP handler and handed to `Engine.add_request`; from then
on only the engine writes its fields. The handler only reads `outputs` (a queue of `Output`s
ending with one whose `finish_reason` or `error` is set).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Output:
    """One step of a request: a token, or the end (finish reason or engine error)."""

    token_id: int | None = None
    text: str = ""
    finish_reason: str | None = None
    error: str | None = None

    @property
    def final(self) -> bool:
        return self.finish_reason is not None or self.error is not None


@dataclass(eq=False)
class EngineRequest:
    request_id: str
    prompt_ids: list[int]
    max_tokens: int
    min_tokens: int = 0
    ignore_eos: bool = False
    seed: int | None = None
    script: list[tuple[int, str]] | None = None  # fixed (token id, text) steps, e.g. JSON
    arrival: float = field(default_factory=time.monotonic)
    outputs: asyncio.Queue[Output] = field(default_factory=asyncio.Queue)
    generated: list[int] = field(default_factory=list)
    finished: bool = False
    admitted_once: bool = False
    first_token_at: float | None = None
    rng: random.Random | None = None
    natural_length: int = 0
    task: asyncio.Task[None] | None = None


class Signal:
    """Wakes every waiter whenever engine state changes; waiters re-check their predicate.

    `changed()` is synchronous, so state changes and the wake-up happen between two awaits.
    """

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def changed(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            await self._event.wait()
