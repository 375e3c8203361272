"""The OpenAI routes of the emulator: chat, completions, responses, embeddings, tokenize.

Front-end validation (content type, schema, unknown model, context length) answers at once,
even while the engine sleeps; everything that passes is queued in the engine and waits there.
Streaming responses send their headers immediately and then nothing until the engine produces
the first token - exactly what a client of a sleeping vLLM 0.26.0 sees.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse

from proxy.emulator.engine import ENGINE_DEAD, Engine, EngineDeadError
from proxy.emulator.engine_request import EngineRequest, Output
from proxy.emulator.protocol import (
    ChatCompletionRequest,
    ChatRenderer,
    CompletionRenderer,
    CompletionRequest,
    DetokenizeRequest,
    EmbeddingRequest,
    Renderer,
    ResponsesRequest,
    TokenizeRequest,
    error_body,
    fingerprint,
    new_id,
    sse,
    usage,
)

SSE_MEDIA_TYPE = "text/event-stream"


class VllmValidationError(Exception):
    """vLLM's VLLMValidationError: 400 BadRequestError whose message names the parameter."""

    def __init__(self, message: str, *, param: str, value: object) -> None:
        super().__init__(f"{message} (parameter={param}, value={value})")
        self.param = param


class ModelNotFoundError(Exception):
    def __init__(self, model: str) -> None:
        super().__init__(f"The model `{model}` does not exist.")


async def validate_json_request(raw_request: Request) -> None:
    content_type = raw_request.headers.get("content-type", "").lower()
    if content_type.split(";", maxsplit=1)[0] != "application/json":
        raise RequestValidationError(
            errors=["Unsupported Media Type: Only 'application/json' is allowed"]
        )


router = APIRouter(dependencies=[Depends(validate_json_request)])  # generate models
embedding_router = APIRouter(dependencies=[Depends(validate_json_request)])  # pooling models
common_router = APIRouter(dependencies=[Depends(validate_json_request)])  # both


