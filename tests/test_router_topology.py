"""Two vllm-switch proxies behind a real router on loopback: vllm-router 0.1.17 (PyPI; the
vLLM project's Rust router), each proxy with emulated backends on a fake GPU of its own, as
one vllm-switch per GPU would run (docs/scaling.md). Two layouts, two router modes:

- same models on every proxy: the default mode (`--worker-urls`; it ignores `model`). Its
  health check polls `/ready`: a third proxy that runs (`/health` 200) but cannot serve
  (`/ready` 503) gets nothing; a SIGKILLed proxy is routed around without an error.
- different models per proxy: the multi-model mode (`--enable-igw`), each (proxy, model) pair
  registered as a worker through its API, one model per worker URL (the second model of a proxy
  under an alias URL, 127.0.0.1 and localhost): every model is answered only by a proxy that
  serves it, an unknown model is a 404, a killed proxy's models fail fast and the others go on.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from proxy.emulator.launcher import emulate_command
from tests.helpers.fleet import GPU, MECHANICS, emulator_args
from tests.helpers.processes import free_port, launched, required_tool, stop_group

pytestmark = pytest.mark.process

HOSTS = ("127.0.0.1", "localhost")  # vllm-router: one model per worker URL, so one alias each
ROUTER_FLAGS = (
    *("--policy", "round_robin", "--health-check-endpoint", "/ready"),
    *("--health-check-interval-secs", "1", "--health-failure-threshold", "1"),
    *("--health-check-timeout-secs", "1"),
)


def proxy_config(tmp: Path, name: str, models: tuple[str, ...]) -> Path:
    """A proxy whose models run on a fake GPU of its own (its own ledger directory)."""
    home = tmp / name
    home.mkdir()
    entries = []
    for m in models:
        port = free_port()
        argv = emulator_args(m, home / "ledger", port=port, startup_s=0)
        entries.append(
            {
                "name": m,
                "url": f"http://127.0.0.1:{port}",
                "gpu": GPU,
                "command": emulate_command(argv),
                "log_file": str(home / f"{m}.log"),
                "timeouts": {"start_s": 30},
            }
        )
    config = {
        "host": "127.0.0.1",
        "port": 0,
        "gpus": [{"name": GPU, "scheduling": MECHANICS}],
        "runtime_dir": str(home / "run"),
        "models": entries,
    }
    path = home / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def unready_config(tmp: Path, model: str) -> Path:
    """A proxy that runs but cannot serve: its one model is attached at a port nobody serves
    (its /health answers 200, its /ready 503)."""
    home = tmp / "unready"
    home.mkdir()
    url = f"http://127.0.0.1:{free_port()}"
    models = [{"name": model, "url": url, "gpu": GPU, "timeouts": {"start_s": 1}}]
    config = {"host": "127.0.0.1", "port": 0, "gpus": [{"name": GPU}], "models": models}
    config["runtime_dir"] = str(home / "run")
    path = home / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def until(condition: Callable[[], bool], within_s: float, what: str) -> None:
    """Poll `condition` (a condition with a deadline, not a delay)."""
    deadline = time.monotonic() + within_s
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if condition():
                return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within_s:g}s")
        time.sleep(0.05)


@contextlib.contextmanager
def router(tmp: Path, *mode: str) -> Iterator[str]:
    """vllm-router in its own process group, stopped by its PID; its URL once it answers."""
    exe = required_tool("vllm-router", "pip install vllm-router==0.1.17 (the dev extra has it)")
    port = free_port()
    argv = [exe, "--host", "127.0.0.1", "--port", str(port), *ROUTER_FLAGS, *mode]
    argv += ["--prometheus-port", str(free_port())]  # its default, 29000, is shared by all runs
    with (tmp / "router.log").open("wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        until(lambda: httpx.get(f"{url}/liveness").status_code == 200, 30, "the router answers")
        yield url
    finally:
        stop_group(proc)  # type: ignore[arg-type]


def register(url: str, proxy: str, models: tuple[str, ...]) -> None:
    port = proxy.rsplit(":", 1)[1]
    for host, model in zip(HOSTS[: len(models)], models, strict=True):
        r = httpx.post(f"{url}/workers", json={"url": f"http://{host}:{port}", "model_id": model})
        assert r.status_code == 200, r.text


def healthy(url: str) -> set[str]:
    """The worker URLs the router counts healthy (each mode's /workers lists them)."""
    return {w["url"] for w in httpx.get(f"{url}/workers").json()["workers"] if w["is_healthy"]}


def served(proxy: str) -> dict[str, float]:
    """Chat completions answered 200 by `proxy`, per model (its own counter)."""
    out: dict[str, float] = {}
    for line in httpx.get(f"{proxy}/metrics").text.splitlines():
        if line.startswith("vllm_switch_requests_total{") and 'status="200"' in line:
            model = line.split('model="', 1)[1].split('"', 1)[0]
            out[model] = out.get(model, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def chat(c: httpx.Client, url: str, model: str) -> httpx.Response:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    return c.post(f"{url}/v1/chat/completions", json=body | {"max_tokens": 2})


def test_proxies_of_the_same_models_behind_the_router_by_their_ready(tmp_path: Path) -> None:
    """Default mode (`--worker-urls`, model ignored): for proxies that all serve the same models.
    The router polls `/ready`: a proxy that runs but cannot serve gets nothing; a SIGKILLed one
    is routed around without an error."""
    models = ("alpha", "beta")
    paths = [proxy_config(tmp_path, name, models) for name in ("p1", "p2")]
    ready = "vllm-switch listening on"
    with (
        launched(["serve", "--config", str(paths[0])], ready) as (victim, p1),
        launched(["serve", "--config", str(paths[1])], ready) as (_, p2),
        launched(["serve", "--config", str(unready_config(tmp_path, "alpha"))], ready) as (_, p3),
        router(tmp_path, "--worker-urls", p1, p2, p3) as url,
        httpx.Client(timeout=30) as c,
    ):
        until(lambda: c.get(f"{p3}/ready").status_code == 503, 30, "the third cannot serve")
        assert c.get(f"{p3}/health").status_code == 200, "only /ready tells the router"
        until(lambda: healthy(url) == {p1, p2}, 30, "p1 and p2 healthy, p3 not (its /ready)")
        for m in models:
            for _ in range(4):
                r = chat(c, url, m)
                assert r.status_code == 200, (m, r.text)
                assert r.json()["model"] == m
        shares = [served(p).get(m, 0.0) for p in (p1, p2) for m in models]
        assert all(shares), ("both proxies got a share of each model", shares)
        assert served(p3) == {}, "nothing was sent to the proxy whose /ready said 503"
        os.kill(victim.pid, signal.SIGKILL)  # by the PID we started; its backends end with it
        victim.wait(10)
        answers = [chat(c, url, m).status_code for _ in range(10) for m in models]
        assert answers == [200] * len(answers), "the router resent to the proxy that lives"
        until(lambda: healthy(url) == {p2}, 10, "the killed proxy unhealthy")


def test_proxies_of_different_models_behind_the_router_by_model(tmp_path: Path) -> None:
    """Multi-model mode (`--enable-igw`, workers registered per model): a request goes only
    to a proxy that serves its model; a SIGKILLed proxy's models fail fast, the others go on.
    In this mode vllm-router 0.1.17 keeps an API-registered worker healthy while its /ready
    says 503 (seen; docs/scaling.md): only a proxy that stops answering is taken out."""
    first, second = ("alpha", "beta"), ("gamma", "delta")
    paths = [proxy_config(tmp_path, "p1", first), proxy_config(tmp_path, "p2", second)]
    ready = "vllm-switch listening on"
    with (
        launched(["serve", "--config", str(paths[0])], ready) as (victim, p1),
        launched(["serve", "--config", str(paths[1])], ready) as (_, p2),
        router(tmp_path, "--enable-igw") as url,
        httpx.Client(timeout=30) as c,
    ):
        register(url, p1, first)
        register(url, p2, second)
        until(lambda: len(healthy(url)) == 4, 30, "every (proxy, model) worker healthy")
        for m in (*first, *second):
            for _ in range(3):
                r = chat(c, url, m)
                assert r.status_code == 200, (m, r.text)
                assert r.json()["model"] == m
        assert chat(c, url, "no-such-model").status_code == 404
        assert set(served(p1)) == set(first), "each proxy got only its own models"
        assert set(served(p2)) == set(second)
        os.kill(victim.pid, signal.SIGKILL)  # by the PID we started
        victim.wait(10)
        answers = [chat(c, url, m).status_code for _ in range(10) for m in second]
        assert answers == [200] * len(answers)
        until(lambda: len(healthy(url)) == 2, 10, "the killed proxy's workers unhealthy")
        assert chat(c, url, first[0]).status_code >= 500, "nobody serves it now: an error"
