"""The scheduling benchmark's three vLLM servers: emulators it starts, or servers attached with
`--backends` (bench/attach.py), and the counters read from them and from the proxy.

`Servers` is what a run needs to know of them: served names, URLs and, for emulators only, the
fake GPU's ledger. The emulators are owned by bench/scheduling.py's `main` (started here, stopped
there by PID); attached servers belong to whoever started them and are never stopped. Stateless
otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.attach import Backends
from proxy.emulator.launcher import EmulatorProcess, bootstrap_sequentially, emulator_argv

EMULATED = ("model-a", "model-b", "model-c")  # the emulators' served names
GPU, GPU_GIB, UTIL = "sched", 80.0, 0.6  # 48 GiB awake each: one fits, two do not
EMULATOR_ONLY = ("requests_queued_while_asleep", "oom_events")  # invariants 1 and 2


@dataclass(frozen=True)
class Servers:
    names: tuple[str, ...]  # served model names, in the config's order
    urls: tuple[str, ...]
    ledger: Path | None  # the fake GPU's ledger; None: real servers, invariants not measured

    @classmethod
    def attached(cls, backends: Backends) -> Servers:
        return cls(tuple(n for n, _ in backends), tuple(u for _, u in backends), None)

    @classmethod
    def emulated(cls, work: Path, emulators: list[EmulatorProcess]) -> Servers:
        return cls(EMULATED, tuple(e.url for e in emulators), work / "ledger" / f"{GPU}.json")


def start_emulators(work: Path, args: argparse.Namespace) -> list[EmulatorProcess]:
    """One after another, each put to sleep before the next starts; start-up is not measured."""
    extra = ["--emu-nodelay"] if args.emu_nodelay else []
    argv = {
        name: emulator_argv(
            name,
            ledger_dir=work / "ledger",
            gpu=GPU,
            gpu_memory_gib=GPU_GIB,
            util=UTIL,
            weights_gib=args.weights_gib,
            timing="h100",
            startup_s=0,
            extra=extra,
        )
        for name in EMULATED
    }
    return bootstrap_sequentially(work, list(argv.items()))


async def counters(c: httpx.AsyncClient, servers: Servers) -> dict[str, float]:
    """The proxy's switch counters, its decisions by reason (`decision:REASON`), the emulators'
    requests that reached a sleeping engine, and the fake GPU's failed wakes (the last two
    absent on attached servers: not measured)."""
    out = dict.fromkeys(("switches", "switches_not_ok", "switching_s"), 0.0)
    for line in (await c.get("/metrics")).text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, value = line.split("{", 1)[0], float(line.split()[-1])
        if name == "vllm_switch_switches_total":
            out["switches" if 'result="ok"' in line else "switches_not_ok"] += value
        elif name == "vllm_switch_switching_seconds_total":
            out["switching_s"] += value
        elif name == "vllm_switch_decisions_total":
            reason = line.split('reason="', 1)[1].split('"', 1)[0]
            out[f"decision:{reason}"] = out.get(f"decision:{reason}", 0.0) + value
    if servers.ledger is None:
        return out
    out["requests_queued_while_asleep"] = 0.0
    for u in servers.urls:
        stats = (await c.get(f"{u}/_emulator/stats")).json()["stats"]
        out["requests_queued_while_asleep"] += stats.get("requests_queued_while_asleep", 0)
    ledger = json.loads(await asyncio.to_thread(servers.ledger.read_text))
    out["oom_events"] = float(ledger["oom_events"])
    return out
