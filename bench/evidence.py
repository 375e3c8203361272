"""Issue 18's real-GPU evidence in one detached run: stage after stage, each skipped when the
time left is shorter than its estimate, everything written under OUT as it is measured.

    python3 bench/evidence.py OUT --deadline-s 1260            # on the GPU host (vLLM importable)
    python3 bench/evidence.py OUT --deadline-s 300 --emulate   # dry run: emulators, no GPU

Stages (in priority order; OUT/progress.json says what ran, how long, what failed):

  checkpoints  random-weight checkpoints: Qwen3-0.6B, Llama-3.2-1B, Qwen3-4B shapes (vocab 4096)
  start        seven servers at once: the three models (sleep mode, prefix caching off, as the
               seed) and four conformance servers (dev + sleep mode, no dev + API key, a pooling
               model, auto tool choice with the hermes parser)
  conformance  tests/conformance against the four (JUnit), new routes recorded as transcripts
               (bench/gpu/record_routes.py); then the four are stopped
  seed         the seed experiment on model-a + model-b: raw, raw wake-first, level 1 sleep-first
               and wake-first, level 2, no warm-up, stampede, TTFT both ways (bench/seed_experiment.py)
  reload       its reload baseline: cold starts with the compile cache warm, beside the others
  scheduling   bench/scheduling.py attached to the three: fifo vs default
  faults       the pipeline and supervised faults (bench/faults_real.py): adoption, backend
               SIGKILL mid-stream, proxy SIGKILL and restart
  soak         bench/soak.py attached to what the faults left serving: RSS over minutes

This process owns the servers it starts (each in a session of its own, stopped by its group at
the end) and OUT; the stages' own scripts own theirs.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from evidence_servers import BENCH, CONFORMANCE, Fleet

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {"a": "qwen3-0.6b", "b": "llama-3.2-1b", "c": "qwen3-4b", "t": "qwen3-0.6b"}
TOOLS_KEY = "t"  # the tool server's checkpoint: the tiny one with <tool_call> tokens (hermes)


class Run:
    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.out: Path = a.out
        self.out.mkdir(parents=True, exist_ok=True)
        self.t0 = time.monotonic()
        self.deadline = self.t0 + a.deadline_s
        self.progress: list[dict[str, Any]] = []
        models = Path(a.models_dir)
        self.paths = {k: str(models / f"ev-{shape}") for k, shape in SHAPES.items()}
        self.paths[TOOLS_KEY] = str(models / "ev-tools")
        if a.emulate:
            self.paths = {k: f"emu-{shape}" for k, shape in SHAPES.items()}
            server = f"{sys.executable} -m proxy emulate"
        else:
            server = f"{sys.executable} -m vllm.entrypoints.openai.api_server"
        self.fleet = Fleet(server, self.paths, self.out / "servers", emulate=a.emulate)

    # ----- plumbing ---------------------------------------------------------------------------
    def left(self) -> float:
        return self.deadline - time.monotonic()

    def save(self) -> None:
        (self.out / "progress.json").write_text(
            json.dumps(
                {"elapsed_s": round(time.monotonic() - self.t0, 1), "stages": self.progress},
                indent=1,
            )
        )

    def sh(
        self, name: str, argv: list[str], timeout_s: float, env: dict[str, str] | None = None
    ) -> int:
        """Run one stage's command, its output in OUT/NAME.log; killed (its group) at the timeout
        or the deadline, whichever comes first."""
        timeout_s = max(5.0, min(timeout_s, self.left()))
        with (self.out / f"{name}.log").open("a") as log:
            log.write(f"$ {shlex.join(argv)}\n")
            log.flush()
            proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                start_new_session=True,
                env={**os.environ, **(env or {})},
            )
            try:
                return proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 2)  # SIGINT: the script's own cleanup stops what it started
                try:
                    return proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, 9)
                    proc.wait()
                    return -9

    def stage(self, name: str, estimate_s: float, fn: Callable[[], Any]) -> None:
        entry: dict[str, Any] = {"stage": name, "estimate_s": estimate_s}
        if name in self.a.skip or self.left() < estimate_s:
            entry["status"] = "skipped" if name in self.a.skip else "skipped: no time left"
            self.progress.append(entry)
            self.save()
            return
        t = time.monotonic()
        entry["status"] = "running"
        self.progress.append(entry)
        self.save()
        try:
            result = fn()
            entry["status"] = "ok" if result in (None, 0, True) else f"failed: {result}"
        except Exception as exc:  # noqa: BLE001 - recorded; the next stage still runs
            entry["status"] = f"error: {type(exc).__name__}: {exc}"
        entry["seconds"] = round(time.monotonic() - t, 1)
        self.save()

    # ----- stages -----------------------------------------------------------------------------
    def checkpoints(self) -> int:
        """make_checkpoint.py locks each one: one begun earlier in the background (bench/gpu/
        lease.sh part 1) is waited for, and found made, not made twice."""
        procs = []
        for key, shape in SHAPES.items():
            argv = [sys.executable, "bench/make_checkpoint.py", self.paths[key], "--shape", shape]
            argv += ["--tool-tokens"] if key == TOOLS_KEY else []
            log = (self.out / f"checkpoint-{key}.log").open("w")
            procs.append(subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT))
        return max([p.wait(timeout=max(5, self.left())) for p in procs], default=0)

    def start(self) -> int:
        self.fleet.start([*BENCH, *CONFORMANCE])
        ready = self.fleet.wait_ready(timeout_s=min(600, self.left() - 60))
        (self.out / "servers.json").write_text(json.dumps(ready, indent=1))
        return 0 if all(r.get("ready_s") is not None for r in ready.values()) else 1

    def conformance(self) -> int:
        """The suite (not in --quick: CI runs it against emulators anyway), then the recorder."""
        env = self.fleet.conformance_env()
        junit = self.out / "conformance-junit.xml"
        argv = [
            sys.executable,
            "-m",
            "pytest",
            "tests/conformance",
            "-p",
            "no:cacheprovider",
            "-rA",
            "-o",
            "timeout=180",
            f"--junitxml={junit}",
        ]
        rc = 0 if self.a.quick else self.sh("conformance", argv, 300, env)
        rec = [
            sys.executable,
            "bench/gpu/record_routes.py",
            *self.fleet.record_args(),
            "--out",
            str(self.out / "vllm026-routes-h200.json"),
        ]
        rc2 = self.sh("record-routes", rec, 120)
        self.fleet.stop([s.name for s in CONFORMANCE])
        return rc or rc2

    def seed_args(self) -> list[str]:
        a, b = BENCH[0], BENCH[1]
        return [
            sys.executable,
            "bench/seed_experiment.py",
            "--model-a",
            self.paths["a"],
            "--model-b",
            self.paths["b"],
            "--util-a",
            str(a.util),
            "--util-b",
            str(b.util),
            "--server",
            self.fleet.server,
            "--common",
            shlex.join(self.fleet.common(a)),
            "--gpu-gib",
            str(self.fleet.gpu_gib()),
            "--logdir",
            str(self.out / "seed-logs"),
            "--out",
            str(self.out / "seed.json"),
        ]

    def seed(self) -> int:
        rounds = ["--rounds", "1"] if self.a.quick else []
        attach = f"model-a={self.fleet.url('model-a')},model-b={self.fleet.url('model-b')}"
        phases = "bootstrap,raw,raw_wf,switch_l1,switch_wf,ttft,ttft_wf,switch_l2,stampede,nowarmup"
        argv = [*self.seed_args(), "--attach", attach, "--phases", phases, *rounds]
        return self.sh("seed", argv, 360)

    def reload(self) -> int:
        return self.sh("reload", [*self.seed_args(), "--phases", "reload", "--rounds", "1"], 420)

    def backends(self, names: list[str]) -> str:
        return ",".join(f"{n}={self.fleet.url(n)}" for n in names)

    def scheduling(self) -> int:
        argv = [
            sys.executable,
            "bench/scheduling.py",
            "--backends",
            self.backends(["model-a", "model-b", "model-c"]),
            "--only",
            "closed-k3,poisson-20,pipeline",
            "--clients",
            "3",
            "--rates",
            "20",
            "--duration",
            str(self.a.sched_duration),
            "--policies",
            "fifo,default",
            "--out",
            str(self.out / "scheduling.json"),
            *(["--quick"] if self.a.quick else []),
        ]
        return self.sh("scheduling", argv, 420)

    def faults(self) -> int:
        models = [
            self.fleet.model_entry(s, name, level)
            for s, name, level in zip(
                BENCH, ("classify", "caption", "rerank"), (1, 1, 2), strict=True
            )
        ]
        path = self.out / "faults-models.json"
        path.write_text(json.dumps(models, indent=1))
        argv = [
            sys.executable,
            "bench/faults_real.py",
            "--models",
            str(path),
            "--out",
            str(self.out / "faults.json"),
            "--work",
            str(self.out / "faults-work"),
            "--pipelines",
            "1" if self.a.quick else "8",
        ]
        rc = self.sh("faults", [*argv, *([] if self.a.emulate else ["--nvml"])], 600)
        self.fleet.forget(["model-a"])  # ended with proxy 2; b and c were adopted and still serve
        return rc

    def soak(self) -> int:
        minutes = max(0.05, min(self.a.soak_minutes, (self.left() - 60) / 60))
        argv = [
            sys.executable,
            "bench/soak.py",
            "--backends",
            self.backends(["model-b", "model-c"]),
            "--requests",
            "0",
            "--minutes",
            f"{minutes:.2f}",
            "--sample-s",
            "5",
            "--warmup-s",
            "30",
            "--out",
            str(self.out / "soak.json"),
        ]
        return self.sh("soak", argv, minutes * 60 + 120)

    def run(self) -> None:
        try:
            self.stage(
                "checkpoints",
                5 if self.a.emulate else 60,
                lambda: 0 if self.a.emulate else self.checkpoints(),
            )
            self.stage("start", 30 if self.a.emulate else 240, self.start)
            self.stage("conformance", 20 if self.a.emulate else 90, self.conformance)
            self.stage("seed", 20 if self.a.emulate else 120, self.seed)
            self.stage("reload", 10 if self.a.emulate else 200, self.reload)
            self.stage("scheduling", 20 if self.a.emulate else 200, self.scheduling)
            self.stage("faults", 20 if self.a.emulate else 240, self.faults)
            self.stage("soak", 20 if self.a.emulate else 120, self.soak)
        finally:
            self.fleet.stop_all()
            self.progress.append({"stage": "end", "left_s": round(self.left(), 1)})
            self.save()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--deadline-s", type=float, default=1260)
    p.add_argument("--emulate", action="store_true", help="emulated vLLM servers (CI dry run)")
    p.add_argument("--models-dir", default=os.environ.get("MODELS_DIR", "/tmp/models"))
    p.add_argument("--skip", type=lambda v: v.split(","), default=[])
    p.add_argument("--sched-duration", type=float, default=15)
    p.add_argument("--soak-minutes", type=float, default=3)
    p.add_argument(
        "--quick",
        action="store_true",
        help="CI dry run: one seed round, no conformance suite, 1 s scheduling runs, one pipeline",
    )
    Run(p.parse_args()).run()


if __name__ == "__main__":
    main()
