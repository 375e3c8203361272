"""Operations surface: /health (liveness), /ready (readiness), /metrics, /admin/status.

Stateless: each handler reads the app's Services (backends, switcher, metrics) and changes nothing."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from proxy import __version__
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
