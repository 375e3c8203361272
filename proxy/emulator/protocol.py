"""OpenAI request models, vLLM 0.26.0's validators for them, ids, usage and error bodies.

Request models accept unknown fields (vLLM's `extra="allow"`), so any vLLM sampling extension
goes through. Response builders emit keys in the order vLLM serialises them, so a byte-level
diff against a real server differs only in ids, timestamps and generated text.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, model_validator

VLLM_VERSION = "0.26.0"


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool | None = False
    continuous_usage_stats: bool | None = False


class VllmValidationError(ValueError):
    """vLLM's VLLMValidationError: 400 BadRequestError naming the parameter. Raised by a
    handler, its envelope's `param` is `param`; raised inside a request model's validator (as
    0.26's check_logprobs and check_tool_usage do), pydantic reports it as a value_error whose
    ctx repr is `VLLMValidationError('message')` and the envelope's `param` is still `param`."""

    def __init__(self, message: str, *, param: str | None = None, value: object = None) -> None:
        super().__init__(message)
        self.param = param
        self.value = value

    def __str__(self) -> str:
        extras = [] if self.param is None else [f"parameter={self.param}"]
        if self.value is not None:
            extras.append(f"value={self.value}")
        base = str(self.args[0])
        return f"{base} ({', '.join(extras)})" if extras else base

    def __repr__(self) -> str:
        return f"VLLMValidationError({self.args[0]!r})"


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    seed: int | None = None
    temperature: float | None = None
    ignore_eos: bool = False
    min_tokens: int = 0
    n: int | None = 1


class ChatCompletionRequest(_Sampling):
    messages: list[dict[str, Any]]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    logprobs: bool | None = False
    top_logprobs: int | None = 0
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = "none"

    @model_validator(mode="before")
    @classmethod
    def _check_logprobs(cls, data: Any) -> Any:
        """vLLM 0.26's check_logprobs: the messages are vLLM's."""
        if isinstance(data, dict) and (top := data.get("top_logprobs")) is not None:
            if not isinstance(top, int) or isinstance(top, bool):
                return data  # the field's own type check answers
            if top < 0 and top != -1:
                raise VllmValidationError(
                    "`top_logprobs` must be a positive value or -1.",
                    param="top_logprobs",
                    value=top,
                )
            if (top == -1 or top > 0) and not data.get("logprobs"):
                raise VllmValidationError(
                    "when using `top_logprobs`, `logprobs` must be set to true.",
                    param="top_logprobs",
                )
        return data

    @model_validator(mode="before")
    @classmethod
    def _check_tool_usage(cls, data: Any) -> Any:
        """vLLM 0.26's check_tool_usage: tools default tool_choice to "auto"; a named choice
        must name one of the tools."""
        if not isinstance(data, dict):
            return data
        if "tool_choice" not in data and data.get("tools"):
            data["tool_choice"] = "auto"
        choice = data.get("tool_choice")
        if choice is None or choice == "none":
            return data
        if data.get("tools") is None:
            raise VllmValidationError(
                "When using `tool_choice`, `tools` must be set.", param="tool_choice"
            )
        if choice not in ("auto", "required") and not isinstance(choice, dict):
            raise ValueError(
                f"Invalid value for `tool_choice`: {choice}! "
                'Only named tools, "none", "auto" or "required" are supported.'
            )
        if isinstance(choice, dict):
            function = choice.get("function")
            name = function.get("name") if isinstance(function, dict) else None
            tools = data["tools"] if isinstance(data["tools"], list) else []
            names = [
                t.get("function", {}).get("name")
                for t in tools
                if isinstance(t, dict) and isinstance(t.get("function"), dict)
            ]
            if not isinstance(name, str) or name not in names:
                raise ValueError(
                    "The tool specified in `tool_choice` does not match any of the specified "
                    "`tools`"
                )
        return data


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]] | None = None
    max_tokens: int | None = 16
    echo: bool | None = False
    logprobs: int | None = None


class _EmbeddingBody(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None

    @model_validator(mode="wrap")
    @classmethod
    def __log_extra_fields__(cls, data: Any, handler: Any) -> Any:
        """vLLM 0.26 wraps each request model in this validator (it logs unknown fields); in
        a union, pydantic then tags each member's errors `function-wrap[__log_extra_fields__()]`."""
        return handler(data)


class EmbeddingInputRequest(_EmbeddingBody):
    input: str | list[str] | list[int] | list[list[int]]


class EmbeddingChatRequest(_EmbeddingBody):
    messages: list[dict[str, Any]]


class _EmbeddingInput2(EmbeddingInputRequest): ...


class _EmbeddingInput3(EmbeddingInputRequest): ...


class _EmbeddingChat2(EmbeddingChatRequest): ...


class _EmbeddingChat3(EmbeddingChatRequest): ...


class _EmbeddingChat4(EmbeddingChatRequest): ...


# vLLM 0.26's /v1/embeddings body is a union of seven request models, three taking `input` and
# four `messages`, in this order: a body with neither answers its seven "Field required" errors
# (recorded on the H200, routes entry 29). Smart-mode validation picks the first that fits.
EmbeddingRequest = (
    EmbeddingInputRequest
    | EmbeddingChatRequest
    | _EmbeddingChat2
    | _EmbeddingChat3
    | _EmbeddingInput2
    | _EmbeddingChat4
    | _EmbeddingInput3
)


class ResponsesRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str | None = None
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    max_output_tokens: int | None = None
    stream: bool | None = False
    seed: int | None = None


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str | None = None
    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str | None = None
    tokens: list[int]


def fingerprint(model: str) -> str:
    return f"vllm-{VLLM_VERSION}-{hashlib.sha256(model.encode()).hexdigest()[:8]}"


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(8)}"


def usage(prompt: int, completion: int, *, details: bool = True) -> dict[str, Any]:
    body: dict[str, Any] = {
        "prompt_tokens": prompt,
        "total_tokens": prompt + completion,
        "completion_tokens": completion,
    }
    if details:
        body["prompt_tokens_details"] = None
    return body


def error_body(message: str, err_type: str, code: int, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": err_type, "param": param, "code": code}}


def sse(payload: dict[str, Any] | str) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n"


def model_card(name: str, root: str, max_model_len: int, created: int) -> dict[str, Any]:
    permission = {
        "id": new_id("modelperm"),
        "object": "model_permission",
        "created": created,
        "allow_create_engine": False,
        "allow_sampling": True,
        "allow_logprobs": True,
        "allow_search_indices": False,
        "allow_view": True,
        "allow_fine_tuning": False,
        "organization": "*",
        "group": None,
        "is_blocking": False,
    }
    return {
        "id": name,
        "object": "model",
        "created": created,
        "owned_by": "vllm",
        "root": root,
        "parent": None,
        "max_model_len": max_model_len,
        "permission": [permission],
    }
