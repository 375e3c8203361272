"""The generate routes of the emulator: chat, completions, responses; tokenize for every model.

Front-end validation (content type, schema, unknown model, tool choice, logprobs, context
length) answers at once, even while the engine sleeps; everything that passes is queued in the
engine, one engine request per choice (`n`), and waits there. Streaming responses send their
headers immediately and then nothing until the engine produces the first token - exactly what
a client of a sleeping vLLM 0.26.0 sees. No state.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from proxy.emulator.engine import Engine, EngineDeadError
from proxy.emulator.engine_request import EngineRequest
from proxy.emulator.fanout import collect, merged, submit
from proxy.emulator.frontend import (
    check_lengths,
    check_model,
    dead_response,
    engine_of,
    stream,
    validate_json_request,
)
from proxy.emulator.options import Plan, chat_plan, check_sampling
from proxy.emulator.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    ResponsesRequest,
    TokenizeRequest,
    error_body,
    fingerprint,
    new_id,
    sse,
)
from proxy.emulator.renderers import ChatRenderer, CompletionRenderer, Renderer
from proxy.emulator.tokenizer import FakeTokenizer

router = APIRouter(dependencies=[Depends(validate_json_request)])  # generate models
common_router = APIRouter(dependencies=[Depends(validate_json_request)])  # every model


def chat_prompt(
    tok: FakeTokenizer, messages: Sequence[dict[str, Any]], tools: list[dict[str, Any]] | None
) -> list[int]:
    """The prompt's ids: the chat template, with the tool definitions as a system turn."""
    text = tok.apply_chat_template(messages)
    if tools:
        text = f"<|im_start|>system\n# Tools\n{json.dumps(tools)}<|im_end|>\n{text}"
    return tok.encode(text)


def submit_choices(
    engine: Engine,
    plan: Plan,
    prompt: list[int],
    max_tokens: int,
    body: ChatCompletionRequest | CompletionRequest,
) -> list[EngineRequest]:
    """One engine request per choice. Greedy choices are identical; sampled ones differ."""
    reqs = []
    for i in range(plan.n):
        seed = (body.seed or 0) + (0 if body.temperature == 0 else i)
        script = plan.script(engine.tokenizer, prompt, seed, 0)
        reqs.append(
            submit(
                engine,
                prompt,
                max_tokens,
                min_tokens=body.min_tokens,
                ignore_eos=body.ignore_eos,
                seed=seed,
                script=script,
            )
        )
    return reqs


async def _generate(
    request: Request,
    engine: Engine,
    renderer: Renderer,
    prompt: list[int],
    max_tokens: int,
    body: ChatCompletionRequest | CompletionRequest,
) -> Response:
    """Queue the choices in the engine; stream them as SSE or answer once all are finished."""
    try:
        reqs = submit_choices(engine, renderer.plan, prompt, max_tokens, body)
    except EngineDeadError:
        return dead_response()
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    if body.stream:

        async def events() -> AsyncIterator[str]:
            started = False
            async for index, out in merged(reqs):
                if out.error is not None:
                    yield sse(error_body(out.error, "InternalServerError", 500))
                    return
                if not started:
                    started = True
                    for frame in renderer.first():
                        yield frame
                for frame in renderer.step(index, out, include_usage=include_usage):
                    yield frame
            if include_usage:
                yield renderer.usage_chunk(len(prompt), sum(len(r.generated) for r in reqs))

        return stream(engine, reqs, events)
    choices = await collect(request, engine, reqs)
    if choices is None:
        return Response(status_code=499)  # the client left; nobody reads this
    if any(c[-1].error is not None for c in choices):
        return dead_response()
    generated = sum(len(r.generated) for r in reqs)
    assert isinstance(renderer, ChatRenderer | CompletionRenderer)
    return JSONResponse(renderer.full(choices, len(prompt), generated))


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    engine = engine_of(request)
    served = check_model(engine, body.model)
    plan = chat_plan(
        body,
        auto_tools=engine.settings.enable_auto_tool_choice,
        parser=engine.settings.tool_call_parser,
    )
    prompt = chat_prompt(engine.tokenizer, body.messages, body.tools)
    max_out: int | None = body.max_tokens
    param = "max_tokens"
    if body.max_completion_tokens is not None:
        max_out, param = body.max_completion_tokens, "max_completion_tokens"
    max_tokens = check_lengths(engine, len(prompt), max_out, param)
    renderer = ChatRenderer(served, fingerprint(engine.settings.model), engine.tokenizer, plan)
    return await _generate(request, engine, renderer, prompt, max_tokens, body)


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request) -> Response:
    engine = engine_of(request)
    served = check_model(engine, body.model)
    if isinstance(body.prompt, str):
        prompt_text, prompt = body.prompt, engine.tokenizer.encode(body.prompt)
    else:
        prompt_text, prompt = "", [int(t) for t in (body.prompt or []) if isinstance(t, int)]
    max_tokens = check_lengths(engine, len(prompt), body.max_tokens, "max_tokens")
    top = engine.tokenizer.vocab_size if body.logprobs == -1 else body.logprobs
    plan = Plan(n=check_sampling(body.n, top), top_logprobs=top)
    renderer = CompletionRenderer(
        served,
        fingerprint(engine.settings.model),
        engine.tokenizer,
        plan,
        echo=prompt_text if body.echo else "",
    )
    return await _generate(request, engine, renderer, prompt, max_tokens, body)


@router.post("/v1/responses")
async def responses(body: ResponsesRequest, request: Request) -> Response:
    """Non-streaming Responses API (enough for a proxy to forward and a client to parse)."""
    engine = engine_of(request)
    served = check_model(engine, body.model)
    if body.stream:
        reason = "streaming /v1/responses is not emulated (vllm-switch emulator limitation)"
        return JSONResponse(error_body(reason, "NotImplementedError", 501), status_code=501)
    messages: list[dict[str, Any]] = (
        [{"role": "user", "content": body.input}] if isinstance(body.input, str) else body.input
    )
    if body.instructions:
        messages = [{"role": "system", "content": body.instructions}, *messages]
    prompt = engine.tokenizer.encode(engine.tokenizer.apply_chat_template(messages))
    max_tokens = check_lengths(engine, len(prompt), body.max_output_tokens, "max_output_tokens")
    try:
        req = submit(engine, prompt, max_tokens, seed=body.seed)
    except EngineDeadError:
        return dead_response()
    choices = await collect(request, engine, [req])
    if not choices or choices[0][-1].error is not None:
        return dead_response()
    outputs = choices[0]
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


@common_router.post("/tokenize")
async def tokenize(body: TokenizeRequest, request: Request) -> Response:
    engine = engine_of(request)
    check_model(engine, body.model)
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
    check_model(engine, body.model)
    return JSONResponse({"prompt": engine.tokenizer.decode(body.tokens)})
