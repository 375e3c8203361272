"""Routes of a pooling model, checked against the emulator and against real vLLM 0.26.0.

The target serves the conformance checkpoint as `tiny-embed` with `--runner pooling --convert
embed`. Its weights are random, so only what vLLM answers whatever the weights is checked:
shapes, keys, types, index order, usage, the order of rerank results, and the errors; never a
vector's or a score's value (a cosine lies in [-1, 1] by arithmetic, not by training). A pooling
runner registers no generation routes, so chat and completions are FastAPI's plain 404. If the
target has Sleep Mode (dev mode and `--enable-sleep-mode`), a pooling request sent while it
sleeps hangs and completes after `/wake_up`.
"""

from __future__ import annotations

import asyncio
import base64
import math
from typing import Any

import httpx
import pytest

from tests.conformance.target import POOLING_MODEL

pytestmark = pytest.mark.process

HANG_S = 1.5
DOCUMENTS = ["The Moon orbits the Earth.", "Paris is in France.", "Cats purr.", "Tides."]
RERANK_PATHS = ["/rerank", "/v1/rerank", "/v2/rerank"]


async def post(c: httpx.AsyncClient, path: str, body: dict[str, Any]) -> Any:
    r = await c.post(path, json={"model": POOLING_MODEL, **body})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    return r.json()


def check_listing(body: Any, count: int, obj: str) -> list[dict[str, Any]]:
    """The `{"object": "list", "data": [...]}` envelope of embeddings, pooling and score."""
    assert body["object"] == "list"
    assert body["model"] == POOLING_MODEL
    assert isinstance(body["id"], str)
    assert isinstance(body["created"], int)
    assert {"prompt_tokens", "total_tokens"} <= set(body["usage"])
    assert body["usage"]["prompt_tokens"] > 0
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"]
    data: list[dict[str, Any]] = body["data"]
    assert [d["index"] for d in data] == list(range(count))
    assert all(d["object"] == obj for d in data)
    return data


def check_vector(v: Any) -> int:
    assert isinstance(v, list)
    assert v
    assert all(isinstance(x, float) and math.isfinite(x) for x in v)
    return len(v)


def check_score(s: Any) -> None:
    assert isinstance(s, float)
    assert -1.0001 <= s <= 1.0001  # a cosine similarity (bi-encoder scoring)


async def test_embeddings_of_one_string(pooling_client: httpx.AsyncClient) -> None:
    body = await post(pooling_client, "/v1/embeddings", {"input": "Give me a fun fact."})
    (item,) = check_listing(body, 1, "embedding")
    assert list(item) == ["index", "object", "embedding"]
    check_vector(item["embedding"])


async def test_embeddings_of_a_list_have_one_size(pooling_client: httpx.AsyncClient) -> None:
    texts = ["a", "The Moon is far away.", "b c d"]
    body = await post(pooling_client, "/v1/embeddings", {"input": texts})
    data = check_listing(body, 3, "embedding")
    sizes = {check_vector(d["embedding"]) for d in data}
    assert len(sizes) == 1


async def test_embeddings_of_token_ids(pooling_client: httpx.AsyncClient) -> None:
    one = await post(pooling_client, "/v1/embeddings", {"input": [5, 6, 7, 8]})
    (item,) = check_listing(one, 1, "embedding")
    assert one["usage"]["prompt_tokens"] == 4
    two = await post(pooling_client, "/v1/embeddings", {"input": [[5, 6], [7, 8, 9]]})
    check_listing(two, 2, "embedding")
    assert two["usage"]["prompt_tokens"] == 5
    check_vector(item["embedding"])


async def test_embeddings_base64(pooling_client: httpx.AsyncClient) -> None:
    floats = await post(pooling_client, "/v1/embeddings", {"input": "x y"})
    size = check_vector(floats["data"][0]["embedding"])
    packed = await post(
        pooling_client, "/v1/embeddings", {"input": "x y", "encoding_format": "base64"}
    )
    (item,) = check_listing(packed, 1, "embedding")
    assert isinstance(item["embedding"], str)
    assert len(base64.b64decode(item["embedding"], validate=True)) == 4 * size  # float32


async def test_embeddings_dimensions_is_400(pooling_client: httpx.AsyncClient) -> None:
    """The checkpoint is not a Matryoshka model, so vLLM refuses to truncate its output."""
    r = await pooling_client.post(
        "/v1/embeddings", json={"model": POOLING_MODEL, "input": "x", "dimensions": 8}
    )
    assert r.status_code == 400, r.text
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}


