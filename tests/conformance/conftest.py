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
from pathlib import Path

import httpx
import pytest

from proxy.emulator.launcher import emulator_argv
from tests.conformance.target import API_KEY, Target, restore_awake
from tests.helpers.processes import running_emulator


def tiny(ledger: Path, *, gpu: str, sleep_mode: bool, extra: tuple[str, ...] = ()) -> list[str]:
    """The emulated counterpart of the real servers: `tiny` served as `tiny tiny-alias`."""
    return emulator_argv(
        "tiny",
        served_names=("tiny", "tiny-alias"),
        ledger_dir=ledger,
        sleep_mode=sleep_mode,
        gpu=gpu,
        util=0.4,
        max_model_len=512,
        startup_s=0,
        extra=extra,
    )


@pytest.fixture(scope="session")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    url = os.environ.get("VLLM_SWITCH_TARGET_URL")
    if url:
        yield Target(
            url.rstrip("/"), os.environ["VLLM_SWITCH_TARGET_NODEV_URL"].rstrip("/"), real=True
        )
        return
    work = tmp_path_factory.mktemp("conformance")
    ledger = work / "ledger"
    with (
        running_emulator(work, tiny(ledger, gpu="gpu-dev", sleep_mode=True), name="dev") as dev,
        running_emulator(
            work,
            tiny(ledger, gpu="gpu-nodev", sleep_mode=False, extra=("--api-key", API_KEY)),
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
