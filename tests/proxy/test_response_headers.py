"""Which of a backend's response headers reach the client (`response_headers`, pure): framing
headers where the proxy reframes, hop-by-hop and Connection-listed ones dropped, and bytes that
uvicorn could not send refused as an upstream error. (End to end: tests/proxy/test_hygiene.py.)"""

from __future__ import annotations

import httpx
import pytest

from proxy.errors import UpstreamUnreachableError
from proxy.http.forwarding import response_headers


def _upstream(status: int, *headers: tuple[bytes, bytes]) -> httpx.Response:
    return httpx.Response(status, headers=list(headers))


CL, TE, CONN = b"Content-Length", b"Transfer-Encoding", b"Connection"
HEADER_CASES = {  # status, the backend's headers -> what the client gets
    "chunked-drops-length": (200, [(CL, b"5"), (TE, b"chunked")], []),
    "length-framed-keeps-it": (200, [(CL, b"5")], [(b"content-length", b"5")]),
    "duplicate-length-once": (200, [(CL, b"5"), (CL, b"5")], [(b"content-length", b"5")]),
    "304-drops-length": (304, [(CL, b"5")], []),
    "204-drops-length": (204, [(CL, b"0")], []),
    "connection-names-length": (200, [(CL, b"5"), (CONN, b"content-length")], []),
    "connection-names-headers": (
        200,
        [(CONN, b"close, X-A"), (b"X-A", b"1"), (b"x-b", b"2")],
        [(b"x-b", b"2")],
    ),
    "optional-whitespace-stripped": (200, [(b"X-A", b"\t 1 2 \t")], [(b"x-a", b"1 2")]),
    "obs-text-kept": (200, [(b"X-A", b"caf\xc3\xa9 \xff")], [(b"x-a", b"caf\xc3\xa9 \xff")]),
}


@pytest.mark.parametrize(
    ("status", "given", "expected"), HEADER_CASES.values(), ids=list(HEADER_CASES)
)
def test_response_headers(
    status: int, given: list[tuple[bytes, bytes]], expected: list[tuple[bytes, bytes]]
) -> None:
    assert response_headers(_upstream(status, *given), {}, "m") == expected


@pytest.mark.parametrize(
    "header",
    [
        (b"X-A", b"a\x00b"),
        (b"X-A", b"a\rb"),
        (b"X-A", b"a\nSet-Cookie: x=1"),
        (b"X-A", b"a\x01b"),
        (b"X-A", b"\x7f"),
        (b"X A", b"1"),
        (b"X(A)", b"1"),
        (b"X-\xc3\xa9", b"1"),
    ],
)
def test_response_headers_refuse_what_cannot_be_sent(header: tuple[bytes, bytes]) -> None:
    with pytest.raises(UpstreamUnreachableError, match="invalid response header"):
        response_headers(_upstream(200, header), {}, "m")
