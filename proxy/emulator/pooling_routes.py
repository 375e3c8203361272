"""The pooling routes of the emulator, registered by model task as vLLM 0.26.0 does.

`--convert embed` (or `--runner pooling`): `/v1/embeddings`, `/pooling`, and the scoring API
(`/score`, `/v1/score`, `/rerank`, `/v1/rerank`, `/v2/rerank`, cosine similarity of the two
embeddings, as vLLM scores with a bi-encoder). `--convert classify`: `/classify` and
`/pooling`. Every input is its own engine request (one step, no text), so these routes queue
and hang while the engine sleeps and are counted like generation. Vectors are deterministic
hashes of the input's token ids, not a model's; `encoding_format: "base64"` packs them as
little-endian float32, and `dimensions` is refused (the emulated model is not a Matryoshka one).
No state.
"""

from __future__ import annotations

import base64
import hashlib
import math
import struct
import time
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict

from proxy.emulator.engine import Engine, EngineDeadError
from proxy.emulator.fanout import collect, submit
from proxy.emulator.frontend import check_model, dead_response, engine_of, validate_json_request
from proxy.emulator.protocol import (
    EmbeddingChatRequest,
    EmbeddingRequest,
    VllmValidationError,
    new_id,
    usage,
)

LABELS = ("LABEL_0", "LABEL_1")

embed_router = APIRouter(dependencies=[Depends(validate_json_request)])
classify_router = APIRouter(dependencies=[Depends(validate_json_request)])
pooling_router = APIRouter(dependencies=[Depends(validate_json_request)])
score_router = APIRouter(dependencies=[Depends(validate_json_request)])

Inputs = str | list[str] | list[int] | list[list[int]]


class PoolingRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str | None = None
    input: Inputs


class ScoreRequest(BaseModel):
    """vLLM accepts text_1/text_2, queries/documents, queries/items or data_1/data_2."""

    model_config = ConfigDict(extra="allow")
    model: str | None = None
    text_1: str | list[str] | None = None
    text_2: str | list[str] | None = None
    queries: str | list[str] | None = None
    documents: str | list[str] | None = None
    items: str | list[str] | None = None
    data_1: str | list[str] | None = None
    data_2: str | list[str] | None = None


class RerankRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str | None = None
    query: str
    documents: list[str]
    top_n: int = 0


def _items(raw: Inputs) -> list[str | list[int]]:
    if isinstance(raw, str):
        return [raw]
    if raw and all(isinstance(t, int) for t in raw):
        return [[t for t in raw if isinstance(t, int)]]
    return list(raw)  # type: ignore[arg-type]


def _vector(ids: list[int]) -> list[float]:
    digest = hashlib.sha256(repr(ids).encode()).digest()
    return [round((b - 128) / 128, 6) for b in digest]


