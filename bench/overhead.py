"""Proxy overhead: one load generator, the same emulated vLLM, reached directly, through
vllm-switch and through LiteLLM's proxy.

Targets alternate within every round (their order rotates each round), so drift on the machine
hits all of them alike. For each concurrency and target, a non-streaming phase (total latency)
and a streaming phase (time to first token, gap between chunks) run back to back on HTTP/1.1
keep-alive connections (one pool of `concurrency` connections per target). Added latency is a
proxy's percentile minus the direct percentile from the same rounds. CPU per request is the
proxy process's (and its children's) user+system time over the requests it served. Clients
start spread over one request's duration (not as one herd), and requests/s is counted while
all of them are busy. A direct row's `slowdown_vs_1_concurrent` above ~1.1 says the backend
itself queues at that concurrency: the "added" numbers there compare two queues.

The backend is the vLLM 0.26 emulator, by default with H100 timings of a small model (first
token 20 ms, 2.5 ms per token; `--ttft-ms`, `--itl-ms` change them), one model, awake: no
switch ever happens, this measures the path only.
With `--pin` the proxies run on the last CPU and everything else (this generator, the
emulator) on the others, so a proxy never competes with the load for a core.

    python3 bench/overhead.py --litellm /path/to/venv/bin/litellm --out bench/results/overhead.json
    python3 bench/overhead.py --smoke          # seconds; CI runs this so the script keeps working
    python3 bench/overhead.py --backend-url http://127.0.0.1:8001   # a real vLLM (bench/gpu/overhead.sh)
    python3 bench/overhead.py --profile prof.json   # py-spy on vllm-switch, speedscope format
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.processes import cpu_seconds, machine, profiled, server, version, wait_ready  # noqa: E402
from proxy.emulator.launcher import EmulatorProcess, emulator_argv, spawn_emulator  # noqa: E402
from tests.helpers.processes import free_port  # noqa: E402

MODEL = "bench-model"
KEY = "sk-bench-0123456789"  # both proxies check a client key, as deployed


@dataclass
class Samples:
    total_s: list[float] = field(default_factory=list)
    ttft_s: list[float] = field(default_factory=list)
    gap_s: list[float] = field(default_factory=list)
    chunks: list[int] = field(default_factory=list)
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    busy_s: float = 0.0  # time during which every client had a request in flight
    busy_requests: int = 0  # requests that ended within it
    requests: int = 0
    cpu_s: float = 0.0


# ----- processes -----------------------------------------------------------------------------
def emulator(work: Path, cpus: set[int] | None, ttft_ms: float, itl_ms: float) -> EmulatorProcess:
    args = emulator_argv(
        MODEL,
        sleep_mode=False,
        ledger_dir=work / "ledger",
        max_model_len=4096,
        timing="h100",
        startup_s=0,
        extra=[
            "--emu-ttft-s",
            str(ttft_ms / 1000),
            "--emu-itl-s",
            str(itl_ms / 1000),
            "--emu-nodelay",  # evenly spaced chunks, so a proxy's own bunching would show
        ],
    )
    emu = spawn_emulator(work, args, name=MODEL)
    if cpus:
        os.sched_setaffinity(emu.proc.pid, cpus)
    emu.wait_listening()
    return emu


def switch_argv(work: Path, backend: str, port: int) -> list[str]:
    cfg = {
        "host": "127.0.0.1",
        "port": port,
        "models": [{"name": MODEL, "url": backend}],
        "auth": {"api_keys": [KEY]},
    }
    (work / "vllm-switch.yaml").write_text(yaml.safe_dump(cfg))
    return [sys.executable, "-m", "proxy", "serve", "--config", str(work / "vllm-switch.yaml")]


def litellm_argv(work: Path, exe: str, backend: str, port: int) -> list[str]:
    cfg = {
        "model_list": [
            {
                "model_name": MODEL,
                "litellm_params": {
                    "model": f"hosted_vllm/{MODEL}",
                    "api_base": f"{backend}/v1",
                    "api_key": "none",
                },
            }
        ],
        "litellm_settings": {"drop_params": True, "telemetry": False},
    }
    (work / "litellm.yaml").write_text(yaml.safe_dump(cfg))
    return [exe, "--config", str(work / "litellm.yaml"), "--host", "127.0.0.1", "--port", str(port)]


# ----- load ------------------------------------------------------------------------------------
def body(stream: bool, max_tokens: int) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Say something about switching models."}],
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "stream": stream,
    }


async def one(c: httpx.AsyncClient, stream: bool, max_tokens: int, s: Samples) -> None:
    t0 = time.perf_counter()
    try:
        if not stream:
            r = await c.post("/v1/chat/completions", json=body(False, max_tokens))
            r.raise_for_status()
            s.total_s.append(time.perf_counter() - t0)
            return
        async with c.stream("POST", "/v1/chat/completions", json=body(True, max_tokens)) as r:
            r.raise_for_status()
            last, n = None, 0
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                now = time.perf_counter()
                if last is None:
                    s.ttft_s.append(now - t0)
                else:
                    s.gap_s.append(now - last)
                last, n = now, n + 1
            s.chunks.append(n)
            s.total_s.append(time.perf_counter() - t0)
    except httpx.HTTPError as exc:
        s.errors += 1
        kind = type(exc).__name__
        s.error_kinds[kind] = s.error_kinds.get(kind, 0) + 1


async def phase(
    url: str, pid: int | None, conc: int, n: int, stream: bool, max_tokens: int, s: Samples
) -> None:
    limits = httpx.Limits(max_connections=conc, max_keepalive_connections=conc)
    headers = {"Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120, headers=headers) as c:
        warm = Samples()
        await asyncio.gather(*(one(c, stream, max_tokens, warm) for _ in range(conc)))
        # Clients start spread evenly over one request's duration. Started together, a closed
        # loop of fixed-length requests stays one herd for the whole phase (all 64 arrive in
        # the same millisecond, every time), and p99 then measures that herd, not the path.
        # (at most 3 s: a connection idle for 5 s is closed by uvicorn - vLLM's, the emulator's
        # and both proxies' servers - and the next request on it fails)
        spread = min(3.0, statistics.median(warm.total_s)) if warm.total_s else 0.0
        left, ends, first_idle = [n], list[float](), list[float]()

        async def worker(i: int) -> None:
            await asyncio.sleep(spread * i / conc)
            while left[0] > 0:
                left[0] -= 1
                await one(c, stream, max_tokens, s)
                ends.append(time.perf_counter())
            first_idle.append(time.perf_counter())

        cpu0 = cpu_seconds(pid) if pid else 0.0
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(conc)))
        # throughput while all clients were busy: after the last one started, until one ran out
        busy_from, busy_to = t0 + spread * (conc - 1) / conc, first_idle[0]
        s.busy_requests += sum(busy_from <= t <= busy_to for t in ends)
        s.busy_s += max(0.0, busy_to - busy_from)
        s.cpu_s += (cpu_seconds(pid) - cpu0) if pid else 0.0
        s.requests += n


# ----- report ----------------------------------------------------------------------------------
def pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def ms(x: float | None) -> float | None:
    return None if x is None else round(x * 1000, 3)


def summarize(s: Samples, stream: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "requests": s.requests,
        "errors": s.errors,
        "error_kinds": s.error_kinds,
        "requests_per_s": round(s.busy_requests / s.busy_s, 1) if s.busy_s else None,
        "cpu_ms_per_request": round(1000 * s.cpu_s / s.requests, 3) if s.cpu_s else None,
    }
    metrics = {"total": s.total_s} | ({"ttft": s.ttft_s, "gap": s.gap_s} if stream else {})
    for name, xs in metrics.items():
        out[f"{name}_p50_ms"], out[f"{name}_p99_ms"] = ms(pct(xs, 0.5)), ms(pct(xs, 0.99))
    if stream and s.chunks:
        out["chunks_per_stream"] = statistics.mean(s.chunks)
    return out


def added(proxy: dict[str, Any], direct: dict[str, Any]) -> dict[str, float]:
    return {
        f"added_{k}": round(proxy[k] - direct[k], 3)
        for k in proxy
        if k.endswith(("_p50_ms", "_p99_ms")) and proxy[k] is not None and direct.get(k) is not None
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    # SIGTERM (e.g. from `timeout`) cancels the run, so the servers it started are stopped
    me = asyncio.current_task()
    assert me is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, me.cancel)
    work = Path(tempfile.mkdtemp(prefix="vllm-switch-overhead-"))
    cpus = sorted(os.sched_getaffinity(0))
    proxy_cpus = {cpus[-1]} if args.pin and len(cpus) > 1 else None
    rest = set(cpus[:-1]) if proxy_cpus else None
    if rest:
        os.sched_setaffinity(0, rest)
    emu = None if args.backend_url else emulator(work, rest, args.ttft_ms, args.itl_ms)
    backend = args.backend_url or emu.url  # type: ignore[union-attr]
    samples: dict[tuple[str, int, bool], Samples] = {}
    try:
        with contextlib.ExitStack() as stack:
            targets: dict[str, tuple[str, int | None]] = {"direct": (backend, None)}
            port = free_port()
            pid = stack.enter_context(
                server(switch_argv(work, backend, port), work / "vllm-switch.log", {}, proxy_cpus)
            )
            targets["vllm-switch"] = (f"http://127.0.0.1:{port}", pid)
            if args.litellm:
                port = free_port()
                env = {
                    "LITELLM_MASTER_KEY": KEY,
                    "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no network here
                    "LITELLM_LOG": "ERROR",
                    "LITELLM_TELEMETRY": "False",
                }
                pid = stack.enter_context(
                    server(
                        litellm_argv(work, args.litellm, backend, port),
                        work / "litellm.log",
                        env,
                        proxy_cpus,
                    )
                )
                targets["litellm"] = (f"http://127.0.0.1:{port}", pid)
            for name, (url, _) in targets.items():
                path = (
                    "/ready"
                    if name == "vllm-switch"
                    else "/health"
                    if name == "direct"
                    else "/health/liveliness"
                )
                wait_ready(url, path, work / f"{name}.log")
            if args.profile:
                stack.enter_context(profiled(targets["vllm-switch"][1], args.profile))
            names = list(targets)
            for rnd in range(args.rounds):
                order = names[rnd % len(names) :] + names[: rnd % len(names)]
                for conc in args.concurrency:
                    n = max(args.requests, conc * args.per_connection)
                    for name in order:
                        url, pid = targets[name]
                        for stream in (False, True):
                            s = samples.setdefault((name, conc, stream), Samples())
                            await phase(url, pid, conc, n, stream, args.max_tokens, s)
                print(f"round {rnd + 1}/{args.rounds} done", file=sys.stderr)  # noqa: T201
    finally:
        if emu is not None:
            emu.stop()
    return report(args, samples, proxy_cpus)


def report(
    args: argparse.Namespace,
    samples: dict[tuple[str, int, bool], Samples],
    proxy_cpus: set[int] | None,
) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    for (name, conc, stream), s in sorted(samples.items(), key=lambda kv: (kv[0][1], kv[0][2])):
        row = {"target": name, "concurrency": conc, "stream": stream, **summarize(s, stream)}
        if name != "direct":
            row.update(added(row, summarize(samples[("direct", conc, stream)], stream)))
        elif (base := samples.get((name, 1, stream))) and base.total_s and s.total_s:
            # > 1 means the backend itself queues at this concurrency: "added" numbers then
            # compare two queues, not a path
            row["slowdown_vs_1_concurrent"] = round(
                statistics.median(s.total_s) / statistics.median(base.total_s), 3
            )
        rows.append(row)
    return {
        "benchmark": "overhead",
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(proxy_cpus),
        "versions": {
            "vllm-switch": version([sys.executable, "-m", "proxy", "--version"]),
            "litellm": version([args.litellm, "--version"]) if args.litellm else None,
        },
        "settings": {
            "rounds": args.rounds,
            "concurrency": args.concurrency,
            "requests_per_phase": args.requests,
            "per_connection": args.per_connection,
            "max_tokens": args.max_tokens,
            "backend": args.backend_url
            or f"emulator, first token {args.ttft_ms} ms, {args.itl_ms} ms per token, --emu-nodelay",
        },
        "results": rows,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--concurrency", type=lambda v: [int(x) for x in v.split(",")], default=[1, 16, 64, 256]
    )
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--requests", type=int, default=300, help="requests per phase (at least)")
    p.add_argument("--per-connection", type=int, default=4, help="...or this many per connection")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--ttft-ms", type=float, default=20.0, help="emulator: first token (H100: 20)")
    p.add_argument("--itl-ms", type=float, default=2.5, help="emulator: per token (H100: 2.5)")
    p.add_argument("--litellm", default=None, help="path of the `litellm` executable (optional)")
    p.add_argument(
        "--backend-url",
        default=None,
        help=f"a running vLLM serving {MODEL!r} instead of the emulator (e.g. real vLLM on a GPU)",
    )
    p.add_argument("--pin", action="store_true", help="proxies on the last CPU, the rest elsewhere")
    p.add_argument("--profile", type=Path, default=None, help="py-spy speedscope output")
    p.add_argument("--smoke", action="store_true", help="tiny run: concurrency 1,4, 1 round")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    if args.smoke:
        args.concurrency, args.rounds, args.requests, args.per_connection = [1, 4], 1, 8, 1
    result = asyncio.run(run(args))
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)  # noqa: T201


if __name__ == "__main__":
    main()
