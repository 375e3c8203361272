"""HTTP/1.1 on the wire, client side: a request head out, a response head and body in.

Just what a proxy needs from backends that speak HTTP/1.1 (vLLM is uvicorn + h11): status
line and headers, bodies framed by Content-Length, chunked transfer coding or connection close,
interim 1xx responses skipped. Parsing works on a buffer filled by whole socket reads (one
timed read per arrival, not one per line), which is what makes it cheaper than h11 per chunk.
Anything malformed raises `httpx.RemoteProtocolError`; no guessing.

State: a `Wire` owns its connection's read buffer; nothing else is shared.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx

MAX_HEAD_BYTES = 64 * 1024
READ_BYTES = 64 * 1024
_NO_BODY_STATUS = frozenset({204, 304})
RawHeaders = list[tuple[bytes, bytes]]


class _Last(enum.Enum):
    CHUNK = "the last chunk (and its trailers) was read"


class PeerClosedError(Exception):
    """The backend closed the connection (EOF) where more bytes were due."""


def request_head(method: bytes, target: bytes, headers: RawHeaders) -> bytes:
    """The request line and headers; refuses what could split the message (CR, LF, NUL)."""
    for name, value in headers:
        if any(c in name or c in value for c in (b"\r", b"\n", b"\0")) or b":" in name:
            raise httpx.LocalProtocolError(f"invalid header {name!r}")
    lines = [method, b" ", target, b" HTTP/1.1\r\n"]
    for name, value in headers:
        lines += (name, b": ", value, b"\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


@dataclass
class Head:
    status: int
    reason: bytes
    headers: RawHeaders
    length: int | None  # body bytes by Content-Length; None: chunked or until close
    chunked: bool
    keep_alive: bool  # the connection may carry another request after this response


class Wire:
    """One connection's bytes in, parsed from a buffer."""

    def __init__(self, reader: asyncio.StreamReader, read_timeout: float | None) -> None:
        self._reader = reader
        self._buf = bytearray()
        self.read_timeout = read_timeout

    @property
    def clean(self) -> bool:
        """No unread bytes left over (a reused connection must start at a message boundary)."""
        return not self._buf

    async def _fill(self) -> None:
        try:
            if self.read_timeout is None:
                data = await self._reader.read(READ_BYTES)
            else:
                async with asyncio.timeout(self.read_timeout):
                    data = await self._reader.read(READ_BYTES)
        except TimeoutError:
            raise httpx.ReadTimeout("timed out reading from the backend") from None
        except OSError as exc:
            raise httpx.ReadError(str(exc) or type(exc).__name__) from exc
        if not data:
            raise PeerClosedError
        self._buf += data

    async def _until(self, sep: bytes, limit: int) -> bytes:
        start = 0
        while (at := self._buf.find(sep, start)) < 0:
            if len(self._buf) > limit:
                raise httpx.RemoteProtocolError("response head too large")
            start = max(0, len(self._buf) - len(sep) + 1)
            await self._fill()
        line = bytes(self._buf[:at])
        del self._buf[: at + len(sep)]
        return line

    async def head(self, method: bytes) -> Head:
        """The next final response head (1xx interim responses are read and dropped)."""
        while True:
            raw = await self._until(b"\r\n\r\n", MAX_HEAD_BYTES)
            head = _parse_head(raw, method)
            if not 100 <= head.status < 200:
                return head

    async def body(self, head: Head) -> AsyncIterator[bytes]:
        """The body's bytes as they arrive (chunked coding removed)."""
        if head.chunked:
            async for data in self._chunks():
                yield data
            return
        left = head.length
        while left is None or left > 0:
            if not self._buf:
                try:
                    await self._fill()
                except PeerClosedError:
                    if left is None:  # delimited by close: this is the end
                        return
                    raise
            take = len(self._buf) if left is None else min(left, len(self._buf))
            data = bytes(self._buf[:take])
            del self._buf[:take]
            if left is not None:
                left -= take
            yield data

    async def _chunks(self) -> AsyncIterator[bytes]:
        """Chunked coding: every chunk already received goes out at once, as one piece (a
        backend's burst stays one write; nothing waits for more to arrive)."""
        while True:
            parts: list[bytes] = []
            while (part := self._take_chunk()) is not None:
                if part is _Last.CHUNK:
                    if parts:
                        yield b"".join(parts)
                    return
                parts.append(part)
            if parts:
                yield b"".join(parts)
            else:
                await self._fill()

    def _take_chunk(self) -> bytes | _Last | None:
        """The next whole chunk's data from the buffer (`_Last.CHUNK` for the last one and its
        trailers), or None if it has not fully arrived; consumes only what it returns."""
        buf = self._buf
        eol = buf.find(b"\r\n", 0, 1026)
        if eol < 0:
            if len(buf) > 1024:
                raise httpx.RemoteProtocolError("chunk size line too long")
            return None
        line = bytes(buf[:eol]).split(b";", 1)[0].strip()
        if not line or any(c not in b"0123456789abcdefABCDEF" for c in line):
            raise httpx.RemoteProtocolError(f"bad chunk size {line[:40]!r}")
        size = int(line, 16)
        start = eol + 2
        if size == 0:  # trailers (ignored), then an empty line
            end = buf.find(b"\r\n", start) if buf[start : start + 2] == b"\r\n" else -1
            if end < 0:
                end = buf.find(b"\r\n\r\n", start)
                if end < 0:
                    if len(buf) - start > MAX_HEAD_BYTES:
                        raise httpx.RemoteProtocolError("chunked trailers too large")
                    return None
                end += 2
            del buf[: end + 2]
            return _Last.CHUNK
        if len(buf) < start + size + 2:
            return None
        if buf[start + size : start + size + 2] != b"\r\n":
            raise httpx.RemoteProtocolError("chunk not terminated by CRLF")
        data = bytes(buf[start : start + size])
        del buf[: start + size + 2]
        return data


def _parse_head(raw: bytes, method: bytes) -> Head:
    lines = raw.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise httpx.RemoteProtocolError(f"bad status line {lines[0][:80]!r}")
    status, reason = int(parts[1]), parts[2] if len(parts) == 3 else b""
    headers: RawHeaders = []
    length: int | None = None
    chunked, close = False, parts[0] == b"HTTP/1.0"
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip() or line[:1] in (b" ", b"\t"):
            raise httpx.RemoteProtocolError(f"bad header line {line[:80]!r}")
        value = value.strip(b" \t")
        headers.append((name, value))
        key = name.lower()
        if key == b"content-length":
            if not value.isdigit() or (length is not None and int(value) != length):
                raise httpx.RemoteProtocolError(f"bad content-length {value[:40]!r}")
            length = int(value)
        elif key == b"transfer-encoding":
            chunked = value.strip().lower() == b"chunked"  # no other coding is decoded here
            if not chunked:
                raise httpx.RemoteProtocolError(f"unsupported transfer-encoding {value[:40]!r}")
        elif key == b"connection":
            tokens = {t.strip().lower() for t in value.split(b",")}
            close = b"close" in tokens or (close and b"keep-alive" not in tokens)
    if method == b"HEAD" or status in _NO_BODY_STATUS or 100 <= status < 200:
        length, chunked = 0, False
    elif chunked:
        close = close or length is not None  # both framings: chunked wins, then close (RFC 9112)
        length = None
    elif length is None:
        close = True  # the body runs until the backend closes the connection
    return Head(status, reason, headers, length, chunked, keep_alive=not close)
