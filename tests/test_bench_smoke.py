"""The benchmarks keep working: each runs end to end in a tiny mode (no timing asserted)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.processes import required_tool

pytestmark = pytest.mark.process  # each benchmark as a subprocess

ROOT = Path(__file__).resolve().parents[1]


def run_bench(script: str, out: Path, *args: str, timeout_s: float = 110) -> Any:
    """Run bench/`script` with `args`; its whole JSON report. A failure or a timeout fails the
    test with the end of the child's stderr and stdout (a bare exit status says nothing)."""
    argv = [sys.executable, str(ROOT / "bench" / script), *args, "--out", str(out)]
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        # SIGINT first: the benchmark's own cleanup stops the servers it started (each in a
        # session of its own, out of reach of a group kill); then its group, by the PID we own
        proc.send_signal(signal.SIGINT)
        try:
            stdout, stderr = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
        pytest.fail(f"{script} ran past {timeout_s:g}s:\n{_tails(stdout, stderr)}")
    assert proc.returncode == 0, (
        f"{script} exited with {proc.returncode}:\n{_tails(stdout, stderr)}"
    )
    assert out.exists(), f"{script} wrote no {out.name}:\n{_tails(stdout, stderr)}"
    return json.loads(out.read_text())


def _tails(stdout: str | bytes | None, stderr: str | bytes | None) -> str:
    def tail(text: str | bytes | None) -> str:
        if isinstance(text, bytes):
            text = text.decode(errors="replace")
        return (text or "")[-3000:] or "(nothing)"

    return f"--- stderr (end) ---\n{tail(stderr)}\n--- stdout (end) ---\n{tail(stdout)}"


def bench(script: str, out: Path, *args: str, timeout_s: float = 110) -> Any:
    """Run bench/`script` with `args`; its JSON report's results."""
    return run_bench(script, out, *args, timeout_s=timeout_s)["results"]


def test_overhead_benchmark_smoke(tmp_path: Path) -> None:
    rows = bench("overhead.py", tmp_path / "overhead.json", "--smoke")
    seen = {(r["target"], r["concurrency"], r["stream"]) for r in rows}
    assert seen == {
        (t, c, s) for t in ("direct", "vllm-switch") for c in (1, 4) for s in (False, True)
    }
    assert [r for r in rows if r["errors"] or not r["requests"]] == [], "errors or no requests"
    streams = {(r["target"], r["concurrency"]): r["chunks_per_stream"] for r in rows if r["stream"]}
    for c in (1, 4):  # every SSE event forwarded as its own event: none merged, none lost
        assert streams[("vllm-switch", c)] == streams[("direct", c)] == 17  # role + 16 tokens
    for r in rows:
        if r["target"] == "vllm-switch":
            assert r["cpu_ms_per_request"] > 0
            assert ("added_ttft_p50_ms" if r["stream"] else "added_total_p50_ms") in r


def test_parser_benchmark_smoke(tmp_path: Path) -> None:
    """Every candidate parser reads the same body (the script checks it) and gets a number."""
    results = bench("parsers.py", tmp_path / "parsers.json", "--rounds", "1", "--n", "20")
    assert set(results) == {"json (1 read)", "sse 17 events (19 reads)"}
    for per_parser in results.values():
        assert {"vllm-switch (llhttp + checks)", "h11"} <= set(per_parser)
        assert all(us > 0 for us in per_parser.values()), per_parser


def test_wrk_benchmark_smoke(tmp_path: Path) -> None:
    required_tool("wrk", "Debian's wrk package; .ci/run installs it")
    args = ("--rounds", "1", "--duration", "1", "--concurrency", "1,4")
    rows = bench("wrk_overhead.py", tmp_path / "wrk.json", *args)
    assert [r["concurrency"] for r in rows] == [1, 4]
    for r in rows:
        assert r["direct"]["errors"] == r["vllm-switch"]["errors"] == 0
        assert r["vllm-switch"]["rounds"][0]["requests"] > 0
        assert r["vllm-switch"]["cpu_ms_per_request"] > 0


def test_scheduling_benchmark_smoke(tmp_path: Path) -> None:
    """Every workload runs under every policy, each on a fresh proxy, without an error; the
    counters it reads moved (the load switched models) and the invariants held."""
    report = run_bench("scheduling.py", tmp_path / "scheduling.json", "--quick", timeout_s=180)
    rows = {(r["workload"], r["policy"]): r for r in report["results"]}
    workloads = ("closed-k2", "closed-k6", "poisson-20", "pipeline")
    policies = ("naive", "fifo", "default")
    assert set(rows) == {(w, p) for w in workloads for p in policies}
    for r in rows.values():
        assert r["errors"] == 0, r["error_kinds"]
        assert r["requests_in_window"] > 0
        assert r["invariants"] == {"oom_events": 0, "requests_queued_while_asleep": 0}
        assert r["config"]["gpus"][0]["scheduling"]["policy"] == r["policy"]
    # three models on one GPU with max_awake 1, one resident at the start: whatever the policy,
    # serving every model takes at least two switches, and some answers waited for a wake
    for w in ("closed-k6", "poisson-20", "pipeline"):
        for p in policies:
            per_model = rows[(w, p)]["per_model"]
            assert all(m["requests"] > 0 for m in per_model.values()), (w, p, per_model)
            assert rows[(w, p)]["switches_until_all_done"] >= 2
            assert rows[(w, p)]["waited_for_wake_fraction"] > 0
    assert "closed-k2: switches per request <= 0.1" in report["targets"]
