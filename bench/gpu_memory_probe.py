"""The GPU's used memory over time, for benchmarks: NVML (nvidia-ml-py) where it loads, else
`nvidia-smi`, else nothing (an emulated run: every reading is None). `MemorySampler` owns one
background thread that appends (seconds since start, used MiB) until stopped; nothing else.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any


def used_mib_reader(index: int = 0) -> Callable[[], float | None]:
    """A function that reads GPU `index`'s used memory in MiB (None when there is no GPU)."""
    try:
        import pynvml  # type: ignore[import-not-found]

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)

        def nvml() -> float | None:
            return float(pynvml.nvmlDeviceGetMemoryInfo(handle).used) / 2**20

        return nvml
    except Exception:  # noqa: BLE001 - no NVML: try nvidia-smi
        pass

    def smi() -> float | None:
        try:
            out = subprocess.run(
                [
                    "nvidia-smi",
                    f"--id={index}",
                    "--query-gpu=memory.used",
                    "--format=csv,noheader,nounits",
                ],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            ).stdout
            return float(out.strip().splitlines()[0])
        except (OSError, subprocess.SubprocessError, ValueError, IndexError):
            return None

    return smi


class MemorySampler:
    def __init__(self, every_s: float = 0.1) -> None:
        self.read = used_mib_reader()
        self.every_s = every_s
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.t0 = 0.0

    def start(self) -> MemorySampler:
        self.t0 = time.monotonic()
        self._stop.clear()
        self.samples = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            used = self.read()
            if used is not None:
                self.samples.append((round(time.monotonic() - self.t0, 3), used))
            self._stop.wait(self.every_s)

    def stop(self) -> list[tuple[float, float]]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)
        return self.samples


def release(samples: list[tuple[float, float]], share: float = 0.9) -> dict[str, Any]:
    """How much memory a run of samples gave back and when: `freed_mib` from the first reading
    to the lowest, `released_s` when `share` of it was gone (None without readings)."""
    if len(samples) < 2:
        return {"freed_mib": None, "released_s": None, "samples": len(samples)}
    first = samples[0][1]
    lowest = min(used for _, used in samples)
    freed = first - lowest
    at = next((t for t, used in samples if first - used >= share * freed), None)
    return {"freed_mib": freed, "released_s": at if freed > 0 else None, "samples": len(samples)}
