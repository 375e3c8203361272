"""The inbound HTTP edge: uvicorn on uvloop with httptools, plus the limits uvicorn lacks.

`EdgeProtocol` is uvicorn's `HttpToolsProtocol` with, per connection:
  - a deadline for a complete request head, from the connection's start or from the first
    byte of a keep-alive request (`limits.head_timeout_s`), and one for a stalled body (no body
    byte for `limits.body_timeout_s` while the app waits for it): 408;
  - a bound on the bytes of an unfinished head (`limits.max_header_bytes` + `HEAD_SLACK_BYTES`):
    431 before buffering more (HeaderLimitMiddleware gives the exact 431 below that);
  - a cap on open connections (`connection_cap`): the connection beyond it gets a 503;
  - parser (framing) errors answered with a JSON 400, not uvicorn's text/plain one, and an
    Upgrade request answered as plain HTTP, then the connection closed (llhttp would hand the
    bytes after it to the next request: a request with a body and Upgrade gets a 400).
Every such answer is an OpenAI error body with `Connection: close`, written unless the client
could take it for the answer to an earlier request (then the connection is just closed), and
logged at most once per 10 s per kind. uvicorn closes idle keep-alive connections
(`limits.keepalive_s`).

State: an `Edge` (proxy/http/edge/refusals.py; one per server, owned by its `EdgeConfig`) holds the
settings, the encoded answers, the counter and the rate-limited log; each `EdgeProtocol` owns
its connection's phase and timers.
What this relies on in uvicorn 0.54 (`HttpToolsProtocol`, `RequestResponseCycle`, `FlowControl`)
is listed in `UVICORN_ATTRIBUTES` and pinned by tests/proxy/test_edge.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import httptools
import uvicorn
import uvloop
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import (
    HttpToolsProtocol,
    RequestResponseCycle,
)
from uvicorn.server import ServerState

from proxy.config import LimitsConfig
from proxy.errors import InvalidRequestError
from proxy.http.edge.fdlimit import AcceptErrorHandler, RateLimitedLog
from proxy.http.edge.refusals import Edge, encode, response_bytes

logger = logging.getLogger("vllm_switch.edge")

LINGER_S = 2.0  # after an answer, read and drop what the client still sends, so it reads ours

# what EdgeProtocol uses of uvicorn's httptools protocol and its request cycle
UVICORN_ATTRIBUTES = {
    "protocol": (
        "transport", "flow", "cycle", "pipeline", "connections", "server_state", "parser",
        "loop", "headers", "timeout_keep_alive",
    ),
    "protocol_methods": (
        "connection_made", "connection_lost", "data_received", "on_message_begin",
        "on_headers_complete", "on_body", "on_message_complete", "send_400_response",
        "_unset_keepalive_if_required", "on_response_complete",
    ),
    "cycle": ("response_started", "response_complete", "disconnected", "message_event",
              "keep_alive", "waiting_for_100_continue"),
}  # fmt: skip


class _Flow(FlowControl):
    """uvicorn's flow control, telling the protocol each time the app asks for more body."""

    def __init__(self, transport: asyncio.Transport, on_resume: Callable[[], None]) -> None:
        super().__init__(transport)
        self._on_resume = on_resume

    def resume_reading(self) -> None:
        self._on_resume()
        super().resume_reading()


_IDLE, _HEAD, _BODY = 0, 1, 2


