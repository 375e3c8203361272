"""Bad input gets its exact status and OpenAI error body; backend errors pass through untouched;
streams and disconnects are handled without leaving a backend slot busy."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.helpers.bodies import chat
from tests.helpers.fleet import Fleet, config_for
from tests.helpers.proxy_server import serve_proxy

MODELS: list[dict[str, Any]] = [{"name": "model-a", "aliases": ["a"]}, {"name": "model-b"}]


def error(r: httpx.Response) -> dict[str, object]:
    body: dict[str, object] = r.json()["error"]
    assert set(body) == {"message", "type", "param", "code"}
    return body


@pytest.mark.parametrize(
    ("path", "payload", "status", "code", "param"),
    [
        ("/v1/chat/completions", {"messages": []}, 400, "invalid_request", "model"),
        (
            "/v1/chat/completions",
            {"model": "nope", "messages": []},
            404,
            "model_not_found",
            "model",
        ),
        ("/v1/chat/completions", {"model": 7, "messages": []}, 400, "invalid_request", "model"),
        ("/v1/completions", b"{not json", 400, "invalid_request", None),
        ("/v1/completions", b"[1, 2]", 400, "invalid_request", None),
        ("/v1/completions", b"[" * 100_000, 400, "invalid_request", None),
        ("/tokenize", {"prompt": "x"}, 400, "invalid_request", "model"),
    ],
    ids=[
        "missing-model",
        "unknown-model",
        "model-not-string",
        "malformed-json",
        "not-an-object",
        "nested-too-deep",
        "tokenize-no-model",
    ],
)
async def test_bad_requests_get_openai_errors(
    fleet: Fleet, path: str, payload: object, status: int, code: str, param: str | None
) -> None:
    fleet.start(("model-a", []), ("model-b", []))
    async with (
        serve_proxy(config_for(fleet, MODELS)) as proxy,
        httpx.AsyncClient(base_url=proxy.url) as c,
    ):
        content = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        r = await c.post(path, content=content, headers={"content-type": "application/json"})
    assert r.status_code == status
    body = error(r)
    assert (body["code"], body["param"]) == (code, param)
    assert r.headers["x-vllm-switch-error"] == code
    if code in ("invalid_request", "model_not_found") and param == "model":
        assert "available models: a, model-a, model-b" in str(body["message"])


async def test_body_over_the_limit_is_413(fleet: Fleet) -> None:
    fleet.start(("model-a", []), ("model-b", []))
    async with (
        serve_proxy(config_for(fleet, MODELS, limits={"max_body_bytes": 1024})) as proxy,
        httpx.AsyncClient(base_url=proxy.url) as c,
    ):
        r = await c.post(
            "/v1/chat/completions",
            json=chat("model-a", messages=[{"role": "user", "content": "x" * 2000}]),
        )

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(3):
                yield b"x" * 600

        chunked = await c.post("/v1/chat/completions", content=chunks())
    assert r.status_code == 413
    assert error(r)["code"] == "payload_too_large"
    assert chunked.status_code == 413


@pytest.mark.parametrize(
    "path",
    [
        "/sleep",
        "/wake_up",
        "/collective_rpc",
        "/is_sleeping",
        "/reset_prefix_cache",
        "/v1/nope",
        "/metrics/x",
    ],
)
async def test_backend_dev_endpoints_are_unreachable(fleet: Fleet, path: str) -> None:
    fleet.start(("model-a", []), ("model-b", []))
    async with (
        serve_proxy(config_for(fleet, MODELS)) as proxy,
        httpx.AsyncClient(base_url=proxy.url) as c,
    ):
        posted = await c.post(path, params={"level": 1}, json={"method": "reload_weights"})
        got = await c.get(path)
    for r in (posted, got):
        assert (r.status_code, error(r)["code"]) in {
            (404, "not_found"),
            (405, "method_not_allowed"),
        }
    assert fleet.counters("model-b").get("sleeps_level_1", 0) == 0


async def test_alias_is_rewritten_to_the_backend_name(fleet: Fleet) -> None:
    fleet.start(("model-b", []), ("model-a", []))
    async with (
        serve_proxy(config_for(fleet, MODELS)) as proxy,
        httpx.AsyncClient(base_url=proxy.url) as c,
    ):
        r = await c.post("/v1/chat/completions", json=chat("a"))
        models = (await c.get("/v1/models")).json()
    assert r.status_code == 200
    assert r.json()["model"] == "model-a"
    assert [(m["id"], m["root"], m["state"]) for m in models["data"]] == [
        ("model-a", "model-a", "ready"),
        ("a", "model-a", "ready"),
        ("model-b", "model-b", "asleep"),
    ]


async def test_backend_errors_pass_through_untouched(fleet: Fleet) -> None:
    fleet.start(("model-b", []), ("model-a", []))
    too_long = chat("model-a", 100000)
    direct = httpx.post(f"{fleet.url('model-a')}/v1/chat/completions", json=too_long)
    async with (
        serve_proxy(config_for(fleet, MODELS)) as proxy,
        httpx.AsyncClient(base_url=proxy.url) as c,
    ):
        r = await c.post("/v1/chat/completions", json=too_long)
    assert (
        (r.status_code, r.content) == (direct.status_code, direct.content) == (400, direct.content)
    )
    assert "x-vllm-switch-error" not in r.headers


async def test_backend_errors_in_fastapi_shape_become_openai_errors(fleet: Fleet) -> None:
    """vLLM answers a route its model does not serve with `404 {"detail":"Not Found"}`, which
    OpenAI SDKs show without a message: the proxy keeps the status and wraps the words."""
    fleet.start(("model-b", []), ("model-a", []))
    body = {"model": "model-a", "input": "hi"}
    direct = httpx.post(f"{fleet.url('model-a')}/v1/embeddings", json=body)
    async with (
        serve_proxy(config_for(fleet, MODELS)) as proxy,
        httpx.AsyncClient(base_url=proxy.url) as c,
    ):
        r = await c.post("/v1/embeddings", json=body)
    assert (direct.status_code, direct.json()) == (404, {"detail": "Not Found"})
    assert r.status_code == 404
    assert error(r) == {
        "message": "model 'model-a' does not serve /v1/embeddings (its backend answered 404 Not Found)",
        "type": "invalid_request_error",
        "param": None,
        "code": "not_found",
    }
    assert int(r.headers["content-length"]) == len(r.content)
    assert r.headers["x-vllm-switch-model"] == "model-a"


async def test_tokenize_does_not_wake_a_sleeping_model(fleet: Fleet) -> None:
    fleet.start(("model-a", []), ("model-b", []))
    async with (
        serve_proxy(config_for(fleet, MODELS)) as proxy,
        httpx.AsyncClient(base_url=proxy.url) as c,
    ):
        r = await c.post("/tokenize", json={"model": "model-a", "prompt": "hello world"})
        tokens = {"model": "model-a", "tokens": r.json()["tokens"]}
        d = await c.post("/detokenize", json=tokens)
        assert proxy.state("model-a") == "asleep"
    assert r.status_code == 200
    assert r.json()["count"] == 2
    assert d.status_code == 200
    # the fake tokenizer is lossy (unknown words hash into its vocabulary): the answer must be
    # the backend's own, asked directly (its frontend answers while it sleeps)
    direct = httpx.post(f"{fleet.url('model-a')}/detokenize", json=tokens, timeout=10)
    assert d.json() == direct.json()
    assert d.json()["prompt"].count(" ") == 2, "two tokens, two words"
    assert fleet.counters("model-a").get("wake_calls", 0) == 0


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "non-stream"])
async def test_client_disconnect_closes_the_upstream_request(fleet: Fleet, stream: bool) -> None:
    """The client goes away mid-generation: vLLM sees the abort, no slot or lease stays busy."""
    fleet.start(("model-b", []), ("model-a", ["--emu-itl-s", "0.01"]))
    body = chat("model-a", 2000, stream=stream, ignore_eos=True)
    async with serve_proxy(config_for(fleet, MODELS)) as proxy:
        async with httpx.AsyncClient(base_url=proxy.url, timeout=30) as c:
            if stream:
                async with c.stream("POST", "/v1/chat/completions", json=body) as s:
                    assert (await anext(s.aiter_lines())).startswith("data: ")
            else:
                request = asyncio.create_task(c.post("/v1/chat/completions", json=body))
                async with asyncio.timeout(10):
                    while not fleet.stats("model-a")["state"]["running"]:
                        await asyncio.sleep(0.01)  # poll until the backend is generating
                request.cancel()
        async with asyncio.timeout(10):
            while fleet.stats("model-a")["state"]["running"]:
                await asyncio.sleep(0.01)  # poll the emulator until it saw the abort
            while proxy.services.backends["model-a"].leases:
                await asyncio.sleep(0.01)
    assert fleet.counters("model-a")["requests_cancelled_by_client"] == 1


async def test_client_disconnect_while_queued_leaves_the_switch_running(fleet: Fleet) -> None:
    """The only waiter gives up during a slow wake; the switch completes anyway."""
    fleet.start(("model-a", ["--emu-wake-weights-l1-s", "1.0"]), ("model-b", []))
    async with serve_proxy(config_for(fleet, MODELS)) as proxy:
        async with httpx.AsyncClient(base_url=proxy.url, timeout=0.3) as c:
            with pytest.raises(httpx.ReadTimeout):
                await c.post("/v1/chat/completions", json=chat("model-a"))
        async with asyncio.timeout(10):
            while proxy.state("model-a") != "ready":
                await asyncio.sleep(0.01)
        assert proxy.services.switcher.waiting["model-a"] == 0
        gone = 'vllm_switch_requests_total{endpoint="/v1/chat/completions",model="model-a",status="499"} 1.0'
        async with httpx.AsyncClient(base_url=proxy.url) as c, asyncio.timeout(5):
            while gone not in (await c.get("/metrics")).text:  # the handler saw the client leave
                await asyncio.sleep(0.01)


async def test_mid_stream_backend_crash_ends_the_stream_with_an_error_event(fleet: Fleet) -> None:
    fleet.start(("model-b", []), ("model-a", ["--emu-itl-s", "0.01"]))
    async with (
        serve_proxy(config_for(fleet, MODELS)) as proxy,
        httpx.AsyncClient(base_url=proxy.url, timeout=30) as c,
        c.stream(
            "POST", "/v1/chat/completions", json=chat("model-a", 2000, stream=True, ignore_eos=True)
        ) as s,
    ):
        lines = s.aiter_lines()
        assert (await anext(lines)).startswith("data: ")
        fleet.emulators["model-a"].kill()
        events = [line[6:] async for line in lines if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    err = json.loads(events[-2])["error"]
    assert err["code"] == "upstream_unreachable"
    assert "model-a" in err["message"]


async def test_odd_but_valid_input_is_forwarded(fleet: Fleet) -> None:
    """A latin-1 header value and an escaped surrogate pair in an aliased body are forwarded
    (a lone surrogate is a 400: tests/proxy/test_hygiene.py)."""
    fleet.start(("model-b", []), ("model-a", []))
    body = b'{"model":"a","prompt":"\\ud83d\\ude00 hi","max_tokens":2}'
    async with (
        serve_proxy(config_for(fleet, MODELS)) as proxy,
        httpx.AsyncClient(base_url=proxy.url, timeout=30) as c,
    ):
        r = await c.post(
            "/v1/completions",
            content=body,
            headers=[
                (b"content-type", b"application/json"),
                (b"x-title", "caf\xe9".encode("latin-1")),
            ],
        )
    assert r.status_code == 200, r.text


async def test_backend_reset_during_a_request_is_a_502_and_frees_the_lease(fleet: Fleet) -> None:
    """The backend process dies while a non-streaming request waits for its answer."""
    fleet.start(("model-b", []), ("model-a", ["--emu-itl-s", "0.01"]))
    async with (
        serve_proxy(config_for(fleet, MODELS)) as proxy,
        httpx.AsyncClient(base_url=proxy.url, timeout=30) as c,
    ):
        request = asyncio.create_task(
            c.post("/v1/chat/completions", json=chat("model-a", 2000, ignore_eos=True))
        )
        async with asyncio.timeout(10):
            while not fleet.stats("model-a")["state"]["running"]:
                await asyncio.sleep(0.01)  # poll until the backend is generating
        fleet.emulators["model-a"].kill()
        r = await request
        assert proxy.services.backends["model-a"].leases == 0
    assert r.status_code == 502
    assert error(r)["code"] == "upstream_unreachable"
    assert "model-a" in str(error(r)["message"])


async def test_a_slow_stream_reader_holds_up_no_one_and_loses_nothing(fleet: Fleet) -> None:
    """One client stops reading its stream (TCP back-pressure reaches the proxy); other
    requests to the same model are served meanwhile, and the stalled stream then arrives
    whole and in order."""
    fleet.start(("model-b", []), ("model-a", ["--emu-itl-s", "0.0005"]))
    body = chat("model-a", 3000, stream=True, ignore_eos=True)
    async with (
        serve_proxy(config_for(fleet, MODELS)) as proxy,
        httpx.AsyncClient(base_url=proxy.url, timeout=30) as slow,
        httpx.AsyncClient(base_url=proxy.url, timeout=30) as others,
        slow.stream("POST", "/v1/chat/completions", json=body) as s,
    ):
        lines = s.aiter_lines()
        assert (await anext(lines)).startswith("data: ")
        # the slow client reads nothing while these run to completion
        served = await asyncio.gather(
            *(others.post("/v1/chat/completions", json=chat("model-a")) for _ in range(5))
        )
        events = [line[6:] async for line in lines if line.startswith("data: ")]
        async with asyncio.timeout(10):
            while proxy.services.backends["model-a"].leases:
                await asyncio.sleep(0.01)
    assert [r.status_code for r in served] == [200] * 5
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert len(chunks) == 3000  # first line read above: role chunk; then 3000 tokens
