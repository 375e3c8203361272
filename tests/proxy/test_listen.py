"""The proxy's listening socket gives its connections TCP_NODELAY (no Nagle bunching of
stream chunks); a plain `socket.create_server` socket, as vLLM 0.26 uses, does not."""

from __future__ import annotations

import asyncio
import socket

import pytest

from proxy.http.edge.listen import tcp_listener

pytestmark = pytest.mark.process  # loopback listeners


async def accepted_nodelay(sock: socket.socket) -> int:
    seen: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def handle(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = writer.get_extra_info("socket")
        seen.set_result(conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        writer.close()

    server = await asyncio.start_server(handle, sock=sock)
    async with server:
        _, writer = await asyncio.open_connection(*sock.getsockname()[:2])
        value = await asyncio.wait_for(seen, 10)
        writer.close()
    return value


@pytest.mark.parametrize("kind", ["tcp_listener", "create_server"])
async def test_accepted_connections_get_tcp_nodelay(kind: str) -> None:
    if kind == "tcp_listener":
        assert await accepted_nodelay(tcp_listener("127.0.0.1", 0)) != 0
    else:  # why the module exists: asyncio skips TCP_NODELAY for proto-0 sockets
        assert await accepted_nodelay(socket.create_server(("127.0.0.1", 0))) == 0
