"""probe_backend: is a running vLLM server set up the way the proxy needs it?

Three read-only GETs, none of which touches GPU memory or the engine's state, each bounded by
the model's `timeouts.control_s` (so a probe never hangs):

  - `/is_sleeping` - a dev endpoint: 404 means the server was started without
    `VLLM_SERVER_DEV_MODE=1`, and the proxy could never put it to sleep or wake it;
  - `/server_info?config_format=json` - dev mode too; vLLM 0.26 answers its whole config, with
    `vllm_config.model_config.enable_sleep_mode`. Without `--enable-sleep-mode`, `/sleep`
    still answers 200 and `/is_sleeping` true, but frees no memory (nothing is in the cumem
    pool), so the next wake beside it would run out of memory. An answer that lacks the field,
    or no answer, is "unknown", never a failure (logged at debug);
  - `/v1/models` - the served names (the model's `served_name` must be one of them) and the
    backend's `max_model_len`; a 401 is a finding (the model's `api_key` is wrong), an answer
    without a model list is "unknown" (logged as a warning).

Stateless: it returns a `ProbeReport`; what a finding does to the backend (FAILED at start-up,
switching/startup.py) or to the user (`vllm-switch check-config --probe`) is the caller's.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import httpx

from proxy.backends.control import CLOSE
from proxy.config import ModelConfig

log = logging.getLogger(__name__)
DEV_MODE_FIX = "start vLLM with VLLM_SERVER_DEV_MODE=1"
SLEEP_MODE_FIX = "start vLLM with --enable-sleep-mode"


@dataclass(frozen=True)
class Finding:
    """One thing wrong with a backend, and what fixes it; `check` names the check that found
    it: dev_mode, is_sleeping, sleep_mode, served_name or models."""

    check: str
    problem: str
    fix: str

    def __str__(self) -> str:
        return f"{self.problem}: {self.fix}"


@dataclass(frozen=True)
class ProbeReport:
    is_sleeping: bool | None  # None: it could not say (see findings)
    sleep_mode: bool | None  # enable_sleep_mode from /server_info; None: unknown
    served: tuple[str, ...]  # the ids /v1/models lists
    max_model_len: int | None  # of the card for the model's served_name
    findings: tuple[Finding, ...]

    @property
    def ok(self) -> bool:
        return not self.findings

    def message(self) -> str:
        return "; ".join(str(f) for f in self.findings)


class _Answer:
    """One GET's outcome: a status and its JSON body, or why there is none."""

    def __init__(self, status: int | None, body: Any = None, error: str = "") -> None:
        self.status, self.body, self.error = status, body, error

    def describe(self, path: str) -> str:
        if self.status is None:
            return f"GET {path} failed: {self.error}"
        return f"GET {path} answered {self.status}"


async def _get(model: ModelConfig, client: httpx.AsyncClient, path: str) -> _Answer:
    t = model.timeouts
    headers = {**CLOSE, **({"Authorization": f"Bearer {model.api_key}"} if model.api_key else {})}
    try:
        async with asyncio.timeout(t.control_s):
            r = await client.get(
                f"{model.base_url}{path}",
                headers=headers,
                timeout=httpx.Timeout(None, connect=t.connect_s),
            )
    except TimeoutError:
        return _Answer(None, error=f"no answer within {t.control_s:g}s")
    except httpx.HTTPError as exc:
        return _Answer(None, error=f"{type(exc).__name__}: {exc}")
    try:
        body = r.json()
    except ValueError:
        body = None
    return _Answer(r.status_code, body)


