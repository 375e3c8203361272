"""Chart for docs/benchmarks.md: vllm-switch's overhead before and after the HTTP-edge rebuild
(bench/overhead.py results of the same machine, same settings; matplotlib, not a dependency).

python3 bench/plot_edges.py docs/img/overhead-v2.png \
    BEFORE_1CONN.json BEFORE_64CONN.json AFTER_1CONN.json AFTER_64CONN.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

CELLS = [(1, False), (1, True), (64, False), (64, True)]


def row(results: list[dict[str, Any]], target: str, conc: int, stream: bool) -> dict[str, Any]:
    return next(
        r
        for r in results
        if r["target"] == target and r["concurrency"] == conc and r["stream"] is stream
    )


def load(one: Path, many: Path) -> list[dict[str, Any]]:
    """1-connection rows from `one`, 64-connection rows from `many` (a file may hold both)."""
    ones = [r for r in json.loads(one.read_text())["results"] if r["concurrency"] == 1]
    manys = [r for r in json.loads(many.read_text())["results"] if r["concurrency"] == 64]
    return [*ones, *manys]


def main() -> None:
    out, b1, b64, a1, a64 = map(Path, sys.argv[1:6])
    before, after = load(b1, b64), load(a1, a64)
    labels = [f"{c} conn.\n{'streamed' if s else 'not streamed'}" for c, s in CELLS]
    fig, (cpu, lat) = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.38
    xs = range(len(CELLS))
    for offset, (name, results, color) in enumerate(
        [("2026-11-27", before, "#9db7d9"), ("2026-12-01", after, "#2f6db5")]
    ):
        values = [row(results, "vllm-switch", c, s)["cpu_ms_per_request"] for c, s in CELLS]
        bars = cpu.bar([x + (offset - 0.5) * width for x in xs], values, width, color=color)
        cpu.bar_label(bars, fmt="%.2f", fontsize=8)
        bars[0].set_label(name)
        keys = ["added_ttft_p50_ms" if s else "added_total_p50_ms" for _, s in CELLS]
        added = [
            row(results, "vllm-switch", c, s)[k] for (c, s), k in zip(CELLS, keys, strict=True)
        ]
        bars = lat.bar([x + (offset - 0.5) * width for x in xs], added, width, color=color)
        lat.bar_label(bars, fmt="%.2f", fontsize=8)
    litellm = [row(after, "litellm", c, s)["cpu_ms_per_request"] for c, s in CELLS]
    cpu.set_title("vllm-switch CPU per request (ms)\nLiteLLM 1.108.7, same run: "
                  + " / ".join(f"{v:.1f}" for v in litellm))  # fmt: skip
    lat.set_title("added latency at p50 (ms): total, or first token when streamed")
    for ax in (cpu, lat):
        ax.set_xticks(list(xs), labels, fontsize=8)
        ax.axhline(0, color="black", linewidth=0.5)
    cpu.axhline(0.5, color="#c0392b", linestyle="--", linewidth=0.8, label="target 0.5 ms")
    lat.axhline(0.5, color="#c0392b", linestyle="--", linewidth=0.8)
    cpu.legend(fontsize=8)
    fig.suptitle(
        "2-core machine, emulated vLLM (1 conn.: 2.5 ms/token; 64 conn.: 50 ms/token), "
        "bench/overhead.py, 3 rounds",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main()
