"""Timeline for docs/scheduling.md: two closed-loop clients on one GPU, `fifo` against the
default policy, from the simulator of tests/unit/sim.py (which follows
proxy/switching/policy.py's decisions exactly). matplotlib; not a runtime dependency.

python3 bench/plot_scheduling.py docs/img/scheduling-timeline.png
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.patches import Patch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from proxy.backends.state import BackendState  # noqa: E402
from tests.unit.sim import Client, Sim, Spec  # noqa: E402

WINDOW_S = 60.0
MODELS = ("model-a", "model-b")
COLORS = {"model-a": "#2f6db5", "model-b": "#f2a33a"}
SEED = 7


def simulate(policy: str) -> Sim:
    """Each client sends its next request the moment it has its answer (0.3-1.2 s of service);
    a switch costs 0.5 s of sleep and 1.5 s of wake + warm-up."""
    rng = random.Random(SEED)
    services = {m: [rng.uniform(0.3, 1.2) for _ in range(200)] for m in MODELS}
    sim = Sim([Spec(m, sleep_s=0.5, wake_s=1.5) for m in MODELS], policy=policy)
    for m in MODELS:
        sim.client(Client(m, services[m]))
    sim.run()
    return sim


def summary(sim: Sim) -> tuple[int, int, float]:
    served = [r for r in sim.requests if r.end is not None and r.end <= WINDOW_S]
    switches = [s for s in sim.switches if s.at <= WINDOW_S and s.victims]
    return len(switches), len(served), max(r.wait for r in served)


def lane(ax: Axes, sim: Sim, y: float, model: str) -> None:
    for span in sim.spans:
        if span.model != model or span.start >= WINDOW_S:
            continue
        width = min(span.end, WINDOW_S) - span.start
        if span.state is BackendState.READY:
            ax.broken_barh([(span.start, width)], (y - 0.3, 0.6), color=COLORS[model])
        elif span.state in (BackendState.WAKING, BackendState.SLEEPING):
            ax.broken_barh(
                [(span.start, width)],
                (y - 0.3, 0.6),
                facecolor="white",
                edgecolor=COLORS[model],
                hatch="////" if span.state is BackendState.WAKING else "....",
            )
    for r in sim.requests:
        if r.model != model or r.start is None or r.arrival >= WINDOW_S:
            continue
        if r.wait > 0.05:
            ax.plot([r.arrival, min(r.start, WINDOW_S)], [y + 0.42] * 2, color="#c62828", lw=2)
        if r.end is not None and r.end <= WINDOW_S:
            ax.plot([r.end] * 2, [y - 0.3, y + 0.3], color="black", lw=0.6)


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "docs/img/scheduling-timeline.png")
    fig, axes = plt.subplots(2, 1, figsize=(11, 3.8), sharex=True)
    for ax, policy in zip(axes, ("fifo", "default"), strict=True):
        sim = simulate(policy)
        switches, served, worst = summary(sim)
        for y, model in enumerate(reversed(MODELS)):
            lane(ax, sim, float(y), model)
        ax.set_yticks([0, 1], list(reversed(MODELS)))
        ax.set_ylim(-0.6, 1.7)
        ax.set_title(
            f"policy: {policy} - {switches} switches for {served} requests in "
            f"{WINDOW_S:g} s, longest wait {worst:.1f} s",
            loc="left",
            fontsize=10,
        )
    axes[-1].set_xlim(0, WINDOW_S)
    axes[-1].set_xlabel("seconds (simulated: tests/unit/sim.py driving policy.decide)")
    fig.legend(
        handles=[
            Patch(color="#777777", label="awake, serving (a tick per answer)"),
            Patch(facecolor="white", edgecolor="#777777", hatch="////", label="waking"),
            Patch(facecolor="white", edgecolor="#777777", hatch="....", label="going to sleep"),
            Patch(color="#c62828", label="a request waiting"),
        ],
        loc="lower center",
        ncol=4,
        fontsize=9,
        frameon=False,
    )
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    for policy in ("fifo", "default"):
        switches, served, worst = summary(simulate(policy))
        print(f"{policy}: {switches} switches, {served} requests, longest wait {worst:.2f} s")  # noqa: T201


if __name__ == "__main__":
    main()
