"""`Recorder`: a raw-socket stand-in for vLLM on 127.0.0.1, in the test's event loop, for the
header and body hygiene tests. It answers the proxy's start-up calls (`/health`,
`/is_sleeping`, the start-up probe's `/v1/models` with its `served` names and `/server_info`) and records the head and body of every
other request (`seen`), answering it with the next scripted reply (`replies`, else `reply()`)."""

from __future__ import annotations

import asyncio
import json
from collections import deque
from dataclasses import dataclass
from typing import Any

COMPLETION = b'{"id":"c-1","object":"chat.completion","choices":[]}'
CONTROL = {b"/health": b"", b"/is_sleeping": b'{"is_sleeping":false}'}


def reply(body: bytes = COMPLETION, *headers: bytes, status: bytes = b"200 OK") -> bytes:
    """A Content-Length-framed answer with extra raw header lines."""
    lines = [b"HTTP/1.1 " + status, b"content-type: application/json", *headers]
    lines.append(b"content-length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


@dataclass
class Seen:
    target: bytes
    head: bytes  # request line and headers, as received
    headers: list[tuple[bytes, bytes]]  # names lower-cased
    body: bytes

    def get(self, name: bytes) -> list[bytes]:
        return [v for k, v in self.headers if k == name]


class Recorder:
    """A vLLM stand-in on 127.0.0.1; owns its server, `seen` and `replies` (tests read `seen`
    and append to `replies` before the request that takes one)."""

    def __init__(self, served: tuple[str, ...] = ("m",)) -> None:
        cards = [{"id": name, "object": "model", "max_model_len": 4096} for name in served]
        info = {"vllm_config": {"model_config": {"enable_sleep_mode": True}}}
        self._control = {
            **CONTROL,
            b"/v1/models": json.dumps({"object": "list", "data": cards}).encode(),
            b"/server_info?config_format=json": json.dumps(info).encode(),
        }
        self.seen: list[Seen] = []
        self.replies: deque[bytes] = deque()
        self.url = ""
        self._tasks: set[asyncio.Task[Any]] = set()

    async def __aenter__(self) -> Recorder:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *_: object) -> None:
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head[:-4].split(b"\r\n")
                target = lines[0].split(b" ")[1]
                fields = [line.partition(b":") for line in lines[1:]]
                headers = [(n.strip().lower(), v.strip()) for n, _, v in fields]
                body = await _body(reader, dict(headers))
                if target in self._control:
                    answer = reply(self._control[target])
                else:
                    self.seen.append(Seen(target, head, headers, body))
                    answer = self.replies.popleft() if self.replies else reply()
                writer.write(answer)
                await writer.drain()
                if b"close" in dict(headers).get(b"connection", b"").lower():
                    break
                if b"\r\nconnection: close\r\n" in answer.split(b"\r\n\r\n")[0].lower() + b"\r\n":
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)


async def _body(reader: asyncio.StreamReader, headers: dict[bytes, bytes]) -> bytes:
    if b"content-length" in headers:
        return await reader.readexactly(int(headers[b"content-length"]))
    if headers.get(b"transfer-encoding", b"").lower() != b"chunked":
        return b""
    data = bytearray()
    while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
        data += (await reader.readexactly(size + 2))[:-2]
    await reader.readuntil(b"\r\n")
    return bytes(data)
