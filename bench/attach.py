"""Attach mode of the benchmarks: `--backends NAME=URL,...`, vLLM servers started elsewhere.

The scheduling bench and the soak normally start emulated vLLM servers themselves; with
`--backends` they start none and point the proxy at servers already running (real vLLM 0.26 in
dev mode with `--enable-sleep-mode`, or emulators a test started). Each NAME is the served model
name of the server at URL. The proxy gets URL-only models (no `command`: it supervises and
restarts nothing) and brings them to a known state itself at start-up
(proxy/switching/startup.py: at most `max_awake` stay awake, the first in config order; a
level-2 sleeper is woken and slept again). Emulator-only readings (`/_emulator/stats`, the fake
GPU's ledger, injected faults) are not available there: the benches record them as null.
Stateless.
"""

from __future__ import annotations

import argparse
from urllib.parse import urlsplit

Backends = tuple[tuple[str, str], ...]  # (served name, base URL), in the order given


def parse_backends(text: str, count: int | None = None) -> Backends:
    """`NAME=URL,NAME=URL,...` as (name, url) pairs; an argparse error for anything else."""
    pairs: list[tuple[str, str]] = []
    for item in (part.strip() for part in text.split(",")):
        name, sep, url = item.partition("=")
        name, url = name.strip(), url.strip().rstrip("/")
        parts = urlsplit(url)
        if not sep or not name or parts.scheme not in ("http", "https") or not parts.hostname:
            raise argparse.ArgumentTypeError(
                f"{item!r}: expected NAME=URL, e.g. model-a=http://127.0.0.1:8101"
            )
        pairs.append((name, url))
    names, urls = [n for n, _ in pairs], [u for _, u in pairs]
    if len(set(names)) != len(names) or len(set(urls)) != len(urls):
        raise argparse.ArgumentTypeError(f"{text!r}: each name and each URL once")
    if count is not None and len(pairs) != count:
        raise argparse.ArgumentTypeError(f"{text!r}: exactly {count} backends, got {len(pairs)}")
    return tuple(pairs)


def three_backends(text: str) -> Backends:
    return parse_backends(text, 3)
