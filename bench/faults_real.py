"""Supervision on real vLLM: adoption, the 3-model pipeline, a backend SIGKILLed mid-stream, the
proxy SIGKILLed and restarted. One script, one proxy config, servers already listening.

Given three servers started by hand at the config's ports (`--models` JSON: name, served name,
port, level, the argv that starts it), this runs, in order:

  pipeline_fifo  the pipeline through a proxy of policy fifo that only attaches (URLs)
  adopt     proxy 1 starts with every model supervised (`command`, `adopt: true`): each server
            is adopted, none started twice (`/admin/status` process.adopted, listeners per port)
  pipeline  the pipeline through proxy 1 (bench/pipeline.py)
  crash     a long stream to the first model; its API server SIGKILLed after the first tokens:
            what the client saw, when the proxy noticed, GPU memory given back (NVML, 0.1 s),
            and the next request's wait (release wait + cold start + warm-up = restart time)
  proxy     proxy 1 SIGKILLed: the restarted model's process group (started by proxy 1, under
            its reaper) must end and give its memory back; the adopted ones keep serving;
            proxy 2 (same config) adopts those, starts the missing one once, serves all three
  end       proxy 2 SIGKILLed too: the servers left are the adopted ones (for later stages)

    python3 bench/faults_real.py --models models.json --out faults.json [--nvml]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
from gpu_memory_probe import MemorySampler, release
from pipeline import run_pipelines
from proxyproc import ProxyProcess, serving


def listeners(port: int) -> list[int]:
    """PIDs listening on 127.0.0.1/any at `port`."""
    return sorted(
        {
            c.pid
            for c in psutil.net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid
        }
    )


def servers_of(port: int) -> list[int]:
    """Processes whose command line serves `--port PORT` (API servers, not their engines), less
    those that only run one of them (a reaper's command line holds its child's)."""
    found = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = p.info["cmdline"] or []
        if "--port" in cmd and cmd[cmd.index("--port") + 1 : cmd.index("--port") + 2] == [
            str(port)
        ]:
            found.append(p.info["pid"])
    return sorted(pid for pid in found if not set(tree(pid)[1:]) & set(found))


def tree(pid: int) -> list[int]:
    try:
        root = psutil.Process(pid)
        return [pid, *(c.pid for c in root.children(recursive=True))]
    except psutil.NoSuchProcess:
        return []


def wait_gone(pids: list[int], timeout_s: float) -> float | None:
    t0 = time.monotonic()
    while any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie" for p in pids):
        if time.monotonic() - t0 > timeout_s:
            return None
        time.sleep(0.05)  # polling other processes' exit, bounded
    return time.monotonic() - t0


def config(
    models: list[dict[str, Any]],
    work: Path,
    nvml: bool,
    policy: str = "default",
    *,
    supervised: bool = True,
) -> dict[str, Any]:
    """Every model supervised (`command`, adopted when it already serves) or, with
    `supervised=False`, attached by URL only; timing headers on streams too (`progress: off`)."""
    gpu: dict[str, Any] = {"name": "gpu0", "max_awake": 1, "scheduling": {"policy": policy}}
    if nvml:
        gpu["nvml_device"] = 0
    out: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "runtime_dir": str(work / "runtime"),
        "gpus": [gpu],
        "logging": {"format": "plain", "level": "info"},
        "models": [],
    }
    for m in models:
        model: dict[str, Any] = {
            "name": m["name"],
            "served_name": m["served"],
            "url": f"http://127.0.0.1:{m['port']}",
            "gpu": "gpu0",
            "sleep_level": m["level"],
            "progress": "off",
        }
        if supervised:
            model |= {"command": m["argv"], "env": m.get("env", {}), "adopt": True}
            model["log_file"] = str(work / f"{m['name']}.log")
        out["models"].append(model)
    return out


def status(url: str) -> dict[str, Any]:
    return {m["name"]: m for m in httpx.get(f"{url}/admin/status", timeout=30).json()["models"]}


def procs(url: str) -> dict[str, Any]:
    return {
        n: m["process"] and {k: m["process"][k] for k in ("pid", "adopted", "restarts")}
        for n, m in status(url).items()
    }


def ports_check(models: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        m["name"]: {"listeners": listeners(m["port"]), "servers": servers_of(m["port"])}
        for m in models
    }


def crash(url: str, model: dict[str, Any]) -> dict[str, Any]:
    """SIGKILL the model's API server while it streams to a client."""
    victim = listeners(model["port"])
    group = sorted({q for pid in victim for q in tree(pid)})  # the API server and its engine
    seen: dict[str, Any] = {"chunks": 0, "error_event": False, "done": False}
    first = threading.Event()

    def stream() -> None:
        body = {
            "model": model["name"],
            "messages": [{"role": "user", "content": "Tell me a very long story."}],
            "max_tokens": 1800,
            "ignore_eos": True,
            "stream": True,
        }
        try:
            with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=120) as r:
                seen["status"] = r.status_code
                for line in r.iter_lines():
                    if line.startswith("data: {"):
                        seen["chunks"] += 1
                        seen["error_event"] |= '"error"' in line
                        if seen["chunks"] >= 3:
                            first.set()
                    seen["done"] |= line == "data: [DONE]"
        except httpx.HTTPError as exc:
            seen["transport_error"] = type(exc).__name__
        finally:
            seen["ended_at"] = time.monotonic()
            first.set()

    client = threading.Thread(target=stream)
    client.start()
    first.wait(120)
    sampler = MemorySampler().start()
    t_kill = time.monotonic()
    for pid in victim:
        os.kill(pid, signal.SIGKILL)
    client.join(120)
    noticed = None
    while time.monotonic() - t_kill < 60:
        if status(url)[model["name"]]["state"] not in ("ready", "asleep"):
            noticed = time.monotonic() - t_kill
            break
        time.sleep(0.05)  # polling the proxy's view, bounded
    gone = wait_gone(group, 60)
    time.sleep(3)  # let the memory timeline settle (a sample window, not a synchronisation)
    memory = release(sampler.stop())
    t_req = time.monotonic()
    answers = []
    hi = {"model": model["name"], "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    while True:  # the restart happens on this request; a 503 (restart backoff) is retried
        r = httpx.post(f"{url}/v1/chat/completions", json=hi, timeout=900)
        answers.append([round(time.monotonic() - t_req, 3), r.status_code, r.text[:300]])
        if r.status_code != 503 or time.monotonic() - t_req > 600:
            break
        time.sleep(float(r.headers.get("retry-after", "1")))  # as a client told to retry does
    return {
        "killed_pids": victim,
        "their_tree": group,
        "stream": {**seen, "ended_after_kill_s": seen["ended_at"] - t_kill},
        "proxy_noticed_s": noticed,
        "killed_processes_gone_s": gone,
        "memory": memory,
        "next_request": {
            "status": r.status_code,
            "seconds": time.monotonic() - t_req,
            "answers": answers,
        },
        "status_after": procs(url),
    }


def proxy_kill(
    p1: ProxyProcess, models: list[dict[str, Any]], cfg: dict[str, Any], work: Path
) -> dict[str, Any]:
    before = procs(p1.url)
    launched = {n: tree(v["pid"]) for n, v in before.items() if v and not v["adopted"]}
    adopted_listeners = {
        m["name"]: listeners(m["port"])
        for m in models
        if before[m["name"]] and before[m["name"]]["adopted"]
    }
    sampler = MemorySampler().start()
    t0 = time.monotonic()
    p1.kill()
    ended = {n: wait_gone(pids, 90) for n, pids in launched.items()}
    time.sleep(3)  # the memory timeline's tail (a sample window, not a synchronisation)
    memory = release(sampler.stop())
    survivors = {
        n: [p for p in pids if psutil.pid_exists(p)] for n, pids in adopted_listeners.items()
    }
    p2 = ProxyProcess(cfg, work / "proxy-2.yaml")
    ready = p2.wait_ready(900)
    answers = {}
    for m in models:
        r = httpx.post(
            f"{p2.url}/v1/chat/completions",
            json={
                "model": m["name"],
                "messages": [{"role": "user", "content": "Hi"}],
                "max_tokens": 4,
            },
            timeout=900,
        )
        answers[m["name"]] = r.status_code
    after = procs(p2.url)
    ports = ports_check(models)
    p2.kill()  # leave the adopted servers up; a started one ends with its reaper
    return {
        "launched_groups": launched,
        "launched_ended_s": ended,
        "memory": memory,
        "adopted_still_listening": survivors,
        "proxy2_ready_s": ready,
        "proxy2_processes": after,
        "answers": answers,
        "ports": ports,
        "double_start": any(len(v["servers"]) != 1 for v in ports.values()),
        "seconds": time.monotonic() - t0,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--models", type=Path, required=True, help="JSON list: name, served, port, level, argv"
    )
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--work", type=Path, default=Path("/tmp/faults-work"))
    p.add_argument("--pipelines", type=int, default=8)
    p.add_argument("--nvml", action="store_true", help="gpus[].nvml_device: 0 (wake-first by NVML)")
    p.add_argument("--phases", default="pipeline_fifo,adopt,pipeline,crash,proxy")
    a = p.parse_args()
    models = json.loads(a.models.read_text())
    a.work.mkdir(parents=True, exist_ok=True)
    cfg = config(models, a.work, a.nvml)
    report: dict[str, Any] = {"config": cfg, "errors": {}}

    def save() -> None:
        a.out.write_text(json.dumps(report, indent=1) + "\n")

    if "pipeline_fifo" in a.phases.split(","):  # before anything supervises them: URL only
        try:
            fifo = config(models, a.work, a.nvml, "fifo", supervised=False)
            with serving(fifo, a.work / "proxy-fifo.yaml") as url:
                names = [m["name"] for m in models]
                report["pipeline_fifo"] = run_pipelines(url, names, a.pipelines)
        except Exception as exc:  # noqa: BLE001 - recorded; the next step still runs
            report["errors"]["pipeline_fifo"] = f"{type(exc).__name__}: {exc}"
        save()
    p1 = ProxyProcess(cfg, a.work / "proxy-1.yaml")
    try:
        report["adopt"] = {
            "ready_s": p1.wait_ready(900),
            "processes": procs(p1.url),
            "ports": ports_check(models),
        }
        save()
        steps = {
            "pipeline": lambda: run_pipelines(p1.url, [m["name"] for m in models], a.pipelines),
            "crash": lambda: crash(p1.url, models[0]),
            "proxy": lambda: proxy_kill(p1, models, cfg, a.work),
        }
        for name in a.phases.split(","):
            if name in steps:
                try:
                    report[name] = steps[name]()
                except Exception as exc:  # noqa: BLE001 - recorded; the next step still runs
                    report["errors"][name] = f"{type(exc).__name__}: {exc}"
                save()
    finally:
        if p1.proc.poll() is None:
            p1.kill()
        save()
    print(json.dumps({k: v for k, v in report.items() if k != "config"}, indent=1)[:4000])  # noqa: T201


if __name__ == "__main__":
    main()
