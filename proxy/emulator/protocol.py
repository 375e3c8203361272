"""OpenAI request models and vLLM 0.26.0 response bodies, field for field.

Request models accept unknown fields (vLLM's `extra="allow"`), so any vLLM sampling extension
goes through. Response builders emit keys in the order vLLM serialises them, so a byte-level
diff against a real server differs only in ids, timestamps and generated text.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from typing import Any

from pydantic import BaseModel, ConfigDict

VLLM_VERSION = "0.26.0"


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool | None = False
    continuous_usage_stats: bool | None = False


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    seed: int | None = None
    temperature: float | None = None
    ignore_eos: bool = False
    min_tokens: int = 0
    n: int = 1


class ChatCompletionRequest(_Sampling):
    messages: list[dict[str, Any]]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]] | None = None
    max_tokens: int | None = 16
    echo: bool | None = False


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str | None = None
    input: str | list[str] | list[int] | list[list[int]]


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


class Renderer:
    """One completion's identity (id, created, model) and its SSE framing."""

    prefix: str = ""
    chunk_object: str = ""

    def __init__(self, model: str, system_fingerprint: str) -> None:
        self.id = new_id(self.prefix)
        self.created = int(time.time())
        self.model = model
        self.fp = system_fingerprint

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": self.chunk_object,
            "created": self.created,
            "model": self.model,
            "choices": choices,
            **extra,
        }

    def usage_chunk(self, prompt: int, completion: int) -> dict[str, Any]:
        return self._chunk(
            [], usage=usage(prompt, completion, details=False), system_fingerprint=self.fp
        )

    def step(
        self, text: str, finish_reason: str | None, *, include_usage: bool
    ) -> list[dict[str, Any]]:
        raise NotImplementedError

    def frames(
        self, text: str, finish_reason: str | None, usage_of: tuple[int, int] | None
    ) -> list[str]:
        """SSE events for one engine step; `usage_of` (prompt, completion) adds the usage chunk
        after the final step, as `stream_options.include_usage` asks."""
        events = self.step(text, finish_reason, include_usage=usage_of is not None)
        if finish_reason is not None and usage_of is not None:
            events.append(self.usage_chunk(*usage_of))
        return [sse(e) for e in events]

    def full(self, text: str, finish_reason: str, prompt: int, completion: int) -> dict[str, Any]:
        raise NotImplementedError


class ChatRenderer(Renderer):
    """Chat completion bodies and chunks: a role chunk first, then content deltas."""

    prefix = "chatcmpl"
    chunk_object = "chat.completion.chunk"
    _started = False

    def role_chunk(self) -> dict[str, Any]:
        choice = {
            "index": 0,
            "delta": {"role": "assistant", "content": ""},
            "logprobs": None,
            "finish_reason": None,
        }
        return self._chunk([choice], prompt_token_ids=None, prompt_text=None)

    def step(
        self, text: str, finish_reason: str | None, *, include_usage: bool
    ) -> list[dict[str, Any]]:
        events = [] if self._started else [self.role_chunk()]
        self._started = True
        choice: dict[str, Any] = {
            "index": 0,
            "delta": {"content": text},
            "logprobs": None,
            "finish_reason": finish_reason,
        }
        if finish_reason is None:
            choice["token_ids"] = None
            return [*events, self._chunk([choice])]
        choice["stop_reason"] = None
        choice["token_ids"] = None
        fingerprint = {} if include_usage else {"system_fingerprint": self.fp}
        return [*events, self._chunk([choice], **fingerprint)]

    def full(self, text: str, finish_reason: str, prompt: int, completion: int) -> dict[str, Any]:
        message = {
            "role": "assistant",
            "content": text,
            "refusal": None,
            "annotations": None,
            "audio": None,
            "function_call": None,
            "reasoning": None,
        }
        choice = {
            "index": 0,
            "message": message,
            "logprobs": None,
            "finish_reason": finish_reason,
            "stop_reason": None,
            "token_ids": None,
            "routed_experts": None,
        }
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "service_tier": None,
            "system_fingerprint": self.fp,
            "usage": usage(prompt, completion),
            "prompt_logprobs": None,
            "prompt_token_ids": None,
            "prompt_text": None,
            "kv_transfer_params": None,
            "ec_transfer_params": None,
            "metrics": None,
        }


class CompletionRenderer(Renderer):
    """Text completion bodies and chunks."""

    prefix = "cmpl"
    chunk_object = "text_completion"

    def step(
        self, text: str, finish_reason: str | None, *, include_usage: bool
    ) -> list[dict[str, Any]]:
        choice = {
            "index": 0,
            "text": text,
            "logprobs": None,
            "finish_reason": finish_reason,
            "stop_reason": None,
            "prompt_token_ids": None,
            "token_ids": None,
        }
        final = finish_reason is not None and not include_usage
        return [self._chunk([choice], **({"system_fingerprint": self.fp} if final else {}))]

    def full(self, text: str, finish_reason: str, prompt: int, completion: int) -> dict[str, Any]:
        choice = {
            "index": 0,
            "text": text,
            "logprobs": None,
            "finish_reason": finish_reason,
            "stop_reason": None,
            "token_ids": None,
            "prompt_logprobs": None,
            "prompt_token_ids": None,
            "routed_experts": None,
        }
        return {
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "service_tier": None,
            "system_fingerprint": self.fp,
            "usage": usage(prompt, completion),
            "kv_transfer_params": None,
            "ec_transfer_params": None,
            "metrics": None,
        }


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
