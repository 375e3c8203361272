"""The Anthropic Messages API of vLLM 0.26.0: `POST /v1/messages` and `/v1/messages/count_tokens`.

As in vLLM, a Messages request is converted to a chat completion request and run through the
same path (so it queues while the engine sleeps, and tools, `tool_choice` and the auto-tool
400 behave as on chat), then the answer is converted back: `stop` -> `end_turn`, `length` ->
`max_tokens`, `tool_calls` -> `tool_use`. Streams use Anthropic's event sequence
(`message_start`, `content_block_start`, `content_block_delta`..., `content_block_stop`,
`message_delta`, `message_stop`), each as `event: NAME` + `data: JSON`. Errors raised by the
handler come in Anthropic's `{"type": "error", "error": {...}}`; request-schema errors keep
vLLM's OpenAI envelope (its global handler answers them). No state.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from proxy.emulator.engine import ENGINE_DEAD, EngineDeadError
from proxy.emulator.fanout import collect, merged
from proxy.emulator.frontend import (
    ModelNotFoundError,
    check_lengths,
    check_model,
    engine_of,
    stream,
    validate_json_request,
)
from proxy.emulator.generation_routes import chat_prompt, submit_choices
from proxy.emulator.options import chat_plan
from proxy.emulator.protocol import ChatCompletionRequest, VllmValidationError, fingerprint
from proxy.emulator.renderers import ChatRenderer

router = APIRouter(dependencies=[Depends(validate_json_request)])

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


class AnthropicMessage(BaseModel):
    """vLLM's: a role and a content that is text or a list of blocks (else a 400)."""

    model_config = ConfigDict(extra="allow")
    role: Literal["user", "assistant"]
    content: str | list[dict[str, Any]]


class CountTokensRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[AnthropicMessage]
    system: str | list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        if not v:
            raise ValueError("Model is required")
        return v


class MessagesRequest(CountTokensRequest):
    max_tokens: int
    stream: bool | None = False
    temperature: float | None = None
    stop_sequences: list[str] | None = None

    @field_validator("max_tokens")
    @classmethod
    def _max_tokens(cls, v: int) -> int:
        if v <= 0:
            raise ValueError("max_tokens must be positive")
        return v


def _error(kind: str, message: str, status: int) -> JSONResponse:
    body = {"type": "error", "error": {"type": kind, "message": message}}
    return JSONResponse(body, status_code=status)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    parts = []
    for block in content or []:
        if isinstance(block, dict):
            for key in ("text", "thinking", "content", "input"):
                value = block.get(key)
                if value:
                    parts.append(value if isinstance(value, str) else json.dumps(value))
    return "".join(parts)


def to_chat(body: CountTokensRequest) -> ChatCompletionRequest:
    """vLLM's conversion: system first, tools as functions, tool_choice any -> required."""
    messages = [{"role": "system", "content": _text(body.system)}] if body.system else []
    messages += [{"role": m.role, "content": _text(m.content)} for m in body.messages]
    data: dict[str, Any] = {"model": body.model, "messages": messages}
    if isinstance(body, MessagesRequest):
        data |= {"max_tokens": body.max_tokens, "max_completion_tokens": body.max_tokens}
        data |= {"stream": bool(body.stream), "temperature": body.temperature}
    choice = body.tool_choice or {}
    kind = choice.get("type")
    if kind in ("auto", "none"):
        data["tool_choice"] = kind
    elif kind == "any":
        data["tool_choice"] = "required"
    elif kind == "tool":
        data["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
    if body.tools is not None:
        data["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": t.get("name"),
                    "description": t.get("description"),
                    "parameters": t.get("input_schema") or {"type": "object"},
                },
            }
            for t in body.tools
        ]
        data.setdefault("tool_choice", "auto")
    return ChatCompletionRequest.model_validate(data)


def _blocks(full: dict[str, Any]) -> list[dict[str, Any]]:
    message = full["choices"][0]["message"]
    blocks: list[dict[str, Any]] = []
    if message["content"]:
        blocks.append({"type": "text", "text": message["content"]})
    for call in message.get("tool_calls", []):
        function = call["function"]
        blocks.append(
            {
                "type": "tool_use",
                "id": call["id"],
                "name": function["name"],
                "input": json.loads(function["arguments"] or "{}"),
            }
        )
    return blocks


def _event(name: str, payload: dict[str, Any]) -> str:
    return f"event: {name}\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n"


