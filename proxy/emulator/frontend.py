"""The checks vLLM 0.26.0's API server makes before a request reaches the engine, shared by
every route module: JSON content type, the served model name, the context length; plus the
engine-dead answer and SSE framing. Front-end checks answer at once, even while the engine
sleeps. No state.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.types import Receive, Scope, Send

from proxy.emulator.engine import ENGINE_DEAD, Engine
from proxy.emulator.engine_request import EngineRequest
from proxy.emulator.protocol import VllmValidationError, error_body

SSE_MEDIA_TYPE = "text/event-stream"


class ModelNotFoundError(Exception):
    """An unknown model: 404 NotFoundError; `param` is "model" on the generation routes and
    null on the pooling ones (vLLM 0.26's pooling serving layer names no parameter)."""

    def __init__(self, model: str, param: str | None = "model") -> None:
        super().__init__(f"The model `{model}` does not exist.")
        self.param = param


async def validate_json_request(raw_request: Request) -> None:
    content_type = raw_request.headers.get("content-type", "").lower()
    if content_type.split(";", maxsplit=1)[0] != "application/json":
        raise RequestValidationError(
            errors=["Unsupported Media Type: Only 'application/json' is allowed"]
        )


def engine_of(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def check_model(engine: Engine, model: str | None, *, param: str | None = "model") -> str:
    """The name responses carry (always the first served name); unknown names are a 404."""
    names = engine.settings.served_model_names
    if model and model not in names:
        raise ModelNotFoundError(model, param)
    return names[0]


def check_lengths(engine: Engine, prompt_len: int, max_out: int | None, param: str) -> int:
    """vLLM's max_tokens and context-length checks; returns the effective max_tokens."""
    max_len = engine.settings.max_model_len
    out = max_out or 0
    if out > max_len:
        raise VllmValidationError(
            f"{param}={out} cannot be greater than max_model_len=max_total_tokens={max_len}. "
            "Please request fewer output tokens.",
            param=param,
            value=out,
        )
    if prompt_len > max_len - out:
        raise VllmValidationError(
            f"This model's maximum context length is {max_len} tokens. However, you requested "
            f"{out} output tokens and your prompt contains {prompt_len} input tokens, for a total "
            f"of {prompt_len + out} tokens. Please reduce the length of the input prompt or the "
            "number of requested output tokens.",
            param="input_tokens",
            value=prompt_len,
        )
    return max_out if max_out is not None else max_len - prompt_len


def dead_response() -> JSONResponse:
    return JSONResponse(error_body(ENGINE_DEAD, "InternalServerError", 500), status_code=500)


def stream(
    engine: Engine,
    reqs: list[EngineRequest],
    body: Callable[[], AsyncIterator[str]],
    *,
    done: str | None = "data: [DONE]\n\n",
) -> StreamingResponse:
    """Headers now (even while the engine sleeps), then `body()`'s events, then `done`; the
    engine requests are aborted the moment the client leaves (a no-op once they finished)."""

    async def events() -> AsyncIterator[str]:
        async for event in body():
            yield event
        if done is not None:
            yield done

    return _AbortingStream(engine, reqs, events())


class _AbortingStream(StreamingResponse):
    """A stream whose engine requests are aborted as soon as the response is over, however it
    ended. Not in the generator's `finally`: a client that leaves while the response is
    blocked in `send` cancels the response task outside the generator, which then stays
    suspended until the garbage collector finalises it - seconds later, the request generating
    all the while (vLLM aborts at once)."""

    def __init__(self, engine: Engine, reqs: list[EngineRequest], content: AsyncIterator[str]):
        super().__init__(content, media_type=SSE_MEDIA_TYPE)
        self._engine = engine
        self._reqs = reqs

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            for req in self._reqs:
                self._engine.cancel(req)
