"""The start-up probe (proxy/backends/probe.py) against FakeVllm, and what start-up does with it:
dev mode, sleep mode and the served name checked with read-only GETs, each bounded; a backend
set up wrongly is FAILED with the fix in its failure, and nothing touches its memory."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
import pytest

from proxy.backends.probe import ProbeReport, probe_backend
from proxy.config import ModelConfig
from proxy.errors import BackendUnavailableError
from tests.unit.fake_vllm import FakeServer, FakeVllm
from tests.unit.rig import build_config, rig, supervised

pytestmark = pytest.mark.looptime
URL = "http://127.0.0.1:8001"
READS = ["GET /is_sleeping", "GET /server_info?config_format=json", "GET /v1/models"]


async def probed(
    *, config: dict[str, Any] | None = None, **server: Any
) -> tuple[ProbeReport, FakeServer]:
    cfg = ModelConfig.model_validate({"name": "m", "url": URL, **(config or {})})
    vllm = FakeVllm()
    fake = vllm.add("m", URL, served_name="m", asleep=server.pop("asleep", False))
    for key, value in server.items():
        setattr(fake, key, value)
    async with httpx.AsyncClient(transport=vllm.transport) as client:
        return await probe_backend(cfg, client), fake


async def test_a_backend_set_up_right_passes_with_three_reads() -> None:
    report, server = await probed(asleep=True, max_model_len=8192)
    assert report.ok, report.message()
    assert (report.is_sleeping, report.sleep_mode) == (True, True)
    assert (report.served, report.max_model_len) == (("m",), 8192)
    assert server.log(probe=True) == READS


async def test_no_dev_mode_says_how_to_start_vllm() -> None:
    report, server = await probed(dev_mode=False)
    assert not report.ok
    assert [f.check for f in report.findings] == ["dev_mode"]
    assert "/is_sleeping answered 404" in report.message()
    assert "start vLLM with VLLM_SERVER_DEV_MODE=1" in report.message()
    assert server.log(probe=True) == ["GET /is_sleeping", "GET /v1/models"], (
        "/server_info is a dev endpoint too: not asked"
    )


async def test_sleep_mode_off_says_how_to_start_vllm() -> None:
    report, _ = await probed(sleep_mode=False)
    assert [f.check for f in report.findings] == ["sleep_mode"]
    assert report.sleep_mode is False
    assert "start vLLM with --enable-sleep-mode" in report.message()


async def test_no_server_info_is_unknown_not_a_failure(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="proxy.backends.probe"):
        report, _ = await probed(server_info=False)
    assert report.ok
    assert report.sleep_mode is None
    assert "sleep mode unknown (GET /server_info answered 404" in caplog.text


async def test_a_served_name_the_backend_lacks_lists_what_it_serves() -> None:
    report, _ = await probed(config={"served_name": "Qwen/Qwen3-8B"}, served_names=("a", "b"))
    assert [f.check for f in report.findings] == ["served_name"]
    message = report.message()
    assert "the backend serves 'a', 'b', not 'Qwen/Qwen3-8B'" in message
    assert "`served_name`" in message
    assert report.max_model_len is None


async def test_the_backend_key_is_sent_and_a_401_names_api_key() -> None:
    report, server = await probed(config={"api_key": "sk-backend"})
    assert report.ok
    assert {c.headers.get("authorization") for c in server.calls} == {"Bearer sk-backend"}
    server.fail("GET", "/v1/models", status=401, body={"error": "Unauthorized"})
    cfg = ModelConfig.model_validate({"name": "m", "url": URL})
    async with httpx.AsyncClient(transport=httpx.MockTransport(server.handle)) as client:
        report = await probe_backend(cfg, client)
    assert "GET /v1/models answered 401" in report.message()
    assert "`api_key`" in report.message()


async def test_a_backend_without_a_model_list_is_unchecked_not_failed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every vLLM lists its models; a server that does not cannot be checked (a warning)."""
    vllm = FakeVllm()
    server = vllm.add("m", URL)
    server.fail("GET", "/v1/models", status=404, body={"detail": "Not Found"})
    cfg = ModelConfig.model_validate({"name": "m", "url": URL})
    with caplog.at_level(logging.WARNING, logger="proxy.backends.probe"):
        async with httpx.AsyncClient(transport=vllm.transport) as client:
            report = await probe_backend(cfg, client)
    assert report.ok
    assert (report.served, report.max_model_len) == ((), None)
    assert "served_name not checked (GET /v1/models answered 404" in caplog.text


