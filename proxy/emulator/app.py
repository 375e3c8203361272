"""The emulated vLLM HTTP app: route wiring, auth, error envelopes, always-on endpoints.

`create_app` builds the FastAPI object around one `Engine`; it does no I/O. Error handlers
reproduce vLLM 0.26.0's bodies: the `{"error": {...}}` envelope for validation and engine
errors, FastAPI's `{"detail": ...}` for unknown routes and wrong methods, and the flat
`{"error": "Unauthorized"}` of the API-key middleware.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException

from proxy.emulator import dev_routes, generation_routes, messages, pooling_routes
from proxy.emulator.engine import ENGINE_DEAD, Engine, EngineDeadError
from proxy.emulator.frontend import ModelNotFoundError
from proxy.emulator.ledger import GpuLedger
from proxy.emulator.metrics import EngineMetrics
from proxy.emulator.protocol import VLLM_VERSION, VllmValidationError, error_body, model_card

_AUTH_PREFIXES = ("/v1", "/v2", "/inference")
_GENERATION_PATHS = frozenset(
    {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/responses",
        "/v1/messages",
        "/v1/embeddings",
        "/pooling",
        "/classify",
        "/score",
        "/v1/score",
        "/rerank",
        "/v1/rerank",
        "/v2/rerank",
    }
)
_FAULTS = frozenset({"wake_oom", "hang_sleep", "hang_wake", "die_on_request"})


def _clean_loc(loc: tuple[Any, ...]) -> str:
    """The loc as vLLM 0.26 names the param: without a union member's validator tag."""
    return ".".join(str(p) for p in loc if not str(p).startswith("function-wrap["))


def _error_param(error: Any) -> str | None:
    """A VLLMValidationError raised by a validator names its parameter; else the loc does."""
    if not isinstance(error, dict):
        return None
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, VllmValidationError) and cause.param is not None:
        return cause.param
    return _clean_loc(tuple(error["loc"])) if error.get("loc") else None


async def _validation_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    param = _error_param(errors[0]) if errors else None
    label = "error" if len(errors) == 1 else "errors"
    message = (
        f"{len(errors)} validation {label}:\n" + "".join(f"  {e}\n" for e in errors)
    ).rstrip()
    return JSONResponse(error_body(message, "Bad Request", 400, param), status_code=400)


async def _http_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code in (404, 405):  # routing errors keep FastAPI's shape
        return JSONResponse(
            {"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers
        )
    return JSONResponse(
        error_body(str(exc.detail), HTTPStatus(exc.status_code).phrase, exc.status_code),
        status_code=exc.status_code,
    )


async def _vllm_validation(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, VllmValidationError)
    return JSONResponse(error_body(str(exc), "BadRequestError", 400, exc.param), status_code=400)


async def _not_found(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, ModelNotFoundError)
    return JSONResponse(error_body(str(exc), "NotFoundError", 404, exc.param), status_code=404)


async def _internal(_: Request, exc: Exception) -> Response:
    """Catch-all (Starlette's ServerErrorMiddleware): answers 500, then the error propagates."""
    return JSONResponse(error_body(str(exc), "InternalServerError", 500), status_code=500)


async def _dead(_: Request, __: Exception) -> Response:
    return JSONResponse(error_body(ENGINE_DEAD, "InternalServerError", 500), status_code=500)


def create_app(
    engine: Engine, *, ledger: GpuLedger, metrics: EngineMetrics, dev_mode: bool
) -> FastAPI:
    settings = engine.settings
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine
    started = int(time.time())
    load = {"n": 0}

    @app.middleware("http")
    async def frontend(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        path = request.url.path
        if settings.api_keys and request.method != "OPTIONS" and path.startswith(_AUTH_PREFIXES):
            given = request.headers.get("authorization", "")
            if not any(secrets.compare_digest(given, f"Bearer {k}") for k in settings.api_keys):
                return JSONResponse(
                    {"error": "Unauthorized"}, status_code=401, headers={"vary": "Origin"}
                )
        tracked = settings.enable_server_load_tracking and path in _GENERATION_PATHS
        load["n"] += tracked
        try:
            response = await call_next(request)
        finally:
            load["n"] -= tracked
        response.headers["vary"] = "Origin"
        if settings.enable_request_id_headers:
            response.headers["X-Request-Id"] = request.headers.get(
                "x-request-id"
            ) or secrets.token_hex(16)
        return response

    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(VllmValidationError, _vllm_validation)
    app.add_exception_handler(ModelNotFoundError, _not_found)
    app.add_exception_handler(EngineDeadError, _dead)
    app.add_exception_handler(Exception, _internal)

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=503 if engine.dead else 200)

    @app.api_route("/ping", methods=["GET", "POST"])
    async def ping() -> Response:
        return Response(status_code=503 if engine.dead else 200)

    @app.get("/version")
    async def version() -> JSONResponse:
        return JSONResponse({"version": VLLM_VERSION})

    @app.get("/load")
    async def server_load() -> JSONResponse:
        return JSONResponse({"server_load": load["n"]})

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        cards = [
            model_card(n, settings.model, settings.max_model_len, started)
            for n in settings.served_model_names
        ]
        return JSONResponse({"object": "list", "data": cards})

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/_emulator/stats")
    async def stats() -> JSONResponse:
        """Test-only introspection: exact call counts, engine state and the GPU ledger."""
        return JSONResponse(
            {
                "stats": dict(engine.stats),
                "state": engine.snapshot(),
                "ledger": ledger.snapshot().as_dict(),
                "pid_held_bytes": ledger.held(),
            }
        )

    @app.post("/_emulator/faults")
    async def faults(request: Request) -> JSONResponse:
        """Test-only fault injection: {"add": [...], "remove": [...], "die": true}."""
        body = await request.json()
        unknown = set(body.get("add", [])) - _FAULTS
        if unknown:
            return JSONResponse(
                error_body(
                    f"unknown faults {sorted(unknown)}; known: {sorted(_FAULTS)}",
                    "BadRequestError",
                    400,
                ),
                status_code=400,
            )
        engine.faults |= set(body.get("add", []))
        engine.faults -= set(body.get("remove", []))
        if body.get("die"):
            engine.die("injected fault: die")
        return JSONResponse({"faults": sorted(engine.faults)})

    if settings.task == "generate":  # audio routes exist only for ASR models: 404 here
        app.include_router(generation_routes.router)
        app.include_router(messages.router)
    else:
        app.include_router(pooling_routes.pooling_router)
    if settings.task == "embed":
        app.include_router(pooling_routes.embed_router)
        app.include_router(pooling_routes.score_router)
    if settings.task == "classify":
        app.include_router(pooling_routes.classify_router)
    app.include_router(generation_routes.common_router)
    if dev_mode:
        app.include_router(dev_routes.router)
    return app
