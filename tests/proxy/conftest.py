"""Hooks of the gateway tests (the helpers they use live in tests/helpers/; the `fleet`
fixture, shared with tests/browser, in tests/conftest.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
import uvloop

# the upstream client's tests run on both event loops: `vllm-switch serve` runs uvloop, whose
# transports differ from asyncio's (connection_made timing, pause/resume, socket objects)
BOTH_LOOPS = {"tests.proxy.test_transport", "tests.proxy.test_upstream_edges"}


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    module = getattr(item, "module", None)
    if module is not None and module.__name__ in BOTH_LOOPS:
        return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
    return {"asyncio": asyncio.new_event_loop}
