"""tcp_listener: the proxy's listening socket, made so that its connections get TCP_NODELAY.

asyncio sets TCP_NODELAY on an accepted connection only if the socket says IPPROTO_TCP, and
`socket.create_server` makes sockets with proto 0. Without it, Nagle's algorithm holds a small
write (one SSE chunk) until the client ACKs the previous one, which a delayed ACK can put off
for up to 40 ms: streams arrive in bursts. (vLLM 0.26 binds its socket the same proto-0 way,
so its own chunks can bunch up; the emulator copies that, see `--emu-nodelay`.) Stateless.

A socket that cannot be made (a busy port, an unknown host) is a `ListenError` whose message is
one line naming host:port and what to do, which the CLI prints instead of a traceback.
"""

from __future__ import annotations

import errno
import socket


class ListenError(OSError):
    """The proxy cannot listen where it was told to; the message says why and what to do."""


def tcp_listener(host: str, port: int, *, backlog: int = 2048) -> socket.socket:
    """A bound, listening TCP socket whose accepted connections asyncio sets to TCP_NODELAY."""
    where = f"{host}:{port}"
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise ListenError(f"cannot listen on {where}: unknown host ({exc.strerror})") from exc
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise ListenError(_explain(where, exc)) from exc
    return sock


def _explain(where: str, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return (
            f"cannot listen on {where}: the port is already in use (another vllm-switch, or a "
            "vLLM server?); stop that process or choose another port with --port (0: any free one)"
        )
    if exc.errno == errno.EACCES:
        return f"cannot listen on {where}: permission denied; use a port above 1023"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {where}: no such address on this machine; check --host"
    return f"cannot listen on {where}: {exc.strerror or exc}"
