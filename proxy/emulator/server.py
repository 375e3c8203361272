"""Process lifecycle of one emulated vLLM server: start-up phases, listening, death, exit.

Start-up mirrors vLLM 0.26.0: the port is not listened on until the engine is ready
(clients get "connection refused"); the free-memory check runs early and a failure exits 1
without ever listening; while the engine "profiles" memory, another process freeing memory on
the same GPU makes it fail with vLLM's profiling AssertionError. The memory this process holds
is its ledger entry, which disappears with the process.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys

import uvicorn

from proxy.emulator.app import create_app
from proxy.emulator.engine import Engine
from proxy.emulator.ledger import GpuLedger, LedgerDirError
from proxy.emulator.metrics import EngineMetrics
from proxy.emulator.protocol import VLLM_VERSION
from proxy.emulator.settings import GIB, EmulatorSettings, SettingsError, parse_settings

log = logging.getLogger("vllm.emulator")
DEATH_EXIT_DELAY_S = 5.0


class StartupError(Exception):
    """Start-up failed the way vLLM's does; the message is what vLLM prints."""


def _dev_mode() -> bool:
    """vLLM parses VLLM_SERVER_DEV_MODE with int(): "true" is an error, not a yes."""
    return bool(int(os.environ.get("VLLM_SERVER_DEV_MODE", "0")))


async def _start_engine(settings: EmulatorSettings, ledger: GpuLedger) -> None:
    t = settings.timings.startup_s
    await asyncio.sleep(0.3 * t)  # imports, argument parsing, process spawn
    if settings.kv_bytes <= 0:
        raise StartupError(
            "ValueError: No available memory for the cache blocks. Try increasing "
            "`gpu_memory_utilization` when initializing the engine."
        )
    free = ledger.reserve(settings.awake_bytes)
    if free is not None:
        total = settings.total_bytes
        raise StartupError(
            f"ValueError: Free memory on device cuda:0 ({free / GIB:.2f}/{total / GIB:.2f} GiB) on "
            f"startup is less than desired GPU memory utilization ({settings.gpu_memory_utilization}, "
            f"{settings.awake_bytes / GIB:.2f} GiB). Decrease GPU memory utilization or reduce GPU "
            "memory used by other processes."
        )
    others_before = ledger.others_used()
    await asyncio.sleep(0.4 * t)  # weight load + memory profiling
    others_now = ledger.others_used()
    if others_now < others_before:
        free_before = (settings.total_bytes - others_before - settings.awake_bytes) / GIB
        free_now = (settings.total_bytes - others_now - settings.awake_bytes) / GIB
        raise StartupError(
            f"AssertionError: Error in memory profiling. Initial free memory {free_before:.2f} GiB, "
            f"current free memory {free_now:.2f} GiB. This happens when other processes sharing "
            "the same container release GPU memory while vLLM is profiling during initialization."
        )
    await asyncio.sleep(0.3 * t)  # KV cache allocation, CUDA graph capture


async def run(settings: EmulatorSettings, *, dev_mode: bool) -> int:
    try:
        ledger = GpuLedger(
            settings.ledger_dir,
            settings.gpu_name,
            settings.total_bytes,
            label=settings.served_model_names[0],
        )
    except (LedgerDirError, OSError) as exc:  # one line, not a traceback
        sys.stderr.write(f"vllm-switch emulate: {exc}\n")
        return 1
    log.info("vLLM server version %s, serving model %s (emulated)", VLLM_VERSION, settings.model)
    try:
        await _start_engine(settings, ledger)
    except StartupError as exc:
        ledger.release_all()
        sys.stderr.write(
            f"{exc}\nRuntimeError: Engine core initialization failed. See root cause above. "
            "Failed core proc(s): {'EngineCore_DP0': 1}\n"
        )
        return 1
    metrics = EngineMetrics(settings.served_model_names[0], enabled=not settings.disable_log_stats)
    server: uvicorn.Server | None = None
    died = asyncio.Event()

    def on_death(reason: str) -> None:
        died.set()
        if os.environ.get("VLLM_KEEP_ALIVE_ON_ENGINE_DEATH", "0") != "1":
            asyncio.get_running_loop().call_later(DEATH_EXIT_DELAY_S, _stop)

    def _stop() -> None:
        if server is not None:
            server.should_exit = True

    engine = Engine(settings, ledger=ledger, metrics=metrics, on_death=on_death)
    app = create_app(engine, ledger=ledger, metrics=metrics, dev_mode=dev_mode)
    if dev_mode:
        log.warning(
            "SECURITY WARNING: Development endpoints are enabled! This should NOT be used in production!"
        )
    sock = _listener(settings.host, settings.port, nodelay=settings.nodelay)
    config = uvicorn.Config(
        app,
        log_level="warning",
        timeout_keep_alive=int(os.environ.get("VLLM_HTTP_TIMEOUT_KEEP_ALIVE", "5")),
        timeout_graceful_shutdown=2,
        lifespan="off",
    )
    server = uvicorn.Server(config)
    port = sock.getsockname()[1]
    log.info("Starting vLLM server on http://%s:%d", settings.host, port)
    if settings.port_file is not None:  # the socket already listens: connections queue until served
        tmp = settings.port_file.with_suffix(".tmp")
        tmp.write_text(str(port))
        tmp.replace(settings.port_file)
    try:
        await server.serve(sockets=[sock])
    finally:
        ledger.release_all()
    return 1 if died.is_set() else 0


def _listener(host: str, port: int, *, nodelay: bool) -> socket.socket:
    """As vLLM 0.26 binds (proto 0: asyncio leaves Nagle on, small chunks may bunch up), or with
    proto IPPROTO_TCP, whose accepted connections asyncio sets to TCP_NODELAY."""
    if not nodelay:
        return socket.create_server((host, port), reuse_port=False)
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen()
    except OSError:
        sock.close()
        raise
    return sock


def main(argv: list[str]) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(levelname)s %(asctime)s [%(name)s] %(message)s"
    )
    try:
        dev_mode = _dev_mode()
    except ValueError as exc:
        sys.stderr.write(f"ValueError: {exc} (VLLM_SERVER_DEV_MODE must be an integer)\n")
        return 1
    try:
        settings = parse_settings(argv)
    except SettingsError as exc:
        sys.stderr.write(f"{exc}\n")
        return 1
    if not settings.api_keys and os.environ.get("VLLM_API_KEY"):
        from dataclasses import replace

        settings = replace(settings, api_keys=(os.environ["VLLM_API_KEY"],))
    return asyncio.run(run(settings, dev_mode=dev_mode))
