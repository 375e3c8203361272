"""Proxy overhead, second opinion: the same emulated vLLM reached directly and through
vllm-switch, loaded by `wrk` (C, its own HTTP parser and latency histogram) instead of
`bench/overhead.py`'s Python client, so neither the generator's CPU nor its parser is ours.

Each round runs every concurrency against both targets, in an order that rotates each round.
Added latency is vllm-switch's percentile minus direct's from the same rounds; requests/s is
wrk's; CPU per request is the proxy process's CPU time over the requests it served. wrk reports
total latency only (a stream counts when its last chunk arrived).

    apt-get install wrk
    python3 bench/wrk_overhead.py --pin --out bench/results/wrk-overhead-2core-YYYYMMDD.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.overhead import KEY, body, emulator, switch_argv  # noqa: E402
from bench.processes import cpu_seconds, machine, server, version, wait_ready  # noqa: E402
from tests.helpers.processes import free_port  # noqa: E402

SCRIPT = """
wrk.method = "POST"
wrk.path = "/v1/chat/completions"
wrk.body = [==[%(body)s]==]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %(key)s"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK {"requests":%%d,"duration_us":%%d,"errors":%%d,"non_2xx":%%d,'
    .. '"p50_us":%%d,"p90_us":%%d,"p99_us":%%d,"max_us":%%d}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


def wrk(
    url: str, conc: int, duration_s: int, script: Path, cpus: set[int] | None
) -> dict[str, Any]:
    argv = [
        "wrk",
        "-t1",
        f"-c{conc}",
        f"-d{duration_s}s",
        "--timeout",
        "30s",
        "-s",
        str(script),
        url,
    ]
    if cpus:
        argv = ["taskset", "-c", ",".join(map(str, sorted(cpus))), *argv]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=duration_s + 60)
    line = next(x for x in out.stdout.splitlines() if x.startswith("WRK "))
    result: dict[str, Any] = json.loads(line[4:])
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--concurrency", type=lambda v: [int(x) for x in v.split(",")], default=[1, 64])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--ttft-ms", type=float, default=20.0)
    p.add_argument("--itl-ms", type=float, default=2.5)
    p.add_argument("--stream", action="store_true", help="streamed requests (total latency)")
    p.add_argument(
        "--pin", action="store_true", help="the proxy on the last CPU, the rest elsewhere"
    )
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vllm-switch-wrk-"))
    script = work / "chat.lua"
    script.write_text(SCRIPT % {"body": json.dumps(body(args.stream, args.max_tokens)), "key": KEY})
    cpus = sorted(os.sched_getaffinity(0))
    proxy_cpus = {cpus[-1]} if args.pin and len(cpus) > 1 else None
    rest = set(cpus[:-1]) if proxy_cpus else None
    emu = emulator(work, rest, args.ttft_ms, args.itl_ms)
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
    try:
        with contextlib.ExitStack() as stack:
            port = free_port()
            pid = stack.enter_context(
                server(switch_argv(work, emu.url, port), work / "vllm-switch.log", {}, proxy_cpus)
            )
            targets = {"direct": (emu.url, None), "vllm-switch": (f"http://127.0.0.1:{port}", pid)}
            wait_ready(emu.url, "/health", work / "direct.log")
            wait_ready(targets["vllm-switch"][0], "/ready", work / "vllm-switch.log")
            names = list(targets)
            for rnd in range(args.rounds):
                for conc in args.concurrency:
                    for name in names[rnd % 2 :] + names[: rnd % 2]:
                        url, target_pid = targets[name]
                        cpu0 = cpu_seconds(target_pid) if target_pid else 0.0
                        r = wrk(url, conc, args.duration, script, rest)
                        if target_pid:
                            r["cpu_ms_per_request"] = round(
                                1000 * (cpu_seconds(target_pid) - cpu0) / max(1, r["requests"]), 3
                            )
                        runs.setdefault((name, conc), []).append(r)
                print(f"round {rnd + 1}/{args.rounds} done", file=sys.stderr)  # noqa: T201
    finally:
        emu.stop()
    report = {
        "benchmark": "wrk-overhead",
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(proxy_cpus),
        "versions": {
            "vllm-switch": version([sys.executable, "-m", "proxy", "--version"]),
            "wrk": version(["wrk", "--version"]),
        },
        "settings": vars(args) | {"out": str(args.out) if args.out else None},
        "results": summarize(runs, args.concurrency),
    }
    text = json.dumps(report, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)  # noqa: T201
    return 0


def summarize(runs: dict[tuple[str, int], list[dict[str, Any]]], concs: list[int]) -> list[Any]:
    """Per concurrency: each target's median over rounds, and the proxy's differences."""
    rows = []
    for conc in concs:
        row: dict[str, Any] = {"concurrency": conc}
        for name in ("direct", "vllm-switch"):
            rs = runs[(name, conc)]
            med = {
                k: statistics.median(r[k] for r in rs)
                for k in ("p50_us", "p90_us", "p99_us", "max_us", "requests", "duration_us")
            }
            row[name] = {
                "p50_ms": med["p50_us"] / 1000,
                "p90_ms": med["p90_us"] / 1000,
                "p99_ms": med["p99_us"] / 1000,
                "requests_per_s": round(
                    statistics.median(r["requests"] / r["duration_us"] * 1e6 for r in rs), 1
                ),
                "errors": sum(r["errors"] + r["non_2xx"] for r in rs),
                "rounds": rs,
            }
            if name == "vllm-switch":
                row[name]["cpu_ms_per_request"] = statistics.median(
                    r["cpu_ms_per_request"] for r in rs
                )
        d, v = row["direct"], row["vllm-switch"]
        row["added_p50_ms"] = round(v["p50_ms"] - d["p50_ms"], 3)
        row["added_p99_ms"] = round(v["p99_ms"] - d["p99_ms"], 3)
        row["requests_per_s_ratio"] = round(v["requests_per_s"] / d["requests_per_s"], 3)
        rows.append(row)
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
