"""Targets of the conformance suite: the emulator (default) or a real vLLM 0.26 server.

The same tests run against both. By default two emulators are started as subprocesses. To run
against real vLLM, start two servers of one model served as `tiny tiny-alias` with
`--max-model-len 512` and point the suite at them (see docs/conformance.md):

    VLLM_SWITCH_TARGET_URL        dev mode (VLLM_SERVER_DEV_MODE=1) and --enable-sleep-mode
    VLLM_SWITCH_TARGET_NODEV_URL  no dev mode, --api-key $VLLM_SWITCH_TARGET_API_KEY
    VLLM_SWITCH_TARGET_POOLING_URL  --runner pooling --convert embed --served-model-name
                                    tiny-embed (dev mode and Sleep Mode on, as on the GPU host)
    VLLM_SWITCH_TARGET_TOOLS_URL    --served-model-name tiny-tools --enable-auto-tool-choice
                                    --tool-call-parser hermes

With VLLM_SWITCH_TARGET_URL set but a pooling or tools URL unset (an older GPU script), the
tests of that server are skipped rather than run against an emulator.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from proxy.emulator.launcher import emulator_argv
from tests.conformance.target import (
    API_KEY,
    POOLING_MODEL,
    TOOLS_MODEL,
    Target,
    restore_awake,
)
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


def _one_server(
    tmp_path_factory: pytest.TempPathFactory,
    env: str,
    name: str,
    model: str,
    flags: tuple[str, ...],
) -> Iterator[str]:
    """The real server named by `env`, else one emulator with the same vLLM flags."""
    url = os.environ.get(env)
    if url:
        yield url.rstrip("/")
        return
    if os.environ.get("VLLM_SWITCH_TARGET_URL"):
        pytest.skip(f"real vLLM target without ${env}: no {name} server to check")
    work = tmp_path_factory.mktemp(f"conformance-{name}")
    argv = emulator_argv(
        "tiny",
        served_names=(model,),
        ledger_dir=work / "ledger",
        sleep_mode=True,
        gpu=f"gpu-{name}",
        util=0.4,
        max_model_len=512,
        startup_s=0,
        extra=flags,
    )
    with running_emulator(work, argv, name=name) as emu:
        yield emu.url


@pytest.fixture(scope="session")
def pooling_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of the embedding model `tiny-embed` (a pooling runner: no generation routes)."""
    flags = ("--runner", "pooling", "--convert", "embed")
    yield from _one_server(
        tmp_path_factory, "VLLM_SWITCH_TARGET_POOLING_URL", "pooling", POOLING_MODEL, flags
    )


@pytest.fixture(scope="session")
def tools_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of the generate model `tiny-tools` with automatic tool choice (hermes)."""
    flags = ("--enable-auto-tool-choice", "--tool-call-parser", "hermes")
    yield from _one_server(
        tmp_path_factory, "VLLM_SWITCH_TARGET_TOOLS_URL", "tools", TOOLS_MODEL, flags
    )


async def _has_sleep_mode(c: httpx.AsyncClient) -> bool:
    return (await c.get("/is_sleeping")).status_code == 200


@pytest.fixture
async def pooling_client(pooling_target: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the pooling target, left awake after each test if it has Sleep Mode."""
    async with httpx.AsyncClient(base_url=pooling_target, timeout=httpx.Timeout(60.0)) as c:
        sleepy = await _has_sleep_mode(c)
        if sleepy:
            await restore_awake(c)
        yield c
        if sleepy:
            await restore_awake(c)


@pytest.fixture
async def tools_client(tools_target: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=tools_target, timeout=httpx.Timeout(60.0)) as c:
        yield c


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
