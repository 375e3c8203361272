"""HTTP/1.1 on the wire, client side: a request head out; a backend's response in, parsed by
llhttp (through httptools, the parser behind uvicorn and Node) plus the checks a proxy adds.

Why llhttp and not our own or h11: a hand-written parser was laxer than its own docstring (status
`099`, a bare LF inside a header value, `HTTP/1.7` all went through), and h11 accepts bare-LF line
endings, obs-fold, control bytes in values and Content-Length together with chunked; llhttp in
its default strict mode refuses all of these, hands on partial chunk data as it arrives, and costs
a few microseconds per response (docs/architecture.md has the measurement). What llhttp allows and
a proxy must still refuse is checked here, in one place (`_check_head`):
- a status outside 100-599, an HTTP version other than 1.0 or 1.1, a 101 (no upgrades);
- a Transfer-Encoding other than exactly `chunked` (the proxy decodes no other coding);
- Content-Length or Transfer-Encoding on a 1xx or 204 (RFC 9110 8.6, 6.1: they have no body);
- a head (interim 1xx heads included) over `max_head_bytes`; bytes before the status line;
  control bytes in the reason phrase.
Trailers (after the last chunk) are parsed and dropped: they never become headers.
Anything malformed raises `httpx.RemoteProtocolError` with llhttp's or our reason.

State: a `ResponseParser` owns one response's parse (its llhttp parser, the head being built, the
body bytes not yet taken); nothing is shared. Its owner (one connection) feeds it from one task.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import httptools
import httpx

MAX_HEAD_BYTES = 64 * 1024
RawHeaders = list[tuple[bytes, bytes]]
_TCHAR = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_FIELD_BYTES = bytes(range(0x20, 0x7F)) + bytes(range(0x80, 0x100)) + b"\t"  # no CTL but HTAB
_TARGET = re.compile(rb"/[!-~]*")


def is_token(name: bytes) -> bool:
    """A header name or method (RFC 9110 5.6.2)."""
    return bool(name) and not name.translate(None, _TCHAR)


def is_field_value(value: bytes) -> bool:
    """Bytes fit for a header value or reason phrase: no control byte but HTAB (RFC 9110 5.5)."""
    return not value.translate(None, _FIELD_BYTES)


def request_head(method: bytes, target: bytes, headers: RawHeaders) -> bytes:
    """The request line and headers; refuses anything that could split or smuggle a message."""
    if not is_token(method) or not _TARGET.fullmatch(target):
        raise httpx.LocalProtocolError(f"invalid request line {method[:20]!r} {target[:80]!r}")
    lines = [method, b" ", target, b" HTTP/1.1\r\n"]
    for name, value in headers:
        if not is_token(name) or not is_field_value(value):
            raise httpx.LocalProtocolError(f"invalid header {name[:80]!r}")
        lines += (name, b": ", value, b"\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


@dataclass
class Head:
    status: int
    reason: bytes
    headers: RawHeaders  # as received (names not lower-cased)
    chunked: bool  # framed by Transfer-Encoding: chunked
    length: int | None  # framed by Content-Length; None: chunked or delimited by close
    keep_alive: bool  # the connection may carry another request after this response


class _TrailingError(Exception):
    """Bytes came after the complete response (stops llhttp from parsing them)."""


class ResponseParser:
    """One response: feed bytes in any pieces; the head, then body bytes, come out."""

    def __init__(self, *, max_head_bytes: int = MAX_HEAD_BYTES) -> None:
        self._llhttp = httptools.HttpResponseParser(self)
        self._max_head = max_head_bytes
        self._head_bytes = 0  # received while no final head was complete (interim heads too)
        self._head_size = 0  # status lines and headers parsed so far (interim heads too)
        self._reason = bytearray()
        self._headers: RawHeaders = []
        self._error: httpx.RemoteProtocolError | None = None  # raised in a callback
        self._body: list[bytes] = []
        self.buffered = 0  # body bytes parsed and not yet taken
        self._body_total = 0  # body bytes parsed in all
        self._framing = 0  # bytes fed since the last body byte, once the head is done
        self.head: Head | None = None
        self.complete = False
        self.trailing = False

    def feed(self, data: bytes) -> None:
        if self.complete:
            self.trailing = self.trailing or bool(data)
            return
        if self.head is None:
            if not self._head_bytes and data and data[0] != 0x48:  # "H": llhttp skips CR/LF
                raise httpx.RemoteProtocolError(
                    "malformed response from the backend: no status line"
                )
            self._head_bytes += len(data)
        body_before = self._body_total
        try:
            self._llhttp.feed_data(data)
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _TrailingError) or self._completed():
                self.trailing = True  # (llhttp refuses bytes after a `Connection: close` one)
                return
            raise self._error or httpx.RemoteProtocolError(
                f"malformed response from the backend: {exc}"
            ) from None
        if self.head is None and self._head_bytes > self._max_head:
            raise httpx.RemoteProtocolError(f"response head larger than {self._max_head} bytes")
        if self.head is not None and not self.complete:
            # bytes that bring no body (chunk lines, extensions, an endless trailer value that
            # llhttp keeps in memory) are bounded like a head
            got_body = self._body_total != body_before
            self._framing = 0 if got_body else self._framing + len(data)
            if self._framing > self._max_head:
                raise httpx.RemoteProtocolError(
                    f"malformed response from the backend: over {self._max_head} bytes of "
                    "chunk framing or trailers without body"
                )

    def feed_eof(self) -> None:
        """The backend closed the connection: the end of a body delimited by close, or an error."""
        if self.complete:
            return
        if self.head is None:
            raise httpx.RemoteProtocolError("backend closed the connection before a response")
        if self.head.chunked or self.head.length is not None:
            raise httpx.RemoteProtocolError("backend closed the connection before the body ended")
        self.complete = True

    def _completed(self) -> bool:
        """`complete` as llhttp's callbacks left it (a type checker keeps what it was before)."""
        return self.complete

    def take_body(self) -> bytes:
        data = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        self._body.clear()
        self.buffered = 0
        return data

    # llhttp's callbacks (httptools calls them by name)

    def on_message_begin(self) -> None:
        if self.complete:
            raise _TrailingError
        self._head_size += 15  # "HTTP/1.1 200 " and CRLF

    def on_status(self, data: bytes) -> None:
        self._reason += data  # (in pieces, when the line came in pieces)
        self._head_size += len(data)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4  # ": " and CRLF
        if self.head is None:  # trailers (after the last chunk) are read and dropped
            self._headers.append((name, value.rstrip(b" \t")))  # optional whitespace (RFC 9110 5.5)
        if self._head_size > self._max_head:  # a whole head that came in one read with its body
            self._fail(f"response head larger than {self._max_head} bytes")

    def on_headers_complete(self) -> None:
        status = self._llhttp.get_status_code()
        length, chunked = self._check_head(status)
        if status < 200:  # interim (100, 102, 103): dropped; the final head follows
            self._reason.clear()
            self._headers = []
            return
        if status in (204, 304):
            length, chunked = 0, False
        elif not chunked and length is None:
            length = None  # delimited by close
        self.head = Head(
            status,
            bytes(self._reason),
            self._headers,
            chunked,
            length,
            # (HTTP/1.0's keep-alive is not trusted: vLLM speaks 1.1, and h11 closes those too)
            keep_alive=self._llhttp.should_keep_alive()
            and self._llhttp.get_http_version() == "1.1",
        )
        self._headers = []

    def on_body(self, data: bytes) -> None:
        self._body.append(data)
        self.buffered += len(data)
        self._body_total += len(data)

    def on_message_complete(self) -> None:
        if self.head is not None:
            self.complete = True

    def _check_head(self, status: int) -> tuple[int | None, bool]:
        """Framing of the head just parsed; refuses what llhttp lets through (module docstring)."""
        if not is_field_value(bytes(self._reason)):
            self._fail(f"control bytes in the reason phrase {bytes(self._reason[:40])!r}")
        version = self._llhttp.get_http_version()
        if version not in ("1.1", "1.0"):
            self._fail(f"unsupported HTTP version {version!r}")
        if not 100 <= status <= 599 or status == 101:
            self._fail(f"invalid or unsupported status {status}")
        length: int | None = None
        codings = 0
        for name, value in self._headers:
            key = name.lower()
            if key == b"content-length":
                length = int(value)  # llhttp checked the digits and refused duplicates
            elif key == b"transfer-encoding":
                codings += 1
                if codings > 1 or value.strip(b" \t").lower() != b"chunked":
                    self._fail(f"unsupported transfer-encoding {value[:40]!r}")
        if (status < 200 or status == 204) and (length is not None or codings):
            self._fail(f"a {status} response must not have a body or its framing headers")
        return length, codings == 1

    def _fail(self, reason: str) -> None:
        self._error = httpx.RemoteProtocolError(f"malformed response from the backend: {reason}")
        raise self._error
