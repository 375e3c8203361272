"""Scheduling: how a GPU group's policy (`gpus[].scheduling.policy`) shares one GPU among models.

Three emulated vLLM 0.26 servers (H100 timings of a Qwen3-0.6B-sized model) on one fake 80 GiB
GPU, each at a memory utilization that lets only one be awake, in one group with `max_awake: 1`.
The emulators start once; then every workload runs once per policy, back to back, each run
against a fresh `vllm-switch serve` attached to them. A run's warm-up sends one request to each
model in turn and back to the first (every model sleeps and wakes once under this proxy, and the
load starts with its first model resident); the load then runs for `--duration` seconds, and the
proxy's counters are read at the window's start and end.

  closed-kN  N closed-loop clients, client i on model i mod 3 (k=6: two clients per model)
  poisson-R  open-loop Poisson arrivals at R requests/s for each R of `--rates`, popularity
             70/20/10 % (an open loop's throughput is its offered load until a policy
             saturates: the rates go past naive's capacity to show where each one does)
  pipeline   `--pipelines` concurrent pipelines classify -> caption -> rerank, each starting
             at its own stage (not one herd)

Each request is a short chat completion (`--max-tokens` 16). Per run: requests completed (those
within the window give the throughput), latency p50/p99, queue wait p50/p99 (every answer's
`x-vllm-switch-queue-ms`), the share of requests that waited for a wake, switches per request
(`vllm_switch_switches_total`, ok), the share of the window spent switching
(`vllm_switch_switching_seconds_total`), errors (goal 0 for `default`: a non-200, a transport
error, a request unfinished at the end; a saturated baseline may time out), and invariants 1
and 2 from the emulators (goal 0 for every policy). The policies: `naive` (strict FIFO:
requests start in arrival order across the GPU, each model change a switch), `fifo` (FIFO with
join, as llama-swap: requests for the model being switched to join that switch) and `default`.
`targets` holds the issue's goals for `default` against `naive` of the same run. The emulators leave Nagle on, as vLLM 0.26 does: on a keep-alive
connection that goes straight on to its next request, each answer's body waits for the proxy's
delayed ACK (~40 ms); `--emu-nodelay` turns that off.

    python3 bench/scheduling.py --out bench/results/scheduling-YYYYMMDD-MACHINE.json
    python3 bench/scheduling.py --quick       # CI smoke: 1 s per run, k = 2 and 6

On real vLLM (attach mode, bench/attach.py): `--backends NAME=URL,NAME=URL,NAME=URL` names three
vLLM 0.26 servers already running (dev mode, `--enable-sleep-mode`, sized so that one fits
awake), each NAME its served model name. No emulators start; each run's proxy attaches to them
(the pipeline's names map onto the three in order) and reconciles them at start-up (at most one
awake). Invariants 1 and 2 are emulator counters: null there (not measured), never 0.
`--sleep-level 2` sets the models' `sleep_level`.

    B=model-a=http://127.0.0.1:8101,model-b=http://127.0.0.1:8102,model-c=http://127.0.0.1:8103
    python3 bench/scheduling.py --backends $B --only closed-k3,poisson-20,pipeline --clients 3
        --rates 20 --duration 15 --policies fifo,default --out RESULT.json     # (one line)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.attach import three_backends  # noqa: E402
from bench.processes import machine, version  # noqa: E402
from bench.scheduling_backends import GPU_GIB, UTIL, Servers, counters, start_emulators  # noqa: E402
from bench.scheduling_report import summarize, table, targets  # noqa: E402
from proxy.emulator.settings import Timings  # noqa: E402

PIPELINE = ("classify", "caption", "rerank")  # the pipeline's names for the same three
POPULARITY = (0.7, 0.2, 0.1)
QUEUE_TIMEOUT_S = 60
Done = tuple[str, float, float, bool, float]  # model, latency, queue wait, waited for a wake, end


@dataclass(frozen=True)
class Workload:
    name: str
    kind: str  # closed | poisson | pipeline
    models: tuple[str, ...]
    clients: int
    rate: float = 0.0  # poisson: arrivals per second


@dataclass
class Load:
    """One run's clients (on one connection pool) and what they saw."""

    c: httpx.AsyncClient
    max_tokens: int
    end: float = 0.0  # the window's end (perf_counter)
    done: list[Done] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    pipelines: list[tuple[float, float]] = field(default_factory=list)  # latency, end
    inflight: int = 0
    arrivals: int = 0

    async def one(self, model: str) -> bool:
        messages = [{"role": "user", "content": f"One short answer from {model}, please."}]
        body = {
            "model": model,
            "messages": messages,
            "max_tokens": self.max_tokens,
            "ignore_eos": True,
        }
        t0 = time.perf_counter()
        self.inflight += 1
        try:
            r = await self.c.post("/v1/chat/completions", json=body)
        except httpx.HTTPError as exc:
            self.errors[type(exc).__name__] += 1
            return False
        finally:
            self.inflight -= 1
        ended = time.perf_counter()
        queue_ms, wake_ms = (r.headers.get(f"x-vllm-switch-{h}-ms") for h in ("queue", "wake"))
        if r.status_code != 200 or queue_ms is None or wake_ms is None:
            self.errors[f"http_{r.status_code}" if r.status_code != 200 else "no_timing"] += 1
            return False
        self.done.append((model, ended - t0, float(queue_ms) / 1000, float(wake_ms) > 0, ended))
        return True

    async def closed(self, model: str) -> None:
        while time.perf_counter() < self.end:
            await self.one(model)

    async def pipeline(self, models: tuple[str, ...], skip: int) -> None:
        """The stages in order, again and again; the first pass starts at stage `skip` (not
        counted as a pipeline)."""
        while time.perf_counter() < self.end:
            t0, ok = time.perf_counter(), True
            for model in models[skip:]:
                ok = ok and await self.one(model)
            if ok and skip == 0:
                self.pipelines.append((time.perf_counter() - t0, time.perf_counter()))
            skip = 0

    async def poisson(self, models: tuple[str, ...], rate: float, rng: random.Random) -> None:
        """Seeded: the same arrivals (times and models) for every policy."""
        tasks: set[asyncio.Task[bool]] = set()
        at = time.perf_counter()
        while (at := at + rng.expovariate(rate)) < self.end:
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            self.arrivals += 1
            task = asyncio.create_task(self.one(rng.choices(models, POPULARITY)[0]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)  # cancelled with this task, gather cancels them


# ----- processes -------------------------------------------------------------------------------
def proxy_config(w: Workload, policy: str, servers: Servers, args: argparse.Namespace) -> Any:
    scheduling = {"policy": policy, "max_wait_s": args.max_wait_s}
    scheduling["min_residency_s"] = args.min_residency_s
    level = {} if args.sleep_level == 1 else {"sleep_level": args.sleep_level}  # 1: the default
    return {
        "host": "127.0.0.1",
        "port": 0,
        "gpus": [{"name": "g0", "max_awake": 1, "scheduling": scheduling}],
        "models": [
            {"name": name, "served_name": served, "url": url, "gpu": "g0", **level}
            for name, served, url in zip(w.models, servers.names, servers.urls, strict=True)
        ],
        "limits": {"queue_timeout_s": QUEUE_TIMEOUT_S},
        "logging": {"level": "warning"},
    }


@contextlib.asynccontextmanager
async def serving(work: Path, name: str, cfg: Any) -> AsyncIterator[str]:
    """`vllm-switch serve` with `cfg` in its own process group; its URL once /ready; stopped by PID."""
    (work / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    log_path, first = work / f"{name}.log", ""
    with log_path.open("w") as log:
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "proxy", "serve", "--config", str(work / f"{name}.yaml")),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        for _ in range(600):  # polling another process's start-up, for at most 30 s
            first = (await asyncio.to_thread(log_path.read_text)).split("\n", 1)[0]
            if "listening on" in first or proc.returncode is not None:
                break
            await asyncio.sleep(0.05)
        if "listening on" not in first:
            text = await asyncio.to_thread(log_path.read_text)
            raise RuntimeError(f"the proxy did not start:\n{text[-3000:]}")
        url = first.split()[-1]
        async with httpx.AsyncClient(base_url=url, timeout=10) as c:
            for _ in range(600):
                if (await c.get("/ready")).status_code == 200:
                    break
                await asyncio.sleep(0.05)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 20)
        except TimeoutError:
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()


