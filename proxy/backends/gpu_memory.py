"""Free GPU memory as NVML reads it, for the policy's wake-first decision.

Optional: needs the `nvml` extra (nvidia-ml-py) and `gpus[].nvml_device`. Without either the
policy decides on declared footprints only (`memory_gib`). Every NVML error reads as "unknown"
(None), never as free memory: the policy does not wake on a guess.

State: each GpuMemory owns its NVML handle; `open_gpu_memory` initialises NVML once per probe
(NVML counts its own init calls, so several probes are fine). Nothing module-level.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any, Protocol

from proxy.config import GpuConfig

log = logging.getLogger(__name__)
GIB = 1024**3


class GpuMemory(Protocol):
    def free_gib(self) -> float | None:
        """Free memory of the group's GPU now, in GiB; None when it cannot be read."""
        ...


class NvmlMemory:
    def __init__(self, nvml: Any, device: int | str) -> None:
        self._nvml = nvml
        if isinstance(device, int):
            self._handle = nvml.nvmlDeviceGetHandleByIndex(device)
        else:
            self._handle = nvml.nvmlDeviceGetHandleByUUID(device)
        self.device = device

    def free_gib(self) -> float | None:
        try:
            free = self._nvml.nvmlDeviceGetMemoryInfo(self._handle).free
        except self._nvml.NVMLError as exc:  # a lost GPU, a driver reset: unknown
            log.warning("NVML could not read GPU %s's memory: %s", self.device, exc)
            return None
        return float(free) / GIB if isinstance(free, int) and free >= 0 else None


def open_gpu_memory(gpu: GpuConfig) -> GpuMemory | None:
    """An NVML probe for `gpu`, or None (no `nvml_device`, no nvidia-ml-py, no driver)."""
    if gpu.nvml_device is None:
        return None
    try:
        nvml = importlib.import_module("pynvml")  # nvidia-ml-py; untyped, hence Any
    except ImportError:
        log.warning(
            "GPU group %s names nvml_device but nvidia-ml-py is not installed "
            "(pip install 'vllm-switch[nvml]'): deciding on declared memory only",
            gpu.name,
        )
        return None
    try:
        nvml.nvmlInit()
        return NvmlMemory(nvml, gpu.nvml_device)
    except nvml.NVMLError as exc:
        log.warning("GPU group %s: NVML unavailable (%s): declared memory only", gpu.name, exc)
        return None
