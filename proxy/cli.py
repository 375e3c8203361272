"""The `vllm-switch` command line: serve, demo, status, check-config, config-schema, emulate."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from proxy import __version__
from proxy.http.edge.listen import tcp_listener

if TYPE_CHECKING:
    import uvicorn
    from fastapi import FastAPI

    from proxy.config import ProxyConfig


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
    raise_open_file_limit(logging.getLogger("vllm_switch"))  # before the edge sizes its cap
    sock = tcp_listener(host, port)  # bound first: --port 0 works, and we can say where
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
    return 0


def _schema(_: argparse.Namespace) -> int:
    from proxy.config import json_schema

    sys.stdout.write(json_schema())
    return 0


def _status(args: argparse.Namespace) -> int:
    from proxy.observability.statusview import run_status

    return run_status(args.url, as_json=args.json)


def _demo(args: argparse.Namespace) -> int:
    from proxy.demo import run_demo

    return run_demo(args.host, args.port)


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
    p.set_defaults(func=_check_config)
    p = sub.add_parser("status", help="show a running proxy's models, states and switch timings")
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the proxy's base URL")
    p.add_argument("--json", action="store_true", help="print the raw /admin/status JSON")
    p.set_defaults(func=_status)
    p = sub.add_parser("config-schema", help="print the config's JSON schema")
    p.set_defaults(func=_schema)
    sub.add_parser(
        "emulate",
        help="run a vLLM 0.26.0 emulator (takes `vllm serve` flags; see `emulate --help`)",
    )
    ns = parser.parse_args(args)
    code: int = ns.func(ns)
    return code
