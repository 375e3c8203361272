"""One HTTP request, several engine requests: vLLM 0.26 runs each of `n` choices (and each
embedding input) as its own request in the engine, so each is queued, admitted, counted and
aborted like any other - including waiting silently while the engine sleeps.

`collect` waits for all of them (aborting them all if the client leaves); `merged` yields
their outputs as the engine produces them, for streaming. Owns no state beyond the pump tasks
of one `merged` call, which it cancels before returning.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from fastapi import Request

from proxy.emulator.engine import Engine
from proxy.emulator.engine_request import EngineRequest, Output
from proxy.emulator.protocol import new_id


def submit(
    engine: Engine,
    prompt_ids: list[int],
    max_tokens: int,
    *,
    min_tokens: int = 0,
    ignore_eos: bool = False,
    seed: int | None = None,
    script: list[tuple[int, str]] | None = None,
) -> EngineRequest:
    """Queue one request in the engine (raises EngineDeadError once the engine died)."""
    req = EngineRequest(
        request_id=new_id("req"),
        prompt_ids=prompt_ids,
        max_tokens=max_tokens,
        min_tokens=min_tokens,
        ignore_eos=ignore_eos,
        seed=seed,
        script=script,
    )
    engine.add_request(req)
    return req


async def collect(
    request: Request, engine: Engine, reqs: Sequence[EngineRequest]
) -> list[list[Output]] | None:
    """Every request's outputs once all are finished; None if the client disconnected first."""

    async def gather(req: EngineRequest) -> list[Output]:
        outputs: list[Output] = []
        while not (out := await req.outputs.get()).final:
            outputs.append(out)
        outputs.append(out)
        return outputs

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    async def gather_all() -> list[list[Output]]:
        return list(await asyncio.gather(*(gather(r) for r in reqs)))

    gathering = asyncio.create_task(gather_all())
    watching = asyncio.create_task(disconnected())
    try:
        await asyncio.wait({gathering, watching}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watching.cancel()
        if not gathering.done():
            gathering.cancel()
            for req in reqs:
                engine.cancel(req)
    (result,) = await asyncio.gather(gathering, return_exceptions=True)
    return result if isinstance(result, list) else None


async def merged(reqs: Sequence[EngineRequest]) -> AsyncIterator[tuple[int, Output]]:
    """(choice index, output) in the order the engine produced them, until every choice
    finished; stops after the first engine error (an output with `error`)."""
    queue: asyncio.Queue[tuple[int, Output]] = asyncio.Queue()

    async def pump(index: int, req: EngineRequest) -> None:
        while True:
            out = await req.outputs.get()
            queue.put_nowait((index, out))
            if out.final:
                return

    pumps = [asyncio.create_task(pump(i, r)) for i, r in enumerate(reqs)]
    try:
        open_choices = len(reqs)
        while open_choices:
            index, out = await queue.get()
            yield index, out
            if out.error is not None:
                return
            open_choices -= out.final
    finally:
        for task in pumps:
            task.cancel()
