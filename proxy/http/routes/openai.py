"""The public OpenAI-compatible surface: what clients may reach, and nothing else.

Backend dev endpoints (/sleep, /wake_up, /collective_rpc, ...) have no route here, so they are
unreachable through the proxy. The forwarded routes are the table of routes/table.py: inference
requests are forwarded only under a lease on a READY backend; the tokenizer routes (/tokenize,
/detokenize, /v1/messages/count_tokens) are answered by vLLM's front end even while it sleeps
(verified on an H100 by the conformance suite), so they are forwarded without a switch.
Stateless: a request's own state is its RequestRecord and its lease.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from proxy.backends import BackendState, Lease, WakeTimings
from proxy.config import ModelConfig
from proxy.errors import (
    BackendUnavailableError,
    ClientGoneError,
    NotFoundError,
    ProxyError,
)
from proxy.http.backend_errors import error_response, is_error
from proxy.http.disconnect import watching_client
from proxy.http.form import read_form, with_form_model
from proxy.http.forwarding import (
    UpstreamResponse,
    parse_json_object,
    read_body,
    request_headers,
    with_model,
)
from proxy.http.progress import ProgressStream
from proxy.http.rendering import render_error, upstream_failure
from proxy.http.routes import schemas
from proxy.http.routes.table import BY_PATH, ROUTES
from proxy.observability.requestlog import RequestRecord
from proxy.services import Services

router = APIRouter()
CLIENT_CLOSED = 499  # nginx's "client closed request"; nobody reads it
# states in which vLLM's front end answers /tokenize and /detokenize (asleep included)
FRONTEND_STATES = frozenset(
    {BackendState.READY, BackendState.ASLEEP, BackendState.SLEEPING, BackendState.WAKING}
)


def services_of(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def timing_headers(backend: str, queue_ms: float, t: WakeTimings) -> dict[str, str]:
    return {
        "x-vllm-switch-model": backend,
        "x-vllm-switch-queue-ms": f"{queue_ms:.1f}",
        "x-vllm-switch-sleep-ms": f"{t.sleep_ms:.1f}",
        "x-vllm-switch-wake-ms": f"{t.wake_ms:.1f}",
        "x-vllm-switch-warmup-ms": f"{t.warmup_ms:.1f}",
    }


async def _send(
    services: Services, request: Request, model: ModelConfig, path: str, body: bytes
) -> httpx.Response:
    try:
        upstream = httpx.Request(  # not the client's send(): no default headers, cookies,
            "POST",  # redirects or auth flows between the proxy and a backend
            services.upstream_url(model, path),
            content=body,
            headers=request_headers(request.headers.raw, model.api_key),
            extensions={"timeout": services.timeouts[model.name]},  # the model's own
        )
        return await services.transport.handle_async_request(upstream)
    except httpx.HTTPError as exc:
        raise upstream_failure(f"backend of {model.name!r} did not answer", exc) from exc


async def _parse(
    request: Request, services: Services, path: str
) -> tuple[ModelConfig, bytes, bool]:
    """The request's model, the body the backend gets, and whether the answer streams."""
    body = await read_body(request, services.config.limits.max_body_bytes)
    if BY_PATH[path].body == "form":
        form = read_form(body, request.headers.get("content-type"))
        model = services.resolve(form.model)
        return model, with_form_model(body, form, model.backend_model), form.stream
    data = parse_json_object(body, services.config.limits.max_json_depth)
    model = services.resolve(data.get("model"))
    return model, with_model(body, data, model.backend_model), bool(data.get("stream"))


def _record(request: Request, endpoint: str) -> RequestRecord:
    return RequestRecord(
        services_of(request).metrics, endpoint, request.headers.get("x-request-id")
    )


def _refused(record: RequestRecord, exc: ProxyError) -> Response:
    """The proxy's own answer to a request it could not serve, recorded and carrying its id."""
    record.rejected(exc)
    response = render_error(exc)
    response.headers["x-request-id"] = record.request_id
    return response


async def forward(request: Request, path: str) -> Response:
    services = services_of(request)
    record = _record(request, path)
    try:
        return await _forward(request, services, path, record)
    except ProxyError as exc:
        return _refused(record, exc)


async def _forward(
    request: Request, services: Services, path: str, record: RequestRecord
) -> Response:
    try:
        model, body, record.stream = await _parse(request, services, path)
        record.model = model.name
        leased = services.switcher.lease_now(model.name)
        if leased is None and record.stream and model.progress != "off":
            return await _wait_or_progress(_Call(request, services, model, path, body, record))
        if leased is None:  # a switch or a queue: wait, unless the client leaves first
            async with watching_client(request.receive):
                leased = await services.switcher.lease(model.name)
    except ClientGoneError:
        record.finish(CLIENT_CLOSED, error="client_gone")
        return Response(status_code=CLIENT_CLOSED)
    return await _leased(_Call(request, services, model, path, body, record), *leased)


@dataclass(frozen=True)
class _Call:
    """One parsed request on its way to a backend."""

    request: Request
    services: Services
    model: ModelConfig
    path: str
    body: bytes
    record: RequestRecord


