"""`vllm-switch status`: fetch /admin/status from a running proxy and render it as tables. Stateless."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
from rich.console import Console
from rich.markup import escape
from rich.table import Table

STATE_STYLE = {
    "ready": "green",
    "asleep": "blue",
    "failed": "bold red",
    "waking": "yellow",
    "sleeping": "yellow",
    "unknown": "dim",
}


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def _since(ts: float | None) -> str:
    if ts is None:
        return "-"
    s = max(0.0, time.time() - ts)
    return f"{s:.0f}s ago" if s < 120 else f"{s / 60:.0f}m ago"


def render(status: dict[str, Any], console: Console) -> None:
    problems = escape("; ".join(status["problems"]))
    verdict = "[green]ready[/]" if status["ready"] else f"[red]not ready[/]: {problems}"
    console.print(f"vllm-switch {status['version']} - up {status['uptime_s']:.0f}s - {verdict}")
    gpus = Table(title="GPU groups", title_justify="left")
    for col in ("gpu", "max awake", "switching", "phase"):
        gpus.add_column(col)
    for g in status["gpus"]:
        phase = f"{g['phase']} ({g['phase_s']:.1f}s)" if g["phase"] else "-"
        gpus.add_row(
            g["name"], str(g["max_awake"]), "yes" if g["switch_in_progress"] else "no", phase
        )
    console.print(gpus)
    models = Table(title="Models", title_justify="left")
    for col in (
        "model",
        "gpu",
        "state",
        "in flight",
        "queued",
        "awake since",
        "last sleep",
        "last wake",
        "last warm-up",
    ):
        models.add_column(col)
    for m in status["models"]:
        state = f"[{STATE_STYLE.get(m['state'], '')}]{m['state']}[/]"
        models.add_row(
            m["name"],
            m["gpu"],
            state,
            str(m["inflight"]),
            str(m["queue_depth"]),
            _since(m["awake_since"]),
            _ms(m["last_sleep_ms"]),
            _ms(m["last_wake_ms"]),
            _ms(m["last_warmup_ms"]),
        )
    console.print(models)
    for m in status["models"]:
        if m["failure"]:
            console.print(f"[red]{escape(m['name'])} failed:[/] {escape(m['failure'])}")


def run_status(url: str, *, as_json: bool, console: Console | None = None) -> int:
    console = console or Console()
    try:
        response = httpx.get(f"{url.rstrip('/')}/admin/status", timeout=10)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        console.print(f"[red]cannot read {escape(url)}/admin/status:[/] {escape(str(exc))}")
        return 2
    status: dict[str, Any] = response.json()
    if as_json:
        console.print_json(json.dumps(status))
    else:
        render(status, console)
    return 0 if status["ready"] else 1
