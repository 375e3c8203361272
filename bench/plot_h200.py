"""Charts for docs/benchmarks.md from one bench/evidence.py run (matplotlib; not a dependency).

    python3 bench/plot_h200.py bench/results/evidence-h200-20261201 docs/img

seed-h200-turns.png: where a turn's time goes, median per phase (the proxy's hold before a
switch is its queue time beyond sleep + wake + warm-up). scheduling-h200.png: fifo vs default
throughput per workload, and one client's pipeline classify -> caption -> rerank.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

PARTS = ("hold", "sleep_s", "wake_s", "warmup_s", "prompt_s")
COLORS = ("#d98f8f", "#8fb3d9", "#2f6db5", "#5b8fd1", "#b0b0b0")


def turn_parts(phase: dict[str, Any]) -> dict[str, float]:
    out = {}
    for part in PARTS:
        if part == "hold":  # queue time that was not the switch: the scheduler waiting
            values = [
                max(0.0, t.get("queue_s", 0.0) - t["sleep_s"] - t["wake_s"] - t["warmup_s"])
                for t in phase["turns"]
            ]
        else:
            values = [t[part] for t in phase["turns"]]
        out[part] = statistics.median(values)
    return out


def seed_chart(seed: dict[str, Any], out: Path) -> None:
    rows = [
        ("raw vLLM, sleep first", "raw"),
        ("vllm-switch, sleep first", "switch_l1"),
        ("raw vLLM, wake first", "raw_wf"),
        ("vllm-switch, wake first", "switch_wf"),
        ("vllm-switch, level 2", "switch_l2"),
    ]
    fig, ax = plt.subplots(figsize=(8, 3.4))
    for i, (_, key) in enumerate(rows):
        left = 0.0
        for part, color in zip(PARTS, COLORS, strict=True):
            value = turn_parts(seed[key])[part]
            ax.barh(i, value, left=left, color=color, label=part if i == 0 else None)
            left += value
        ax.text(left + 0.01, i, f"{left:.3f} s", va="center", fontsize=8)
    ax.set_yticks(range(len(rows)), [r[0] for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel("median seconds per turn (32-token answer), H200, vLLM 0.26.0")
    names = ["scheduler hold", "sleep", "wake", "warm-up", "prompt"]
    ax.legend(ax.get_legend_handles_labels()[0], names, fontsize=7, loc="center right")
    reload = seed["reload"]["total_s"] / len(seed["reload"]["turns"])
    ax.set_title(f"one turn of the seed experiment (reload every turn: {reload:.1f} s)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "seed-h200-turns.png", dpi=120)
    plt.close(fig)


def scheduling_chart(sched: dict[str, Any], faults: dict[str, Any], out: Path) -> None:
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    rows = sched["results"]
    workloads = list(dict.fromkeys(r["workload"] for r in rows))
    for j, policy in enumerate(("fifo", "default")):
        values = [
            next(r["throughput_rps"] for r in rows if r["workload"] == w and r["policy"] == policy)
            for w in workloads
        ]
        a.bar([i + 0.4 * j for i in range(len(workloads))], values, width=0.4, label=policy)
    a.set_xticks([i + 0.2 for i in range(len(workloads))], workloads)
    a.set_ylabel("requests/s (3 models, max_awake 1)")
    a.legend(fontsize=8)
    one = {"fifo": faults["pipeline_fifo"]["summary"], "default": faults["pipeline"]["summary"]}
    b.bar(list(one), [s["pipeline_p50_s"] for s in one.values()], color=["#8fb3d9", "#2f6db5"])
    b.set_ylabel("one client's pipeline p50, s")
    b.set_title("classify -> caption -> rerank (L1, L1, L2)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "scheduling-h200.png", dpi=120)
    plt.close(fig)


def main() -> None:
    run, out = Path(sys.argv[1]), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    seed_chart(json.loads((run / "seed.json").read_text()), out)
    sched = json.loads((run / "scheduling.json").read_text())
    scheduling_chart(sched, json.loads((run / "faults.json").read_text()), out)


if __name__ == "__main__":
    main()