async def _wait_or_progress(call: _Call) -> Response:
    """A streaming request's wait: the usual answer if the lease comes within
    `progress_after_s`, else a ProgressStream that sends the head and progress events first."""
    model, record = call.model, call.record
    limits = call.services.config.limits
    waiting = asyncio.ensure_future(call.services.switcher.lease(model.name))
    try:
        async with watching_client(call.request.receive):
            await asyncio.wait({waiting}, timeout=limits.progress_after_s)
    except BaseException:  # the client left, or a cancellation: nobody will take the lease
        ProgressStream.abandon(waiting)
        raise
    if waiting.done():
        return await _leased(call, *waiting.result())
    backend = call.services.backends[model.name]
    progress: Literal["comments", "reasoning"] = (
        "reasoning"
        if model.progress == "reasoning" and call.path == "/v1/chat/completions"
        else "comments"
    )
    return ProgressStream(
        waiting,
        partial(_leased, call),
        mode=progress,
        model=model.name,
        state=lambda: backend.state.value,
        every_s=limits.progress_every_s,
        headers={"x-vllm-switch-model": model.name, "x-request-id": record.request_id},
        on_failure=record.rejected,
        on_gone=lambda: record.finish(CLIENT_CLOSED, error="client_gone"),
    )


async def _leased(call: _Call, lease: Lease, timings: WakeTimings) -> Response:
    """Forward under `lease`; the answer returned owns the lease (or it was released)."""
    request, services, model, path, body, record = (
        call.request,
        call.services,
        call.model,
        call.path,
        call.body,
        call.record,
    )
    record.leased(model.name, timings)
    retry_s = services.config.limits.retry_after_s
    try:
        async with watching_client(request.receive) as watch:  # a non-streamed answer: at its end
            # a switch held past max_hold_s ends this wait too (the client gets a 503)
            lease.on_revoke = lambda reason: watch.end(
                BackendUnavailableError(reason, retry_after_s=retry_s)
            )
            upstream = await _send(services, request, model, path, body)
            lease.on_revoke = None
    except ClientGoneError:
        lease.release()
        record.finish(CLIENT_CLOSED, error="client_gone")
        return Response(status_code=CLIENT_CLOSED)
    except BaseException:
        lease.on_revoke = None
        lease.release()
        raise
    headers = timing_headers(model.name, (record.queue_s or 0) * 1000, timings) | {
        "x-request-id": record.request_id
    }
    response = await _answer(upstream, lease.release, headers, model.name, path, record)
    if isinstance(response, UpstreamResponse):  # a switch held past max_hold_s may end it
        lease.on_revoke = response.revoke
    return response


async def _answer(
    upstream: httpx.Response,
    release: Callable[[], None],
    headers: dict[str, str],
    model: str,
    path: str,
    record: RequestRecord,
) -> Response:
    """The backend's answer: streamed through, or, for an error, made an OpenAI error body."""
    if not is_error(upstream):
        return await UpstreamResponse.take(upstream, release, headers, model, record)
    try:
        response = await error_response(upstream, model, path, headers)
    finally:
        release()
    record.finish(response.status_code)
    return response


async def forward_frontend_only(request: Request, path: str) -> Response:
    """For endpoints vLLM answers without its engine: no switch, no lease."""
    services = services_of(request)
    record = _record(request, path)
    try:
        model, body, _ = await _parse(request, services, path)
        record.model = model.name
        backend = services.backends[model.name]
        if backend.state not in FRONTEND_STATES:  # no process to answer (failed, stopped, starting)
            detail = f": {backend.failure}" if backend.failure else ""
            raise BackendUnavailableError(
                f"model {model.name!r} is {backend.state.value}{detail}",
                retry_after_s=services.config.limits.retry_after_s,
            )
        upstream = await _send(services, request, model, path, body)
        headers = {"x-vllm-switch-model": model.name, "x-request-id": record.request_id}
        return await _answer(upstream, lambda: None, headers, model.name, path, record)
    except ClientGoneError:
        record.finish(CLIENT_CLOSED, error="client_gone")
        return Response(status_code=CLIENT_CLOSED)
    except ProxyError as exc:
        return _refused(record, exc)


def _endpoint(path: str) -> Callable[[Request], Awaitable[Response]]:
    handler = FORWARDED[path]

    async def endpoint(request: Request) -> Response:
        return await handler(request, path)

    return endpoint


# every forwarded route of the table; DirectRoutes (proxy/http/routes/direct.py) hands the same
# handlers these paths on the hot path, past the router
FORWARDED: dict[str, Callable[[Request, str], Awaitable[Response]]] = {
    r.path: forward if r.switch else forward_frontend_only for r in ROUTES
}
for _route in ROUTES:
    router.add_api_route(
        _route.path,
        _endpoint(_route.path),
        methods=["POST"],
        summary=_route.summary,
        openapi_extra=schemas.body(_route.path),
    )


def _model_entries(services: Services) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = []
    for m in services.config.models:
        backend = services.backends[m.name]
        for name in (m.name, *m.aliases):
            entry: dict[str, Any] = {
                "id": name,
                "object": "model",
                "created": 0,
                "owned_by": "vllm-switch",
                "root": m.name,
                "state": backend.state.value,
            }
            if (max_len := getattr(backend, "max_model_len", None)) is not None:
                entry["max_model_len"] = max_len
            data.append(entry)
    return data


@router.get("/v1/models")
async def models(request: Request) -> JSONResponse:
    return JSONResponse({"object": "list", "data": _model_entries(services_of(request))})


@router.get("/v1/models/{model_id:path}", responses=schemas.errors("400", "404"))
async def model(request: Request, model_id: str) -> JSONResponse:
    """`client.models.retrieve(id)`: one entry of /v1/models, or the OpenAI 404."""
    services = services_of(request)
    if not model_id:  # `/v1/models/`: no route, as every trailing-slash path
        raise NotFoundError("no such route; see GET /v1/models and the README for the API")
    for entry in _model_entries(services):
        if entry["id"] == model_id:
            return JSONResponse(entry)
    services.resolve(model_id)  # raises the 404 (or 400 for an oversized id) with the names
    raise AssertionError("unreachable: resolve found a model /v1/models does not list")
