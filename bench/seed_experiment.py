"""The seed write-up's experiment, through vllm-switch, on one GPU (or, for a dry run, emulators).

Two models, three alternating rounds (A, B, A, B, A, B), one prompt per turn, prefix caching
off, one request at a time, fixed output length (ignore_eos, 32 tokens). Phases:

  reload     start `vllm serve` for the model, wait ready, prompt, stop - every turn
  bootstrap  start A, warm it, sleep it (pays the slow first sleep), start B, warm it
  raw        direct vLLM calls, no proxy: /sleep, /wake_up, 1-token warm-up, prompt
  raw_wf     direct, wake-first: /wake_up, warm-up, prompt, then /sleep the other (after the
             answer, as the proxy does when both fit)
  switch_l1  through vllm-switch, sleep level 1 + warm-up (sleep first: nothing declares that
             both fit)
  switch_wf  through vllm-switch, level 1, wake-first (the GPU's and models' memory declared)
  switch_l2  through vllm-switch, sleep level 2 (staged wake) + warm-up
  nowarmup   through vllm-switch without warm-up: first prompt after a wake vs. the next one
  stampede   32 concurrent first requests for the sleeping model (proxy counters before/after)
  ttft       switch-inclusive time to first token, streaming, to the sleeping model (10 samples)
  ttft_wf    the same through the wake-first proxy

`reload` needs the memory it starts with free: run it in a separate invocation from the others
(with --attach, other servers may stay up beside it if their memory leaves room). Results are
written to --out after every phase, so a run cut short still leaves what it measured.
`--attach model-a=URL,model-b=URL` uses servers started elsewhere (same flags as this script's)
instead of starting them; bootstrap then only warms and sleeps them.

    python3 bench/seed_experiment.py --model-a DIR_A --model-b DIR_B --out results.json \\
        [--phases bootstrap,raw,switch_l1,switch_l2,nowarmup,stampede,ttft] [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import seed_probes as probes
from proxyproc import serving
from seed_report import meta, summarize
from servers import Server, ServerSpec, start

from proxy.switching.policy import RETURN_SAMPLES

PROMPTS = [
    "Classify the sentiment of: the wake was fast.",
    "Write a caption for a photo of the Moon over the sea.",
    "Rerank these: sleep, wake, warm-up, prompt.",
    "Summarise Sleep Mode in one line.",
    "Give me a fun fact about GPUs.",
    "Translate 'model switching' into French.",
]
ALL_PHASES = (
    "bootstrap",
    "raw",
    "raw_wf",
    "switch_l1",
    "switch_wf",
    "switch_l2",
    "nowarmup",
    "stampede",
    "ttft",
    "ttft_wf",
)
PROXY_PHASES = {  # the proxy each phase runs through: (level, warm-up, wake-first)
    "switch_l1": (1, True, False),
    "stampede": (1, True, False),
    "ttft": (1, True, False),
    "switch_wf": (1, True, True),
    "ttft_wf": (1, True, True),
    "switch_l2": (2, True, False),
    "nowarmup": (1, False, False),
}


@dataclass
class Attached:
    """A server started elsewhere (--attach): its URL; stopping it is its owner's business."""

    url: str

    def stop(self) -> float:
        return 0.0


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
        self.servers: dict[str, Server | Attached] = {}
        self.attach = dict(kv.split("=", 1) for kv in args.attach.split(",")) if args.attach else {}
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
        return dict(self.results["reload"])

    def bootstrap(self) -> dict[str, Any]:
        """Start each model while the other sleeps; pay every one-time cost (compile, first
        prompt, the slow first sleep that allocates pinned host memory) here, not in a turn."""
        out: dict[str, Any] = {}
        for spec in self.specs:
            if spec.name in self.attach:
                server: Server | Attached = Attached(self.attach[spec.name].rstrip("/"))
                self.servers[spec.name] = server
                if self.http.get(f"{server.url}/is_sleeping").json()["is_sleeping"]:
                    self.http.post(f"{server.url}/wake_up").raise_for_status()
            else:
                started = start(spec, self.args.server, self.common, self.logdir)
                self.servers[spec.name] = server = started
                out[f"{spec.name}_start_s"] = started.wait_ready()
            out[f"{spec.name}_first_prompt_s"], _ = self.prompt(server.url, spec.name, "warm up")
            t0 = time.monotonic()
            self.http.post(
                f"{server.url}/sleep", params={"level": 1, "mode": "wait"}
            ).raise_for_status()
            out[f"{spec.name}_first_sleep_s"] = time.monotonic() - t0
        self.http.post(f"{self.servers[self.specs[-1].name].url}/wake_up").raise_for_status()
        return out

    def raw(self, wake_first: bool = False) -> dict[str, Any]:
        """The switch made by hand. Sleep first: the other sleeps, the target wakes. Wake first
        (raw_wf): the target wakes beside the other, which sleeps after the answer (timed apart
        as sleep_after_s, not part of the turn)."""
        turns = []
        awake = "model-b"
        sleep = {"level": 1, "mode": "wait"}
        for r, spec, prompt in self.turns():
            cur, tgt = self.servers[awake].url, self.servers[spec.name].url
            t0 = time.monotonic()
            if not wake_first:
                self.http.post(f"{cur}/sleep", params=sleep).raise_for_status()
            t1 = time.monotonic()
            self.http.post(f"{tgt}/wake_up").raise_for_status()
            t2 = time.monotonic()
            self.prompt(tgt, spec.name, "Hi", 1)
            t3 = time.monotonic()
            prompt_s, _ = self.prompt(tgt, spec.name, prompt)
            turn = {"round": r, "model": spec.name, "sleep_s": t1 - t0, "wake_s": t2 - t1}
            turn |= {"warmup_s": t3 - t2, "prompt_s": prompt_s, "total_s": time.monotonic() - t0}
            if wake_first:
                t4 = time.monotonic()
                self.http.post(f"{cur}/sleep", params=sleep).raise_for_status()
                turn["sleep_after_s"] = time.monotonic() - t4
            turns.append(turn)
            awake = spec.name
        return {"turns": turns, "total_s": sum(t["total_s"] for t in turns)}

    def raw_wf(self) -> dict[str, Any]:
        return self.raw(wake_first=True)

    def memory(self, wake_first: bool) -> tuple[dict[str, Any], dict[str, Any]]:
        """Declared memory (GiB) for a wake-first proxy: each model `util` of the GPU awake,
        2 GiB asleep; the group the GPU less 10 %. Empty (sleep first) otherwise."""
        if not wake_first:
            return {}, {}
        total = self.args.gpu_gib
        models = {
            s.name: {"memory_gib": s.util * total, "asleep_memory_gib": 2.0} for s in self.specs
        }
        return {"memory_gib": 0.9 * total}, models

    @contextlib.contextmanager
    def proxy(self, level: int, warmup: bool, wake_first: bool = False) -> Iterator[str]:
        gpu, memory = self.memory(wake_first)
        config = {
            "host": "127.0.0.1",
            "port": 0,
            "gpus": [{"name": "gpu0", "max_awake": 1, **gpu}],
            "logging": {"format": "plain", "level": "warning"},
            "models": [
                {
                    "name": s.name,
                    "url": self.servers[s.name].url,
                    "gpu": "gpu0",
                    "sleep_level": level,
                    "warmup": {"enabled": warmup},
                    **memory.get(s.name, {}),
                }
                for s in self.specs
            ],
        }
        name = f"l{level}-{'w' if warmup else 'nw'}{'-wf' if wake_first else ''}"
        with serving(config, self.logdir / f"proxy-{name}.yaml") as url:
            yield url

    def through_proxy(self, url: str, *, prime: bool = True) -> dict[str, Any]:
        if prime:  # untimed alternations: every model slept and woken the configured way, and
            # each seen idle RETURN_SAMPLES times (the scheduler learns it is left for the other)
            for spec in self.specs * (RETURN_SAMPLES + 1):
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

    def stampede(self, url: str) -> dict[str, Any]:
        return probes.stampede(self.http, url, chat, self.tokens)

    def ttft(self, url: str) -> dict[str, Any]:
        return probes.ttft(self.http, url, chat, self.tokens, PROMPTS)

    def phase(self, name: str, url: str | None = None) -> None:
        """Run one phase and save; a phase that fails is recorded and the next ones still run."""
        try:
            if url is None:
                self.results[name] = getattr(self, name)()
            elif name.startswith("switch"):
                self.results[name] = self.through_proxy(url)
            elif name.startswith("ttft"):
                self.results[name] = self.ttft(url)
            else:
                self.results[name] = getattr(self, name)(url)
        except Exception as exc:  # noqa: BLE001 - recorded; the other phases still run
            self.results.setdefault("errors", {})[name] = f"{type(exc).__name__}: {exc}"
        self.save()

    def run(self, phases: list[str]) -> None:
        try:
            if "reload" in phases:
                self.reload()
            if set(phases) & set(ALL_PHASES):
                self.results["bootstrap"] = self.bootstrap()
                self.save()
            for name in ("raw", "raw_wf"):
                if name in phases:
                    self.phase(name)
            for setup in dict.fromkeys(PROXY_PHASES.values()):  # each proxy once, in order
                todo = [n for n, s in PROXY_PHASES.items() if s == setup and n in phases]
                if todo:
                    with self.proxy(*setup) as url:
                        for name in todo:
                            self.phase(name, url)
        finally:
            for server in self.servers.values():
                server.stop()
            self.save()


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
    p.add_argument(
        "--attach", default="", help="model-a=URL,model-b=URL: servers started elsewhere"
    )
    p.add_argument("--gpu-gib", type=float, default=80.0, help="for the wake-first declaration")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    Bench(args).run(args.phases.split(","))
    print(json.dumps(json.loads(Path(args.out).read_text())["summary"], indent=1))  # noqa: T201


if __name__ == "__main__":
    main()
