"""Development endpoints (`VLLM_SERVER_DEV_MODE=1`): sleep, wake, pause, RPC, caches.

Exactly vLLM 0.26.0's parameters and bodies: `level` and `mode` come from the query string
only (a JSON body, or the blog's `sleep_level`, is ignored); success is an empty 200.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response

from proxy.emulator.engine import Engine, EngineCallError
from proxy.emulator.protocol import error_body

router = APIRouter()


def _engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


class CallFailedError(Exception):
    """A failed engine utility call. Deliberately *not* handled by a specific handler: as in
    vLLM, it reaches the catch-all `Exception` handler in Starlette's ServerErrorMiddleware,
    which sends the 500 body and then re-raises, so uvicorn closes the connection. A client
    that reuses that keep-alive connection gets a reset (seen on real vLLM 0.26.0)."""

    def __init__(self, method: str, exc: EngineCallError) -> None:
        super().__init__(f"Call to {method} method failed: {exc}")


@router.post("/sleep")
async def sleep(request: Request) -> Response:
    level_text = request.query_params.get("level", "1")
    mode = request.query_params.get("mode", "abort")
    try:
        level = int(level_text)
    except ValueError as exc:
        return JSONResponse(error_body(str(exc), "BadRequestError", 400), status_code=400)
    try:
        await _engine(request).sleep(level, mode)
    except EngineCallError as exc:
        raise CallFailedError("sleep", exc) from exc
    return Response(status_code=200)


@router.post("/wake_up")
async def wake_up(request: Request) -> Response:
    tags = request.query_params.getlist("tags") or None
    try:
        await _engine(request).wake_up(tags)
    except EngineCallError as exc:
        raise CallFailedError("wake_up", exc) from exc
    return Response(status_code=200)


@router.get("/is_sleeping")
async def is_sleeping(request: Request) -> JSONResponse:
    return JSONResponse({"is_sleeping": await _engine(request).query_is_sleeping()})


@router.post("/pause")
async def pause(
    request: Request,
    mode: Literal["abort", "wait", "keep"] = Query("abort"),
    clear_cache: bool = Query(True),
    wait_for_inflight_requests: bool = Query(False),
) -> JSONResponse:
    await _engine(request).pause(
        "wait" if wait_for_inflight_requests else mode, clear_cache=clear_cache
    )
    return JSONResponse({"status": "paused"})


@router.post("/resume")
async def resume(request: Request) -> JSONResponse:
    await _engine(request).resume()
    return JSONResponse({"status": "resumed"})


@router.get("/is_paused")
async def is_paused(request: Request) -> JSONResponse:
    return JSONResponse({"is_paused": await _engine(request).query_is_paused()})


@router.post("/abort_requests")
async def abort_requests(request: Request) -> JSONResponse:
    raw = await request.body()
    try:
        body: Any = json.loads(raw) if raw else {}
    except ValueError:
        return JSONResponse(error_body("Invalid JSON format", "Bad Request", 400), status_code=400)
    ids = body.get("request_ids") if isinstance(body, dict) else None
    aborted = _engine(request).abort_requests(list(ids) if ids else None)
    return JSONResponse({"status": "aborted", "aborted": aborted})


@router.post("/collective_rpc")
async def collective_rpc(request: Request) -> Response:
    try:
        body: Any = json.loads(await request.body())
    except ValueError as exc:
        return JSONResponse(
            error_body(f"JSON decode error: {exc}", "Bad Request", 400), status_code=400
        )
    method = body.get("method") if isinstance(body, dict) else None
    if not method:
        return JSONResponse(
            error_body("Missing 'method' in request body", "Bad Request", 400), status_code=400
        )
    try:
        results = await _engine(request).collective_rpc(str(method))
    except EngineCallError as exc:
        raise CallFailedError("collective_rpc", exc) from exc
    return JSONResponse({"results": results})


@router.post("/reset_prefix_cache")
async def reset_prefix_cache(
    request: Request,
    reset_running_requests: bool = Query(False),
    reset_external: bool = Query(False),
) -> JSONResponse:
    success = await _engine(request).reset_prefix_cache(
        reset_running_requests=reset_running_requests
    )
    return JSONResponse({"success": success})


@router.post("/reset_mm_cache")
@router.post("/reset_encoder_cache")
async def reset_other_cache() -> Response:
    return Response(status_code=200)


@router.get("/server_info")
async def server_info(request: Request) -> JSONResponse:
    s = _engine(request).settings
    model_config = {
        "model": s.model,
        "served_model_name": list(s.served_model_names),
        "max_model_len": s.max_model_len,
        "enable_sleep_mode": s.enable_sleep_mode,
    }
    cache_config = {"gpu_memory_utilization": s.gpu_memory_utilization}
    return JSONResponse(
        {
            "vllm_config": {"model_config": model_config, "cache_config": cache_config},
            "vllm_env": {"VLLM_SERVER_DEV_MODE": "1"},
            "system_env": {"emulated": True},
        }
    )
