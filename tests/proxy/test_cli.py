"""The command line as a user runs it: real processes, the synchronous openai SDK, Ctrl-C,
the admin commands, a busy port, the start-up probe of check-config --probe."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import cast

import httpx
import openai
import pytest
import yaml

from proxy.emulator.launcher import emulator_argv, running_emulator
from tests.helpers.fleet import Fleet
from tests.helpers.processes import alive, emulator_stats, launched

pytestmark = pytest.mark.process  # the CLI as a subprocess

ROOT = Path(__file__).resolve().parents[2]


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def serve_config(fleet: Fleet, tmp_path: Path) -> Path:
    """A config file for `vllm-switch serve` on a kernel-chosen port, models a and b on g0."""
    config = {
        "host": "127.0.0.1",
        "port": 0,
        "gpus": [{"name": "g0"}],
        "models": [{"name": n, "url": fleet.url(n), "gpu": "g0"} for n in ("model-a", "model-b")],
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_serve_with_a_config_file_and_the_sync_sdk(fleet: Fleet, tmp_path: Path) -> None:
    fleet.start(("model-a", []), ("model-b", []))
    path = serve_config(fleet, tmp_path)
    with (
        launched(["serve", "--config", str(path)], "vllm-switch listening on") as (_, url),
        openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0) as client,
    ):
        for model in ["model-a", "model-b", "model-a"]:
            r = client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
            )
            assert r.model == model
        with pytest.raises(openai.NotFoundError) as info:
            client.chat.completions.create(model="nope", messages=[], max_tokens=1)
        assert "available models: model-a, model-b" in str(info.value)
    assert fleet.counters("model-a")["wake_calls"] == 2


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_demo_serves_and_stopping_it_stops_every_process(stop: signal.Signals) -> None:
    with launched(["demo", "--port", "0"], "vllm-switch demo is up:") as (proc, url):
        emulators = children(proc.pid)
        assert len(emulators) == 2
        with openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0) as client:
            for model in ["qwen3-0.6b", "large", "small"]:
                raw = client.chat.completions.with_raw_response.create(
                    model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
                )
                assert raw.parse().choices[0].message.content
                # the demo starts with the large model awake: each of these requests switches
                assert float(raw.headers["x-vllm-switch-sleep-ms"]) > 0, model
                assert float(raw.headers["x-vllm-switch-wake-ms"]) > 0, model
        proc.send_signal(stop)
        assert proc.wait(timeout=30) == 0
    assert not [pid for pid in emulators if alive(pid)], "the demo must stop its emulated servers"


@pytest.mark.parametrize(
    ("content", "code", "needle"),
    [
        ("models:\n  - name: m\n    url: http://127.0.0.1:1\n", 0, "OK - 1 model(s)"),
        (
            "models:\n  - name: m\n    url: http://127.0.0.1:1\n    sleep_levle: 2\n",
            2,
            "models.0.sleep_levle: Extra inputs are not permitted",
        ),
    ],
)
def test_check_config(tmp_path: Path, content: str, code: int, needle: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(content)
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "check-config", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == code
    assert needle in done.stdout + done.stderr


def test_example_config_passes_check_config() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "check-config", str(ROOT / "deploy/config.example.yaml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_sigterm_drains_an_open_stream_then_exits_0(fleet: Fleet, tmp_path: Path) -> None:
    fleet.start(("model-b", []), ("model-a", ["--emu-itl-s", "0.01"]))
    path = serve_config(fleet, tmp_path)
    body = {
        "model": "model-a",
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 150,
        "ignore_eos": True,
        "stream": True,
    }
    with (
        launched(["serve", "--config", str(path)], "vllm-switch listening on") as (proc, url),
        httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=30) as r,
    ):
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")
        proc.send_signal(signal.SIGTERM)  # mid-stream
        rest = [line for line in lines if line.startswith("data: ")]
        assert proc.wait(timeout=30) == 0
    assert rest[-1] == "data: [DONE]"
    assert '"finish_reason":"length"' in rest[-2]


def vllm_switch(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env={**os.environ, "COLUMNS": "80", **(env or {})},
    )


@pytest.mark.parametrize("command", ["serve", "demo"])
def test_a_busy_port_is_one_line_naming_it_not_a_traceback(command: str, tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        args = ["--port", str(port)]
        if command == "serve":
            path = tmp_path / "c.yaml"
            path.write_text("models:\n  - name: m\n    url: http://127.0.0.1:1\n")
            args += ["--config", str(path)]
        done = vllm_switch(command, *args)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert f"127.0.0.1:{port}" in lines[0]
    assert "already in use" in lines[0]
    assert "--port" in lines[0]


def test_check_config_refuses_two_models_on_one_backend(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "models:\n  - name: a\n    url: http://127.0.0.1:8001\n"
        "  - name: b\n    url: http://127.0.0.1:8001/\n"
    )
    done = vllm_switch("check-config", str(path))
    assert done.returncode == 2
    assert "models 'a' and 'b' both use the backend http://127.0.0.1:8001" in done.stderr
    assert "one vLLM engine serves one model here" in done.stderr


def test_check_config_probe_prints_each_finding_with_its_fix(tmp_path: Path) -> None:
    """Three running emulators: one set up right, one without dev mode, one without sleep
    mode and serving another name; the probe only reads (nothing sleeps)."""
    specs: dict[str, tuple[bool, tuple[str, ...], bool]] = {
        # name: sleep mode, served names, dev mode
        "good": (True, (), True),
        "nodev": (True, (), False),
        "nosleep": (False, ("other",), True),
    }
    with contextlib.ExitStack() as stack:
        urls = {}
        for name, (sleep_mode, served, dev_mode) in specs.items():
            argv = emulator_argv(
                name,
                ledger_dir=tmp_path / name,
                timing="instant",
                max_model_len=2048,
                sleep_mode=sleep_mode,
                served_names=served,
            )
            emu = stack.enter_context(
                running_emulator(tmp_path, argv, name=name, dev_mode=dev_mode)
            )
            urls[name] = emu.url
        # good and nosleep share a GPU (so either may be put to sleep); nodev is alone
        gpus = {"good": "g0", "nosleep": "g0", "nodev": "g1"}
        models = [{"name": n, "url": u, "gpu": gpus[n]} for n, u in urls.items()]
        path = tmp_path / "c.yaml"
        path.write_text(
            yaml.safe_dump({"models": models, "gpus": [{"name": "g0"}, {"name": "g1"}]})
        )
        done = vllm_switch("check-config", "--probe", str(path))
        stats = {n: cast(dict[str, int], emulator_stats(u)["stats"]) for n, u in urls.items()}
    out = done.stdout
    assert done.returncode == 1, out + done.stderr
    assert f"good ({urls['good']}): OK (awake, sleep mode on, max_model_len 2048)" in out
    assert f"nodev ({urls['nodev']}): 1 problem(s)" in out
    assert "fix: start vLLM with VLLM_SERVER_DEV_MODE=1" in out
    assert f"nosleep ({urls['nosleep']}): 2 problem(s)" in out
    assert "fix: start vLLM with --enable-sleep-mode" in out
    assert "the backend serves 'other', not 'nosleep'" in out
    assert "`served_name`" in out
    touched = {
        n: s
        for n, s in stats.items()
        if any(v for k, v in s.items() if k.startswith(("sleeps_", "wake")))
    }
    assert touched == {}, "the probe only reads"


def test_status_and_model_commands_with_an_admin_key(fleet: Fleet, tmp_path: Path) -> None:
    """status, sleep and wake against a proxy with auth on: the key by --key or by
    VLLM_SWITCH_ADMIN_KEY; a long model name is shown whole at 80 columns."""
    long_name = "organisation-with-a-long-name.a-model-with-an-even-longer-name-2507-v2"
    fleet.start(("model-b", []), ("model-a", []))
    config = {
        "host": "127.0.0.1",
        "port": 0,
        "gpus": [{"name": "g0"}],
        "auth": {"admin_keys": ["sk-admin-0123"]},
        "models": [
            {"name": long_name, "served_name": "model-a", "url": fleet.url("model-a"), "gpu": "g0"},
            {"name": "model-b", "url": fleet.url("model-b"), "gpu": "g0"},
        ],
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    key = {"VLLM_SWITCH_ADMIN_KEY": "sk-admin-0123"}
    with launched(["serve", "--config", str(path)], "vllm-switch listening on") as (_, url):
        refused = vllm_switch("status", "--url", url)
        assert refused.returncode == 2
        assert f"error: cannot read {url}/admin/status: 401: " in refused.stderr
        assert "(give the admin key with --key or VLLM_SWITCH_ADMIN_KEY)" in refused.stderr
        deadline = time.monotonic() + 30
        while (shown := vllm_switch("status", "--url", url, env=key)).returncode != 0:
            assert time.monotonic() < deadline, shown.stdout + shown.stderr
        assert long_name in shown.stdout, shown.stdout
        assert "…" not in shown.stdout
        slept = vllm_switch("sleep", long_name, "--url", url, "--key", "sk-admin-0123")
        assert slept.returncode == 0, slept.stderr
        assert slept.stdout.startswith(f"{long_name}: sleep -> asleep (")
        woke = vllm_switch("wake", "model-b", "--url", url, env=key)
        assert woke.returncode == 0, woke.stderr
        assert woke.stdout.startswith("model-b: wake -> ready (")
        missing = vllm_switch("reset", "nope", "--url", url, env=key)
        assert missing.returncode == 1
        assert "error: reset nope: 404: The model `nope` does not exist" in missing.stderr
        models = httpx.get(f"{url}/v1/models", timeout=10).json()["data"]
        assert {m["id"]: m.get("max_model_len") for m in models}[long_name] == 4096


def test_status_watch_redraws_until_ctrl_c(fleet: Fleet, tmp_path: Path) -> None:
    fleet.start(("model-a", []), ("model-b", []))
    path = serve_config(fleet, tmp_path)
    with launched(["serve", "--config", str(path)], "vllm-switch listening on") as (_, url):
        watch = subprocess.Popen(
            [sys.executable, "-m", "proxy", "status", "--url", url, "--watch", "0.2"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        try:
            assert watch.stdout is not None
            draws = 0
            for line in watch.stdout:
                draws += "every 0.2s - Ctrl-C stops" in line
                if draws == 3:
                    break
            assert draws == 3, "it redraws"
            watch.send_signal(signal.SIGINT)
            assert watch.wait(timeout=30) == 0
        finally:
            if watch.poll() is None:
                os.killpg(watch.pid, signal.SIGKILL)
            watch.wait()
            if watch.stdout is not None:
                watch.stdout.close()


def test_the_demo_banners_python_snippet_runs_with_what_is_installed() -> None:
    """The banner's snippet needs only what vllm-switch installs (httpx), not openai."""
    from proxy.demo import banner

    with launched(["demo", "--port", "0"], "vllm-switch demo is up:") as (_, url):
        text = banner(url)
        snippet = text.split("<<'PY'", 1)[1].split("\n", 1)[1].split("\nPY\n", 1)[0]
        assert "openai" not in snippet
        done = subprocess.run(
            [sys.executable, "-I", "-c", snippet],  # -I: not this repository's tree
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
    assert done.returncode == 0, done.stderr
    assert [line.split()[0] for line in done.stdout.splitlines()] == [
        "qwen3-0.6b",
        "qwen3-1.7b",
        "qwen3-0.6b",
    ]
