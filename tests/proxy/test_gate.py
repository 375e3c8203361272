"""SingleFlight: one run for many callers; a caller leaving never cancels the run."""

from __future__ import annotations

import asyncio

import pytest

from proxy.switching.single_flight import SingleFlight


class Op:
    def __init__(self) -> None:
        self.runs = 0
        self.release = asyncio.Event()
        self.fail = False

    async def __call__(self) -> int:
        self.runs += 1
        await self.release.wait()
        if self.fail:
            raise RuntimeError("wake failed")
        return self.runs


async def test_concurrent_callers_share_one_run() -> None:
    op = Op()
    flight = SingleFlight(op, name="t")
    callers = [asyncio.create_task(flight()) for _ in range(10)]
    await asyncio.sleep(0)
    assert flight.in_flight
    op.release.set()
    assert await asyncio.gather(*callers) == [1] * 10
    assert op.runs == 1
    assert not flight.in_flight


@pytest.mark.parametrize("cancelled", [1, 5, 10])
async def test_cancelled_callers_do_not_cancel_the_run(cancelled: int) -> None:
    op = Op()
    flight = SingleFlight(op, name="t")
    callers = [asyncio.create_task(flight()) for _ in range(10)]
    await asyncio.sleep(0)
    for task in callers[:cancelled]:
        task.cancel()
    op.release.set()
    results = await asyncio.gather(*callers, return_exceptions=True)
    assert sum(isinstance(r, asyncio.CancelledError) for r in results) == cancelled
    assert results[cancelled:] == [1] * (10 - cancelled)
    assert op.runs == 1


async def test_failure_reaches_every_caller_and_the_next_call_runs_again() -> None:
    op = Op()
    op.fail = True
    flight = SingleFlight(op, name="t")
    callers = [asyncio.create_task(flight()) for _ in range(3)]
    await asyncio.sleep(0)
    op.release.set()
    results = await asyncio.gather(*callers, return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    op.fail = False
    assert await flight() == 2
