"""Targets of the conformance suite: the emulator (default) or a real vLLM 0.26 server.

The same tests run against both. By default two emulators are started as subprocesses. To run
against real vLLM, start two servers of one model served as `tiny tiny-alias` with
`--max-model-len 512` and point the suite at them (see docs/conformance.md):

    VLLM_SWITCH_TARGET_URL        dev mode (VLLM_SERVER_DEV_MODE=1) and --enable-sleep-mode
    VLLM_SWITCH_TARGET_NODEV_URL  no dev mode, --api-key $VLLM_SWITCH_TARGET_API_KEY
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.processes import running_emulator

API_KEY = os.environ.get("VLLM_SWITCH_TARGET_API_KEY", "sk-conformance")
MODEL_ARGS = ["tiny", "--served-model-name", "tiny", "tiny-alias", "--max-model-len", "512"]


@dataclass(frozen=True)
class Target:
    url: str
    nodev_url: str
    real: bool


@pytest.fixture(scope="session")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    url = os.environ.get("VLLM_SWITCH_TARGET_URL")
    if url:
        yield Target(
            url.rstrip("/"), os.environ["VLLM_SWITCH_TARGET_NODEV_URL"].rstrip("/"), real=True
        )
        return
    work = tmp_path_factory.mktemp("conformance")
    common = [
        *MODEL_ARGS,
        "--gpu-memory-utilization",
        "0.4",
        "--emu-startup-s",
        "0",
        "--emu-ledger-dir",
        str(work / "ledger"),
    ]
    with (
        running_emulator(
            work, [*common, "--enable-sleep-mode", "--emu-gpu", "gpu-dev"], name="dev"
        ) as dev,
        running_emulator(
            work,
            [*common, "--api-key", API_KEY, "--emu-gpu", "gpu-nodev"],
            name="nodev",
            dev_mode=False,
        ) as nodev,
    ):
        yield Target(dev.url, nodev.url, real=False)


@pytest.fixture
def emulator_only(target: Target) -> None:
    if target.real:
        pytest.skip("checks an emulator-only knob")


@pytest.fixture
async def client(target: Target) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the dev-mode target, which is left awake and unpaused after each test."""
    async with httpx.AsyncClient(base_url=target.url, timeout=httpx.Timeout(60.0)) as c:
        await restore_awake(c)
        yield c
        await restore_awake(c)


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
