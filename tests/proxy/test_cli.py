"""The command line as a user runs it: real processes, the synchronous openai SDK, Ctrl-C."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from tests.helpers.fleet import Fleet
from tests.helpers.processes import alive, launched

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
