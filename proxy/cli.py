"""The `vllm-switch` command line: serve, demo, status, sleep/wake/restart/reset, check-config,
config-schema, emulate. Stateless: each command reads its arguments and the environment
(`VLLM_SWITCH_ADMIN_KEY`, the admin key of a proxy with auth on)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from proxy import __version__
from proxy.http.edge.listen import ListenError, tcp_listener

if TYPE_CHECKING:
    import httpx
    import uvicorn
    from fastapi import FastAPI
    from rich.console import Console

    from proxy.backends.probe import ProbeReport
    from proxy.config import ModelConfig, ProxyConfig

ADMIN_KEY_ENV = "VLLM_SWITCH_ADMIN_KEY"
ACTIONS = ("sleep", "wake", "restart", "reset")


def _load(path: Path) -> ProxyConfig | None:
    from proxy.config import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


def uvicorn_config(
    app: FastAPI, config: ProxyConfig, log_level: str, grace_s: int
) -> uvicorn.Config:
    """The HTTP server's settings: uvloop, httptools and the edge's limits (proxy/http/edge/protocol.py).

    `vllm-switch serve`, the demo and the tests all serve the app with these."""
    from proxy.http.edge.protocol import EdgeConfig
    from proxy.observability.metrics import UNKNOWN_MODEL

    services = getattr(getattr(app, "state", None), "services", None)  # (tests serve bare apps)
    rejected = services.metrics.rejected if services is not None else None
    return EdgeConfig(
        app,
        config.limits,
        count=None
        if rejected is None
        else lambda reason: rejected.labels(UNKNOWN_MODEL, reason).inc(),
        lifespan="on",
        log_level=log_level,
        access_log=False,  # the proxy logs one richer line per request itself (requestlog.py)
        timeout_graceful_shutdown=grace_s,
    )


def _serve(args: argparse.Namespace) -> int:
    import logging

    import uvicorn

    from proxy.app import create_app

    if (config := _load(args.config)) is None:
        return 2
    from proxy.http.edge.fdlimit import raise_open_file_limit
    from proxy.observability.logs import configure_logging

    host = args.host or config.host
    port = config.port if args.port is None else args.port
    configure_logging(config.logging.format, config.logging.level)
    try:
        sock = tcp_listener(host, port)  # bound first: --port 0 works, and we can say where
    except ListenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    raise_open_file_limit(logging.getLogger("vllm_switch"))  # before the edge sizes its cap
    print(f"vllm-switch listening on http://{host}:{sock.getsockname()[1]}", flush=True)
    server = uvicorn.Server(uvicorn_config(create_app(config), config, "info", grace_s=30))
    # uvicorn drains open requests (streams included, up to 30 s), then re-raises the signal it
    # caught: make that re-raised SIGTERM a clean exit 0 instead of death by signal
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with contextlib.suppress(KeyboardInterrupt):  # the same for Ctrl-C
        server.run(sockets=[sock])
    return 0


def _check_config(args: argparse.Namespace) -> int:
    if (config := _load(args.config)) is None:
        return 2
    groups: dict[str, list[str]] = {}
    for m in config.models:
        groups.setdefault(m.gpu, []).append(m.name)
    print(f"{args.config}: OK - {len(config.models)} model(s)")
    for gpu, names in groups.items():
        print(f"  gpu {gpu} (max_awake={config.gpu(gpu).max_awake}): {', '.join(names)}")
    if not args.probe:
        return 0
    reports = asyncio.run(_probe_all(config))
    print("probe of the running backends (read-only: nothing is slept or woken):")
    for m, report in zip(config.models, reports, strict=True):
        print(f"  {m.name} ({m.base_url}): {_probe_summary(report)}")
        for finding in report.findings:
            print(f"    - {finding.problem}\n      fix: {finding.fix}")
    return 0 if all(r.ok for r in reports) else 1


async def _probe_all(config: ProxyConfig) -> list[ProbeReport]:
    import httpx

    from proxy.backends.probe import may_sleep, probe_backend

    def needs_sleep(m: ModelConfig) -> bool:
        members = sum(other.gpu == m.gpu for other in config.models)
        return may_sleep(m, members, config.gpu(m.gpu).max_awake)

    async with httpx.AsyncClient() as client:
        probes = (probe_backend(m, client, needs_sleep=needs_sleep(m)) for m in config.models)
        return list(await asyncio.gather(*probes))


def _probe_summary(report: ProbeReport) -> str:
    if not report.ok:
        return f"{len(report.findings)} problem(s)"
    facts = ["asleep" if report.is_sleeping else "awake"]
    facts.append(
        "sleep mode on"
        if report.sleep_mode
        else "sleep mode off (never put to sleep: alone on its GPU)"
        if report.sleep_mode is False
        else "sleep mode unknown (no /server_info)"
    )
    if report.max_model_len is not None:
        facts.append(f"max_model_len {report.max_model_len}")
    return "OK (" + ", ".join(facts) + ")"


def _schema(_: argparse.Namespace) -> int:
    from proxy.config import json_schema

    sys.stdout.write(json_schema())
    return 0


def _headers(key: str | None) -> dict[str, str]:
    key = key or os.environ.get(ADMIN_KEY_ENV)
    return {"Authorization": f"Bearer {key}"} if key else {}


def _error_text(response: httpx.Response) -> str:
    """An OpenAI error body's message, else the body's start; a 401 says where the key goes."""
    try:
        body: Any = response.json()
        message = str(body["error"]["message"])
    except (ValueError, KeyError, TypeError):
        message = response.text[:300] or response.reason_phrase
    if response.status_code == 401:
        message += f" (give the admin key with --key or {ADMIN_KEY_ENV})"
    return f"{response.status_code}: {message}"


def _fetch_status(url: str, key: str | None) -> tuple[dict[str, Any] | None, str]:
    import httpx

    where = f"{url.rstrip('/')}/admin/status"
    try:
        response = httpx.get(where, headers=_headers(key), timeout=10)
    except httpx.HTTPError as exc:
        return None, f"cannot read {where}: {exc}"
    if response.status_code != 200:
        return None, f"cannot read {where}: {_error_text(response)}"
    status: dict[str, Any] = response.json()
    return status, ""


def _status_console() -> Console:
    """The console status prints on: as wide as its tables need, so that no model name is
    cut (rich would shorten cells to fit 80 columns), and at least as wide as the terminal."""
    from rich.console import Console

    return Console(width=shutil.get_terminal_size().columns)


def _render_wide(status: dict[str, Any], console: Console) -> None:
    from rich.console import Console

    from proxy.observability.statusview import render

    text = io.StringIO()
    render(status, Console(width=1000, file=text, color_system=None, highlight=False))
    lines = text.getvalue().splitlines()
    needed = max((len(line.rstrip()) for line in lines), default=0)
    console.width = max(console.width, needed)
    render(status, console)


def _status(args: argparse.Namespace) -> int:
    console = _status_console()
    if args.watch is None:
        return _status_once(args, console)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C, wherever it lands, ends the watch
        while True:
            console.clear()
            console.print(f"every {args.watch:g}s - Ctrl-C stops", style="dim", highlight=False)
            _status_once(args, console)
            time.sleep(args.watch)
    return 0


def _status_once(args: argparse.Namespace, console: Console) -> int:
    status, error = _fetch_status(args.url, args.key)
    if status is None:
        if args.watch is None:
            print(f"error: {error}", file=sys.stderr)
        else:
            console.print(error, style="red", highlight=False, markup=False, soft_wrap=True)
        return 2
    if args.json:
        console.print_json(json.dumps(status))
    else:
        _render_wide(status, console)
    return 0 if status["ready"] else 1


def _action(args: argparse.Namespace) -> int:
    """POST /admin/models/{model}/{action}; prints the outcome, non-zero on an error."""
    from urllib.parse import quote

    import httpx

    where = f"{args.url.rstrip('/')}/admin/models/{quote(args.model, safe='')}/{args.command}"
    try:
        # a wake or restart waits for the switch itself: up to the model's timeouts
        response = httpx.post(where, headers=_headers(args.key), timeout=args.timeout)
    except httpx.HTTPError as exc:
        print(f"error: cannot reach {where}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    if response.status_code != 200:
        print(f"error: {args.command} {args.model}: {_error_text(response)}", file=sys.stderr)
        return 1
    try:
        outcome: dict[str, Any] = response.json()
        line = (
            f"{outcome['model']}: {outcome['action']} -> {outcome['state']} "
            f"({outcome['detail']}; {outcome['ms']:.0f} ms)"
        )
    except (ValueError, KeyError, TypeError):
        print(f"error: unexpected answer from {where}: {response.text[:300]}", file=sys.stderr)
        return 1
    print(line)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from proxy.demo import run_demo

    try:
        return run_demo(args.host, args.port)
    except ListenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "emulate":  # vLLM's own command line: parsed by the emulator
        from proxy.emulator.server import main as emulate

        return emulate(args[1:])
    parser = argparse.ArgumentParser(
        prog="vllm-switch",
        description="Serve several vLLM models on one GPU behind one OpenAI endpoint.",
    )
    parser.add_argument("--version", action="version", version=f"vllm-switch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    p = sub.add_parser("serve", help="run the proxy from a YAML config")
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--host", default=None, help="overrides the config's host")
    p.add_argument("--port", type=int, default=None, help="overrides the config's port")
    p.set_defaults(func=_serve)
    p = sub.add_parser(
        "demo", help="proxy + two emulated vLLM servers on one fake GPU (no GPU needed)"
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.set_defaults(func=_demo)
    p = sub.add_parser("check-config", help="validate a config file and say what is wrong")
    p.add_argument("config", type=Path)
    p.add_argument(
        "--probe",
        action="store_true",
        help="also probe each running backend (dev mode, sleep mode, served name) read-only",
    )
    p.set_defaults(func=_check_config)
    p = sub.add_parser("status", help="show a running proxy's models, states and switch timings")
    _proxy_arguments(p)
    p.add_argument("--json", action="store_true", help="print the raw /admin/status JSON")
    p.add_argument(
        "--watch",
        type=float,
        nargs="?",
        const=2.0,
        default=None,
        metavar="SECONDS",
        help="redraw every SECONDS (default 2) until Ctrl-C",
    )
    p.set_defaults(func=_status)
    for action in ACTIONS:
        p = sub.add_parser(action, help=f"{action} one model of a running proxy (admin API)")
        p.add_argument("model", help="the model's name or alias")
        _proxy_arguments(p)
        p.add_argument("--timeout", type=float, default=900, help="seconds to wait for the answer")
        p.set_defaults(func=_action)
    p = sub.add_parser("config-schema", help="print the config's JSON schema")
    p.set_defaults(func=_schema)
    sub.add_parser(
        "emulate",
        help="run a vLLM 0.26.0 emulator (takes `vllm serve` flags; see `emulate --help`)",
    )
    ns = parser.parse_args(args)
    if getattr(ns, "watch", None) is not None and ns.watch <= 0:
        parser.error("--watch needs a number of seconds above 0")
    code: int = ns.func(ns)
    return code


def _proxy_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the proxy's base URL")
    p.add_argument(
        "--key",
        default=None,
        help=f"an admin key, when the proxy has auth on (default: ${ADMIN_KEY_ENV})",
    )