@pytest.mark.parametrize(("path", "unknown"), [("/server_info", True), ("/is_sleeping", False)])
async def test_every_read_is_bounded_by_control_s(path: str, unknown: bool) -> None:
    """A read that never answers ends after timeouts.control_s: /server_info's is "unknown",
    /is_sleeping's a finding. The probe itself never hangs."""
    cfg = ModelConfig.model_validate({"name": "m", "url": URL, "timeouts": {"control_s": 2}})
    vllm = FakeVllm()
    server = vllm.add("m", URL)
    server.hold("GET", path)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    async with httpx.AsyncClient(transport=vllm.transport) as client:
        report = await probe_backend(cfg, client)
    assert loop.time() - t0 == pytest.approx(2)
    assert report.ok is unknown
    if not unknown:
        assert "GET /is_sleeping failed: no answer within 2s" in report.message()


# ----- at start-up -------------------------------------------------------------------------------
async def test_start_up_reads_max_model_len_from_each_backend() -> None:
    async with rig(build_config("model-a", "model-b"), reconcile=False) as r:
        r.server("model-a").max_model_len = 32768
        await r.start_up()
        assert r.states() == {"model-a": "asleep", "model-b": "ready"}
        assert [r.backend(n).max_model_len for n in ("model-a", "model-b")] == [32768, 4096]


async def test_no_dev_mode_at_start_up_fails_it_holding_memory_and_touches_nothing() -> None:
    async with rig(build_config("model-a", "model-b"), awake={"model-a"}, reconcile=False) as r:
        r.server("model-a").dev_mode = False
        await r.start_up()
        a = r.backend("model-a")
        assert (a.state.value, a.holds_memory) == ("failed", True), "it may well be awake"
        assert a.failure is not None
        assert "start vLLM with VLLM_SERVER_DEV_MODE=1" in a.failure
        with pytest.raises(BackendUnavailableError, match="VLLM_SERVER_DEV_MODE=1"):
            await r.lease("model-a")
        with pytest.raises(BackendUnavailableError, match="may still hold GPU memory"):
            await r.lease("model-b")  # waking it next to model-a could run out of memory
    assert r.vllm.log() == ["model-a: GET /is_sleeping", "model-b: GET /is_sleeping"]


async def test_sleep_mode_off_at_start_up_fails_it_even_when_it_says_it_sleeps() -> None:
    """Without --enable-sleep-mode, /is_sleeping says true after a /sleep that freed nothing."""
    async with rig(build_config("model-a", "model-b"), awake={"model-b"}, reconcile=False) as r:
        r.server("model-a").sleep_mode = False
        await r.start_up()
        a = r.backend("model-a")
        assert (a.state.value, a.holds_memory) == ("failed", True)
        assert a.failure is not None
        assert a.failure.startswith("start-up probe: sleep mode is off")
        assert "start vLLM with --enable-sleep-mode" in a.failure


@pytest.mark.parametrize(
    ("extra", "failed"),
    [({}, False), ({"idle_sleep_s": 60}, True)],
    ids=["alone", "alone-with-idle-sleep"],
)
async def test_sleep_mode_is_needed_only_by_a_model_that_may_be_put_to_sleep(
    extra: dict[str, Any], failed: bool
) -> None:
    """Alone on its GPU (max_awake 1) nothing ever puts it to sleep - unless idle_sleep_s."""
    async with rig(build_config({"name": "model-a", **extra}), reconcile=False) as r:
        r.server("model-a").sleep_mode = False
        await r.start_up()
        assert r.state("model-a") == ("failed" if failed else "ready")


async def test_a_wrong_served_name_of_a_sleeping_backend_leaves_its_group_usable() -> None:
    """It sleeps with sleep mode on: its memory is free, so only it is FAILED."""
    config = build_config({"name": "model-a", "served_name": "typo"}, "model-b")
    async with rig(config, awake={"model-b"}, reconcile=False) as r:
        r.server("model-a").served_names = ("model-a",)
        await r.start_up()
        a = r.backend("model-a")
        assert (a.state.value, a.holds_memory) == ("failed", False)
        assert a.failure is not None
        assert "the backend serves 'model-a', not 'typo'" in a.failure
        await r.served("model-b")


async def test_a_started_backend_is_probed_and_a_finding_is_logged_not_failed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A supervised one: dev mode is the proxy's own; a finding is an error in the log (a
    FAILED supervised backend with a live process would be started twice)."""
    async with rig(build_config("model-x", supervised("model-s")), reconcile=False) as r:
        r.server("model-s").sleep_mode = False
        r.server("model-s").max_model_len = 2048
        with caplog.at_level(logging.ERROR):
            await r.start_up()
        s = r.backend("model-s")
        assert (s.state.value, s.max_model_len) == ("ready", 2048)
        assert "model-s is set up wrongly" in caplog.text
        assert "start vLLM with --enable-sleep-mode" in caplog.text
        assert "GET /is_sleeping" not in r.server("model-s").log(probe=True)
