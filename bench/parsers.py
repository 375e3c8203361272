"""HTTP/1.1 response parsers side by side, in one process and one run: CPU time per response for
what vllm-switch reads from vLLM - a non-streamed JSON answer, and a streamed answer of 17 SSE
events in chunked coding, each event arriving in its own socket read.

Candidates: `proxy.upstream.http1.ResponseParser` (llhttp through httptools, plus the proxy's checks),
bare httptools (the floor for anything on llhttp), h11 (pure Python, what httpx/httpcore and
uvicorn's default use) and, if installed, aiohttp's C parser (llhttp too; not a dependency).
Rounds alternate between the candidates so drift hits all of them alike.

    python3 bench/parsers.py --out bench/results/parsers-2core-YYYYMMDD.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import h11
import httptools

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.processes import machine  # noqa: E402
from proxy.upstream.http1 import ResponseParser  # noqa: E402

Pieces = list[bytes]
HEAD = (
    b"HTTP/1.1 200 OK\r\ndate: Tue, 01 Dec 2026 08:00:00 GMT\r\nserver: uvicorn\r\n"
    b"content-type: %s\r\n%s\r\n"
)


def json_answer() -> Pieces:
    body = json.dumps(
        {
            "id": "chatcmpl-0123456789abcdef",
            "object": "chat.completion",
            "created": 1764576000,
            "model": "Qwen/Qwen3-0.6B",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "word " * 16},
                    "finish_reason": "length",
                }
            ],
            "usage": {"prompt_tokens": 12, "completion_tokens": 16, "total_tokens": 28},
        }
    ).encode()
    return [HEAD % (b"application/json", b"content-length: %d\r\n" % len(body)) + body]


def sse_answer(events: int = 17) -> Pieces:
    pieces = [HEAD % (b"text/event-stream; charset=utf-8", b"transfer-encoding: chunked\r\n")]
    for i in range(events):
        event = (
            b'data: {"id":"chatcmpl-0123","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"w%d "}}]}\n\n'
            % i
        )
        pieces.append(b"%x\r\n%s\r\n" % (len(event), event))
    pieces.append(b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n")
    return pieces


def ours(pieces: Pieces) -> int:
    parser, size = ResponseParser(), 0
    for piece in pieces:
        parser.feed(piece)
        size += len(parser.take_body())
    assert parser.complete
    return size


class _Sink:
    def __init__(self) -> None:
        self.size = 0
        self.done = False

    def on_body(self, data: bytes) -> None:
        self.size += len(data)

    def on_message_complete(self) -> None:
        self.done = True


def bare_httptools(pieces: Pieces) -> int:
    sink = _Sink()
    parser = httptools.HttpResponseParser(sink)
    for piece in pieces:
        parser.feed_data(piece)
    assert sink.done
    return sink.size


def with_h11(pieces: Pieces) -> int:
    conn = h11.Connection(h11.CLIENT)
    conn.send(
        h11.Request(method="POST", target="/", headers=[("host", "x"), ("content-length", "0")])
    )
    conn.send(h11.EndOfMessage())
    size = 0
    for piece in pieces:
        conn.receive_data(piece)
        while (event := conn.next_event()) is not h11.NEED_DATA:
            if isinstance(event, h11.Data):
                size += len(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return size
    raise AssertionError("incomplete")


def aiohttp_parser() -> Callable[[Pieces], int] | None:
    try:
        from aiohttp.http_parser import HttpResponseParserC  # type: ignore[attr-defined]
    except ImportError:
        return None
    import asyncio

    loop = asyncio.new_event_loop()

    class _Protocol:
        _reading_paused = False

        def pause_reading(self, **_: object) -> None: ...

        def resume_reading(self, **_: object) -> None: ...

    def parse(pieces: Pieces) -> int:
        parser = HttpResponseParserC(_Protocol(), loop, 2**16)
        payloads = []
        for piece in pieces:
            messages, _, _ = parser.feed_data(piece)
            payloads += [payload for _, payload in messages]
        return sum(p.total_bytes for p in payloads)

    return parse


def per_response_us(parse: Callable[[Pieces], int], pieces: Pieces, n: int) -> float:
    start = time.process_time_ns()
    for _ in range(n):
        parse(pieces)
    return (time.process_time_ns() - start) / n / 1000


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--n", type=int, default=3000, help="responses per candidate per round")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    candidates: dict[str, Callable[[Pieces], int]] = {
        "vllm-switch (llhttp + checks)": ours,
        "httptools (bare llhttp)": bare_httptools,
        "h11": with_h11,
    }
    if (aio := aiohttp_parser()) is not None:
        candidates["aiohttp (llhttp, C)"] = aio
    cases = {"json (1 read)": json_answer(), "sse 17 events (19 reads)": sse_answer()}
    results: dict[str, dict[str, float]] = {}
    for case, pieces in cases.items():
        expected = {name: parse(pieces) for name, parse in candidates.items()}
        assert len(set(expected.values())) == 1, expected  # every parser read the same body
        runs: dict[str, list[float]] = {name: [] for name in candidates}
        for r in range(args.rounds):
            order = list(candidates.items())
            order = order[r % len(order) :] + order[: r % len(order)]
            for name, parse in order:
                runs[name].append(per_response_us(parse, pieces, args.n))
        results[case] = {name: round(statistics.median(v), 2) for name, v in runs.items()}
    report = {
        "what": "CPU microseconds per response (median of rounds)",
        "machine": machine(),
        "rounds": args.rounds,
        "responses_per_round": args.n,
        "results": results,
    }
    text = json.dumps(report, indent=2)
    sys.stdout.write(text + "\n")
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
