"""The servers of bench/evidence.py: which ones, with which flags, started at once and watched.

`Fleet` owns the server processes it started (each in a session of its own, stopped by its
group's id, never by name) and their logs; `forget` drops one that another owner ended or
took over. On the GPU they are vLLM 0.26.0; with `emulate`, `vllm-switch emulate` with the
same flags (unknown ones ignored) on one fake 139 GiB GPU.
"""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from servers import Server, ServerSpec, server_argv, start

SEED_FLAGS = ("--enable-sleep-mode", "--no-enable-prefix-caching", "--max-model-len", "2048")
TINY = ("--max-model-len", "512")
API_KEY = "sk-conformance"


@dataclass(frozen=True)
class Def:
    name: str
    key: str  # which checkpoint (bench/evidence.py SHAPES)
    served: tuple[str, ...]
    util: float
    flags: tuple[str, ...]
    dev: bool = True
    emu_weights_gib: float = 1.1


BENCH = (
    Def("model-a", "a", ("model-a",), 0.08, SEED_FLAGS),
    Def("model-b", "b", ("model-b",), 0.08, SEED_FLAGS, emu_weights_gib=2.5),
    Def("model-c", "c", ("model-c",), 0.12, SEED_FLAGS, emu_weights_gib=7.5),
)
CONFORMANCE = (  # the conformance suite's servers (docs/conformance.md), one tiny checkpoint
    Def("conf-dev", "a", ("tiny", "tiny-alias"), 0.10, ("--enable-sleep-mode", *TINY)),
    Def(
        "conf-nodev",
        "a",
        ("tiny", "tiny-alias"),
        0.06,
        (*TINY, "--enforce-eager", "--api-key", API_KEY),
        dev=False,
    ),
    Def(
        "conf-pooling",
        "a",
        ("tiny-embed",),
        0.06,
        (
            "--runner",
            "pooling",
            "--convert",
            "embed",
            "--enable-sleep-mode",
            "--enforce-eager",
            *TINY,
        ),
    ),
    Def(
        "conf-tools",
        "t",
        ("tiny-tools",),
        0.06,
        (
            "--enable-auto-tool-choice",
            "--tool-call-parser",
            "hermes",
            "--enable-sleep-mode",
            "--enforce-eager",
            *TINY,
        ),
    ),
)
KV = re.compile(r"Available KV cache memory: [0-9.]+ GiB")


class Fleet:
    def __init__(self, server: str, paths: dict[str, str], logdir: Path, *, emulate: bool) -> None:
        self.server = server
        self.paths = paths
        self.logdir = logdir
        self.emulate = emulate
        self.defs: dict[str, Def] = {}
        self.running: dict[str, Server] = {}
        self.attempts: dict[str, int] = {}
        self.started_at: dict[str, float] = {}

    def common(self, d: Def) -> list[str]:
        extra = list(d.flags)
        if self.emulate:
            extra += [
                *("--emu-ledger-dir", str(self.logdir / "ledger"), "--emu-gpu", "ev"),
                *("--emu-gpu-memory-gib", "139", "--emu-startup-s", "2"),
                *("--emu-weights-gib", str(d.emu_weights_gib)),
            ]
        return extra

    def spec(self, d: Def) -> ServerSpec:
        return ServerSpec(d.name, self.paths[d.key], d.util, [], served=d.served)

    def launch(self, d: Def) -> None:
        self.defs[d.name] = d
        self.attempts[d.name] = self.attempts.get(d.name, 0) + 1
        self.started_at[d.name] = time.monotonic()
        self.running[d.name] = start(
            self.spec(d), self.server, self.common(d), self.logdir, dev_mode=d.dev
        )

    def start(self, defs: list[Def]) -> None:
        for d in defs:
            self.launch(d)

    def wait_ready(self, timeout_s: float) -> dict[str, dict[str, Any]]:
        """Every server's seconds to /health 200; one that exited during its start (a
        neighbour's profiling can upset it) is started once more, alone, after the others."""
        out: dict[str, dict[str, Any]] = {}
        retry = []
        for name, s in list(self.running.items()):
            try:
                s.wait_ready(max(1.0, timeout_s - (time.monotonic() - self.started_at[name])))
                out[name] = {"ready_s": round(time.monotonic() - self.started_at[name], 1)}
            except (RuntimeError, TimeoutError) as exc:
                out[name] = {"ready_s": None, "error": str(exc)}
                retry.append(name)
        for name in retry:
            self.running.pop(name).stop(10)
            self.launch(self.defs[name])
            try:
                self.running[name].wait_ready(timeout_s)
                out[name] = {
                    "ready_s": round(time.monotonic() - self.started_at[name], 1),
                    "retried": True,
                }
            except (RuntimeError, TimeoutError) as exc:
                out[name] = {"ready_s": None, "error": str(exc), "retried": True}
        for name, s in self.running.items():
            found = KV.findall(s.log.read_text(errors="replace"))
            out[name] |= {"port": s.port, "kv_cache": found[-1] if found else None}
        return out

    def url(self, name: str) -> str:
        return self.running[name].url

    def conformance_env(self) -> dict[str, str]:
        return {
            "VLLM_SWITCH_TARGET_URL": self.url("conf-dev"),
            "VLLM_SWITCH_TARGET_NODEV_URL": self.url("conf-nodev"),
            "VLLM_SWITCH_TARGET_API_KEY": API_KEY,
            "VLLM_SWITCH_TARGET_POOLING_URL": self.url("conf-pooling"),
            "VLLM_SWITCH_TARGET_TOOLS_URL": self.url("conf-tools"),
        }

    def record_args(self) -> list[str]:
        return [
            *("--dev", self.url("conf-dev"), "--pooling", self.url("conf-pooling")),
            *("--tools", self.url("conf-tools")),
        ]

    def gpu_gib(self) -> float:
        if self.emulate:
            return 139.0
        try:
            mib = subprocess.run(
                ["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
                timeout=20,
                check=True,
            ).stdout.split()[0]
            return float(mib) / 1024
        except (OSError, subprocess.SubprocessError, ValueError, IndexError):
            return 80.0

    def model_entry(self, d: Def, name: str, level: int) -> dict[str, Any]:
        """One model of the faults stage's config: the same command line that started it."""
        s = self.running[d.name]
        argv = server_argv(self.spec(d), self.server, self.common(d), s.port)
        return {"name": name, "served": d.served[0], "port": s.port, "level": level, "argv": argv}

    def forget(self, names: list[str]) -> None:
        for n in names:
            self.running.pop(n, None)

    def stop(self, names: list[str]) -> None:
        for n in names:
            if n in self.running:
                self.running.pop(n).stop(30)

    def stop_all(self) -> None:
        self.stop(list(self.running))
