"""The NVML reader (proxy/backends/gpu_memory.py) and the policy's use of measured free memory:
a reading is used only when it is one, and a wake-first only when a need is known."""

from __future__ import annotations

import logging
import sys
from types import SimpleNamespace
from typing import Any

import pytest

from proxy.backends.gpu_memory import GIB, NvmlMemory, open_gpu_memory
from proxy.backends.state import BackendState
from proxy.config import GpuConfig
from proxy.switching.policy import GroupView, ModelView, decide, fits, wake_need_gib


class FakeNvml:
    """pynvml's surface as NvmlMemory uses it."""

    class NVMLError(Exception):
        pass

    def __init__(self, free: Any = 40 * GIB) -> None:
        self.free = free
        self.handles: list[tuple[str, Any]] = []
        self.inits = 0

    def nvmlInit(self) -> None:  # noqa: N802 - pynvml's names
        self.inits += 1

    def nvmlDeviceGetHandleByIndex(self, index: int) -> str:  # noqa: N802
        self.handles.append(("index", index))
        return f"h{index}"

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> str:  # noqa: N802
        self.handles.append(("uuid", uuid))
        return uuid

    def nvmlDeviceGetMemoryInfo(self, handle: str) -> Any:  # noqa: N802
        if isinstance(self.free, Exception):
            raise self.free
        return SimpleNamespace(free=self.free, total=141 * GIB, used=0)


def test_free_memory_is_read_in_gib_by_index_or_uuid() -> None:
    nvml = FakeNvml(free=int(12.5 * GIB))
    assert NvmlMemory(nvml, 1).free_gib() == 12.5
    assert NvmlMemory(nvml, "GPU-1234").free_gib() == 12.5
    assert nvml.handles == [("index", 1), ("uuid", "GPU-1234")]


@pytest.mark.parametrize("free", [FakeNvml.NVMLError("GPU is lost"), -1, None, "40"])
def test_a_failed_or_absurd_reading_is_unknown_never_free(free: Any) -> None:
    assert NvmlMemory(FakeNvml(free=free), 0).free_gib() is None


def test_no_device_no_probe() -> None:
    assert open_gpu_memory(GpuConfig(name="g0")) is None


def test_without_nvidia_ml_py_the_probe_is_none_with_a_hint(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml raises ImportError
    with caplog.at_level(logging.WARNING):
        assert open_gpu_memory(GpuConfig(name="g0", nvml_device=0)) is None
    assert "pip install 'vllm-switch[nvml]'" in caplog.text


def test_without_a_driver_the_real_nvml_gives_no_probe(caplog: pytest.LogCaptureFixture) -> None:
    """The real nvidia-ml-py (a test dependency), on a machine without an NVIDIA driver: init
    fails with NVMLError, which must read as "no probe", not crash the proxy."""
    pytest.importorskip("pynvml")
    with caplog.at_level(logging.WARNING):
        probe = open_gpu_memory(GpuConfig(name="g0", nvml_device=0))
    if probe is not None:  # a machine with a GPU: then it reads a real number
        free = probe.free_gib()
        assert free is None or free >= 0
        return
    assert "NVML unavailable" in caplog.text


def test_the_probe_is_opened_through_pynvml(monkeypatch: pytest.MonkeyPatch) -> None:
    nvml = FakeNvml(free=8 * GIB)
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    probe = open_gpu_memory(GpuConfig(name="g0", nvml_device="GPU-abc"))
    assert probe is not None
    assert probe.free_gib() == 8.0
    assert nvml.inits == 1


@pytest.mark.parametrize("bad", [-1, "0", "abc"])
def test_a_bad_nvml_device_is_refused(bad: Any) -> None:
    with pytest.raises(ValueError, match="NVML"):
        GpuConfig(name="g0", nvml_device=bad)


# ----- the policy on measured memory -----------------------------------------------------------
def model(name: str, state: BackendState, **kw: Any) -> ModelView:
    return ModelView(name, state, state is BackendState.READY, **kw)


def view(free: float | None, *models: ModelView, **kw: Any) -> GroupView:
    return GroupView("g0", 1, models, free_gib=free, **kw)


def test_the_need_is_declared_or_measured_whichever_is_larger() -> None:
    asleep = BackendState.ASLEEP
    assert wake_need_gib(model("t", asleep)) is None
    assert wake_need_gib(model("t", asleep, memory_gib=30, asleep_memory_gib=2)) == 28
    assert wake_need_gib(model("t", asleep, memory_gib=30)) == 30, "no residual declared"
    assert wake_need_gib(model("t", BackendState.STOPPED, memory_gib=30, asleep_memory_gib=2)) == 30
    assert wake_need_gib(model("t", asleep, memory_gib=30, asleep_memory_gib=2, wake_gib=29)) == 29
    assert wake_need_gib(model("t", asleep, wake_gib=12)) == 12


def test_measured_free_memory_decides_with_a_margin() -> None:
    t = model("t", BackendState.ASLEEP, wake_gib=20, queue=(0.0,))
    a = model("a", BackendState.READY, ready_since=0.0)
    assert fits(view(21.0, a, t), t)
    assert not fits(view(20.5, a, t), t), "1 GiB is kept free beyond the need"
    assert not fits(view(None, a, t), t), "nothing measured, nothing declared"
    unknown = model("t", BackendState.ASLEEP, queue=(0.0,))
    assert not fits(view(500.0, a, unknown), unknown), "plenty free, but the need is a guess"


def test_a_short_reading_falls_back_to_declared_memory() -> None:
    """NVML counts every process on the GPU; the declared budget only the group's. A short
    reading does not veto what the declared budget allows (the operator's budget wins)."""
    t = model("t", BackendState.ASLEEP, memory_gib=30, asleep_memory_gib=1, queue=(0.0,))
    a = model("a", BackendState.READY, memory_gib=30, asleep_memory_gib=1, ready_since=0.0)
    assert fits(view(5.0, a, t, memory_gib=70), t)
    assert not fits(view(5.0, a, t, memory_gib=50), t)


def test_wake_first_on_a_measured_reading() -> None:
    t = model("t", BackendState.ASLEEP, wake_gib=20, queue=(0.0,))
    a = model("a", BackendState.READY, ready_since=0.0, last_used=0.0)
    d = decide(view(40.0, a, t), now=10.0)
    assert (d.target, d.victims, d.wake_first, d.reason) == ("t", ("a",), True, "memory_fits")
    d = decide(view(10.0, a, t), now=10.0)
    assert (d.wake_first, d.reason) == (False, "max_wait")
