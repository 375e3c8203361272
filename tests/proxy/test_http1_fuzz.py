"""Differential fuzzing of `proxy.upstream.http1.ResponseParser` against h11 (the reference).

Response byte streams are generated structurally (interim 1xx heads, a status line, tricky
header names and values, a body framed by Content-Length, chunked coding with extensions and
trailers, or the connection's close), then mutated (bytes flipped, inserted - CR, LF, NUL, SP,
HTAB, ':' - or deleted, a line repeated) and split into random pieces. Each stream goes to our
parser piece by piece and to an h11 client connection that sent a GET, then EOF to both.

h11 is laxer than llhttp in documented ways, so the rule is:
  (a) h11 rejects -> ours rejects (never laxer than the reference);
  (b) ours rejects, h11 accepts -> the stream breaks one of `STRICTER`, each a predicate on the
      raw bytes alone (it never asks our parser);
  (c) both accept -> the same status, reason, headers, body and trailing bytes.
Bounded for CI: a fixed number of derandomized examples (`FUZZ_EXAMPLES`, default 400).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import h11
import httpx
from hypothesis import HealthCheck, example, given, note, settings, strategies as st

from proxy.upstream.http1 import MAX_HEAD_BYTES, ResponseParser

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "400"))
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
Headers = list[tuple[bytes, bytes]]


@dataclass(frozen=True)
class Accepted:
    status: int
    reason: bytes
    headers: Headers
    body: bytes
    trailing: bool | None  # bytes came after the response (None: only CR/LF, either is right)
    reusable: bool  # the connection may carry the next request (keep-alive, framed, no close)

    def agrees(self, other: Accepted) -> bool:
        lenient = None in (self.trailing, other.trailing)
        return self == other or (lenient and replace(self, trailing=other.trailing) == other)


@dataclass(frozen=True)
class Rejected:
    why: str


Outcome = Accepted | Rejected


def ours(pieces: Sequence[bytes]) -> Outcome:
    parser = ResponseParser()
    body = bytearray()
    try:
        for piece in pieces:
            parser.feed(piece)
            body += parser.take_body()
        parser.feed_eof()
    except httpx.RemoteProtocolError as exc:
        return Rejected(str(exc))
    body += parser.take_body()
    head = parser.head
    assert head is not None
    assert parser.complete
    headers = [(n, v.lower() if n.lower() == b"transfer-encoding" else v) for n, v in head.headers]
    reusable = head.keep_alive and not parser.trailing
    return Accepted(head.status, head.reason, headers, bytes(body), parser.trailing, reusable)


def reference(pieces: Sequence[bytes]) -> Outcome:
    """h11 as a client that sent `GET /`, fed the pieces, then EOF."""
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_BYTES)
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "backend")]))
    conn.send(h11.EndOfMessage())
    final: h11.Response | None = None
    body = bytearray()
    ended, left, fed, reusable = False, b"", 0, False
    try:
        for piece in [*pieces, b""]:
            conn.receive_data(piece)
            fed += 1
            while (event := conn.next_event()) not in (h11.NEED_DATA, h11.PAUSED):
                if isinstance(event, h11.Response):
                    final = event
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    ended = True
                    # (not MUST_CLOSE, and not ended by the EOF: a body delimited by close)
                    reusable = conn.their_state is h11.DONE and piece != b""
                elif isinstance(event, h11.ConnectionClosed):
                    break
    except h11.RemoteProtocolError as exc:
        if not ended:
            return Rejected(str(exc))
        left = b"".join(pieces[fed:])  # h11 refuses bytes after a response that must close
    if final is None or not ended:
        return Rejected("incomplete")
    headers = list(final.headers.raw_items())  # (h11 lower-cases Transfer-Encoding's value)
    left = bytes(conn.trailing_data[0]) + left
    # llhttp skips CR/LF between messages (when they come in the same read), h11 keeps them
    trailing = None if left and not left.strip(b"\r\n") else bool(left)
    reusable = reusable and not trailing
    return Accepted(final.status_code, final.reason, headers, bytes(body), trailing, reusable)


# --- where we are deliberately stricter than h11: predicates on the raw bytes -------------

_BLANK = re.compile(rb"\n\r?\n")  # the end of a head, read as laxly as h11 reads it
_STATUS = re.compile(rb"(HTTP/[^ \r\n]*) (\d+)")
_LAST_CHUNK = re.compile(rb"(?:^|\n)0+(?:[;\s][^\n]*)?\n")
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_CHUNK_LINE = re.compile(rb"(?<![^\n])[0-9A-Fa-f]+([^\r\n]*)\r?\n")  # at a line start
_CHUNK_EXT = re.compile(rb"(?:;" + _TOKEN + rb"(?:=(?:" + _TOKEN + rb'|"[^"\\\r\n]*"))?)*')
_CTL = re.compile(rb"[\x00-\x08\x0b-\x1f\x7f]")


def heads(data: bytes) -> list[bytes]:
    """The heads at the start of `data` (interim 1xx ones, then the final one), split at blank
    lines as h11 splits them; an unterminated last head runs to the end."""
    found, pos = [], 0
    while pos < len(data):
        end = _BLANK.search(data, pos)
        found.append(data[pos : end.end() if end else len(data)])
        status = _STATUS.match(found[-1])
        if end is None or not status or not status.group(2).startswith(b"1"):
            break
        pos = end.end()
    return found


def sections(data: bytes) -> list[bytes]:
    """The heads, then what follows a last-chunk line after them (the trailer section)."""
    found = heads(data)
    rest = data[sum(map(len, found)) :]
    last = _LAST_CHUNK.search(rest)
    return [*found, rest[last.end() :]] if last else found


def field_lines(data: bytes) -> list[bytes]:
    """Header and trailer lines (status lines left out), CR before the LF removed."""
    found = sections(data)
    lines = [ln for h in found[: len(heads(data))] for ln in h.split(b"\n")[1:]]
    lines += [ln for h in found[len(heads(data)) :] for ln in h.split(b"\n")]
    return [ln.removesuffix(b"\r") for ln in lines if ln.removesuffix(b"\r")]


def fields(head: bytes) -> list[tuple[bytes, bytes]]:
    """(lower-cased name, value) of the header lines of one head."""
    lines = [ln.removesuffix(b"\r") for ln in head.split(b"\n")[1:]]
    return [(n.lower(), v.strip(b" \t")) for n, _, v in (ln.partition(b":") for ln in lines if ln)]


def statuses(data: bytes) -> list[tuple[bytes, bytes, int]]:
    """(head, version, status) of every head that starts with a status line."""
    return [(h, m.group(1), int(m.group(2))) for h in heads(data) if (m := _STATUS.match(h))]


def final_field(data: bytes, name: bytes) -> list[bytes]:
    found = statuses(data)
    return [v for n, v in fields(found[-1][0]) if n == name] if found else []


STRICTER: dict[str, Callable[[bytes], bool]] = {
    # RFC 9112 2.2: a recipient MAY take a bare LF as a line end; llhttp (strict) does not
    "a LF not preceded by CR in a head or the trailers": lambda d: any(
        re.search(rb"(?<!\r)\n", s) for s in sections(d)
    ),
    # RFC 9112 5.2: a proxy may answer obs-fold in a response with 502 instead of unfolding it
    "obs-fold (a header or trailer line starting with SP or HTAB)": lambda d: any(
        line[:1] in (b" ", b"\t") for line in field_lines(d)
    ),
    # RFC 9110 5.5, RFC 9112 4: CTLs other than HTAB (bare CR, NUL, DEL...) are not
    # field-vchar nor allowed in a reason phrase; CR and NUL must be refused or replaced
    "a control byte other than HTAB in a status line, header or trailer": lambda d: any(
        _CTL.search(line.removesuffix(b"\r")) for s in sections(d) for line in s.split(b"\n")
    ),
    # RFC 9112 2.3: only HTTP/1.0 and 1.1 semantics are known; RFC 9110 15: status codes are
    # 100-599; RFC 9110 7.8: a 101 without our Upgrade request is invalid
    "an HTTP version other than 1.0/1.1, a status outside 100-599, or 101": lambda d: any(
        v not in (b"HTTP/1.0", b"HTTP/1.1") or not 100 <= s <= 599 or s == 101
        for _, v, s in statuses(d)
    ),
    # RFC 9112 6.1, 6.3: Content-Length with Transfer-Encoding (a smuggling signal) is an error
    "Content-Length and Transfer-Encoding together": lambda d: bool(
        final_field(d, b"content-length") and final_field(d, b"transfer-encoding")
    ),
    # RFC 9110 8.6, 6.1: a 1xx or 204 has no body, so neither Content-Length nor T-E
    "Content-Length or Transfer-Encoding on a 1xx or 204": lambda d: any(
        (s < 200 or s == 204)
        and any(n in (b"content-length", b"transfer-encoding") for n, _ in fields(h))
        for h, _, s in statuses(d)
    ),
    # RFC 9112 6.3 (5), RFC 9110 8.6: a Content-Length that is a list or repeated may be refused
    "Content-Length that is a list or repeated": lambda d: (
        len(final_field(d, b"content-length")) > 1
        or not all(v.isdigit() for v in final_field(d, b"content-length"))
    ),
    # RFC 9112 7.1.1: chunk-ext = *( BWS ";" BWS name [ BWS "=" BWS value ] ); llhttp refuses
    # the optional whitespace (BWS) and any byte outside token / quoted-string
    "a chunk-size line that is not hex digits plus ;token[=token|quoted-string]": lambda d: any(
        not _CHUNK_EXT.fullmatch(m.group(1))
        for m in _CHUNK_LINE.finditer(d[sum(map(len, heads(d))) :])
    ),
}


def stricter_rules(data: bytes) -> list[str]:
    return [name for name, rule in STRICTER.items() if rule(data)]


# --- the generator: mostly well-formed, with tricky parts now and then ---------------------


def mostly(common: st.SearchStrategy[bytes], *rare: bytes) -> st.SearchStrategy[bytes]:
    """`common` nine times in ten, else one of `rare`."""
    return st.integers(0, 9).flatmap(lambda i: common if i else st.sampled_from(rare))


TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
NAMES = [b"content-type", b"x-a", b"Server", b"set-cookie", b"connection", b"keep-alive"]
names = mostly(
    st.one_of(
        st.sampled_from(NAMES), st.text(TOKEN_CHARS, min_size=1, max_size=10).map(str.encode)
    ),
    *(b"x a", b"x\x00a", b" x", b"x ", b"\xff", b"x\ta", b"x@a", b""),
)
values = mostly(
    st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=16).map(str.encode),
    *(b"", b"  padded", b"\tTab", b"a\x00b", b"a\rb", b"a\nb", b"a\x7fb", b"\x80\xff"),
    *(b"a\x01b", b"v, w", b'"q"', b"a\r\n b", b"close", b"keep-alive", b"\x1b[31m"),
)
header_lists = st.lists(st.tuples(names, values), max_size=4)
versions = mostly(st.just(b"HTTP/1.1"), b"HTTP/1.0", b"HTTP/1.7", b"HTTP/2.0", b"http/1.1")
final_statuses = st.integers(0, 4).flatmap(
    lambda i: st.integers(200, 599) if i else st.sampled_from([204, 304, 100, 101, 99, 999, 600])
)
reasons = mostly(st.just(b" OK"), b"", b" ", b" Not Found", b" Odd\x00", b" \xff", b" a\tb")
extensions = mostly(st.just(b""), b";a=1", b";a", b';a="q r"', b"; a=1", b";a=1;b", b";\x00", b" ")


def head(version: bytes, status: int, reason: bytes, headers: Headers) -> bytes:
    lines = [version + b" %03d" % status + reason]
    lines += [name + b": " + value for name, value in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"


@st.composite
def chunked(draw: st.DrawFn, body: bytes) -> bytes:
    cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=4)))
    out = []
    for start, end in zip([0, *cuts], [*cuts, len(body)], strict=True):
        if end > start:
            size = b"%x" % (end - start)
            size = size.upper() if draw(st.booleans()) else size
            out.append(size + draw(extensions) + b"\r\n" + body[start:end] + b"\r\n")
    trailers = b"".join(n + b": " + v + b"\r\n" for n, v in draw(header_lists))
    return b"".join(out) + b"0" + draw(extensions) + b"\r\n" + trailers + b"\r\n"


@st.composite
def responses(draw: st.DrawFn) -> bytes:
    out = b""
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2]))):  # interim heads
        out += head(b"HTTP/1.1", draw(st.sampled_from([100, 102, 103])), b" X", draw(header_lists))
    status, headers = draw(final_statuses), draw(header_lists)
    body = draw(st.one_of(st.binary(max_size=40), st.just(b'data: {"a": 1}\n\n' * 2)))
    framing = draw(st.sampled_from(["length", "chunked", "close"] * 3 + ["both"]))
    if framing in ("length", "both"):
        headers.append((b"content-length", b"%d" % len(body)))
    if framing in ("chunked", "both"):
        headers.append((b"transfer-encoding", b"chunked"))
        body = draw(chunked(body))
    return out + head(draw(versions), status, draw(reasons), headers) + body


SPECIAL = [b"\r", b"\n", b"\x00", b" ", b"\t", b":", b"\r\n"]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = draw(responses())
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 1, 2, 3]))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["flip", "insert", "delete", "repeat line"]))
        if kind == "flip" and at < len(data):
            data = data[:at] + bytes([data[at] ^ (1 << draw(st.integers(0, 7)))]) + data[at + 1 :]
        elif kind == "insert":
            data = data[:at] + draw(st.sampled_from(SPECIAL)) + data[at:]
        elif kind == "delete":
            data = data[:at] + data[at + 1 :]
        else:  # the line around `at` once more (a duplicated header, chunk line...)
            start = data.rfind(b"\r\n", 0, at) + 2
            end = data.find(b"\r\n", at)
            if start >= 2 and end > start:
                data = data[:end] + b"\r\n" + data[start:end] + data[end:]
    return data


@st.composite
def split(draw: st.DrawFn, data: bytes) -> list[bytes]:
    cuts = sorted(set(draw(st.lists(st.integers(0, len(data)), max_size=6))))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True) if b > a]


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    data = draw(mutated())
    return data, draw(split(data))


def check(data: bytes, pieces: list[bytes]) -> None:
    mine, ref = ours(pieces), reference(pieces)
    if isinstance(ref, Rejected):
        assert isinstance(mine, Rejected), f"ours accepts {mine}; h11 rejects: {ref.why}"
    elif isinstance(mine, Rejected):
        assert stricter_rules(data), f"ours rejects ({mine.why}), h11 accepts, no rule says why"
    else:
        assert mine.agrees(ref), f"both accept, but\nours: {mine}\nh11:  {ref}"


def in_one_piece(data: bytes) -> tuple[bytes, list[bytes]]:
    return data, [data]


CL0 = b"content-length: 0\r\n\r\n"
# disagreements the fuzzer found (minimal inputs); each is a bug in ours until fixed
FOUND = [
    # HTTP/1.0 with keep-alive: llhttp would reuse the connection, h11 closes it (so do we)
    b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\x00\r\n" + CL0,  # NUL in the reason phrase accepted (h11 refuses)
    b"\r\nHTTP/1.1 200 OK\r\n" + CL0,  # CR LF before the status line accepted
    b"\rHTTP/1.1 200 OK\r\n" + CL0,  # a bare CR before the status line accepted
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\nx-t: 1\r\n\r\n",  # trailer
    b"HTTP/1.1 200 OK\r\nx-a: b \r\n" + CL0,  # trailing whitespace kept in a value
    b"HTTP/1.1 200 OK\r\nconnection: close\r\n" + CL0 + b"X",  # refused, not `trailing`
]
# the issue's cases: refused by h11 or by one of STRICTER
ISSUE = [
    b"HTTP/1.1 099 Odd\r\n" + CL0,
    b"HTTP/1.1 999 Odd\r\n" + CL0,
    b"HTTP/1.1 200 OK\r\nx-a: foo\nset-cookie: evil=1\r\n" + CL0,
    b"HTTP/1.1 200 OK\r\nx-a: foo\rset-cookie: evil=1\r\n" + CL0,
    b"HTTP/1.1 200 OK\r\nx a: b\r\n" + CL0,
    b"HTTP/1.1 200 OK\r\nx-a: fo\x00o\r\n" + CL0,
    b"HTTP/1.7 200 OK\r\n" + CL0,
    b"HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nx-a: b\r\n folded\r\n" + CL0,
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n",
]


def examples(*cases: bytes) -> Callable[[Callable[..., None]], Callable[..., None]]:
    def add(test: Callable[..., None]) -> Callable[..., None]:
        for data in reversed(cases):
            test = example(stream=in_one_piece(data))(test)
        return test

    return add


@FUZZ
@given(streams())
@examples(*FOUND, *ISSUE)
def test_our_parser_agrees_with_h11(stream: tuple[bytes, list[bytes]]) -> None:
    note(f"data={stream[0]!r}\npieces={stream[1]!r}")
    check(*stream)


@FUZZ
@given(streams())
def test_any_split_parses_like_the_whole(stream: tuple[bytes, list[bytes]]) -> None:
    data, pieces = stream
    note(f"data={data!r}\npieces={pieces!r}")
    whole, split_up = ours([data]), ours(pieces)
    if isinstance(whole, Rejected):
        assert isinstance(split_up, Rejected)
    else:
        assert isinstance(split_up, Accepted)
        ref = reference([data])
        if isinstance(ref, Accepted) and ref.trailing is None:  # CR/LF after the response
            split_up = replace(split_up, trailing=None)
        assert split_up.agrees(whole)
