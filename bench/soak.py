"""Soak: many requests against three emulated models on one fake GPU, with faults and disconnects.

The proxy runs as its own process (`vllm-switch serve`) supervising three emulators (so crashed
or wedged backends are restarted); a load of concurrent clients sends streaming and
non-streaming requests, some clients give up mid-request, and every so often a backend's next
wake fails like a CUDA OOM or its engine dies. Reported: unanswered requests (goal 0), the
outcome breakdown, leftovers after the load (in-flight, queued, backend slots, proxy file
descriptors), proxy RSS at start and end (goal < 10 % growth), switches and restarts.

    python3 bench/soak.py --requests 20000 --minutes 10 --out bench/results/soak.json
    python3 bench/soak.py --requests 0 --minutes 30 ...      # time-bound: load for 30 minutes

Every `--sample-s` the proxy's memory is read from /proc (`bench/rss_proc.py`: RSS, anonymous,
[heap], glibc thread arenas, other anonymous mappings, threads). RSS growth is reported from the
first sample (taken when /ready answers, before any load) and from the first sample at or after
`--warmup-s` of load. `--probe` runs the proxy under `bench/rss_probe.py` and asks it every
`--probe-s` for glibc's and pymalloc's counters and the gc objects by type (`--tracemalloc`: and
tracemalloc's growth by line); `--trim-at-end` has it call malloc_trim(0) after the last probe.

On real vLLM (attach mode, bench/attach.py): `--backends NAME=URL,...` names vLLM servers already
running (dev mode, `--enable-sleep-mode`), each NAME its served model name; the proxy attaches
to them as URL-only models (nothing supervised or restarted) with `--max-awake` (default 1 there,
2 on the emulated GPU). Faults are emulator-only: `--no-faults` is implied and `--faults` is
refused. The request accounting, leftovers and RSS samples stay; the emulator's engine states
(`leftovers.backend_running`) and ledger are null (not measured).

    B=model-a=http://127.0.0.1:8101,model-b=http://127.0.0.1:8102,model-c=http://127.0.0.1:8103
    python3 bench/soak.py --backends $B --requests 0 --minutes 10 --out RESULT.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runs from a checkout without an install

from bench.attach import parse_backends  # noqa: E402
from bench.rss_proc import memory  # noqa: E402
from bench.soak_backends import attached_config, emulated_config, emulator_readings  # noqa: E402
from bench.soak_proc import open_fds, sockets_by_peer  # noqa: E402


async def client(
    c: httpx.AsyncClient,
    models: tuple[str, ...],
    rng: random.Random,
    stop: asyncio.Event,
    budget: list[int],
    out: Counter[str],
    latency: list[float],
) -> None:
    model = rng.choice(models)
    while not stop.is_set() and budget[0] > 0:
        budget[0] -= 1
        if rng.random() < 0.1:  # hop to another model now and then: switches, not constant thrash
            model = rng.choice(models)
        body = {
            "model": model,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": rng.choice([1, 8, 32]),
            "ignore_eos": True,
            "stream": rng.random() < 0.5,
        }
        give_up = rng.random() < 0.05
        limit = rng.uniform(0.001, 0.05) if give_up else 60
        # a client that gives up cancels its request mid-way: on a client of its own, because
        # cancellations on the shared one leaked its pool's slots (a 30-minute run stalled on
        # httpx.PoolTimeout after ~19 minutes)
        async with contextlib.AsyncExitStack() as own:
            cc = (
                await own.enter_async_context(httpx.AsyncClient(base_url=c.base_url, timeout=60))
                if give_up
                else c
            )
            t0 = time.monotonic()
            try:
                async with asyncio.timeout(limit):
                    if body["stream"]:
                        async with cc.stream("POST", "/v1/chat/completions", json=body) as r:
                            async for _ in r.aiter_bytes():
                                pass
                            out[str(r.status_code)] += 1
                    else:
                        r = await cc.post("/v1/chat/completions", json=body)
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
            name = rng.choice(list(urls))
            fault = {"add": ["wake_oom"]} if rng.random() < 0.5 else {"die": True}
            try:
                await c.post(f"{urls[name]}/_emulator/faults", json=fault)
                out["wake_oom" if "add" in fault else "engine_death"] += 1
            except httpx.HTTPError:
                out["fault_target_down"] += 1


async def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="vllm-switch-soak-"))
    cfg, urls = (
        attached_config(args.backends, args.max_awake, args.log_level)
        if args.backends
        else emulated_config(tmp, args.max_awake, args.log_level, args.backend_host)
    )
    models = tuple(urls)
    (tmp / "config.yaml").write_text(yaml.safe_dump(cfg))
    log = (tmp / "proxy.log").open("w")
    probe_dir = tmp / "probe"
    probe_dir.mkdir()
    env = {**os.environ, **dict(kv.split("=", 1) for kv in args.proxy_env)}
    root = args.proxy_root or ROOT  # whose `proxy` package the proxy and its emulators run
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    env["RSS_PROBE_ROOT"] = str(root)
    if args.probe:
        env["RSS_PROBE_DIR"] = str(probe_dir)
        env["RSS_PROBE_TRACEMALLOC"] = "1" if args.tracemalloc else "0"
    entry = [str(ROOT / "bench" / "rss_probe.py")] if args.probe else ["-m", "proxy"]
    proxy = await asyncio.create_subprocess_exec(
        sys.executable,
        *entry,
        "serve",
        "--config",
        str(tmp / "config.yaml"),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env=env,
        cwd=root,  # (`-m proxy` looks in the working directory first)
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
            fds_start = open_fds(proxy.pid)
            first_sample = {**memory(proxy.pid), "fds": fds_start, "requests_done": 0}
            outcomes: Counter[str] = Counter()
            faults: Counter[str] = Counter()
            latency: list[float] = []
            stop = asyncio.Event()
            budget = [args.requests or 10**12]  # 0: until --minutes are over
            rng = random.Random(args.seed)
            t0 = time.monotonic()
            chaos_task = asyncio.create_task(
                chaos(urls, random.Random(args.seed + 1), stop, faults)
                if args.faults
                else stop.wait()
            )
            samples: list[dict[str, Any]] = [{"t_s": 0.0, **first_sample}]

            async def sample() -> None:  # RSS and descriptors over time: a plateau is not a leak
                next_probe = 0.0
                while not stop.is_set():
                    await asyncio.sleep(args.sample_s)
                    t = round(time.monotonic() - t0, 1)
                    samples.append(
                        {
                            "t_s": t,
                            **memory(proxy.pid),
                            "fds": open_fds(proxy.pid),
                            "requests_done": sum(outcomes.values()),
                        }
                    )
                    if args.probe and t >= next_probe:
                        proxy.send_signal(signal.SIGUSR2)
                        next_probe = t + args.probe_s

            sampler = asyncio.create_task(sample())
            clients = [
                asyncio.create_task(
                    client(c, models, random.Random(rng.random()), stop, budget, outcomes, latency)
                )
                for _ in range(args.concurrency)
            ]
            await asyncio.wait(clients, timeout=args.minutes * 60)
            stop.set()
            await asyncio.gather(*clients, chaos_task, sampler, return_exceptions=True)
            elapsed = time.monotonic() - t0
            await asyncio.sleep(5)  # let closes and restarts settle before measuring leftovers
        async with httpx.AsyncClient(base_url=url, timeout=30) as c:  # a fresh pool
            status = (await c.get("/admin/status")).json()
            metrics = (await c.get("/metrics")).text
            last_sample = {"t_s": round(time.monotonic() - t0, 1), **memory(proxy.pid)}
            probes = []
            if args.probe:
                for sig, name in [(signal.SIGUSR2, "probe")] + (
                    [(signal.SIGUSR1, "trim")] if args.trim_at_end else []
                ):
                    before = len(list(probe_dir.glob(f"{name}-*.json")))
                    proxy.send_signal(sig)
                    deadline = time.monotonic() + 30
                    while len(list(probe_dir.glob(f"{name}-*.json"))) == before:
                        if time.monotonic() > deadline:
                            break
                        await asyncio.sleep(0.2)
                probes = [
                    {"file": f.name, **json.loads(f.read_text())}
                    for f in sorted(probe_dir.iterdir(), key=lambda f: f.stat().st_mtime)
                ]
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
        ledger_path = None if args.backends else tmp / "ledger" / "soak.json"
        backends_running, ledger = await emulator_readings(urls, ledger_path)
        fds_end = open_fds(proxy.pid)
        ports = {
            urlsplit(u).port or {"https": 443}.get(urlsplit(u).scheme, 80) for u in urls.values()
        }
        sockets_end = sockets_by_peer(proxy.pid, ports)
        sent = sum(outcomes.values())
        return {
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "host_cpus": os.cpu_count(),
            "proxy_env": args.proxy_env,
            "backend_host": args.backend_host,
            "proxy_root": str(args.proxy_root) if args.proxy_root else None,
            "backends": dict(args.backends) if args.backends else None,
            "faults": args.faults,
            "max_awake": args.max_awake,
            "command": sys.argv[1:],
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
            "rss_kib": rss_summary(samples, last_sample, args.warmup_s),
            "samples": [*samples, {**last_sample, "after_load": True}],
            "probes": probes,
            "ledger": ledger,
            "states_at_end": {m["name"]: m["state"] for m in status["models"]},
        }
    finally:
        os.killpg(proxy.pid, signal.SIGTERM)
        await proxy.wait()
        log.close()


def rss_summary(
    samples: list[dict[str, Any]], last: dict[str, Any], warmup_s: float
) -> dict[str, Any]:
    """RSS at the first sample (before load), after warm-up, at the end; growth and slope."""
    first = samples[0]
    warm = next((s for s in samples if s["t_s"] >= warmup_s), samples[-1])
    loaded = [s for s in samples if s["t_s"] >= warm["t_s"]]
    slope = None
    if len(loaded) >= 3:  # least squares, KiB per minute
        ts = [s["t_s"] / 60 for s in loaded]
        ys = [s["rss_kib"] for s in loaded]
        mt, my = sum(ts) / len(ts), sum(ys) / len(ys)
        var = sum((t - mt) ** 2 for t in ts)
        slope = (
            round(sum((t - mt) * (y - my) for t, y in zip(ts, ys, strict=True)) / var, 1)
            if var
            else None
        )
    end = last["rss_kib"]
    return {
        "start": first["rss_kib"],
        "after_warmup": warm["rss_kib"],
        "warmup_s": warm["t_s"],
        "end": end,
        "growth_pct": round(100 * (end - first["rss_kib"]) / first["rss_kib"], 1),
        "growth_after_warmup_pct": round(100 * (end - warm["rss_kib"]) / warm["rss_kib"], 1),
        "slope_after_warmup_kib_per_min": slope,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=20000, help="0: until --minutes are over")
    p.add_argument("--minutes", type=float, default=10)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--sample-s", type=float, default=10)
    p.add_argument("--warmup-s", type=float, default=60, help="RSS growth is also from here")
    p.add_argument(
        "--backend-host",
        default="127.0.0.1",
        help="the host in the proxy's backend URLs (localhost: a name the proxy must resolve)",
    )
    p.add_argument(
        "--proxy-root",
        type=Path,
        default=None,
        help="run the proxy (and its emulators) from this tree's `proxy` package (A/B of commits)",
    )
    p.add_argument("--probe", action="store_true", help="run the proxy under bench/rss_probe.py")
    p.add_argument("--probe-s", type=float, default=60, help="seconds between probes")
    p.add_argument("--tracemalloc", action="store_true", help="with --probe: tracemalloc's diffs")
    p.add_argument("--trim-at-end", action="store_true", help="with --probe: malloc_trim(0)")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument(
        "--log-level", default="warning", help="the proxy's (info: one line per request)"
    )
    p.add_argument("--faults", action="store_true", default=None, help="(the default)")
    p.add_argument(
        "--no-faults", dest="faults", action="store_false", help="no injected OOMs or deaths"
    )
    p.add_argument(
        "--backends",
        type=parse_backends,
        default=None,
        metavar="NAME=URL,...",
        help="attach to vLLM servers already running (NAME: each one's served model name) "
        "instead of supervising emulators; implies --no-faults",
    )
    p.add_argument(
        "--max-awake", type=int, default=None, help="the GPU's max_awake (2; with --backends 1)"
    )
    p.add_argument(
        "--proxy-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the proxy process (e.g. MALLOC_ARENA_MAX=1)",
    )
    args = p.parse_args()
    if args.backends and args.faults:
        p.error(
            "--faults needs emulators (they are injected through /_emulator/faults): "
            "not with --backends"
        )
    args.faults = not args.backends if args.faults is None else args.faults
    # the emulated GPU fits two awake (0.45 of 80 GiB each); real servers: assume one
    args.max_awake = args.max_awake or (1 if args.backends else 2)
    report = asyncio.run(run(args))
    text = json.dumps(report, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)  # noqa: T201


if __name__ == "__main__":
    main()
