"""The scheduling bench and the soak in attach mode (`--backends`, bench/attach.py): pointed at
three servers started here - emulators, standing in for real vLLM - they start none of their
own, their proxy attaches to the URLs given, and the emulator-only readings are null (not
measured), never 0. What the benches cannot read in attach mode the test reads itself from the
emulators afterwards: nothing reached a sleeping engine, no wake ran out of memory."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.emulator.launcher import EmulatorProcess, bootstrap_sequentially, emulator_argv
from tests.helpers.processes import emulator_stats
from tests.test_bench_smoke import ROOT, run_bench

pytestmark = pytest.mark.process  # emulators, the benches and their proxies

NAMES = ("alpha", "beta", "gamma")  # not the benches' own model names: the served names count


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[EmulatorProcess]]:
    """Three emulators on one fake GPU that fits one awake, started one after another (each
    asleep before the next starts, the last awake) - as three real vLLM servers would be."""
    argv = [
        (
            name,
            emulator_argv(
                name,
                ledger_dir=tmp_path / "ledger",
                gpu="attach",
                gpu_memory_gib=80,
                util=0.6,
                timing="instant",
                startup_s=0,
            ),
        )
        for name in NAMES
    ]
    emulators = bootstrap_sequentially(tmp_path / "emulators", argv)
    try:
        yield emulators
    finally:
        for emu in emulators:
            emu.stop()


def backends_arg(emulators: list[EmulatorProcess]) -> str:
    return ",".join(f"{n}={e.url}" for n, e in zip(NAMES, emulators, strict=True))


def assert_emulators_unharmed(emulators: list[EmulatorProcess], ledger: Path) -> None:
    """Invariants 1 and 2, read here since the bench could not: no request reached a sleeping
    engine, no wake found too little memory on the fake GPU."""
    for emu in emulators:
        stats = emulator_stats(emu.url)["stats"]
        assert isinstance(stats, dict)
        assert stats.get("requests_queued_while_asleep", 0) == 0, stats
    assert json.loads(ledger.read_text())["oom_events"] == 0


def test_scheduling_bench_attached(tmp_path: Path, servers: list[EmulatorProcess]) -> None:
    args = ["--backends", backends_arg(servers), "--quick"]
    args += ["--only", "closed-k3,poisson-20,pipeline", "--clients", "3", "--rates", "20"]
    args += ["--policies", "fifo,default"]
    report = run_bench("scheduling.py", tmp_path / "scheduling.json", *args, timeout_s=110)
    urls = [e.url for e in servers]
    assert report["settings"]["backends"] == dict(zip(NAMES, urls, strict=True))
    assert report["settings"]["emulator"] is None
    rows = {(r["workload"], r["policy"]): r for r in report["results"]}
    workloads = ("closed-k3", "poisson-20", "pipeline")
    assert set(rows) == {(w, p) for w in workloads for p in ("fifo", "default")}
    for (workload, policy), r in rows.items():
        assert r["requests_completed"] > 0, (workload, policy)
        if policy == "default":
            assert r["errors"] == 0, r["error_kinds"]
        assert r["invariants"] == {"oom_events": None, "requests_queued_while_asleep": None}
        models = r["config"]["models"]
        assert [(m["served_name"], m["url"]) for m in models] == list(zip(NAMES, urls, strict=True))
        assert all("command" not in m for m in models)  # attached: nothing to start
        names = ("classify", "caption", "rerank") if workload == "pipeline" else NAMES
        assert [m["name"] for m in models] == list(names)
        assert set(r["per_model"]) == set(names)
    assert_emulators_unharmed(servers, tmp_path / "ledger" / "attach.json")


def test_soak_attached_time_bound(tmp_path: Path, servers: list[EmulatorProcess]) -> None:
    args = ["--backends", backends_arg(servers), "--requests", "0", "--minutes", "0.05"]
    args += ["--concurrency", "4", "--sample-s", "1", "--warmup-s", "0"]
    report = run_bench("soak.py", tmp_path / "soak.json", *args, timeout_s=110)
    assert report["backends"] == {n: e.url for n, e in zip(NAMES, servers, strict=True)}
    assert report["faults"] is False
    assert report["max_awake"] == 1  # attached: one awake unless told
    assert report["faults_injected"] == {}
    assert report["requests_sent"] > 0
    assert report["unanswered"] == 0
    assert set(report["outcomes"]) <= {"200", "client_gave_up"}, report["outcomes"]
    assert report["outcomes"].get("200", 0) > 0
    assert report["restarts"] == 0  # nothing supervised
    assert report["ledger"] is None
    assert report["leftovers"]["backend_running"] is None
    assert report["leftovers"]["inflight"] == report["leftovers"]["queued"] == 0
    assert set(report["states_at_end"]) == set(NAMES)
    assert report["rss_kib"]["start"] > 0
    assert len(report["samples"]) >= 2
    assert_emulators_unharmed(servers, tmp_path / "ledger" / "attach.json")


def test_soak_refuses_faults_with_backends(tmp_path: Path) -> None:
    """Faults go through the emulators' /_emulator/faults: asking for them on attached servers
    is an error before anything starts, not a soak without them."""
    argv = [sys.executable, str(ROOT / "bench" / "soak.py"), "--faults"]
    argv += ["--backends", "alpha=http://127.0.0.1:9", "--out", str(tmp_path / "soak.json")]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "--faults needs emulators" in proc.stderr
    assert not (tmp_path / "soak.json").exists()
