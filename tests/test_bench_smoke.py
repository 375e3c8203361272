"""The benchmarks keep working: each runs end to end in a tiny mode (no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.processes import required_tool

pytestmark = pytest.mark.process  # each benchmark as a subprocess

ROOT = Path(__file__).resolve().parents[1]


def bench(script: str, out: Path, *args: str, timeout_s: float = 110) -> Any:
    """Run bench/`script` with `args`; its JSON report's results."""
    argv = [sys.executable, str(ROOT / "bench" / script), *args, "--out", str(out)]
    subprocess.run(argv, check=True, capture_output=True, timeout=timeout_s)
    return json.loads(out.read_text())["results"]


def test_overhead_benchmark_smoke(tmp_path: Path) -> None:
    rows = bench("overhead.py", tmp_path / "overhead.json", "--smoke")
    seen = {(r["target"], r["concurrency"], r["stream"]) for r in rows}
    assert seen == {
        (t, c, s) for t in ("direct", "vllm-switch") for c in (1, 4) for s in (False, True)
    }
    assert all(r["errors"] == 0 and r["requests"] > 0 for r in rows)
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
        assert all(us > 0 for us in per_parser.values())


def test_wrk_benchmark_smoke(tmp_path: Path) -> None:
    required_tool("wrk", "Debian's wrk package; .ci/run installs it")
    args = ("--rounds", "1", "--duration", "1", "--concurrency", "1,4")
    rows = bench("wrk_overhead.py", tmp_path / "wrk.json", *args)
    assert [r["concurrency"] for r in rows] == [1, 4]
    for r in rows:
        assert r["direct"]["errors"] == r["vllm-switch"]["errors"] == 0
        assert r["vllm-switch"]["rounds"][0]["requests"] > 0
        assert r["vllm-switch"]["cpu_ms_per_request"] > 0
