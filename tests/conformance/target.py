"""What the conformance tests run against: the emulator (default) or a real vLLM 0.26 server.

`Target` names the two servers (dev mode with Sleep Mode, and no dev mode with an API key);
the `target` fixture of tests/conformance/conftest.py starts or finds them. `restore_awake` puts
the dev-mode one back to fully awake whatever a test left it in."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import httpx

API_KEY = os.environ.get("VLLM_SWITCH_TARGET_API_KEY", "sk-conformance")


@dataclass(frozen=True)
class Target:
    url: str
    nodev_url: str
    real: bool


async def restore_awake(c: httpx.AsyncClient) -> None:
    """Whatever a test did, end fully awake with valid weights (staged wake is safe at any level)."""
    if (await c.get("/is_sleeping")).json()["is_sleeping"]:
        (await c.post("/wake_up", params={"tags": "weights"})).raise_for_status()
        (await c.post("/collective_rpc", json={"method": "reload_weights"})).raise_for_status()
        (await c.post("/wake_up", params={"tags": "kv_cache"})).raise_for_status()
        (await c.post("/wake_up")).raise_for_status()  # resumes a level-0 pause too
    assert (await c.get("/is_sleeping")).json() == {"is_sleeping": False}


def transcripts_path() -> Path:
    return Path(__file__).parent / "data" / "vllm026-transcripts.json"
