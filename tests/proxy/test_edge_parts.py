"""The inbound edge's parts that need no socket: what it relies on in uvicorn's internals, the
connection cap's arithmetic, and the rate-limited log of refusals and accept errors. (The edge
over real loopback sockets is tests/proxy/test_edge.py.)"""

from __future__ import annotations

import inspect
import logging
import re

import pytest
import uvloop
from uvicorn.protocols.http import httptools_impl

from proxy.app import create_app
from proxy.cli import uvicorn_config
from proxy.config import ProxyConfig
from proxy.http.edge.fdlimit import AcceptErrorHandler, RateLimitedLog, connection_cap
from proxy.http.edge.protocol import UVICORN_ATTRIBUTES, EdgeProtocol


def edge_config() -> ProxyConfig:
    return ProxyConfig.model_validate({"models": [{"name": "m", "url": "http://127.0.0.1:9"}]})


def test_what_the_edge_relies_on_in_uvicorn_is_still_there() -> None:
    """proxy/http/edge/protocol.py subclasses uvicorn 0.54's HttpToolsProtocol: if these move, it breaks."""
    protocol_init = inspect.getsource(httptools_impl.HttpToolsProtocol.__init__)
    cycle_init = inspect.getsource(httptools_impl.RequestResponseCycle.__init__)
    for name in UVICORN_ATTRIBUTES["protocol"]:
        assert re.search(rf"self\.{name}\b[^=\n]*=", protocol_init), name
    for name in UVICORN_ATTRIBUTES["protocol_methods"]:
        assert callable(getattr(httptools_impl.HttpToolsProtocol, name)), name
    for name in UVICORN_ATTRIBUTES["cycle"]:
        assert re.search(rf"self\.{name}\b[^=\n]*=", cycle_init), name
    # the body deadline learns that the app waits for more through FlowControl.resume_reading
    assert "self.flow.resume_reading()" in inspect.getsource(
        httptools_impl.RequestResponseCycle.receive
    )
    # uvicorn writes its framing-error answer only through send_400_response
    data_received = inspect.getsource(httptools_impl.HttpToolsProtocol.data_received)
    assert "self.send_400_response(msg)" in data_received
    assert EdgeProtocol.send_400_response is not httptools_impl.HttpToolsProtocol.send_400_response
    config = uvicorn_config(create_app(edge_config()), edge_config(), "warning", grace_s=1)
    config.load()
    assert config.http_protocol_class is EdgeProtocol
    assert not config.proxy_headers, "no X-Forwarded-For rewriting of the client's address"
    new_loop = config.get_loop_factory()
    assert new_loop is not None
    loop = new_loop()
    try:
        assert isinstance(loop, uvloop.Loop)
        assert isinstance(loop.get_exception_handler(), AcceptErrorHandler)
    finally:
        loop.close()


def test_connection_cap_leaves_room_for_an_upstream_connection_each() -> None:
    assert connection_cap(4096, 1024) == 480
    assert connection_cap(4096, 1 << 20) == 4096
    assert connection_cap(100, 1024) == 100


def test_rate_limited_log_counts_what_it_leaves_out(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    limited = RateLimitedLog(logging.getLogger("t"), interval_s=10, clock=lambda: now[0])
    for t in (0, 1, 2, 9.9, 10.5, 11, 30):
        now[0] = t
        limited.warning("k", "accept failed")
    limited.warning("other", "another kind")
    assert [r.getMessage() for r in caplog.records] == [
        "accept failed",
        "accept failed (3 more like it since the last such line, 10 s ago)",
        "accept failed (1 more like it since the last such line, 20 s ago)",
        "another kind",
    ]