async def test_pooling(pooling_client: httpx.AsyncClient) -> None:
    """Shape only: vLLM may pool per sequence (a vector) or per token (a list of vectors)."""
    body = await post(pooling_client, "/pooling", {"input": ["a b", "c"]})
    for item in check_listing(body, 2, "pooling"):
        assert list(item) == ["index", "object", "data"]
        assert isinstance(item["data"], list)
        assert item["data"]
        if isinstance(item["data"][0], list):
            for row in item["data"]:
                check_vector(row)
        else:
            check_vector(item["data"])


@pytest.mark.parametrize("path", ["/score", "/v1/score"])
async def test_score_pairs_and_one_to_many(pooling_client: httpx.AsyncClient, path: str) -> None:
    pairs = await post(pooling_client, path, {"text_1": ["a", "b"], "text_2": ["c", "d"]})
    for item in check_listing(pairs, 2, "score"):
        assert list(item) == ["index", "object", "score"]
        check_score(item["score"])
    many = await post(pooling_client, path, {"text_1": "The Moon", "text_2": DOCUMENTS})
    for item in check_listing(many, len(DOCUMENTS), "score"):
        check_score(item["score"])


@pytest.mark.parametrize("path", RERANK_PATHS)
async def test_rerank_sorted_by_relevance(pooling_client: httpx.AsyncClient, path: str) -> None:
    body = await post(pooling_client, path, {"query": "The Moon", "documents": DOCUMENTS})
    assert isinstance(body["id"], str)
    assert body["model"] == POOLING_MODEL
    assert body["usage"]["total_tokens"] > 0
    results = body["results"]
    assert sorted(r["index"] for r in results) == list(range(len(DOCUMENTS)))
    scores = [r["relevance_score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    for r in results:
        check_score(r["relevance_score"])
        assert r["document"]["text"] == DOCUMENTS[r["index"]]


@pytest.mark.parametrize("path", RERANK_PATHS)
async def test_rerank_top_n(pooling_client: httpx.AsyncClient, path: str) -> None:
    full = await post(pooling_client, path, {"query": "The Moon", "documents": DOCUMENTS})
    top = await post(
        pooling_client, path, {"query": "The Moon", "documents": DOCUMENTS, "top_n": 2}
    )
    assert len(top["results"]) == 2
    assert [r["index"] for r in top["results"]] == [r["index"] for r in full["results"][:2]]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
async def test_no_generation_routes_on_a_pooling_model(
    pooling_client: httpx.AsyncClient, path: str
) -> None:
    body = {"model": POOLING_MODEL, "prompt": "x", "messages": [{"role": "user", "content": "x"}]}
    r = await pooling_client.post(path, json=body)
    assert (r.status_code, r.json()) == (404, {"detail": "Not Found"})


@pytest.mark.parametrize("path", ["/v1/embeddings", "/pooling"])
async def test_unknown_model_is_404(pooling_client: httpx.AsyncClient, path: str) -> None:
    """Unlike chat's ("param": "model"), vLLM 0.26's pooling routes name no param (H200 run)."""
    r = await pooling_client.post(path, json={"model": "nope", "input": "x"})
    assert (r.status_code, r.json()) == (
        404,
        {
            "error": {
                "message": "The model `nope` does not exist.",
                "type": "NotFoundError",
                "param": None,
                "code": 404,
            }
        },
    )


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/embeddings", {"model": POOLING_MODEL}),
        ("/v1/embeddings", {"model": POOLING_MODEL, "input": {"not": "text"}}),
        ("/v1/rerank", {"model": POOLING_MODEL, "query": "x"}),
    ],
    ids=["no-input", "input-object", "rerank-no-documents"],
)
async def test_schema_errors_are_400(
    pooling_client: httpx.AsyncClient, path: str, body: dict[str, Any]
) -> None:
    r = await pooling_client.post(path, json=body)
    assert r.status_code == 400, r.text
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}


async def test_pooling_request_hangs_while_asleep(pooling_client: httpx.AsyncClient) -> None:
    if (await pooling_client.get("/is_sleeping")).status_code != 200:
        pytest.skip("the pooling target has no dev mode / Sleep Mode")
    assert (await pooling_client.post("/sleep", params={"level": 1})).status_code == 200
    assert (await pooling_client.get("/is_sleeping")).json() == {"is_sleeping": True}
    task = asyncio.create_task(
        pooling_client.post("/v1/embeddings", json={"model": POOLING_MODEL, "input": "x"})
    )
    done, _ = await asyncio.wait({task}, timeout=HANG_S)
    assert not done, "a sleeping vLLM 0.26 queues pooling requests"
    assert (await pooling_client.post("/wake_up")).status_code == 200
    r = await asyncio.wait_for(task, 30)
    assert r.status_code == 200, r.text
    check_listing(r.json(), 1, "embedding")
