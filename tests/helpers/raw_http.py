"""Raw HTTP/1.1 on loopback sockets, for the tests of the inbound edge: send bytes as they are,
read everything until the server closes, parse the one answer and check it is an OpenAI error."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

HEALTH = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
HEALTH_CLOSE = b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


def parse(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def openai_error(raw: bytes, status: int, code: str) -> dict[str, Any]:
    """The one response in `raw`: `status`, an OpenAI error body with `code`, Connection: close."""
    got, headers, body = parse(raw)
    assert got == status, raw[:300]
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    assert int(headers["content-length"]) == len(body), "exactly one response, then EOF"
    error: dict[str, Any] = json.loads(body)["error"]
    assert error["code"] == code
    assert error["type"] in ("invalid_request_error", "server_error")
    return error


async def until_closed(port: int, *chunks: bytes, deadline_s: float = 10) -> bytes:
    """Connect, send `chunks`, return all the server sends until it closes (within the deadline)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for chunk in chunks:
            writer.write(chunk)
            await writer.drain()
        async with asyncio.timeout(deadline_s):
            return await reader.read()  # to EOF
    finally:
        await closed(writer)


async def closed(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()
