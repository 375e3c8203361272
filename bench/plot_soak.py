"""The proxy's RSS over a soak, from bench/soak.py's JSON files: one line per file.

    python3 bench/plot_soak.py bench/results/soak-20261201-30min.json ... --out docs/img/soak-rss.png

Each line is labelled with its file's name (or `--label`), the requests it served and its growth
after warm-up; a dashed line marks the end of the warm-up of the first file. `--parts` adds the
first file's [heap] and other anonymous memory (dotted) under its RSS. `--key heap_kib` plots
another sample field instead of RSS (growth in the legend then in KiB, warm-up to the last sample);
`--no-zero` lets the y axis start near the data.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files", type=Path, nargs="+")
    p.add_argument("--label", action="append", default=[], help="one per file, in order")
    p.add_argument("--title", default="vllm-switch serve under bench/soak.py: RSS over time")
    p.add_argument("--parts", action="store_true", help="[heap] and other anonymous, first file")
    p.add_argument("--key", default="rss_kib", help="the sample field to plot (KiB)")
    p.add_argument("--no-zero", dest="zero", action="store_false", help="y axis not from 0")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=120)
    for i, path in enumerate(args.files):
        report = json.loads(path.read_text())
        samples = [s for s in report["samples"] if not s.get("after_load")]
        rss = report["rss_kib"]
        name = args.label[i] if i < len(args.label) else path.stem
        head = f"{name}: {report['requests_sent']:,} requests in {report['seconds'] / 60:.0f} min, "
        if args.key == "rss_kib":
            label = head + (
                f"{rss['growth_after_warmup_pct']:+.1f} % after warm-up "
                f"({rss['growth_pct']:+.1f} % from the first sample)"
            )
        else:
            warm = next(s for s in samples if s["t_s"] >= rss["warmup_s"])
            label = head + f"{samples[-1][args.key] - warm[args.key]:+,} KiB after warm-up"
        t = [s["t_s"] / 60 for s in samples]
        ax.plot(t, [s[args.key] / 1024 for s in samples], marker=".", label=label)
        if i == 0:
            ax.axvline(rss["warmup_s"] / 60, color="grey", linestyle="--", linewidth=0.8)
            ax.annotate(
                " end of warm-up",
                (rss["warmup_s"] / 60, ax.get_ylim()[1]),
                fontsize=8,
                color="grey",
            )
            if args.parts and args.key == "rss_kib":
                for key, what in (("heap_kib", "[heap]"), ("other_anon_kib", "other anonymous")):
                    ax.plot(
                        t,
                        [s.get(key, 0) / 1024 for s in samples],
                        linestyle=":",
                        label=f"{name}: {what}",
                    )
    ax.set_xlabel("minutes since the load started (0: /ready answered, no load yet)")
    ax.set_ylabel(f"MiB ({args.key.removesuffix('_kib')})")
    if args.zero:
        ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(args.title, fontsize=10)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out)


if __name__ == "__main__":
    main()
