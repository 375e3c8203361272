"""'Any OpenAI SDK', shown: the official openai npm package on Node drives the proxy."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import pytest

from tests.helpers.fleet import Fleet, config_for
from tests.helpers.proxy_server import serve_proxy

NODE_DIR = Path(__file__).resolve().parents[1] / "node"


def _node() -> str:
    node = shutil.which("node")
    if node is None or not (NODE_DIR / "node_modules" / "openai").is_dir():
        if os.environ.get("CI"):
            pytest.fail(
                "node and tests/node/node_modules are required in CI (.ci/run installs them)"
            )
        pytest.skip("run `npm ci --prefix tests/node` (needs Node 20) to enable this test")
    return node


async def test_official_node_sdk_alternates_models(fleet: Fleet) -> None:
    node = _node()
    fleet.start(("model-a", []), ("model-b", []))
    async with serve_proxy(config_for(fleet, [{"name": "model-a"}, {"name": "model-b"}])) as proxy:
        proc = await asyncio.create_subprocess_exec(
            node,
            str(NODE_DIR / "sdk_check.mjs"),
            f"{proxy.url}/v1",
            "model-a",
            "model-b",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    report = json.loads(out)
    assert [r["model"] for r in report["results"]] == ["model-a", "model-b", "model-a", "model-b"]
    for r in report["results"]:
        assert r["replyModel"] == r["model"]
        assert r["text"]
        assert r["streamed"]
        assert float(r["wakeMs"]) > 0, "each model's first request of its turn switched"
    assert report["models"] == ["model-a", "model-b"]
    assert fleet.counters("model-a")["wake_calls"] == 2


async def test_official_node_sdk_streams_through_the_progress_of_a_long_wake(
    fleet: Fleet,
) -> None:
    """A 1.5 s wake: the proxy sends its head and SSE comments first; the SDK ignores them."""
    node = _node()
    fleet.start(("model-a", ["--emu-wake-weights-l1-s", "1.5"]), ("model-b", []))
    limits = {"progress_after_s": 0.2, "progress_every_s": 0.3}
    config = config_for(fleet, [{"name": "model-a"}, {"name": "model-b"}], limits=limits)
    async with serve_proxy(config) as proxy:
        assert proxy.state("model-a") == "asleep"
        proc = await asyncio.create_subprocess_exec(
            node,
            str(NODE_DIR / "sdk_stream.mjs"),
            f"{proxy.url}/v1",
            "model-a",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    report = json.loads(out)
    assert report["text"], report
    assert report["extras"] == [], "comments are not chunks"
    assert fleet.counters("model-a")["wake_calls"] == 1
