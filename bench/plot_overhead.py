"""Charts for docs/benchmarks.md from a bench/overhead.py result (matplotlib; not a runtime
dependency).

python3 bench/plot_overhead.py RESULT.json docs/img [PREFIX]   # PREFIX-added.png, PREFIX-cpu.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

COLORS = {"vllm-switch": "#2f6db5", "litellm": "#d9822b"}
SATURATED = 1.1  # direct latency at this concurrency over direct latency alone


def _rows(r: dict[str, Any], target: str, stream: bool) -> list[dict[str, Any]]:
    return [x for x in r["results"] if x["target"] == target and x["stream"] is stream]


def _tick(r: dict[str, Any], conc: int, stream: bool) -> str:
    """`64 concurrent`, flagged where the backend itself queued (the bars compare two queues)."""
    direct = [x for x in _rows(r, "direct", stream) if x["concurrency"] == conc]
    slowdown = direct[0].get("slowdown_vs_1_concurrent", 1.0) if direct else 1.0
    return f"{conc} concurrent" + ("\n(backend saturated)" if slowdown > SATURATED else "")


def added_chart(r: dict[str, Any], out: Path, prefix: str) -> None:
    """Added latency (p50, p99) per concurrency, non-streaming total and streaming TTFT."""
    panels = [
        (False, "total", "non-streaming: added total latency"),
        (True, "ttft", "streaming: added time to first token"),
    ]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, (stream, metric, title) in zip(axes, panels, strict=True):
        proxies = [t for t in COLORS if _rows(r, t, stream)]
        concs = [x["concurrency"] for x in _rows(r, proxies[0], stream)]
        width = 0.8 / (2 * len(proxies))
        for i, target in enumerate(proxies):
            rows = _rows(r, target, stream)
            for j, q in enumerate(("p50", "p99")):
                xs = [k + (2 * i + j - len(proxies) + 0.5) * width for k in range(len(concs))]
                ys = [x.get(f"added_{metric}_{q}_ms", 0) for x in rows]
                ax.bar(
                    xs,
                    ys,
                    width,
                    color=COLORS[target],
                    alpha=1.0 if q == "p50" else 0.45,
                    label=f"{target} {q}",
                )
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_xticks(range(len(concs)), [_tick(r, c, stream) for c in concs], fontsize=8)
        ax.set_ylabel("ms added vs direct")
        ax.set_yscale("symlog", linthresh=1)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    fig.suptitle(
        f"Proxy overhead, same backend ({r['settings']['backend']}; {r['machine']['cpus']} cores)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(out / f"{prefix}-added.png", dpi=120)
    plt.close(fig)


def cpu_chart(r: dict[str, Any], out: Path, prefix: str) -> None:
    """CPU per request of each proxy process, by concurrency (non-streaming and streaming)."""
    fig, ax = plt.subplots(figsize=(7, 3.4))
    for target, color in COLORS.items():
        for stream, style in ((False, "-"), (True, "--")):
            rows = _rows(r, target, stream)
            if rows:
                ax.plot(
                    [x["concurrency"] for x in rows],
                    [x["cpu_ms_per_request"] for x in rows],
                    style,
                    marker="o",
                    color=color,
                    label=f"{target} ({'streaming' if stream else 'non-streaming'})",
                )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrent requests")
    ax.set_ylabel("proxy CPU ms per request")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    ax.set_title("CPU each proxy spends per request (lower is better)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / f"{prefix}-cpu.png", dpi=120)
    plt.close(fig)


def main() -> None:
    result = json.loads(Path(sys.argv[1]).read_text())
    out = Path(sys.argv[2])
    prefix = sys.argv[3] if len(sys.argv) > 3 else "overhead"
    added_chart(result, out, prefix)
    cpu_chart(result, out, prefix)


if __name__ == "__main__":
    main()
