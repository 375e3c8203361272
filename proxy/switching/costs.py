"""SwitchCosts: what a switch between two given models cost, and how much GPU memory each
model's wake took - the measured inputs of the policy that belong to a pair or to a GPU reading.

Owned by the SwitchRunner: it is the only writer, after each switch it ran, under the group's
lock. Demand.view reads it into the policy's snapshot. The per-model sleep and wake costs live
on each Backend (`Backend.measured`), where the status page reads them.
"""

from __future__ import annotations

from proxy.backends.backend import ewma


class SwitchCosts:
    def __init__(self) -> None:
        self._pairs: dict[tuple[str, str], float] = {}  # (victim, target): sleep + wake + warm-up
        self._wake_gib: dict[str, float] = {}  # the most free GPU memory one wake took

    def switched(self, victim: str, target: str, seconds: float) -> None:
        """One sleep-first switch from `victim` alone to `target` (drain excluded)."""
        key = (victim, target)
        self._pairs[key] = ewma(self._pairs.get(key), seconds)

    def woke(self, name: str, took_gib: float) -> None:
        """A wake (or start) of `name` took this much free memory, as NVML measured it. The
        largest is kept: a wake-first decision must not trust a lucky reading."""
        self._wake_gib[name] = max(took_gib, self._wake_gib.get(name, 0.0))

    def pairs(self, members: list[str]) -> dict[tuple[str, str], float]:
        return {k: v for k, v in self._pairs.items() if k[0] in members and k[1] in members}

    def wake_gib(self, name: str) -> float | None:
        return self._wake_gib.get(name)
