"""The shipped Prometheus rules and Grafana dashboard, proven on a real Prometheus.

A real `prometheus` (Debian's package, installed by .ci/run) scrapes the proxy on loopback
while a switching workload runs; then every PromQL expression of the dashboard and of the alert
rules must execute without error, and the wake, warm-up and switch panels must return data.
`promtool` unit-tests the alert rules and checks the config.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.helpers.bodies import chat
from tests.helpers.fleet import Fleet, config_for
from tests.helpers.processes import free_port, required_tool
from tests.helpers.proxy_server import serve_proxy

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "vllm-switch.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
MUST_HAVE_DATA = ("Wake latency", "Warm-up latency", "Switch latency")


def binary(name: str) -> str:
    return required_tool(name, "Debian's prometheus package; .ci/run installs it")


def dashboard_queries() -> list[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in dash["panels"] for t in p["targets"]]


def alert_queries() -> list[tuple[str, str]]:
    rules = yaml.safe_load(ALERTS.read_text())
    return [(r["alert"], r["expr"]) for g in rules["groups"] for r in g["rules"]]


def as_instant_query(expr: str) -> str:
    """What Grafana would send: its variables replaced by concrete values."""
    return expr.replace("$__rate_interval", "1m").replace("$model", ".*")


@pytest.mark.process  # runs promtool
def test_promtool_checks_config_and_unit_tests_alerts() -> None:
    promtool = binary("promtool")
    for args in (["check", "config", "prometheus.yml"], ["test", "rules", "alerts.test.yml"]):
        done = subprocess.run(
            [promtool, *args],
            cwd=DEPLOY / "prometheus",
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr


def test_dashboard_is_wellformed() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "vllm-switch"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    assert len(dashboard_queries()) >= 10
    titles = " ".join(t for t, _ in dashboard_queries())
    for needed in (
        "Wake",
        "Warm-up",
        "Sleep",
        "Switch",
        "Switches per minute",
        "thrash",
        "Queue depth",
        "Backend state",
        "status",
    ):
        assert needed in titles


@contextlib.asynccontextmanager
async def prometheus(tmp_path: Path, target: str) -> AsyncIterator[httpx.AsyncClient]:
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [{"job_name": "vllm-switch", "static_configs": [{"targets": [target]}]}],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    exe = binary("prometheus")  # (skips before a file is opened)
    log = (tmp_path / "prometheus.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        exe,
        f"--config.file={tmp_path / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as api:
            async with asyncio.timeout(60):  # until its TSDB is open: before, queries get 503 text
                while True:
                    with contextlib.suppress(httpx.TransportError):
                        if (await api.get("/-/ready")).status_code == 200:
                            break
                    await asyncio.sleep(0.1)  # polling another process's start-up
            yield api
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        await proc.wait()
        log.close()


async def query(api: httpx.AsyncClient, expr: str) -> list[dict[str, Any]]:
    r = await api.get("/api/v1/query", params={"query": expr})
    body = r.json()
    assert body["status"] == "success", f"{expr}: {body.get('error')}"
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


async def until(api: httpx.AsyncClient, expr: str, minimum: float) -> None:
    """Poll Prometheus until `expr` (a scalar-ish sum) reaches `minimum`."""
    async with asyncio.timeout(30):
        while True:
            with contextlib.suppress(httpx.HTTPError):
                result = await query(api, expr)
                if result and float(result[0]["value"][1]) >= minimum:
                    return
            await asyncio.sleep(0.2)


async def test_every_dashboard_and_alert_query_runs_on_real_prometheus(
    fleet: Fleet, tmp_path: Path
) -> None:
    fleet.start(("model-a", []), ("model-b", []))
    async with (
        serve_proxy(config_for(fleet, [{"name": "model-a"}, {"name": "model-b"}])) as proxy,
        httpx.AsyncClient(base_url=proxy.url, timeout=30) as client,
        prometheus(tmp_path, proxy.url.removeprefix("http://")) as api,
    ):
        await until(api, 'sum(up{job="vllm-switch"})', 1)
        for round_ in range(1, 4):  # spread over several scrapes so rate() sees increases
            for model in ("model-a", "model-b"):
                async with client.stream(
                    "POST", "/v1/chat/completions", json=chat(model, stream=True)
                ) as s:
                    _ = [line async for line in s.aiter_lines()]
            await until(api, "sum(vllm_switch_switches_total)", 2 * round_)
        async with asyncio.timeout(30):  # every alert rule evaluated at least once, none in error
            while True:
                groups = (await api.get("/api/v1/rules")).json()["data"]["groups"]
                rules = [r for g in groups for r in g["rules"]]
                if rules and all(r["health"] == "ok" for r in rules):
                    break
                assert not [r for r in rules if r["health"] == "err"], rules
                await asyncio.sleep(0.2)
        assert len(rules) == len(alert_queries())
        for _name, expr in alert_queries():
            await query(api, expr)  # executes without error
        for title, expr in dashboard_queries():
            result = await query(api, as_instant_query(expr))
            if title.startswith(MUST_HAVE_DATA):
                values = [float(r["value"][1]) for r in result]
                assert any(not math.isnan(v) for v in values), f"{title}: no data for {expr}"
