"""Charts for docs/benchmarks.md from bench/results/seed-*.json (matplotlib; not a runtime dependency).

python3 bench/plot_seed.py bench/results/seed-h100-20261127-util050.json docs/img
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def total_chart(r: dict[str, Any], out: Path) -> None:
    rows = [
        ("reload every turn\n(vllm serve, ready, prompt, stop)", r["reload"]["total_s"]),
        ("raw vLLM\nsleep + wake + warm-up", r["raw"]["total_s"]),
        ("vllm-switch\nlevel 1 + warm-up", r["switch_l1"]["total_s"]),
        ("vllm-switch\nlevel 2 (staged) + warm-up", r["switch_l2"]["total_s"]),
    ]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    labels, values = zip(*rows, strict=True)
    bars = ax.barh(labels, values, color=["#b0b0b0", "#8fb3d9", "#2f6db5", "#5b8fd1"])
    ax.set_xscale("log")
    ax.set_xlabel("total wall time for 6 alternating turns, seconds (log scale)")
    ax.invert_yaxis()
    for bar, v in zip(bars, values, strict=True):
        ax.text(v * 1.08, bar.get_y() + bar.get_height() / 2, f"{v:.1f} s", va="center")
    ax.set_xlim(1, max(values) * 4)
    ax.set_title(f"Two models on one {r['meta']['card']}, vLLM {r['meta']['vllm']}")
    fig.tight_layout()
    fig.savefig(out / "seed-total.png", dpi=120)
    plt.close(fig)


def turns_chart(r: dict[str, Any], out: Path) -> None:
    phases = [("raw", "raw vLLM"), ("switch_l1", "vllm-switch L1"), ("switch_l2", "vllm-switch L2")]
    parts = [
        ("sleep_s", "sleep other", "#9e9e9e"),
        ("wake_s", "wake", "#2f6db5"),
        ("warmup_s", "warm-up", "#f2a33a"),
        ("prompt_s", "prompt (32 tokens)", "#4caf50"),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.6), sharey=True)
    for ax, (key, title) in zip(axes, phases, strict=True):
        turns = r[key]["turns"]
        xs = range(len(turns))
        bottom = [0.0] * len(turns)
        for field, label, color in parts:
            vals = [t[field] for t in turns]
            ax.bar(xs, vals, bottom=bottom, color=color, label=label)
            bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
        ax.set_xticks(list(xs), [f"{t['model'][-1].upper()}{t['round'] + 1}" for t in turns])
        ax.set_title(title)
    axes[0].set_ylabel("seconds per turn")
    axes[0].legend(loc="upper left", fontsize=8)
    fig.suptitle("Per-turn breakdown (A = 0.6B shape, B = 2B shape)")
    fig.tight_layout()
    fig.savefig(out / "seed-turns.png", dpi=120)
    plt.close(fig)


def main() -> None:
    results = json.loads(Path(sys.argv[1]).read_text())
    out = Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    total_chart(results, out)
    turns_chart(results, out)


if __name__ == "__main__":
    main()
