"""Hooks for the whole suite."""

from __future__ import annotations

import asyncio

import pytest


def pytest_sessionstart(session: pytest.Session) -> None:
    # looptime's pytest hook asks the policy for the current loop even in a sync test; before any
    # async test ran, asyncio's policy then creates a loop that nobody closes, and its unclosed
    # self-pipe fails a later test as an unraisable ResourceWarning. Saying "no loop" up front
    # makes that call raise RuntimeError, which looptime expects (pytest-asyncio sets its own).
    asyncio.set_event_loop(None)
