"""What the conformance tests run against: the emulator (default) or a real vLLM 0.26 server.

`Target` names the two servers of the generate model (dev mode with Sleep Mode, and no dev mode
with an API key); the `target` fixture of tests/conformance/conftest.py starts or finds them, and
`pooling_target` / `tools_target` the embedding model and the generate model with automatic tool
choice. `restore_awake` puts a dev-mode server back to fully awake whatever a test left it in."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import httpx

API_KEY = os.environ.get("VLLM_SWITCH_TARGET_API_KEY", "sk-conformance")
POOLING_MODEL = "tiny-embed"  # --runner pooling --convert embed --served-model-name tiny-embed
TOOLS_MODEL = "tiny-tools"  # --enable-auto-tool-choice --tool-call-parser hermes


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


def routes_transcripts_path() -> Path:
    """Recorded by bench/gpu/record_routes.py from real vLLM 0.26.0 (dev, pooling, tools);
    `$VLLM_SWITCH_ROUTES_TRANSCRIPTS` replays another recording (e.g. one of the emulator's)."""
    override = os.environ.get("VLLM_SWITCH_ROUTES_TRANSCRIPTS")
    return (
        Path(override) if override else Path(__file__).parent / "data" / "vllm026-routes-h200.json"
    )
