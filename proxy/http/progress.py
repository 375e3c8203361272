"""ProgressStream: a streaming request that waits long for its model (a level-2 wake, a cold
start) gets its response head at once, then progress events while it waits, then the backend's
stream - instead of a silence that a chat UI or an SDK timeout reads as a dead server.

    waiting longer than limits.progress_after_s (the caller waited that long already)
      -> 200, text/event-stream, x-vllm-switch-progress: <mode>
      -> a progress event now and every limits.progress_every_s:
           comments   `: vllm-switch: waiting for model b (waking), 2.1 s` - legal SSE that
                      every client ignores (the OpenAI SDKs, LangChain)
           reasoning  (chat completions) a chunk whose delta.reasoning_content says the same,
                      which chat UIs show as "thinking"; other routes get comments
      -> the lease: the backend's answer; its own head is dropped (already sent), its body
         passes through; an error answer of the backend becomes an SSE error event + [DONE]
      -> the wait fails (503, 429): an SSE error event + [DONE], not a status: the head is gone

State: one ProgressStream owns its request's wait (the lease task) until it has the lease, and
then the lease until it hands it to the backend's answer (proxy/http/forwarding.py's
UpstreamResponse), which releases it. A client that leaves cancels the wait (it leaves the
queue) or releases a lease it got meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Literal

from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from proxy.backends import Lease, WakeTimings
from proxy.errors import ClientGoneError, ProxyError, UpstreamUnreachableError, sse_error
from proxy.http.disconnect import watching_client

Leased = tuple[Lease, WakeTimings]
Answer = Callable[[Lease, WakeTimings], Awaitable[Response]]


class ProgressStream(Response):
    def __init__(
        self,
        waiting: asyncio.Task[Leased],
        answer: Answer,
        *,
        mode: Literal["comments", "reasoning"],
        model: str,
        state: Callable[[], str],
        every_s: float,
        headers: dict[str, str],
        on_failure: Callable[[ProxyError], None],
        on_gone: Callable[[], None],
    ) -> None:
        self.status_code = 200
        self.background = None
        base = {
            "content-type": "text/event-stream; charset=utf-8",
            "cache-control": "no-cache",
            "x-accel-buffering": "no",  # nginx would hold the progress events back
        }
        self.raw_headers = [
            (k.encode("latin-1"), v.encode("latin-1"))
            for k, v in (base | headers | {"x-vllm-switch-progress": mode}).items()
        ]
        self._waiting = waiting
        self._answer = answer
        self._mode = mode
        self._model = model
        self._state = state
        self._every_s = every_s
        self._on_failure = on_failure
        self._on_gone = on_gone
        self._started = time.monotonic()
        self._taken = False
        self._id = f"chatcmpl-wait-{uuid.uuid4().hex[:16]}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        try:
            async with watching_client(receive):
                lease, timings = await self._wait(send)
                self._taken = True  # the answer owns the lease from here, and releases it
                inner = await self._answer(lease, timings)
        except ClientGoneError:
            self._on_gone()  # idempotent: an answer that recorded its end already wins
            return
        except ProxyError as exc:
            self._on_failure(exc)
            await self._end(send, sse_error(exc))
            return
        finally:
            self._let_go()
        if inner.status_code == 499:  # the client left while the backend was asked
            return
        await inner(scope, receive, _HeadSent(send))

    async def _wait(self, send: Send) -> Leased:
        while True:
            await send({"type": "http.response.body", "body": self._event(), "more_body": True})
            done, _ = await asyncio.wait({self._waiting}, timeout=self._every_s)
            if done:
                return self._waiting.result()

    @staticmethod
    def abandon(waiting: asyncio.Task[Leased]) -> None:
        """A wait nobody will read (its client left before any progress was sent)."""
        if not waiting.done():
            waiting.cancel()
        elif not waiting.cancelled() and waiting.exception() is None:
            waiting.result()[0].release()

    def _let_go(self) -> None:
        """The wait is over one way or another: cancel it if it still runs (the request leaves
        its queue); a lease it got that was never handed on (the client left at that very
        moment) is released; a failure nobody read is read (no "never retrieved" warning)."""
        if not self._taken:
            self.abandon(self._waiting)

    def _event(self) -> bytes:
        waited = time.monotonic() - self._started
        text = f"waiting for model {self._model} ({self._state()}), {waited:.1f} s"
        if self._mode == "comments":
            return f": vllm-switch: {text}\n\n".encode()
        chunk = {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": self._model,
            "choices": [
                {
                    "index": 0,
                    "delta": {"role": "assistant", "reasoning_content": f"[vllm-switch] {text}\n"},
                    "logprobs": None,
                    "finish_reason": None,
                }
            ],
        }
        return f"data: {json.dumps(chunk)}\n\n".encode()

    @staticmethod
    async def _end(send: Send, body: bytes) -> None:
        with contextlib.suppress(OSError):  # the client may be gone already
            await send({"type": "http.response.body", "body": body, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})


class _HeadSent:
    """`send` for the backend's answer once our head is out: its head is dropped; an SSE body
    passes through; any other body (an error answer, or a 2xx that is not a stream) is held
    (up to HELD_BYTES) and sent as one SSE event: the OpenAI error object + [DONE], or the
    JSON answer as one `data:` event + [DONE]."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self._status = 200
        self._sse = True
        self._held = b""

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self._status = int(message["status"])
            kind = dict(message.get("headers", ())).get(b"content-type", b"")
            self._sse = self._status < 400 and kind.startswith(b"text/event-stream")
            return
        if message["type"] != "http.response.body" or self._sse:
            await self._send(message)
            return
        if len(self._held) < HELD_BYTES:
            self._held += message.get("body", b"")[: HELD_BYTES - len(self._held)]
        if message.get("more_body", False):
            return
        event = _as_event(self._held, self._status)
        await self._send({"type": "http.response.body", "body": event})


HELD_BYTES = 64 * 1024  # of a body that is not a stream, turned into one event


def _as_event(body: bytes, status: int) -> bytes:
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict) and (status < 400 or isinstance(data.get("error"), dict)):
        # a 2xx answer where a stream was asked for, or the backend's OpenAI error object
        return f"data: {json.dumps(data)}\n\ndata: [DONE]\n\n".encode()
    error = UpstreamUnreachableError(f"the backend answered {status}: {body[:200]!r}")
    return sse_error(error)
