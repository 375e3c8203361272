"""`vllm-switch demo`: the proxy in front of two emulated vLLM servers on one fake GPU.

The fake GPU (80 GiB) is sized so that only one model fits awake. Bootstrap is sequential,
as it must be on a real GPU: start the first server, put it to sleep, start the second. The
proxy then adopts both (one awake, one asleep) and every request switches as needed. Owns the
two emulator processes and stops them by PID when the proxy exits (Ctrl-C).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import tempfile
from pathlib import Path

import uvicorn

from proxy.app import create_app
from proxy.cli import uvicorn_config
from proxy.config import GpuConfig, ModelConfig, ProxyConfig, WarmupConfig
from proxy.emulator.launcher import EmulatorProcess, bootstrap_sequentially, emulator_argv
from proxy.http.edge.fdlimit import raise_open_file_limit
from proxy.http.edge.listen import tcp_listener

GPU = "demo-gpu"
MODELS = (
    # name, alias, weights GiB, sleep level
    ("qwen3-0.6b", "small", 1.11, 1),
    ("qwen3-1.7b", "large", 3.2, 2),
)


def banner(url: str) -> str:
    small, large = MODELS[0][0], MODELS[1][0]
    return f"""
vllm-switch demo is up: {url}/v1
  models {small} (sleep level 1) and {large} (sleep level 2) share one emulated 80 GiB GPU;
  only one fits awake, so each request for the other one switches (sleep + wake + warm-up).

Try it (watch the x-vllm-switch-* headers: what each request paid for switching):

  curl -si {url}/v1/chat/completions -H 'content-type: application/json' \\
    -d '{{"model": "{large}", "messages": [{{"role": "user", "content": "Hello!"}}], "max_tokens": 16}}'

  python3 - <<'PY'    # httpx comes with vllm-switch
import httpx
for model in ["{small}", "{large}", "{small}"]:
    r = httpx.post("{url}/v1/chat/completions", timeout=60, json={{
        "model": model, "messages": [{{"role": "user", "content": "Hi"}}], "max_tokens": 8}})
    print(model, "wake", r.headers["x-vllm-switch-wake-ms"], "ms:", r.json()["choices"][0]["message"]["content"])
PY

  Any OpenAI SDK works too (pip install openai):
    OpenAI(base_url="{url}/v1", api_key="not-needed")

Watch the switches live: {url}/ui in a browser, or `vllm-switch status --url {url} --watch`.

Ctrl-C stops the proxy and both emulated vLLM servers.
"""


def bootstrap(workdir: Path) -> list[EmulatorProcess]:
    servers = [
        (
            name,
            emulator_argv(
                name,
                served_names=(name, alias),
                ledger_dir=workdir / "ledger",
                gpu=GPU,
                gpu_memory_gib=80,
                util=0.55,
                weights_gib=weights,
                max_model_len=4096,
                startup_s=0.5,
            ),
        )
        for name, alias, weights, _ in MODELS
    ]
    return bootstrap_sequentially(workdir, servers)


def demo_config(emulators: list[EmulatorProcess], host: str, port: int) -> ProxyConfig:
    models = tuple(
        ModelConfig(
            name=name,
            aliases=(alias,),
            url=emu.url,
            gpu=GPU,
            sleep_level=level,
            warmup=WarmupConfig(endpoint="chat"),
        )
        for (name, alias, _, level), emu in zip(MODELS, emulators, strict=True)
    )
    return ProxyConfig(
        host=host, port=port, models=models, gpus=(GpuConfig(name=GPU, max_awake=1),)
    )


def run_demo(host: str, port: int) -> int:
    """Raises ListenError (a one-line reason) when it cannot listen at host:port."""
    sock = tcp_listener(host, port)  # bound and listening before anything starts
    raise_open_file_limit(logging.getLogger("vllm_switch"))
    bound = sock.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="vllm-switch-demo-") as tmp:
        print(f"starting two emulated vLLM servers (logs in {tmp}) ...", flush=True)  # noqa: T201
        emulators = bootstrap(Path(tmp))
        try:
            config = demo_config(emulators, host, bound)
            app = create_app(config)
            server = uvicorn.Server(uvicorn_config(app, config, "warning", grace_s=5))
            print(banner(f"http://{host}:{bound}"), flush=True)  # noqa: T201
            # uvicorn re-raises the signal that stopped it: make SIGTERM, like Ctrl-C, end here so
            # that the emulated servers are stopped below instead of outliving the demo
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
            with contextlib.suppress(KeyboardInterrupt, SystemExit):
                server.run(sockets=[sock])
            print("stopping the emulated vLLM servers ...", flush=True)  # noqa: T201
        finally:
            for emu in emulators:
                emu.stop()
    return 0
