"""tcp_listener: the proxy's listening socket, made so that its connections get TCP_NODELAY.

asyncio sets TCP_NODELAY on an accepted connection only if the socket says IPPROTO_TCP, and
`socket.create_server` makes sockets with proto 0. Without it, Nagle's algorithm holds a small
write (one SSE chunk) until the client ACKs the previous one, which a delayed ACK can put off
for up to 40 ms: streams arrive in bursts. (vLLM 0.26 binds its socket the same proto-0 way,
so its own chunks can bunch up; the emulator copies that, see `--emu-nodelay`.) Stateless.
"""

from __future__ import annotations

import socket


def tcp_listener(host: str, port: int, *, backlog: int = 2048) -> socket.socket:
    """A bound, listening TCP socket whose accepted connections asyncio sets to TCP_NODELAY."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock
