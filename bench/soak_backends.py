"""The soak's three backends: emulators the proxy supervises, or servers attached with
`--backends` (bench/attach.py), and what is read from them after the load.

Emulated (the default): each model has a `command` the proxy starts, watches and restarts, on a
fake 80 GiB GPU whose ledger is in the soak's temporary folder. Attached: URL-only models, so
the proxy supervises and restarts nothing, and the servers belong to whoever started them;
nothing emulator-only (`/_emulator/stats`, the ledger) is read from them - those fields are
None in the report. Stateless.
"""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

import httpx

from bench.attach import Backends
from proxy.emulator.launcher import emulate_command, emulator_argv

MODELS = ("model-a", "model-b", "model-c")  # the emulated models' names


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proxy_config(models: list[dict[str, Any]], max_awake: int, log_level: str) -> dict[str, Any]:
    return {
        "host": "127.0.0.1",
        "port": 0,
        "gpus": [{"name": "g0", "max_awake": max_awake}],
        "models": models,
        "logging": {"format": "json", "level": log_level},
        "limits": {"queue_timeout_s": 30},
    }


def emulated_config(
    tmp: Path, max_awake: int, log_level: str, backend_host: str
) -> tuple[dict[str, Any], dict[str, str]]:
    """The config of a proxy that supervises three emulators, and their URLs (for faults)."""
    models, urls = [], {}
    for name in MODELS:
        port = free_port()
        urls[name] = f"http://127.0.0.1:{port}"  # the emulators listen on 127.0.0.1
        models.append(
            {
                "name": name,
                "url": f"http://{backend_host}:{port}",  # the proxy's URL: localhost is a name
                "gpu": "g0",
                "log_file": str(tmp / f"{name}.log"),
                "restart": {"backoff_s": 0.5, "max_restarts": 1000},
                "command": emulate_command(
                    emulator_argv(
                        name,
                        ledger_dir=tmp / "ledger",
                        port=port,
                        gpu="soak",
                        gpu_memory_gib=80,
                        util=0.45,
                        timing="instant",
                        startup_s=0.2,
                        extra=["--emu-itl-s", "0.001", "--emu-wake-weights-l1-s", "0.02"],
                    )
                ),
            }
        )
    return proxy_config(models, max_awake, log_level), urls


def attached_config(
    backends: Backends, max_awake: int, log_level: str
) -> tuple[dict[str, Any], dict[str, str]]:
    """The config of a proxy attached to servers already running (no `command`), their URLs."""
    models = [{"name": name, "url": url, "gpu": "g0"} for name, url in backends]
    return proxy_config(models, max_awake, log_level), dict(backends)


async def emulator_readings(
    urls: dict[str, str], ledger: Path | None
) -> tuple[dict[str, bool | None] | None, dict[str, Any] | None]:
    """Whether each emulator's engine runs, and the fake GPU's OOMs and peak; (None, None) for
    attached servers (`ledger` None): not measured."""
    if ledger is None:
        return None, None
    running: dict[str, bool | None] = {}
    async with httpx.AsyncClient(timeout=5) as e:
        for name, u in urls.items():
            try:
                running[name] = (await e.get(f"{u}/_emulator/stats")).json()["state"]["running"]
            except (httpx.HTTPError, ValueError, KeyError):  # down, dying or restarting
                running[name] = None
    book = json.loads(await asyncio.to_thread(ledger.read_text))
    return running, {
        "oom_events": book["oom_events"],
        "peak_used_gib": round(book["peak_used_bytes"] / 1024**3, 1),
    }