def _base64(vector: list[float]) -> str:
    """vLLM's `encoding_format: "base64"`: little-endian float32, base64-encoded."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def _cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norm if norm else 0.0


async def _pool(
    request: Request, engine: Engine, items: list[str | list[int]]
) -> tuple[list[list[int]], list[list[float]]] | Response:
    """Each input through the engine (queued while asleep); their ids and vectors."""
    ids = [engine.tokenizer.encode(i) if isinstance(i, str) else list(i) for i in items]
    try:
        reqs = [submit(engine, one, 1, ignore_eos=True) for one in ids]
    except EngineDeadError:
        return dead_response()
    done = await collect(request, engine, reqs)
    if done is None:
        return Response(status_code=499)
    if any(outputs[-1].error is not None for outputs in done):
        return dead_response()
    return ids, [_vector(one) for one in ids]


def _listing(prefix: str, served: str, data: list[dict[str, Any]], tokens: int) -> JSONResponse:
    return JSONResponse(
        {
            "id": new_id(prefix),
            "object": "list",
            "created": int(time.time()),
            "model": served,
            "data": data,
            "usage": usage(tokens, 0),
        }
    )


@embed_router.post("/v1/embeddings")
async def embeddings(body: EmbeddingRequest, request: Request) -> Response:
    engine = engine_of(request)
    served = check_model(engine, body.model, param=None)
    if body.dimensions is not None:  # the emulated checkpoint is not a Matryoshka model
        raise VllmValidationError(
            f"Model '{served}' does not support Matryoshka embeddings; dimensions must be "
            f"unset (received dimensions={body.dimensions})."
        )
    if isinstance(body, EmbeddingChatRequest):  # one input: the chat template's text
        items: list[str | list[int]] = [engine.tokenizer.apply_chat_template(body.messages)]
    else:
        items = _items(body.input)
    pooled = await _pool(request, engine, items)
    if isinstance(pooled, Response):
        return pooled
    ids, vectors = pooled
    encode = _base64 if body.encoding_format == "base64" else None
    data = [
        {"index": i, "object": "embedding", "embedding": encode(v) if encode else v}
        for i, v in enumerate(vectors)
    ]
    return _listing("embd", served, data, sum(map(len, ids)))


@pooling_router.post("/pooling")
async def pooling(body: PoolingRequest, request: Request) -> Response:
    engine = engine_of(request)
    served = check_model(engine, body.model, param=None)
    pooled = await _pool(request, engine, _items(body.input))
    if isinstance(pooled, Response):
        return pooled
    ids, vectors = pooled
    if engine.settings.task == "classify":
        vectors = [_probs(v) for v in vectors]
    data = [{"index": i, "object": "pooling", "data": v} for i, v in enumerate(vectors)]
    return _listing("pool", served, data, sum(map(len, ids)))


def _probs(vector: list[float]) -> list[float]:
    logits = vector[: len(LABELS)]
    total = sum(math.exp(x) for x in logits)
    return [math.exp(x) / total for x in logits]


@classify_router.post("/classify")
async def classify(body: PoolingRequest, request: Request) -> Response:
    engine = engine_of(request)
    served = check_model(engine, body.model, param=None)
    pooled = await _pool(request, engine, _items(body.input))
    if isinstance(pooled, Response):
        return pooled
    ids, vectors = pooled
    data = []
    for i, vector in enumerate(vectors):
        probs = _probs(vector)
        label = LABELS[probs.index(max(probs))]
        data.append({"index": i, "label": label, "probs": probs, "num_classes": len(LABELS)})
    return _listing("classify", served, data, sum(map(len, ids)))


def _score_pairs(body: ScoreRequest) -> tuple[list[str], list[str]]:
    for first, second in (("text_1", "text_2"), ("queries", "documents"), ("queries", "items")):
        left, right = getattr(body, first), getattr(body, second)
        if left is not None and right is not None:
            break
    else:
        left, right = body.data_1, body.data_2
        if left is None or right is None:
            raise VllmValidationError(
                "a score request needs text_1 and text_2 (or queries and documents)"
            )
    lefts = [left] if isinstance(left, str) else list(left)
    rights = [right] if isinstance(right, str) else list(right)
    if len(lefts) == 1:
        lefts = lefts * len(rights)
    if len(lefts) != len(rights) or not rights:
        raise VllmValidationError("text_1 and text_2 must have the same length")
    return lefts, rights


async def _scores(
    request: Request, engine: Engine, lefts: list[str], rights: list[str]
) -> tuple[list[float], int] | Response:
    items: list[str | list[int]] = [*lefts, *rights]
    pooled = await _pool(request, engine, items)
    if isinstance(pooled, Response):
        return pooled
    ids, vectors = pooled
    n = len(lefts)
    scores = [_cosine(vectors[i], vectors[n + i]) for i in range(n)]
    return scores, sum(map(len, ids))


@score_router.post("/score")
@score_router.post("/v1/score")
async def score(body: ScoreRequest, request: Request) -> Response:
    engine = engine_of(request)
    served = check_model(engine, body.model, param=None)
    lefts, rights = _score_pairs(body)
    result = await _scores(request, engine, lefts, rights)
    if isinstance(result, Response):
        return result
    scores, tokens = result
    data = [{"index": i, "object": "score", "score": s} for i, s in enumerate(scores)]
    return _listing("score", served, data, tokens)


@score_router.post("/rerank")
@score_router.post("/v1/rerank")
@score_router.post("/v2/rerank")
async def rerank(body: RerankRequest, request: Request) -> Response:
    engine = engine_of(request)
    served = check_model(engine, body.model, param=None)
    if not body.documents:
        raise VllmValidationError("documents must not be empty", param="documents")
    result = await _scores(
        request, engine, [body.query] * len(body.documents), list(body.documents)
    )
    if isinstance(result, Response):
        return result
    scores, tokens = result
    ranked = sorted(range(len(scores)), key=lambda i: scores[i], reverse=True)
    if body.top_n > 0:
        ranked = ranked[: body.top_n]
    results = [
        {
            "index": i,
            "document": {"text": body.documents[i], "multi_modal": None},
            "relevance_score": scores[i],
        }
        for i in ranked
    ]
    return JSONResponse(
        {
            "id": new_id("rerank"),
            "model": served,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            "results": results,
        }
    )