# ----- one run ---------------------------------------------------------------------------------
async def run_one(
    w: Workload, policy: str, servers: Servers, work: Path, args: argparse.Namespace
) -> dict[str, Any]:
    cfg = proxy_config(w, policy, servers, args)
    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=256, keepalive_expiry=4)
    async with (
        serving(work, f"proxy-{w.name}-{policy}", cfg) as url,
        httpx.AsyncClient(base_url=url, timeout=QUEUE_TIMEOUT_S + 30, limits=limits) as c,
    ):
        warm = Load(c, args.max_tokens)
        for model in (*w.models, w.models[0]):  # every model sleeps and wakes once
            await warm.one(model)
        if warm.errors:
            raise RuntimeError(f"warm-up failed: {dict(warm.errors)}")
        before = await counters(c, servers)
        s = Load(c, args.max_tokens, end=time.perf_counter() + args.duration)
        load: list[Coroutine[Any, Any, None]]
        if w.kind == "closed":
            load = [s.closed(w.models[i % 3]) for i in range(w.clients)]
        elif w.kind == "pipeline":
            load = [s.pipeline(w.models, i % 3) for i in range(w.clients)]
        else:
            load = [s.poisson(w.models, w.rate, random.Random(args.seed))]
        tasks = [asyncio.create_task(coro) for coro in load]
        await asyncio.sleep(args.duration)
        at_end = await counters(c, servers)
        _, late = await asyncio.wait(tasks, timeout=QUEUE_TIMEOUT_S + 10)
        if s.inflight:
            s.errors["unfinished_at_end"] += s.inflight
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
        after = await counters(c, servers)
    return summarize(w, policy, cfg, s, args.duration, (before, at_end, after))


