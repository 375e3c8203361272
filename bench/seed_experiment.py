"""The seed write-up's experiment, through vllm-switch, on one GPU (or, for a dry run, emulators).

Two models, three alternating rounds (A, B, A, B, A, B), one prompt per turn, prefix caching
off, one request at a time, fixed output length (ignore_eos, 32 tokens). Phases:

  reload     start `vllm serve` for the model, wait ready, prompt, stop - every turn
  bootstrap  start A, warm it, sleep it (pays the slow first sleep), start B, warm it
  raw        direct vLLM calls, no proxy: /sleep, /wake_up, 1-token warm-up, prompt
  switch_l1  through vllm-switch, sleep level 1 + warm-up
  switch_l2  through vllm-switch, sleep level 2 (staged wake) + warm-up
  nowarmup   through vllm-switch without warm-up: first prompt after a wake vs. the next one
  stampede   32 concurrent first requests for the sleeping model (proxy counters before/after)
  ttft       switch-inclusive time to first token, streaming, to the sleeping model (10 samples)

`reload` needs the GPU to itself: run it in a separate invocation from the others. Results are
written to --out after every phase, so a run cut short still leaves what it measured.

    python3 bench/seed_experiment.py --model-a DIR_A --model-b DIR_B --out results.json \\
        [--phases bootstrap,raw,switch_l1,switch_l2,nowarmup,stampede,ttft] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent))
from servers import Server, ServerSpec, start

PROMPTS = [
    "Classify the sentiment of: the wake was fast.",
    "Write a caption for a photo of the Moon over the sea.",
    "Rerank these: sleep, wake, warm-up, prompt.",
    "Summarise Sleep Mode in one line.",
    "Give me a fun fact about GPUs.",
    "Translate 'model switching' into French.",
]
ALL_PHASES = ("bootstrap", "raw", "switch_l1", "switch_l2", "nowarmup", "stampede", "ttft")


def chat(model: str, prompt: str, tokens: int, *, stream: bool = False) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": stream,
    }


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tokens = args.tokens
        self.specs = [
            ServerSpec("model-a", args.model_a, args.util_a, shlex.split(args.extra_a)),
            ServerSpec("model-b", args.model_b, args.util_b, shlex.split(args.extra_b)),
        ]
        self.common = shlex.split(args.common)
        self.logdir = Path(args.logdir)
        self.servers: dict[str, Server] = {}
        self.http = httpx.Client(timeout=600)
        self.out = Path(args.out)
        self.results: dict[str, Any] = json.loads(self.out.read_text()) if self.out.exists() else {}
        self.results.setdefault("meta", meta(args))

    def save(self) -> None:
        self.results["summary"] = summarize(self.results)
        self.out.write_text(json.dumps(self.results, indent=1))

    def turns(self) -> Iterator[tuple[int, ServerSpec, str]]:
        for r in range(self.args.first_round, self.args.first_round + self.args.rounds):
            for i, spec in enumerate(self.specs):
                yield r, spec, PROMPTS[(2 * r + i) % len(PROMPTS)]

    def prompt(
        self, url: str, model: str, prompt: str, tokens: int | None = None
    ) -> tuple[float, httpx.Response]:
        t0 = time.monotonic()
        r = self.http.post(
            f"{url}/v1/chat/completions", json=chat(model, prompt, tokens or self.tokens)
        )
        elapsed = time.monotonic() - t0
        r.raise_for_status()
        return elapsed, r

    # ----- phases -----------------------------------------------------------------------------
    def reload(self) -> dict[str, Any]:
        """Appends to earlier reload turns in --out, so rounds can be split across runs."""
        turns: list[dict[str, Any]] = list(self.results.get("reload", {}).get("turns", []))
        for r, spec, prompt in self.turns():
            t0 = time.monotonic()
            server = start(spec, self.args.server, self.common, self.logdir)
            try:
                ready = server.wait_ready()
                prompt_s, _ = self.prompt(server.url, spec.name, prompt)
            finally:
                stop_s = server.stop()
            turns.append(
                {
                    "round": r,
                    "model": spec.name,
                    "start_s": ready,
                    "prompt_s": prompt_s,
                    "stop_s": stop_s,
                    "total_s": time.monotonic() - t0,
                }
            )
            self.results["reload"] = {"turns": turns, "total_s": sum(t["total_s"] for t in turns)}
            self.save()
        return self.results["reload"]

    def bootstrap(self) -> dict[str, Any]:
        """Start each model while the other sleeps; pay every one-time cost (compile, first
        prompt, the slow first sleep that allocates pinned host memory) here, not in a turn."""
        out: dict[str, Any] = {}
        for spec in self.specs:
            server = self.servers[spec.name] = start(
                spec, self.args.server, self.common, self.logdir
            )
            out[f"{spec.name}_start_s"] = server.wait_ready()
            out[f"{spec.name}_first_prompt_s"], _ = self.prompt(server.url, spec.name, "warm up")
            t0 = time.monotonic()
            self.http.post(
                f"{server.url}/sleep", params={"level": 1, "mode": "wait"}
            ).raise_for_status()
            out[f"{spec.name}_first_sleep_s"] = time.monotonic() - t0
        self.http.post(f"{self.servers[self.specs[-1].name].url}/wake_up").raise_for_status()
        return out

    def raw(self) -> dict[str, Any]:
        turns = []
        awake = "model-b"
        for r, spec, prompt in self.turns():
            cur, tgt = self.servers[awake].url, self.servers[spec.name].url
            t0 = time.monotonic()
            self.http.post(f"{cur}/sleep", params={"level": 1, "mode": "wait"}).raise_for_status()
            t1 = time.monotonic()
            self.http.post(f"{tgt}/wake_up").raise_for_status()
            t2 = time.monotonic()
            self.prompt(tgt, spec.name, "Hi", 1)
            t3 = time.monotonic()
            prompt_s, _ = self.prompt(tgt, spec.name, prompt)
            turns.append(
                {
                    "round": r,
                    "model": spec.name,
                    "sleep_s": t1 - t0,
                    "wake_s": t2 - t1,
                    "warmup_s": t3 - t2,
                    "prompt_s": prompt_s,
                    "total_s": time.monotonic() - t0,
                }
            )
            awake = spec.name
        return {"turns": turns, "total_s": sum(t["total_s"] for t in turns)}

    @contextlib.contextmanager
    def proxy(self, level: int, warmup: bool) -> Iterator[str]:
        config = {
            "host": "127.0.0.1",
            "port": 0,
            "gpus": [{"name": "gpu0", "max_awake": 1}],
            "logging": {"format": "plain", "level": "warning"},
            "models": [
                {
                    "name": s.name,
                    "url": self.servers[s.name].url,
                    "gpu": "gpu0",
                    "sleep_level": level,
                    "warmup": {"enabled": warmup},
                }
                for s in self.specs
            ],
        }
        path = Path(f"/tmp/seed-bench-proxy-l{level}-{'w' if warmup else 'nw'}.yaml")
        path.write_text(yaml.safe_dump(config))
        log = path.with_suffix(".log")
        with log.open(
            "w"
        ) as out:  # a file, not a pipe nobody drains (a full pipe stalls the proxy)
            proc = subprocess.Popen(
                [sys.executable, "-m", "proxy", "serve", "--config", str(path)],
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
        try:
            deadline = time.monotonic() + 60
            while "listening on" not in (first := log.read_text().split("\n", 1)[0]):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"proxy did not start: {log.read_text()}")
                time.sleep(0.05)
            url = first.split()[-1]
            deadline = time.monotonic() + 60
            while self.http.get(f"{url}/ready").status_code != 200:
                if time.monotonic() > deadline:
                    raise TimeoutError("proxy not ready")
                time.sleep(0.1)
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=30)

    def through_proxy(self, url: str, *, prime: bool = True) -> dict[str, Any]:
        if prime:  # two untimed alternations: every model slept and woken the configured way first
            for spec in self.specs * 2:
                self.prompt(url, spec.name, "prime", 1)
        turns = []
        for r, spec, prompt in self.turns():
            total, resp = self.prompt(url, spec.name, prompt)
            h = resp.headers
            ms = {
                k: float(h[f"x-vllm-switch-{k}-ms"]) / 1000
                for k in ("queue", "sleep", "wake", "warmup")
            }
            turns.append(
                {
                    "round": r,
                    "model": spec.name,
                    "sleep_s": ms["sleep"],
                    "wake_s": ms["wake"],
                    "warmup_s": ms["warmup"],
                    "queue_s": ms["queue"],
                    "prompt_s": total - ms["queue"],
                    "total_s": total,
                }
            )
        return {"turns": turns, "total_s": sum(t["total_s"] for t in turns)}

    def nowarmup(self, url: str) -> dict[str, Any]:
        self.prompt(url, self.specs[0].name, "prime", 1)
        self.prompt(url, self.specs[1].name, "prime", 1)
        turns = []
        for r, spec, prompt in self.turns():
            total, resp = self.prompt(url, spec.name, prompt)
            first = total - float(resp.headers["x-vllm-switch-queue-ms"]) / 1000
            steady, _ = self.prompt(url, spec.name, prompt)
            turns.append(
                {
                    "round": r,
                    "model": spec.name,
                    "first_prompt_s": first,
                    "steady_prompt_s": steady,
                    "wake_s": float(resp.headers["x-vllm-switch-wake-ms"]) / 1000,
                }
            )
        return {"turns": turns}

    def counters(self, url: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for fam in text_string_to_metric_families(self.http.get(f"{url}/metrics").text):
            for s in fam.samples:
                if s.name in (
                    "vllm_switch_switches_total",
                    "vllm_switch_wake_seconds_count",
                    "vllm_switch_warmup_seconds_count",
                ):
                    out[s.name] = out.get(s.name, 0.0) + s.value
        return out

    def asleep(self, url: str) -> str:
        models = self.http.get(f"{url}/admin/status").json()["models"]
        return str(next(m["name"] for m in models if m["state"] == "asleep"))

    def stampede(self, url: str, n: int = 32) -> dict[str, Any]:
        before = self.counters(url)
        target = self.asleep(url)

        async def fire() -> list[int]:
            async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=n)) as c:
                rs = await asyncio.gather(
                    *(
                        c.post(
                            f"{url}/v1/chat/completions", json=chat(target, "stampede", self.tokens)
                        )
                        for _ in range(n)
                    )
                )
            return [r.status_code for r in rs]

        t0 = time.monotonic()
        statuses = asyncio.run(fire())
        after = self.counters(url)
        delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
        return {
            "target": target,
            "requests": n,
            "statuses": statuses,
            "seconds": time.monotonic() - t0,
            "switches": delta.get("vllm_switch_switches_total"),
            "wakes": delta.get("vllm_switch_wake_seconds_count"),
            "warmups": delta.get("vllm_switch_warmup_seconds_count"),
        }

    def ttft(self, url: str, samples: int = 10) -> dict[str, Any]:
        out = []
        for i in range(samples):
            target = self.asleep(url)
            t0 = time.monotonic()
            with self.http.stream(
                "POST",
                f"{url}/v1/chat/completions",
                json=chat(target, PROMPTS[i % len(PROMPTS)], self.tokens, stream=True),
            ) as r:
                first = None
                for line in r.iter_lines():
                    if first is None and '"content":"' in line and '"content":""' not in line:
                        first = time.monotonic() - t0
            out.append(
                {
                    "model": target,
                    "ttft_s": first,
                    "wake_s": float(r.headers["x-vllm-switch-wake-ms"]) / 1000,
                    "sleep_s": float(r.headers["x-vllm-switch-sleep-ms"]) / 1000,
                }
            )
        return {"samples": out, "p50_s": statistics.median(s["ttft_s"] for s in out)}

    def run(self, phases: list[str]) -> None:
        try:
            if "reload" in phases:
                self.reload()
            if set(phases) & set(ALL_PHASES):
                self.results["bootstrap"] = self.bootstrap()
                self.save()
            for name in ("raw",):
                if name in phases:
                    self.results[name] = self.raw()
                    self.save()
            if "switch_l1" in phases or "stampede" in phases or "ttft" in phases:
                with self.proxy(1, True) as url:
                    if "switch_l1" in phases:
                        self.results["switch_l1"] = self.through_proxy(url)
                        self.save()
                    if "stampede" in phases:
                        self.results["stampede"] = self.stampede(url)
                        self.save()
                    if "ttft" in phases:
                        self.results["ttft"] = self.ttft(url)
                        self.save()
            if "switch_l2" in phases:
                with self.proxy(2, True) as url:
                    self.results["switch_l2"] = self.through_proxy(url)
                    self.save()
            if "nowarmup" in phases:
                with self.proxy(1, False) as url:
                    self.results["nowarmup"] = self.nowarmup(url)
                    self.save()
        finally:
            for server in self.servers.values():
                server.stop()
            self.save()


def meta(args: argparse.Namespace) -> dict[str, Any]:
    def run(cmd: list[str]) -> str:
        try:
            return subprocess.run(
                cmd, capture_output=True, text=True, timeout=30, check=False
            ).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": platform.node(),
        "python": platform.python_version(),
        "gpu": run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"]
        )
        or "none (emulated)",
        "vllm": run([sys.executable, "-c", "import vllm; print(vllm.__version__)"])
        or "not importable",
        "server": args.server,
        "common_flags": args.common,
        "tokens": args.tokens,
        "rounds": args.rounds,
        "models": {
            "model-a": {"path": args.model_a, "util": args.util_a, "extra": args.extra_a},
            "model-b": {"path": args.model_b, "util": args.util_b, "extra": args.extra_b},
        },
    }


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    s: dict[str, Any] = {}
    for name in ("reload", "raw", "switch_l1", "switch_l2"):
        if name in results:
            s[f"{name}_total_s"] = results[name]["total_s"]
    if "reload" in results and "switch_l1" in results:
        per_reload = results["reload"]["total_s"] / len(results["reload"]["turns"])
        per_switch = results["switch_l1"]["total_s"] / len(results["switch_l1"]["turns"])
        s["reload_over_switch_l1_per_turn"] = per_reload / per_switch
    for name in ("switch_l1", "switch_l2"):
        if (
            name in results
            and "reload" in results
            and len(results["reload"]["turns"]) == len(results[name]["turns"])
        ):
            s[f"reload_over_{name}"] = results["reload"]["total_s"] / results[name]["total_s"]
    if "switch_l1" in results and "raw" in results:
        sw = [t["sleep_s"] + t["wake_s"] + t["warmup_s"] for t in results["switch_l1"]["turns"]]
        raw = [t["sleep_s"] + t["wake_s"] + t["warmup_s"] for t in results["raw"]["turns"]]
        s["switch_over_raw"] = sum(sw) / sum(raw)
        s["switch_l1_median_s"] = statistics.median(sw)
        s["raw_median_s"] = statistics.median(raw)
    if "nowarmup" in results:
        t = results["nowarmup"]["turns"]
        s["first_over_steady_prompt"] = statistics.median(
            x["first_prompt_s"] for x in t
        ) / statistics.median(x["steady_prompt_s"] for x in t)
    if "ttft" in results:
        s["ttft_p50_s"] = results["ttft"]["p50_s"]
    if "stampede" in results:
        st = results["stampede"]
        s["stampede"] = {
            "all_ok": all(c == 200 for c in st["statuses"]),
            "switches": st["switches"],
            "wakes": st["wakes"],
            "warmups": st["warmups"],
        }
    return s


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-a", required=True)
    p.add_argument("--model-b", required=True)
    p.add_argument("--util-a", type=float, default=0.4)
    p.add_argument("--util-b", type=float, default=0.4)
    p.add_argument("--extra-a", default="")
    p.add_argument("--extra-b", default="")
    p.add_argument("--server", default=f"{sys.executable} -m vllm.entrypoints.openai.api_server")
    p.add_argument(
        "--common", default="--enable-sleep-mode --no-enable-prefix-caching --max-model-len 2048"
    )
    p.add_argument("--phases", default=",".join(ALL_PHASES))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument(
        "--first-round", type=int, default=0, help="to split the reload rounds across runs"
    )
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--logdir", default="/tmp/seed-bench-logs")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    Bench(args).run(args.phases.split(","))
    print(json.dumps(json.loads(Path(args.out).read_text())["summary"], indent=1))  # noqa: T201


if __name__ == "__main__":
    main()
