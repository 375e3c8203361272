"""A/B of the proxy's RSS creep: the same soak once per arm, one after the other, one summary.

    python3 bench/rss_ab.py --minutes 4 --out-dir bench/results/rss-20261201

Arms (each a bench/soak.py run with --probe, so glibc's and pymalloc's counters come along):
`old-asyncio` - the tree of 2026-11-27 (commit 1873471, before the proxy ran on uvloop) on
asyncio's loop, as the first soaks ran; `old-asyncio-recv16k` - the same with asyncio's
per-read buffer cut from 256 KiB to 16 KiB; `old-uvloop` - the same tree on uvloop; `now` - this
tree (`vllm-switch serve`, uvloop). The old tree is exported with `git archive` into a temporary
directory. Written: one soak JSON per arm and `summary.json` (per arm: RSS after warm-up and
at the end, slope after warm-up, the [heap] and glibc's free bytes at the first and last probe,
threads and glibc thread arenas).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OLD = "1873471"
ARMS: dict[str, tuple[bool, list[str]]] = {  # name: (old tree?, --proxy-env values)
    "old-asyncio": (True, ["RSS_PROBE_LOOP=asyncio"]),
    "old-asyncio-recv16k": (True, ["RSS_PROBE_LOOP=asyncio", "RSS_PROBE_RECV_MAX=16384"]),
    "old-uvloop": (True, []),
    "now": (False, []),
}


def summary(report: dict[str, Any]) -> dict[str, Any]:
    samples = [s for s in report["samples"] if not s.get("after_load")]
    probes = [p for p in report["probes"] if "mallinfo2" in p]
    trims = [p for p in report["probes"] if "rss_after_kib" in p]
    warm = next(s for s in samples if s["t_s"] >= report["rss_kib"]["warmup_s"])
    return {
        "requests": report["requests_sent"],
        "unanswered": report["unanswered"],
        "rss_kib": report["rss_kib"],
        "heap_kib_after_warmup_to_end": [warm["heap_kib"], samples[-1]["heap_kib"]],
        "other_anon_kib_after_warmup_to_end": [
            warm["other_anon_kib"],
            samples[-1]["other_anon_kib"],
        ],
        "glibc_in_use_bytes_first_last_probe": [
            probes[0]["mallinfo2"]["uordblks"],
            probes[-1]["mallinfo2"]["uordblks"],
        ],
        "glibc_free_bytes_first_last_probe": [
            probes[0]["mallinfo2"]["fordblks"],
            probes[-1]["mallinfo2"]["fordblks"],
        ],
        "gc_objects_first_last_probe": [probes[0]["gc_objects"], probes[-1]["gc_objects"]],
        "malloc_trim_gave_back_kib": (
            trims[0]["rss_before_kib"] - trims[0]["rss_after_kib"] if trims else None
        ),
        "threads": max(s["threads"] for s in samples),
        "thread_arenas": max(s["thread_arenas"] for s in samples),
        "thread_arena_kib_end": samples[-1]["thread_arena_kib"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=4)
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--no-faults", dest="faults", action="store_false")
    args = p.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    old = Path(tempfile.mkdtemp(prefix=f"vllm-switch-{OLD}-"))
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", OLD, "proxy"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
    results = {}
    for name in args.arms:
        is_old, env = ARMS[name]
        out = args.out_dir / f"{name}.json"
        cmd = [sys.executable, str(ROOT / "bench" / "soak.py"), "--requests", "0"]
        cmd += ["--minutes", str(args.minutes), "--probe", "--trim-at-end", "--out", str(out)]
        cmd += [] if args.faults else ["--no-faults"]
        cmd += ["--proxy-root", str(old)] if is_old else []
        for kv in env:
            cmd += ["--proxy-env", kv]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        results[name] = {"proxy_env": env, "tree": OLD if is_old else "this one"}
        results[name] |= summary(json.loads(out.read_text()))
        print(name, json.dumps(results[name]), flush=True)  # noqa: T201
    (args.out_dir / "summary.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
