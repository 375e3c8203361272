"""The scheduling benchmark's report: percentiles, one run's summary, the issue's targets and the
printed table (bench/scheduling.py measures; this module only computes from what it saw).
Stateless."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.scheduling import Done, Load, Workload


def pct(xs: list[float], q: float) -> float | None:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else None


def ms(x: float | None) -> float | None:
    return None if x is None else round(x * 1000, 1)


def latency(done: list[Done]) -> dict[str, Any]:
    lat, queue = [d[1] for d in done], [d[2] for d in done]
    return {
        "requests": len(done),
        "latency_p50_ms": ms(pct(lat, 0.5)),
        "latency_p99_ms": ms(pct(lat, 0.99)),
        "queue_wait_p50_ms": ms(pct(queue, 0.5)),
        "queue_wait_p99_ms": ms(pct(queue, 0.99)),
        "queue_wait_max_ms": ms(max(queue, default=None)),
    }


def summarize(
    w: Workload,
    policy: str,
    cfg: Any,
    s: Load,
    duration: float,
    reads: tuple[dict[str, float], dict[str, float], dict[str, float]],
) -> dict[str, Any]:
    """`reads`: the counters at the window's start, at its end, and once every request ended."""
    before, at_end, after = reads
    in_window = sum(d[4] <= s.end for d in s.done)
    switches = at_end["switches"] - before["switches"]
    switching_s = at_end["switching_s"] - before["switching_s"]
    all_switches = after["switches"] - before["switches"]  # the tail's included
    all_switching_s = after["switching_s"] - before["switching_s"]
    row: dict[str, Any] = {
        "workload": w.name,
        "policy": policy,
        "kind": w.kind,
        "clients": w.clients,
        "duration_s": duration,
        "requests_completed": len(s.done),
        "requests_in_window": in_window,
        "throughput_rps": round(in_window / duration, 2),
        **{k: v for k, v in latency(s.done).items() if k != "requests"},
        "waited_for_wake_fraction": round(sum(d[3] for d in s.done) / max(1, len(s.done)), 3),
        "switches": switches,
        "switches_per_request": round(switches / max(1, in_window), 3),
        "switching_s": round(switching_s, 3),
        "switching_fraction": round(switching_s / duration, 3),
        "switches_until_all_done": all_switches,
        "mean_switch_ms": ms(all_switching_s / all_switches) if all_switches else None,
        "decisions": {  # by reason, in the window (none before the policy was wired in)
            k.split(":", 1)[1]: at_end[k] - before.get(k, 0.0)
            for k in at_end
            if k.startswith("decision:") and at_end[k] > before.get(k, 0.0)
        },
        "switches_not_ok": after["switches_not_ok"] - before["switches_not_ok"],
        "errors": sum(s.errors.values()),
        "error_kinds": dict(s.errors),
        "invariants": {  # both stay 0: no wake into too little memory, none forwarded asleep
            # (None: not measured - attached servers have no emulator counters)
            k: after[k] - before[k] if k in after else None
            for k in ("oom_events", "requests_queued_while_asleep")
        },
        "per_model": {m: latency([d for d in s.done if d[0] == m]) for m in w.models},
        "config": cfg,
    }
    if w.kind == "poisson":
        row["offered_rps"] = round(s.arrivals / duration, 2)
    if w.kind == "pipeline":
        lat = [p[0] for p in s.pipelines]
        row["pipelines_in_window"] = sum(p[1] <= s.end for p in s.pipelines)
        row["pipelines_per_s"] = round(row["pipelines_in_window"] / duration, 2)
        row["pipeline_p50_ms"], row["pipeline_p99_ms"] = ms(pct(lat, 0.5)), ms(pct(lat, 0.99))
    return row


def targets(rows: list[dict[str, Any]], max_wait_s: float) -> dict[str, Any]:
    """The issue's goals for `default`, against `naive` (strict FIFO) of the same run; the
    ratio to `fifo` (FIFO with join, as llama-swap) is reported beside them, not a goal."""
    by = {(r["workload"], r["policy"]): r for r in rows}
    out: dict[str, Any] = {}
    for (name, policy), r in by.items():
        if policy != "default":
            continue
        for base, goal in (("naive", 3.0), ("fifo", None)):
            other = by.get((name, base))
            if other and r["kind"] in ("closed", "poisson") and other["throughput_rps"]:
                ratio = round(r["throughput_rps"] / other["throughput_rps"], 2)
                key = f"{name}: throughput default/{base}" + (f" >= {goal:g}" if goal else "")
                out[key] = {"value": ratio, "met": ratio >= goal if goal else None}
        switch_ms = r["mean_switch_ms"] or 0
        for other in (by.get((name, base)) for base in ("naive", "fifo")):
            switch_ms = switch_ms or (other or {}).get("mean_switch_ms") or 0
        bound, q99 = max_wait_s * 1000 + switch_ms, r["queue_wait_p99_ms"]
        out[f"{name}: queue wait p99 ms <= max_wait_s + one switch ({bound:.0f} ms)"] = {
            "value": q99,
            "met": q99 is not None and q99 <= bound,
        }
    if (k2 := by.get(("closed-k2", "default"))) is not None:
        v = k2["switches_per_request"]
        out["closed-k2: switches per request <= 0.1"] = {"value": v, "met": v <= 0.1}
    return out


COLUMNS: tuple[str, ...] = ("workload", "policy", "requests_completed", "throughput_rps")
COLUMNS += ("latency_p50_ms", "latency_p99_ms", "queue_wait_p99_ms", "switches_per_request")
COLUMNS += ("switching_fraction",)


def table(rows: list[dict[str, Any]]) -> str:
    head = "workload | policy | done | req/s | p50 ms | p99 ms | queue p99 ms | switches/req"
    lines = [f"| {head} | switching | errors |", "|" + "---|" * (len(COLUMNS) + 1)]
    for r in rows:
        cells = [*(str(r[k]) for k in COLUMNS[:-1]), f"{100 * r[COLUMNS[-1]]:.0f} %"]
        lines.append(f"| {' | '.join(cells)} | {r['errors']} |")
    return "\n".join(lines)
