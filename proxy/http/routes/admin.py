"""Operations surface: /health (liveness), /ready (readiness), /metrics, /admin/status, the
event stream /admin/events (SSE) and the model controls POST /admin/models/{name}/{action}.

Stateless: the read-only handlers read the app's Services (backends, switcher, metrics); the
model controls act only through the Operator (switching/operator.py: the same locks and policy
as requests), in a task of their own, so that a client who leaves never cuts a step in half."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST

from proxy import __version__
from proxy.backends.adopted import AdoptedProcess
from proxy.errors import ModelNotFoundError, NotFoundError
from proxy.http.routes import schemas
from proxy.observability.events import Event
from proxy.services import Services

router = APIRouter()


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def readiness(services: Services) -> list[str]:
    """Why the proxy is not ready; empty when it is."""
    problems = []
    groups = services.switcher.groups()
    if not all(g.reconciled.is_set() for g in groups):
        problems.append("start-up: backends are still being reconciled")
    for g in groups:
        if g.stuck:
            problems.append(f"gpu {g.name}: switch stuck in {g.phase} for {g.phase_s:.0f}s")
    if all(g.reconciled.is_set() for g in groups) and not services.switcher.servable():
        failed = [f"{b.name}: {b.failure}" for b in services.backends.values() if b.failure]
        problems.append(
            "no model can be served (failed for good, or in a GPU group blocked by a failed "
            "member that may hold memory)" + (f": {'; '.join(failed)}" if failed else "")
        )
    return problems


@router.get("/health")
async def health() -> JSONResponse:
    return JSONResponse({"status": "ok"})


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    problems = readiness(_services(request))
    return JSONResponse(
        {"ready": not problems, "problems": problems}, status_code=503 if problems else 200
    )


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
async def metrics(request: Request) -> Response:
    return Response(_services(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)


def status(services: Services) -> dict[str, Any]:
    waiting = services.switcher.waiting
    models: list[dict[str, Any]] = []
    for b in services.backends.values():
        c = b.config
        proc = services.supervisor.process(b.name)
        models.append(
            {
                "name": b.name,
                "aliases": list(c.aliases),
                "gpu": c.gpu,
                "url": c.base_url,
                "sleep_level": c.sleep_level,
                "state": b.state.value,
                "failure": b.failure,
                "awake_since": b.awake_since,
                "inflight": b.leases,
                "queue_depth": waiting[b.name],
                "last_sleep_ms": b.last_sleep_ms,
                "last_wake_ms": b.last_wake_ms,
                "last_warmup_ms": b.last_warmup_ms,
                "process": None
                if proc is None
                else {
                    "pid": proc.pid,
                    # kept from before this proxy started (docs/deploy.md, adoption)
                    "adopted": isinstance(proc, AdoptedProcess),
                    "running": proc.running,
                    "exit_code": proc.returncode,
                    "restarts": services.supervisor.restarts(b.name),
                    "last_lines": proc.tail()[-10:],
                },
            }
        )
    gpus = [
        {
            "name": g.name,
            "max_awake": g.max_awake,
            "switch_in_progress": g.lock.locked(),
            "phase": g.phase,
            "phase_s": round(g.phase_s, 3),
            "reconciled": g.reconciled.is_set(),
        }
        for g in services.switcher.groups()
    ]
    problems = readiness(services)
    return {
        "version": __version__,
        "uptime_s": round(time.time() - services.started, 1),
        "ready": not problems,
        "problems": problems,
        "gpus": gpus,
        "models": models,
    }


@router.get("/admin/status")
async def admin_status(request: Request) -> JSONResponse:
    return JSONResponse(status(_services(request)))


ACTIONS = ("sleep", "wake", "restart", "reset")
KEEPALIVE_S = 15.0  # an SSE comment this often on a quiet stream (proxies and idle timeouts)


@router.post(
    "/admin/models/{name:path}/{action}",  # a name may hold a slash (Qwen/Qwen3-8B)
    responses=schemas.errors("400", "404", "409", "429", "502", "503", "504"),
)
async def model_action(request: Request, name: str, action: str) -> JSONResponse:
    """sleep | wake | restart | reset one model (switching/operator.py says what each does)."""
    services = _services(request)
    if action not in ACTIONS:
        raise NotFoundError(f"no action {action[:64]!r}; one of: {', '.join(ACTIONS)}")
    model = services.by_name.get(name)
    if model is None:
        raise ModelNotFoundError(
            f"The model `{name[:256]}` does not exist; available models: "
            f"{', '.join(sorted(services.by_name))}",
            param="name",
        )
    act = getattr(services.operator, action)
    task = asyncio.ensure_future(act(services.backends[model.name]))
    task.add_done_callback(_read_outcome)
    outcome = await asyncio.shield(task)  # cancelled here (shutdown): the step still completes
    return JSONResponse(outcome.as_dict())


def _read_outcome(task: asyncio.Future[Any]) -> None:
    """A shielded action whose request was cancelled: its failure is read (the operator logged
    it already), never left for "exception was never retrieved"."""
    if not task.cancelled():
        task.exception()


def _sse(event: Event) -> str:
    return f"id: {event.id}\nevent: {event.type}\ndata: {json.dumps(event.as_dict())}\n\n"


@router.get("/admin/events", response_class=StreamingResponse)
async def events(request: Request) -> StreamingResponse:
    """Server-sent events: `status` (the /admin/status snapshot) first, then the recent events,
    then each `state`, `switch`, `decision` and `operator` event as it happens (`dropped` when
    this client read too slowly to get them all); a comment every 15 s on a quiet stream."""
    services = _services(request)

    async def stream() -> AsyncIterator[str]:
        async with services.events.subscribe() as sub:
            yield f"event: status\ndata: {json.dumps(status(services))}\n\n"
            replayed = 0
            for event in services.events.recent():
                replayed = event.id
                yield _sse(event)
            while True:
                batch = await sub.next(KEEPALIVE_S)
                if not batch:
                    yield ": keep-alive\n\n"
                for event in batch:
                    if event.id == 0 or event.id > replayed:  # 0: a `dropped` notice
                        yield _sse(event)

    headers = {"cache-control": "no-store", "x-accel-buffering": "no"}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)