# ----- report ----------------------------------------------------------------------------------
async def run(args: argparse.Namespace, servers: Servers, work: Path) -> list[dict[str, Any]]:
    me = asyncio.current_task()
    assert me is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, me.cancel)  # stop what we started
    ws = [Workload(f"closed-k{k}", "closed", servers.names, k) for k in args.clients]
    ws += [Workload(f"poisson-{r:g}", "poisson", servers.names, 0, r) for r in args.rates]
    ws += [Workload("pipeline", "pipeline", PIPELINE, args.pipelines)]
    rows = []
    for w in [w for w in ws if not args.only or w.name in args.only]:
        for policy in args.policies:  # back to back, a fresh proxy each
            rows.append(r := await run_one(w, policy, servers, work, args))
            line = f"{w.name} {policy}: {r['throughput_rps']} req/s, {r['errors']} errors"
            print(line, file=sys.stderr)  # noqa: T201
    return rows


def git_commit() -> str:
    """HEAD, and '+dirty' when proxy/ differs from it (uncommitted code was measured)."""
    git = ["git", "-C", str(ROOT)]
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=False)
    dirty = subprocess.run(
        [*git, "status", "--porcelain", "--", "proxy"], capture_output=True, text=True, check=False
    )
    return (head.stdout.strip() or "unknown") + ("+dirty" if dirty.stdout.strip() else "")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ints = lambda v: [int(x) for x in v.split(",")]  # noqa: E731
    p.add_argument("--duration", type=float, default=25.0, help="seconds of load per run")
    p.add_argument("--clients", type=ints, default=None, help="closed-loop k (2,3,6)")
    floats = lambda v: [float(x) for x in v.split(",")]  # noqa: E731
    p.add_argument("--rates", type=floats, default=None, help="poisson arrivals/s (10,20,40)")
    p.add_argument("--pipelines", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--policies", type=lambda v: v.split(","), default=["naive", "fifo", "default"])
    p.add_argument("--max-wait-s", type=float, default=None, help="scheduling.max_wait_s (5)")
    p.add_argument("--min-residency-s", type=float, default=None, help="... min_residency_s (2)")
    p.add_argument("--weights-gib", type=float, default=1.11, help="emulated weights (0.6B: 1.11)")
    p.add_argument(
        "--emu-nodelay",
        action="store_true",
        help="TCP_NODELAY in the emulators; off, as vLLM 0.26: a keep-alive connection that "
        "goes straight on to its next request then waits a delayed ACK (~40 ms) per answer",
    )
    p.add_argument(
        "--backends",
        type=three_backends,
        default=None,
        metavar="NAME=URL,NAME=URL,NAME=URL",
        help="attach to three vLLM servers already running (NAME: each one's served model name) "
        "instead of starting emulators; the emulator-only invariants are then not measured",
    )
    p.add_argument("--sleep-level", type=int, choices=(1, 2), default=1, help="models' sleep_level")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--quick", action="store_true", help="CI smoke: 1 s runs, k=2,6, waits 1/0.5 s")
    p.add_argument("--only", type=lambda v: v.split(","), default=None, help="e.g. poisson")
    p.add_argument("--note", default="", help="recorded as is (e.g. which code was measured)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    defaults: dict[str, Any] = {"clients": [2, 6], "rates": [20.0]}
    defaults |= {"max_wait_s": 1.0, "min_residency_s": 0.5}
    if not args.quick:
        defaults = {"clients": [2, 3, 6], "rates": [10.0, 20.0, 40.0]}
        defaults |= {"max_wait_s": 5.0, "min_residency_s": 2.0}
    for name, value in defaults.items():  # the config's defaults, shorter waits in quick runs
        setattr(args, name, value if getattr(args, name) is None else getattr(args, name))
    args.duration = 1.0 if args.quick else args.duration
    return args


def main() -> None:
    args, started, load_before = parse_args(), time.monotonic(), os.getloadavg()
    # the proxy and the emulators run this tree's code, whatever is installed
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, (str(ROOT), os.getenv("PYTHONPATH"))))
    with tempfile.TemporaryDirectory(prefix="vllm-switch-scheduling-") as tmp:
        emulators = [] if args.backends else start_emulators(Path(tmp), args)
        try:
            servers = (
                Servers.attached(args.backends)
                if args.backends
                else Servers.emulated(Path(tmp), emulators)
            )
            rows = asyncio.run(run(args, servers, Path(tmp)))
        finally:
            for emu in emulators:  # attached servers are not ours to stop
                emu.stop()
    timings = dataclasses.replace(Timings.h100(args.weights_gib), startup_s=0)
    emulator = {"gpu_memory_gib": GPU_GIB, "util": UTIL, "timings_s": vars(timings)}
    report: dict[str, Any] = {
        "benchmark": "scheduling",
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine() | {"loadavg_1_5_15_start_end": [load_before, os.getloadavg()]},
        "versions": {
            "vllm-switch": version([sys.executable, "-m", "proxy", "--version"]),
            "git_commit": git_commit(),
            "note": args.note,
        },
        "settings": {
            **{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "popularity": POPULARITY,
            "queue_timeout_s": QUEUE_TIMEOUT_S,
            "backends": dict(args.backends) if args.backends else None,
            "emulator": None if args.backends else emulator,
        },
        "wall_s": round(time.monotonic() - started, 1),
        "results": rows,
        "targets": targets(rows, args.max_wait_s),
    }
    day = time.strftime("%Y%m%d")
    out = args.out or ROOT / "bench" / "results" / f"scheduling-{day}-{os.cpu_count()}core.json"
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(table(rows))  # noqa: T201
    for goal, t in report["targets"].items():
        verdict = {True: "met ", False: "MISS", None: "    "}[t["met"]]
        print(f"{verdict} {goal}: {t['value']}")  # noqa: T201
    if args.backends:  # null, not 0: nothing read them
        print("invariants 1 and 2: not measured (attached servers: no emulator counters)")  # noqa: T201
    print(f"{report['wall_s']} s; {out}")  # noqa: T201
    broken = [
        r
        for r in rows
        if (r["errors"] and r["policy"] == "default") or any(r["invariants"].values())
    ]
    sys.exit(f"errors or broken invariants in {len(broken)} run(s)" if broken else 0)


if __name__ == "__main__":
    main()
