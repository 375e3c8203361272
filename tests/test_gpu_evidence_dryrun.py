"""bench/evidence.py (the real-GPU run of every measurement) keeps working: its dry run on
emulators, every stage end to end in its quick mode. No timing asserted; what is checked is
that each stage ran and measured what the GPU run will be judged by."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.process  # emulators, proxies and the benches as subprocesses

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(600)  # about 2.5 minutes on 2 cores, more beside a busy suite
def test_evidence_dry_run_measures_every_stage(tmp_path: Path) -> None:
    out = tmp_path / "ev"
    argv = [sys.executable, str(ROOT / "bench" / "evidence.py"), str(out)]
    argv += ["--emulate", "--quick", "--deadline-s", "400", "--soak-minutes", "0.05"]
    with subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    ) as proc:  # the pipe is closed however this ends
        try:
            log, _ = proc.communicate(timeout=480)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)  # its own cleanup stops the servers it started
            try:
                log, _ = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                log = ""
            finally:
                with contextlib.suppress(ProcessLookupError):  # its group may be gone already
                    os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"evidence.py ran past its limit:\n{log[-3000:]}")
    assert proc.returncode == 0, log[-3000:]
    stages = {s["stage"]: s for s in json.loads((out / "progress.json").read_text())["stages"]}
    expected = ("checkpoints", "start", "conformance", "seed", "reload", "scheduling", "faults")
    for name in (*expected, "soak"):
        assert stages[name]["status"] == "ok", (name, stages[name], log[-3000:])

    seed = json.loads((out / "seed.json").read_text())
    assert "errors" not in seed, seed["errors"]
    summary = seed["summary"]
    for key in ("reload_over_switch_wf_per_turn", "switch_over_raw", "switch_wf_over_raw_wf"):
        assert summary[key] > 0, key
    assert summary["ttft_p50_s"] is not None
    assert summary["ttft_wf_p50_s"] is not None
    # wake-first: the switch put nobody to sleep before the answer
    assert all(t["sleep_s"] == 0 for t in seed["switch_wf"]["turns"])
    assert any(t["sleep_s"] > 0 for t in seed["switch_l1"]["turns"])

    faults = json.loads((out / "faults.json").read_text())
    assert faults["errors"] == {}
    assert {p["adopted"] for p in faults["adopt"]["processes"].values()} == {True}
    crash = faults["crash"]
    assert crash["stream"]["error_event"]
    assert crash["stream"]["done"]
    assert crash["next_request"]["status"] == 200
    restarted = faults["proxy"]
    assert restarted["answers"] == {"classify": 200, "caption": 200, "rerank": 200}
    assert restarted["double_start"] is False
    assert all(restarted["adopted_still_listening"].values())
    assert restarted["proxy2_processes"]["caption"]["adopted"] is True
    for name in ("pipeline", "pipeline_fifo"):
        assert faults[name]["summary"]["errors"] == 0

    routes = json.loads((out / "vllm026-routes-h200.json").read_text())
    assert {e["server"] for e in routes} == {"dev", "pooling", "tools"}
    rows = json.loads((out / "scheduling.json").read_text())["results"]
    assert {(r["workload"], r["policy"]) for r in rows} >= {("pipeline", "default")}
    soak = json.loads((out / "soak.json").read_text())
    assert soak["requests_sent"] > 0
    assert soak["unanswered"] == 0