@router.post("/v1/messages")
async def create_messages(body: MessagesRequest, request: Request) -> Response:
    engine = engine_of(request)
    try:
        chat = to_chat(body)
        served = check_model(engine, chat.model)
        plan = chat_plan(
            chat,
            auto_tools=engine.settings.enable_auto_tool_choice,
            parser=engine.settings.tool_call_parser,
        )
        prompt = chat_prompt(engine.tokenizer, chat.messages, chat.tools)
        max_tokens = check_lengths(engine, len(prompt), body.max_tokens, "max_completion_tokens")
        reqs = submit_choices(engine, plan, prompt, max_tokens, chat)
    except ModelNotFoundError as exc:
        return _error("NotFoundError", str(exc), 404)
    except VllmValidationError as exc:
        return _error("BadRequestError", str(exc), 400)
    except (ValidationError, EngineDeadError) as exc:
        return _error(
            "internal_error", ENGINE_DEAD if isinstance(exc, EngineDeadError) else str(exc), 500
        )
    renderer = ChatRenderer(served, fingerprint(engine.settings.model), engine.tokenizer, plan)
    if not body.stream:
        choices = await collect(request, engine, reqs)
        if choices is None:
            return Response(status_code=499)
        if choices[0][-1].error is not None:
            return _error("internal_error", ENGINE_DEAD, 500)
        full = renderer.full(choices, len(prompt), len(reqs[0].generated))
        answer: dict[str, Any] = {
            "id": full["id"],
            "type": "message",
            "role": "assistant",
            "content": _blocks(full),
            "model": served,
        }
        stop = STOP_REASONS.get(full["choices"][0]["finish_reason"])
        if stop is not None:
            answer["stop_reason"] = stop
        answer["usage"] = {"input_tokens": len(prompt), "output_tokens": len(reqs[0].generated)}
        return JSONResponse(answer)

    async def events() -> AsyncIterator[str]:
        usage = {"input_tokens": len(prompt), "output_tokens": 0}
        message: dict[str, Any] = {
            "id": renderer.id,
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": served,
            "stop_reason": None,
        }
        started, block_open, finish = False, False, None
        tool = plan.tool
        async for _, out in merged(reqs):
            piece = renderer.arguments_piece(0, out) if tool is not None else out.text
            if out.error is not None:
                error = {"type": "internal_error", "message": out.error}
                yield _event("error", {"type": "error", "error": error})
                return
            if not started:
                started = True
                message |= {"stop_sequence": None, "usage": usage}
                yield _event("message_start", {"type": "message_start", "message": message})
            if piece and not block_open:
                block_open = True
                block: dict[str, Any] = {"type": "text", "text": ""}
                if tool is not None:
                    block = {
                        "type": "tool_use",
                        "id": renderer.tool_ids[0],
                        "name": tool.name,
                        "input": {},
                    }
                yield _event(
                    "content_block_start",
                    {"type": "content_block_start", "content_block": block, "index": 0},
                )
            if piece:
                delta: dict[str, Any] = {"type": "text_delta", "text": piece}
                if tool is not None:
                    delta = {"type": "input_json_delta", "partial_json": piece}
                yield _event(
                    "content_block_delta",
                    {"type": "content_block_delta", "delta": delta, "index": 0},
                )
            if out.finish_reason is not None:
                finish = renderer.finish_reason(out.finish_reason)
        if block_open:
            yield _event("content_block_stop", {"type": "content_block_stop", "index": 0})
        final = {"input_tokens": len(prompt), "output_tokens": len(reqs[0].generated)}
        stop = {"stop_reason": STOP_REASONS.get(finish or "stop")}
        yield _event("message_delta", {"type": "message_delta", "delta": stop, "usage": final})
        yield _event("message_stop", {"type": "message_stop"})

    return stream(engine, reqs, events, done=None)


@router.post("/v1/messages/count_tokens")
async def count_tokens(body: CountTokensRequest, request: Request) -> Response:
    """Front-end only (the chat template's token count): answers while the engine sleeps."""
    engine = engine_of(request)
    try:
        chat = to_chat(body)
        check_model(engine, chat.model)
    except ModelNotFoundError as exc:
        return _error("NotFoundError", str(exc), 404)
    except ValidationError as exc:
        return _error("internal_error", str(exc), 500)
    tokens = len(chat_prompt(engine.tokenizer, chat.messages, chat.tools))
    return JSONResponse(
        {"input_tokens": tokens, "context_management": {"original_input_tokens": tokens}}
    )
