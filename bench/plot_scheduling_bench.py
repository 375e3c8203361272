"""Charts for docs/benchmarks.md from a bench/scheduling.py result (matplotlib; not a runtime
dependency): throughput and switches per request, by workload and policy, side by side.

python3 bench/plot_scheduling_bench.py RESULT.json docs/img/scheduling-bench.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

COLORS = {"naive": "#9a9a9a", "fifo": "#d9822b", "default": "#2f6db5"}


def chart(r: dict[str, Any], out: Path) -> None:
    rows = r["results"]
    workloads = list(dict.fromkeys(x["workload"] for x in rows))
    policies = [p for p in COLORS if any(x["policy"] == p for x in rows)]
    by = {(x["workload"], x["policy"]): x for x in rows}
    panels = [
        ("throughput_rps", "requests per second (higher is better)"),
        ("switches_per_request", "switches per request (lower is better)"),
    ]
    fig, axes = plt.subplots(2, 1, figsize=(11, 6.4), sharex=True)
    width = 0.8 / len(policies)
    for ax, (key, title) in zip(axes, panels, strict=True):
        for i, policy in enumerate(policies):
            xs = [j + (i - (len(policies) - 1) / 2) * width for j in range(len(workloads))]
            ys = [by[(w, policy)][key] if (w, policy) in by else 0 for w in workloads]
            bars = ax.bar(xs, ys, width, label=policy, color=COLORS[policy])
            ax.bar_label(bars, fmt="%.2f" if key == "switches_per_request" else "%.1f", fontsize=7)
        ax.set_title(title, fontsize=10)
        ax.spines[["top", "right"]].set_visible(False)
    axes[0].legend(frameon=False, ncols=len(policies))
    labels = []
    for w in workloads:
        offered = by.get((w, "default"), {}).get("offered_rps")
        labels.append(f"{w}\n(offered {offered:g}/s)" if offered else w)
    axes[1].set_xticks(range(len(workloads)), labels, fontsize=8)
    m = r["machine"]
    fig.suptitle(
        f"bench/scheduling.py, emulated H100 timings, {r['date']}, "
        f"{m.get('cpus', '?')} CPUs, {r['settings']['duration']:g} s per run",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    chart(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]))


if __name__ == "__main__":
    main()
