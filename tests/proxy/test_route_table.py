"""Every model-bearing vLLM route of routes/table.py is forwarded: the same path on the model's
backend, `model` found where the route keeps it (JSON body or multipart form field) and
rewritten to the backend's served name, the rest of the body byte for byte. A malformed form is
a 400 that says why; `GET /v1/models/{id}` answers `client.models.retrieve`; the client keys
guard every forwarded route; README's endpoint table lists the whole table.

The backend is `Recorder` (tests/helpers/recorder.py): it records what the proxy sent.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from proxy.config import ProxyConfig
from proxy.http.routes.table import ROUTES
from tests.helpers.proxy_server import serve_proxy
from tests.helpers.recorder import Recorder, reply

pytestmark = pytest.mark.process
ROOT = Path(__file__).resolve().parents[2]
AUDIO = bytes(range(256)) * 40  # binary, with CR LF and the boundary's dashes in it
JSON_ROUTES = [r.path for r in ROUTES if r.body == "json"]
FORM_ROUTES = [r.path for r in ROUTES if r.body == "form"]


def config(url: str, **top: Any) -> ProxyConfig:
    model = {"name": "m", "url": url, "served_name": "org/served", "aliases": ["alias"]}
    return ProxyConfig.model_validate({"models": [model], **top})


@asynccontextmanager
async def proxied(**top: Any) -> AsyncIterator[tuple[Recorder, httpx.AsyncClient]]:
    async with (
        Recorder(served=("org/served",)) as backend,
        serve_proxy(config(backend.url, **top)) as proxy,
        httpx.AsyncClient(base_url=proxy.url, timeout=30) as client,
    ):
        yield backend, client


@pytest.mark.parametrize("path", JSON_ROUTES)
async def test_each_json_route_reaches_the_same_path_with_the_served_name(path: str) -> None:
    async with proxied() as (backend, client):
        r = await client.post(path, json={"model": "alias", "input": "x", "extra": [1, 2]})
        assert r.status_code == 200, r.text
    (seen,) = backend.seen
    assert seen.target == path.encode()
    assert json.loads(seen.body) == {"model": "org/served", "input": "x", "extra": [1, 2]}


@pytest.mark.parametrize("path", FORM_ROUTES)
async def test_a_form_route_finds_model_after_the_file_and_keeps_every_other_byte(
    path: str,
) -> None:
    async with proxied() as (backend, client):
        files = {"file": ("a.wav", AUDIO, "audio/wav")}
        request = client.build_request(
            "POST", path, files=files, data={"language": "en", "model": "alias"}
        )
        sent = request.read()
        r = await client.send(request)
        assert r.status_code == 200, r.text
    (seen,) = backend.seen
    assert seen.target == path.encode()
    assert seen.get(b"content-type") == [request.headers["content-type"].encode()]
    assert seen.body == sent.replace(b"\r\n\r\nalias\r\n", b"\r\n\r\norg/served\r\n")
    assert AUDIO in seen.body


async def test_the_openai_sdk_transcribes_through_the_proxy() -> None:
    async with (
        Recorder(served=("org/served",)) as backend,
        serve_proxy(config(backend.url)) as proxy,
    ):
        backend.replies.append(reply(b'{"text":"hello"}'))
        client = openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key="none")
        done = await client.audio.transcriptions.create(model="m", file=("a.wav", AUDIO))
        await client.close()
    assert done.text == "hello"
    (seen,) = backend.seen
    assert b'name="model"\r\n\r\norg/served\r\n' in seen.body


@pytest.mark.parametrize(
    ("content_type", "body", "message"),
    [
        ("application/json", b'{"model":"m"}', "takes multipart/form-data"),
        ("multipart/form-data", b"--x\r\n", "boundary"),
        ("multipart/form-data; boundary=x", b"garbage", "malformed multipart"),
        ("multipart/form-data; boundary=x", b"--x--\r\n", "no parts"),
        (
            "multipart/form-data; boundary=x",
            b'--x\r\ncontent-disposition: form-data; name="file"\r\n\r\nabc\r\n--x--\r\n',
            "must provide a model",
        ),
        (
            "multipart/form-data; boundary=x",
            b'--x\r\ncontent-disposition: form-data; name="model"\r\n\r\nm\r\n'
            b'--x\r\ncontent-disposition: form-data; name="model"\r\n\r\nm\r\n--x--\r\n',
            "more than one `model`",
        ),
        (
            "multipart/form-data; boundary=x",
            b'--x\r\ncontent-disposition: form-data; name="model"\r\n\r\nnope\r\n--x--\r\n',
            "does not exist",
        ),
    ],
)
async def test_a_bad_form_is_an_openai_error_and_nothing_is_forwarded(
    content_type: str, body: bytes, message: str
) -> None:
    async with proxied() as (backend, client):
        r = await client.post(
            "/v1/audio/transcriptions", content=body, headers={"content-type": content_type}
        )
        assert r.status_code in (400, 404), r.text
        assert message in r.json()["error"]["message"]
        ok = await client.post("/v1/chat/completions", json={"model": "m", "messages": []})
        assert ok.status_code == 200, "the proxy serves the next request"
    assert [s.target for s in backend.seen] == [b"/v1/chat/completions"]


async def test_an_oversized_form_is_refused_with_413() -> None:
    async with proxied(limits={"max_body_bytes": 4096}) as (backend, client):
        files = {"file": ("a.wav", AUDIO, "audio/wav")}
        r = await client.post("/v1/audio/transcriptions", files=files, data={"model": "m"})
    assert r.status_code == 413
    assert backend.seen == []


async def test_models_retrieve_answers_one_entry_or_the_openai_404() -> None:
    async with (
        Recorder(served=("org/served",)) as backend,
        serve_proxy(config(backend.url)) as proxy,
    ):
        client = openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key="none")
        got = await client.models.retrieve("alias")
        assert (got.id, got.owned_by) == ("alias", "vllm-switch")
        with pytest.raises(openai.NotFoundError) as missing:
            await client.models.retrieve("nope")
        await client.close()
    assert "does not exist" in str(missing.value)


@pytest.mark.parametrize("path", [r.path for r in ROUTES])
async def test_the_client_keys_guard_every_forwarded_route(path: str) -> None:
    async with proxied(auth={"api_keys": ["sk-client-0123456789"]}) as (backend, client):
        r = await client.post(path, json={"model": "m"})
    assert r.status_code == 401
    assert backend.seen == []


def test_the_readme_lists_every_route() -> None:
    readme = (ROOT / "README.md").read_text()
    listed = set(re.findall(r"^\| `(?:POST|GET) ([^`]+)` \|", readme, flags=re.MULTILINE))
    missing = {r.path for r in ROUTES} - listed
    assert not missing, f"README's endpoint table lacks {sorted(missing)}"
    assert "/v1/models/{id}" in listed