def engine_of(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def _check_model(engine: Engine, model: str | None) -> str:
    names = engine.settings.served_model_names
    if model and model not in names:
        raise ModelNotFoundError(model)
    return names[0]


def _check_lengths(engine: Engine, prompt_len: int, max_out: int | None, param: str) -> int:
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


def _submit(engine: Engine, prompt_ids: list[int], max_tokens: int, body: Any) -> EngineRequest:
    req = EngineRequest(
        request_id=new_id("req"),
        prompt_ids=prompt_ids,
        max_tokens=max_tokens,
        min_tokens=body.min_tokens,
        ignore_eos=body.ignore_eos,
        seed=body.seed,
    )
    engine.add_request(req)
    return req


async def _collect(request: Request, engine: Engine, req: EngineRequest) -> list[Output]:
    """Wait for the whole generation, aborting it if the client disconnects first."""
    outputs: list[Output] = []

    async def gather() -> None:
        while not (out := await req.outputs.get()).final:
            outputs.append(out)
        outputs.append(out)

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    gathering = asyncio.create_task(gather())
    watching = asyncio.create_task(disconnected())
    try:
        await asyncio.wait({gathering, watching}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watching.cancel()
        if not gathering.done():
            gathering.cancel()
            engine.cancel(req)
    await asyncio.gather(gathering, return_exceptions=True)
    return outputs


def _stream(
    engine: Engine, req: EngineRequest, frames: Callable[[Output], list[str]]
) -> StreamingResponse:
    async def body() -> AsyncIterator[str]:
        try:
            while True:
                out = await req.outputs.get()
                if out.error is not None:
                    yield sse(error_body(out.error, "InternalServerError", 500))
                    break
                for frame in frames(out):
                    yield frame
                if out.final:
                    break
            yield "data: [DONE]\n\n"
        finally:
            engine.cancel(req)  # no-op once finished; aborts on client disconnect

    return StreamingResponse(body(), media_type=SSE_MEDIA_TYPE)


def _dead_response() -> JSONResponse:
    return JSONResponse(error_body(ENGINE_DEAD, "InternalServerError", 500), status_code=500)


async def _generate(
    request: Request,
    engine: Engine,
    renderer: Renderer,
    prompt: list[int],
    max_tokens: int,
    body: ChatCompletionRequest | CompletionRequest,
    *,
    echo: str = "",
) -> Response:
    """Queue the request in the engine; stream it as SSE or answer once it is finished."""
    try:
        req = _submit(engine, prompt, max_tokens, body)
    except EngineDeadError:
        return _dead_response()
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    if body.stream:

        def frames(out: Output) -> list[str]:
            usage_of = (len(prompt), len(req.generated)) if include_usage else None
            return renderer.frames(out.text, out.finish_reason, usage_of)

        return _stream(engine, req, frames)
    outputs = await _collect(request, engine, req)
    if not outputs:
        return Response(status_code=499)  # the client left; nobody reads this
    if outputs[-1].error is not None:
        return _dead_response()
    text = echo + "".join(o.text for o in outputs)
    finish = outputs[-1].finish_reason or "stop"
    return JSONResponse(renderer.full(text, finish, len(prompt), len(req.generated)))


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    engine = engine_of(request)
    served = _check_model(engine, body.model)
    prompt = engine.tokenizer.encode(engine.tokenizer.apply_chat_template(body.messages))
    max_out: int | None = body.max_tokens
    param = "max_tokens"
    if body.max_completion_tokens is not None:
        max_out, param = body.max_completion_tokens, "max_completion_tokens"
    max_tokens = _check_lengths(engine, len(prompt), max_out, param)
    renderer = ChatRenderer(served, fingerprint(engine.settings.model))
    return await _generate(request, engine, renderer, prompt, max_tokens, body)


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request) -> Response:
    engine = engine_of(request)
    served = _check_model(engine, body.model)
    if isinstance(body.prompt, str):
        prompt_text, prompt = body.prompt, engine.tokenizer.encode(body.prompt)
    else:
        prompt_text, prompt = "", [int(t) for t in (body.prompt or []) if isinstance(t, int)]
    max_tokens = _check_lengths(engine, len(prompt), body.max_tokens, "max_tokens")
    renderer = CompletionRenderer(served, fingerprint(engine.settings.model))
    echo = prompt_text if body.echo else ""
    return await _generate(request, engine, renderer, prompt, max_tokens, body, echo=echo)


@router.post("/v1/responses")
async def responses(body: ResponsesRequest, request: Request) -> Response:
    """Non-streaming Responses API (enough for a proxy to forward and a client to parse)."""
    engine = engine_of(request)
    served = _check_model(engine, body.model)
    if body.stream:
        reason = "streaming /v1/responses is not emulated (vllm-switch emulator limitation)"
        return JSONResponse(error_body(reason, "NotImplementedError", 501), status_code=501)
    messages: list[dict[str, Any]] = (
        [{"role": "user", "content": body.input}] if isinstance(body.input, str) else body.input
    )
    if body.instructions:
        messages = [{"role": "system", "content": body.instructions}, *messages]
    prompt = engine.tokenizer.encode(engine.tokenizer.apply_chat_template(messages))
    max_tokens = _check_lengths(engine, len(prompt), body.max_output_tokens, "max_output_tokens")
    try:
        req = _submit(
            engine, prompt, max_tokens, ChatCompletionRequest(messages=messages, seed=body.seed)
        )
    except EngineDeadError:
        return _dead_response()
    outputs = await _collect(request, engine, req)
    if not outputs or outputs[-1].error is not None:
        return _dead_response()
    text = "".join(o.text for o in outputs)
    status = "completed" if outputs[-1].finish_reason == "stop" else "incomplete"
    message = {
        "id": new_id("msg"),
        "content": [{"annotations": [], "text": text, "type": "output_text", "logprobs": None}],
        "role": "assistant",
        "status": "completed",
        "type": "message",
    }
    return JSONResponse(
        {
            "id": new_id("resp"),
            "created_at": int(time.time()),
            "incomplete_details": None,
            "instructions": body.instructions,
            "metadata": None,
            "model": served,
            "object": "response",
            "output": [message],
            "status": status,
            "usage": {
                "input_tokens": len(prompt),
                "output_tokens": len(req.generated),
                "total_tokens": len(prompt) + len(req.generated),
            },
        }
    )


@embedding_router.post("/v1/embeddings")
async def embeddings(body: EmbeddingRequest, request: Request) -> Response:
    engine = engine_of(request)
    served = _check_model(engine, body.model)
    raw = body.input
    items: list[str | list[int]]
    if isinstance(raw, str):
        items = [raw]
    elif raw and all(isinstance(t, int) for t in raw):
        items = [[int(t) for t in raw]]  # type: ignore[arg-type]
    else:
        items = list(raw)  # type: ignore[arg-type]
    data, total = [], 0
    created = int(time.time())
    for i, item in enumerate(items):
        ids = engine.tokenizer.encode(item) if isinstance(item, str) else list(item)
        total += len(ids)
        req = _submit(engine, ids, 1, ChatCompletionRequest(messages=[], ignore_eos=True))
        outputs = await _collect(request, engine, req)
        if not outputs or outputs[-1].error is not None:
            return _dead_response()
        digest = hashlib.sha256(repr(ids).encode()).digest()
        data.append(
            {
                "index": i,
                "object": "embedding",
                "embedding": [round((b - 128) / 128, 6) for b in digest],
            }
        )
    return JSONResponse(
        {
            "id": new_id("embd"),
            "object": "list",
            "created": created,
            "model": served,
            "data": data,
            "usage": usage(total, 0),
        }
    )


@common_router.post("/tokenize")
async def tokenize(body: TokenizeRequest, request: Request) -> Response:
    engine = engine_of(request)
    _check_model(engine, body.model)
    text = (
        engine.tokenizer.apply_chat_template(body.messages)
        if body.messages is not None
        else body.prompt or ""
    )
    tokens = engine.tokenizer.encode(text)
    return JSONResponse(
        {
            "count": len(tokens),
            "max_model_len": engine.settings.max_model_len,
            "tokens": tokens,
            "token_strs": None,
        }
    )


@common_router.post("/detokenize")
async def detokenize(body: DetokenizeRequest, request: Request) -> Response:
    engine = engine_of(request)
    _check_model(engine, body.model)
    return JSONResponse({"prompt": engine.tokenizer.decode(body.tokens)})
