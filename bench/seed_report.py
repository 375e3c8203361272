"""The seed experiment's report: the run's facts (`meta`) and the ratios it is judged by
(`summarize`). Pure functions of bench/seed_experiment.py's results; no state.

Per-turn ratios divide a turn's mean time (reload: start, prompt, stop; switch: everything the
client waited for, its answer included) so that runs of different round counts compare.
`switch_over_raw` compares the switch itself (sleep + wake + warm-up) through the proxy with the
same calls made directly, in the same run; `switch_wf_over_raw_wf` does the same for wake-first
(wake + warm-up: the victim sleeps after the answer, off the request's path).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import time
from typing import Any


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
        "attach": args.attach or None,
        "models": {
            "model-a": {"path": args.model_a, "util": args.util_a, "extra": args.extra_a},
            "model-b": {"path": args.model_b, "util": args.util_b, "extra": args.extra_b},
        },
    }


def per_turn(phase: dict[str, Any]) -> float:
    return float(phase["total_s"]) / len(phase["turns"])


def _switch_s(turn: dict[str, Any]) -> float:
    return float(turn["sleep_s"] + turn["wake_s"] + turn["warmup_s"])


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    s: dict[str, Any] = {}
    for name in ("reload", "raw", "raw_wf", "switch_l1", "switch_wf", "switch_l2"):
        if name in results:
            s[f"{name}_total_s"] = results[name]["total_s"]
            s[f"{name}_per_turn_s"] = per_turn(results[name])
    if "reload" in results:
        for name in ("switch_l1", "switch_wf", "switch_l2"):
            if name in results:
                s[f"reload_over_{name}_per_turn"] = per_turn(results["reload"]) / per_turn(
                    results[name]
                )
    for name in ("switch_l1", "switch_l2"):
        if (
            name in results
            and "reload" in results
            and len(results["reload"]["turns"]) == len(results[name]["turns"])
        ):
            s[f"reload_over_{name}"] = results["reload"]["total_s"] / results[name]["total_s"]
    for proxied, raw_name, ratio, prefix in (
        ("switch_l1", "raw", "switch_over_raw", ("switch_l1", "raw")),
        ("switch_wf", "raw_wf", "switch_wf_over_raw_wf", ("switch_wf", "raw_wf")),
    ):
        if proxied not in results or raw_name not in results:
            continue
        sw = [_switch_s(t) for t in results[proxied]["turns"]]
        raw = [_switch_s(t) for t in results[raw_name]["turns"]]
        s[ratio] = sum(sw) / sum(raw)
        s[f"{prefix[0]}_median_s"] = statistics.median(sw)
        s[f"{prefix[1]}_median_s"] = statistics.median(raw)
    if "switch_wf" in results and "raw_wf" in results:
        s["switch_wf_turn_over_raw_wf_turn"] = (
            results["switch_wf"]["total_s"] / results["raw_wf"]["total_s"]
        )
    if "nowarmup" in results:
        t = results["nowarmup"]["turns"]
        s["first_over_steady_prompt"] = statistics.median(
            x["first_prompt_s"] for x in t
        ) / statistics.median(x["steady_prompt_s"] for x in t)
    for name in ("ttft", "ttft_wf"):
        if name in results:
            s[f"{name}_p50_s"] = results[name]["p50_s"]
    if "stampede" in results:
        st = results["stampede"]
        s["stampede"] = {
            "all_ok": all(c == 200 for c in st["statuses"]),
            "switches": st["switches"],
            "wakes": st["wakes"],
            "warmups": st["warmups"],
        }
    return s