async def probe_backend(
    model: ModelConfig,
    client: httpx.AsyncClient,
    *,
    dev_mode_known: bool = False,
    needs_sleep: bool = True,
) -> ProbeReport:
    """Probe one backend. `dev_mode_known`: the proxy started it with VLLM_SERVER_DEV_MODE=1
    itself, so /is_sleeping is not asked (a supervised backend at start-up). `needs_sleep`
    False: nothing will ever put it to sleep (see `may_sleep`), so sleep mode off is no
    finding."""
    findings: list[Finding] = []
    is_sleeping: bool | None = None
    dev_mode = True
    if not dev_mode_known:
        is_sleeping, dev_mode = await _is_sleeping(model, client, findings)
    sleep_mode = await _sleep_mode(model, client) if dev_mode else None
    if sleep_mode is False and needs_sleep:
        findings.append(
            Finding(
                "sleep_mode",
                "sleep mode is off (/server_info says enable_sleep_mode false): /sleep would "
                "free no GPU memory",
                SLEEP_MODE_FIX,
            )
        )
    served, max_model_len = await _models(model, client, findings)
    return ProbeReport(is_sleeping, sleep_mode, served, max_model_len, tuple(findings))


def may_sleep(model: ModelConfig, members: int, max_awake: int) -> bool:
    """Whether the proxy may ever put this model to sleep: its GPU group has more members than
    it keeps awake, or it sleeps when idle. (One model alone on its GPU never sleeps, so it
    needs no --enable-sleep-mode; an operator's sleep of it then frees nothing.)"""
    return members > max_awake or model.idle_sleep_s is not None


async def _is_sleeping(
    model: ModelConfig, client: httpx.AsyncClient, findings: list[Finding]
) -> tuple[bool | None, bool]:
    """(is_sleeping, dev endpoints present)."""
    answer = await _get(model, client, "/is_sleeping")
    if answer.status == 404:
        findings.append(
            Finding(
                "dev_mode",
                "the dev endpoints are missing (/is_sleeping answered 404), so the proxy cannot "
                "put it to sleep or wake it",
                DEV_MODE_FIX,
            )
        )
        return None, False
    value = answer.body.get("is_sleeping") if isinstance(answer.body, dict) else None
    if answer.status == 200 and isinstance(value, bool):
        return value, True
    what = answer.describe("/is_sleeping")
    if answer.status is not None:
        what += f" with {str(answer.body)[:100]!r}"
    findings.append(Finding("is_sleeping", what, "is it a vLLM 0.26 server, up and healthy?"))
    return None, answer.status is not None


async def _sleep_mode(model: ModelConfig, client: httpx.AsyncClient) -> bool | None:
    answer = await _get(model, client, "/server_info?config_format=json")
    body = answer.body if answer.status == 200 else None
    vllm_config = body.get("vllm_config") if isinstance(body, dict) else None
    model_config = vllm_config.get("model_config") if isinstance(vllm_config, dict) else None
    value = model_config.get("enable_sleep_mode") if isinstance(model_config, dict) else None
    if not isinstance(value, bool):
        log.debug(
            "probe %s: sleep mode unknown (%s without vllm_config.model_config.enable_sleep_mode)",
            model.name,
            answer.describe("/server_info"),
        )
        return None
    return value


async def _models(
    model: ModelConfig, client: httpx.AsyncClient, findings: list[Finding]
) -> tuple[tuple[str, ...], int | None]:
    answer = await _get(model, client, "/v1/models")
    data = answer.body.get("data") if isinstance(answer.body, dict) else None
    if answer.status == 401:
        findings.append(
            Finding(
                "models",
                "GET /v1/models answered 401",
                "set the model's `api_key` to the backend's --api-key",
            )
        )
        return (), None
    if answer.status != 200 or not isinstance(data, list):
        # vLLM always lists its models; a server that does not cannot be checked, which is no
        # reason to refuse it (its requests will say what is wrong)
        log.warning(
            "probe %s: served_name not checked (%s without a model list)",
            model.name,
            answer.describe("/v1/models"),
        )
        return (), None
    cards = {c["id"]: c for c in data if isinstance(c, dict) and isinstance(c.get("id"), str)}
    served = tuple(cards)
    card = cards.get(model.backend_model)
    if card is None:
        findings.append(
            Finding(
                "served_name",
                f"the backend serves {', '.join(map(repr, served)) or 'no model'}, not "
                f"{model.backend_model!r}",
                "set the model's `served_name` to one of those (or start vLLM with "
                f"--served-model-name {model.backend_model})",
            )
        )
        return served, None
    length = card.get("max_model_len")
    return served, length if isinstance(length, int) and length > 0 else None
