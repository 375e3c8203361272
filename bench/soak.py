"""Soak: many requests against three emulated models on one fake GPU, with faults and disconnects.

The proxy runs as its own process (`vllm-switch serve`) supervising three emulators (so crashed
or wedged backends are restarted); a load of concurrent clients sends streaming and
non-streaming requests, some clients give up mid-request, and every so often a backend's next
wake fails like a CUDA OOM or its engine dies. Reported: unanswered requests (goal 0), the
outcome breakdown, leftovers after the load (in-flight, queued, backend slots, proxy file
descriptors), proxy RSS at start and end (goal < 10 % growth), switches and restarts.

    python3 bench/soak.py --requests 20000 --minutes 10 --out bench/results/soak.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import yaml

from proxy.emulator.launcher import emulate_command, emulator_argv

MODELS = ("model-a", "model-b", "model-c")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def sockets_by_peer(pid: int, backend_ports: set[int]) -> dict[str, int]:
    """The process's TCP sockets: listening, to a backend, or other (clients), from /proc/net."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            link = os.readlink(fd)
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    kinds: Counter[str] = Counter()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[9] not in inodes:
                continue
            remote = int(cols[2].rsplit(":", 1)[1], 16)
            state = (
                "listening"
                if cols[3] == "0A"
                else "to_backend"
                if remote in backend_ports
                else "other"
            )
            kinds[state] += 1
    return dict(kinds)


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def config(tmp: Path, log_level: str) -> tuple[dict[str, Any], dict[str, str]]:
    models, urls = [], {}
    for name in MODELS:
        port = free_port()
        urls[name] = f"http://127.0.0.1:{port}"
        models.append(
            {
                "name": name,
                "url": urls[name],
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
    cfg = {
        "host": "127.0.0.1",
        "port": 0,
        "gpus": [{"name": "g0", "max_awake": 2}],
        "models": models,
        "logging": {"format": "json", "level": log_level},
        "limits": {"queue_timeout_s": 30},
    }
    return cfg, urls


async def client(
    c: httpx.AsyncClient,
    rng: random.Random,
    stop: asyncio.Event,
    budget: list[int],
    out: Counter[str],
    latency: list[float],
) -> None:
    model = rng.choice(MODELS)
    while not stop.is_set() and budget[0] > 0:
        budget[0] -= 1
        if rng.random() < 0.1:  # hop to another model now and then: switches, not constant thrash
            model = rng.choice(MODELS)
        body = {
            "model": model,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": rng.choice([1, 8, 32]),
            "ignore_eos": True,
            "stream": rng.random() < 0.5,
        }
        t0 = time.monotonic()
        try:
            async with asyncio.timeout(rng.uniform(0.001, 0.05) if rng.random() < 0.05 else 60):
                if body["stream"]:
                    async with c.stream("POST", "/v1/chat/completions", json=body) as r:
                        async for _ in r.aiter_bytes():
                            pass
                        out[str(r.status_code)] += 1
                else:
                    r = await c.post("/v1/chat/completions", json=body)
                    out[str(r.status_code)] += 1
            latency.append(time.monotonic() - t0)
        except TimeoutError:
            out["client_gave_up" if time.monotonic() - t0 < 1 else "unanswered"] += 1
        except httpx.HTTPError as exc:
            out[f"error:{type(exc).__name__}"] += 1


async def chaos(
    urls: dict[str, str], rng: random.Random, stop: asyncio.Event, out: Counter[str]
) -> None:
    async with httpx.AsyncClient(timeout=5) as c:
        while not stop.is_set():
            await asyncio.sleep(rng.uniform(2, 6))
            name = rng.choice(MODELS)
            fault = {"add": ["wake_oom"]} if rng.random() < 0.5 else {"die": True}
            try:
                await c.post(f"{urls[name]}/_emulator/faults", json=fault)
                out["wake_oom" if "add" in fault else "engine_death"] += 1
            except httpx.HTTPError:
                out["fault_target_down"] += 1


async def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="vllm-switch-soak-"))
    cfg, urls = config(tmp, args.log_level)
    (tmp / "config.yaml").write_text(yaml.safe_dump(cfg))
    log = (tmp / "proxy.log").open("w")
    proxy = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        "serve",
        "--config",
        str(tmp / "config.yaml"),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, **dict(kv.split("=", 1) for kv in args.proxy_env)},
    )
    try:
        deadline = time.monotonic() + 60
        while "listening on" not in (first := (tmp / "proxy.log").read_text().split("\n", 1)[0]):
            if proxy.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError((tmp / "proxy.log").read_text())
            await asyncio.sleep(0.05)
        url = first.split()[-1]
        async with httpx.AsyncClient(
            base_url=url, timeout=60, limits=httpx.Limits(max_connections=args.concurrency * 2)
        ) as c:
            while (await c.get("/ready")).status_code != 200:  # noqa: ASYNC110 - polling a remote
                await asyncio.sleep(0.1)
            rss_start, fds_start = rss_kib(proxy.pid), open_fds(proxy.pid)
            outcomes: Counter[str] = Counter()
            faults: Counter[str] = Counter()
            latency: list[float] = []
            stop = asyncio.Event()
            budget = [args.requests]
            rng = random.Random(args.seed)
            t0 = time.monotonic()
            chaos_task = asyncio.create_task(
                chaos(urls, random.Random(args.seed + 1), stop, faults)
                if args.faults
                else stop.wait()
            )
            samples: list[dict[str, float]] = []

            async def sample() -> None:  # RSS and descriptors over time: a plateau is not a leak
                while not stop.is_set():
                    samples.append(
                        {
                            "t_s": round(time.monotonic() - t0, 1),
                            "rss_kib": rss_kib(proxy.pid),
                            "fds": open_fds(proxy.pid),
                            "threads": threads(proxy.pid),
                        }
                    )
                    await asyncio.sleep(args.sample_s)

            sampler = asyncio.create_task(sample())
            clients = [
                asyncio.create_task(
                    client(c, random.Random(rng.random()), stop, budget, outcomes, latency)
                )
                for _ in range(args.concurrency)
            ]
            await asyncio.wait(clients, timeout=args.minutes * 60)
            stop.set()
            await asyncio.gather(*clients, chaos_task, sampler, return_exceptions=True)
            elapsed = time.monotonic() - t0
            await asyncio.sleep(5)  # let closes and restarts settle before measuring leftovers
            status = (await c.get("/admin/status")).json()
            metrics = (await c.get("/metrics")).text
        switches = sum(
            float(line.split()[-1])
            for line in metrics.splitlines()
            if line.startswith("vllm_switch_switches_total{")
        )
        restarts = sum(
            float(line.split()[-1])
            for line in metrics.splitlines()
            if line.startswith("vllm_switch_restarts_total{")
        )
        backends_running = {}
        async with httpx.AsyncClient(timeout=5) as e:
            for name, u in urls.items():
                try:
                    backends_running[name] = (await e.get(f"{u}/_emulator/stats")).json()["state"][
                        "running"
                    ]
                except (httpx.HTTPError, ValueError, KeyError):  # down, dying or restarting
                    backends_running[name] = None
        rss_end, fds_end = rss_kib(proxy.pid), open_fds(proxy.pid)
        ports = {int(u.rsplit(":", 1)[1]) for u in urls.values()}
        sockets_end = sockets_by_peer(proxy.pid, ports)
        ledger = json.loads((tmp / "ledger" / "soak.json").read_text())
        sent = sum(outcomes.values())
        return {
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "host_cpus": os.cpu_count(),
            "proxy_env": args.proxy_env,
            "requests_sent": sent,
            "seconds": round(elapsed, 1),
            "requests_per_s": round(sent / elapsed, 1),
            "outcomes": dict(outcomes),
            "unanswered": outcomes.get("unanswered", 0),
            "faults_injected": dict(faults),
            "switches": switches,
            "restarts": restarts,
            "latency_p50_s": sorted(latency)[len(latency) // 2] if latency else None,
            "latency_p99_s": sorted(latency)[int(len(latency) * 0.99)] if latency else None,
            "leftovers": {
                "inflight": sum(m["inflight"] for m in status["models"]),
                "queued": sum(m["queue_depth"] for m in status["models"]),
                "backend_running": backends_running,
                "proxy_fds_start": fds_start,
                "proxy_fds_end": fds_end,
                "proxy_sockets_end": sockets_end,
            },
            "rss_kib": {
                "start": rss_start,
                "end": rss_end,
                "growth_pct": round(100 * (rss_end - rss_start) / rss_start, 1),
            },
            "samples": samples,
            "ledger": {
                "oom_events": ledger["oom_events"],
                "peak_used_gib": round(ledger["peak_used_bytes"] / 1024**3, 1),
            },
            "states_at_end": {m["name"]: m["state"] for m in status["models"]},
        }
    finally:
        os.killpg(proxy.pid, signal.SIGTERM)
        await proxy.wait()
        log.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=20000)
    p.add_argument("--minutes", type=float, default=10)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--sample-s", type=float, default=15)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument(
        "--log-level", default="warning", help="the proxy's (info: one line per request)"
    )
    p.add_argument(
        "--no-faults", dest="faults", action="store_false", help="no injected OOMs or deaths"
    )
    p.add_argument(
        "--proxy-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the proxy process (e.g. MALLOC_ARENA_MAX=1)",
    )
    args = p.parse_args()
    report = asyncio.run(run(args))
    text = json.dumps(report, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)  # noqa: T201


if __name__ == "__main__":
    main()