class EdgeProtocol(HttpToolsProtocol):
    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        assert isinstance(config, EdgeConfig), "EdgeProtocol needs an EdgeConfig"
        self._edge = config.edge
        self._phase = _IDLE
        self._began = False  # a message began during the current feed_data
        self._head_bytes = 0  # raw bytes of the unfinished head (chunks wholly inside it)
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._body_clock = 0.0  # last body byte, or last time the app asked for more
        self._framing = 0  # bytes since the last body byte: chunk lines, extensions, trailers
        self._got_body = False  # a body byte came during the current feed_data
        self._upgrade_with_body = False
        self._done = False  # answered or closing: input is dropped

    # connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        cap = self._edge.max_connections
        if len(self.connections) >= cap:
            self.transport = transport
            self._edge.refuse("over_cap", "refused a connection: %d are open (the cap)", cap)
            self.connections.add(self)  # counted while it lingers, and closed at shutdown
            # linger (so that the client reads the 503) while that leaves descriptors spare
            self._answer(self._edge.answers["over_cap"], linger=len(self.connections) < 2 * cap)
            return
        super().connection_made(transport)
        self.flow = _Flow(transport, self._app_waits)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._done = True
        self._cancel_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._done:
            return  # lingering after an answer, or an upgrade's other protocol
        self._unset_keepalive_if_required()
        start, self._began, self._got_body = self._phase, False, False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._upgrade()
            return
        except httptools.HttpParserError as exc:
            self.send_400_response(str(exc) or type(exc).__name__)
            return
        if self._phase == _HEAD:
            if start == _IDLE or not self._began:  # else the chunk began with another message
                self._head_bytes += len(data)
            if self._head_bytes > self._edge.max_head_bytes:
                self._refuse_too_large("head")
            elif self._head_timer is None and not self._responding():
                self._arm_head_timer()  # (a pipelined head: once the response before it is out)
        elif self._phase == _BODY:
            # llhttp keeps an unfinished trailer value in memory and counts no chunk extension
            # as body: bytes that bring no body are bounded like a head
            self._framing = 0 if self._got_body else self._framing + len(data)
            if self._framing > self._edge.max_head_bytes:
                self._refuse_too_large("chunk framing or trailer section")
            elif self._body_timer is None:
                self._body_clock = self.loop.time()
                self._body_timer = self.loop.call_later(self._edge.body_timeout_s, self._body_tick)

    def _refuse_too_large(self, what: str) -> None:
        self._edge.refuse("too_large", "refused a request %s over %d bytes",
                               what, self._edge.max_head_bytes)  # fmt: skip
        self._answer(self._edge.answers["too_large"])

    def _responding(self) -> bool:
        cycle: RequestResponseCycle | None = self.cycle  # None before the first request
        return cycle is not None and not cycle.response_complete

    def _arm_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self._edge.head_timeout_s, self._head_timeout)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self._done and self._phase == _HEAD and self._head_timer is None:
            self._arm_head_timer()  # a pipelined head already began: its deadline runs now

    # parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._phase, self._began, self._head_bytes, self._framing = _HEAD, True, 0, 0

    def on_headers_complete(self) -> None:
        self._phase = _BODY
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        if self.parser.should_upgrade() and any(
            (name == b"content-length" and value.strip() != b"0") or name == b"transfer-encoding"
            for name, value in self.headers
        ):
            self._upgrade_with_body = True  # llhttp will not parse that body: refused in _upgrade
            return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._body_clock = self.loop.time()
        self._got_body, self._framing = True, 0
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._phase = _IDLE
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        if not self._upgrade_with_body:
            super().on_message_complete()

    # uvicorn's own answers

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a framing error, as an OpenAI error (and logged rarely)."""
        self._edge.refuse("invalid", "refused an invalid HTTP request: %s", msg)
        self._answer((400, encode(InvalidRequestError(f"invalid HTTP request: {msg}"))))

    def _upgrade(self) -> None:
        # llhttp stopped after an Upgrade (or CONNECT) request: what follows belongs to the new
        # protocol. None is supported, so the request is answered as plain HTTP and the
        # connection closed after it (RFC 9110 7.8 lets a server ignore Upgrade).
        if self._upgrade_with_body:
            self._edge.refuse("upgrade_body", "refused an Upgrade request with a body")
            self._answer(self._edge.answers["upgrade_body"])
            return
        self._done = True
        cycle: RequestResponseCycle | None = self.cycle  # None before the first request
        if cycle is not None and not cycle.response_complete:
            cycle.keep_alive = False
        else:
            self.transport.close()

    # deadlines

    def _app_waits(self) -> None:
        self._body_clock = self.loop.time()

    def _head_timeout(self) -> None:
        self._head_timer = None
        if not self._done:
            self._edge.refuse("head_timeout", "closed a connection: no request head in time")
            self._answer(self._edge.answers["head_timeout"])

    def _body_tick(self) -> None:
        self._body_timer = None
        if self._done or self._phase != _BODY:
            return
        now = self.loop.time()
        cycle: RequestResponseCycle | None = self.cycle  # None before the first request
        if self.flow.read_paused or (cycle is not None and cycle.waiting_for_100_continue):
            self._body_clock = now  # we are not reading, or the client waits for our 100
        idle = now - self._body_clock
        if idle < self._edge.body_timeout_s:
            self._body_timer = self.loop.call_later(
                self._edge.body_timeout_s - idle, self._body_tick
            )
            return
        if cycle is not None and cycle.response_complete:
            # the app answered without reading the body (a 401, a 413): a 408 now would be an
            # answer nobody asked for, which the client could take for its next request's
            self._done = True
            self.transport.close()
            return
        self._edge.refuse("body_timeout", "closed a connection: the request body stalled")
        self._answer(self._edge.answers["body_timeout"])

    def _cancel_timers(self) -> None:
        for timer in (self._head_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = None

    # answering and closing

    def _answer(self, answer: tuple[int, bytes], *, linger: bool = True) -> None:
        """Send `answer` and close; only close if the answer could be taken for that of an
        earlier request (one still unanswered, or whose response is partly out).

        Lingering: after the answer, a FIN; what the client still sends is read and dropped for
        up to LINGER_S, as closing with unread input would reset the connection and could
        destroy the answer before the client reads it."""
        self._done = True
        self._cancel_timers()
        cycle: RequestResponseCycle | None = self.cycle  # None before the first request
        open_cycle = cycle is not None and not cycle.response_complete
        receiving = self._phase == _BODY and not self._upgrade_with_body  # cycle is this one's
        earlier = bool(self.pipeline) or (
            cycle is not None and open_cycle and (cycle.response_started or not receiving)
        )
        if cycle is not None and open_cycle:
            cycle.disconnected = True  # the app's receive() says http.disconnect; its send() drops
            cycle.message_event.set()
        if earlier or self.transport.is_closing():
            self.transport.close()
            return
        self.transport.write(response_bytes(answer, self.server_state.default_headers))
        if linger and self.transport.can_write_eof():
            self.transport.write_eof()
            self.loop.call_later(LINGER_S, self.transport.close)
        else:
            self.transport.close()


class EdgeConfig(uvicorn.Config):
    """uvicorn's settings, fixed to this stack, plus the `Edge` its protocols share."""

    def __init__(
        self,
        app: Any,
        limits: LimitsConfig,
        *,
        count: Callable[[str], None] | None = None,
        **kwargs: Any,
    ) -> None:
        self.edge = Edge.from_limits(limits)
        if count is not None:
            self.edge.count = count
        super().__init__(
            app,
            loop="uvloop",
            http=EdgeProtocol,
            ws="none",  # no WebSocket routes: an Upgrade is answered as plain HTTP
            timeout_keep_alive=limits.keepalive_s,
            # no X-Forwarded-For/-Proto rewriting of the client's address (uvicorn trusts them
            # from 127.0.0.1 by default): nothing here reads it, and a local process must not
            # be able to claim another address
            proxy_headers=False,
            **kwargs,
        )

    def get_loop_factory(self) -> Callable[[], asyncio.AbstractEventLoop]:
        """uvloop, with accept errors logged once per interval (used by `Server.run`)."""

        def new_loop() -> asyncio.AbstractEventLoop:
            loop = uvloop.new_event_loop()
            AcceptErrorHandler(RateLimitedLog(logger)).install(loop)
            return loop

        return new_loop
