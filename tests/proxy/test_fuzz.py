"""Schemathesis fuzzes the proxy's OpenAPI surface: `vllm-switch serve` in its own process in
front of two emulated models on one fake GPU, with API keys on. Schema-valid and
schema-violating requests (bodies, headers, a valid or missing key) for every documented
operation: no 5xx caused by the proxy, every error an OpenAI error body, every answer a
documented status and content type, and at the end the memory and routing invariants.

Examples per operation are bounded (FUZZ_EXAMPLES, 25 by default) and derandomized, so CI
runs the same cases every time; raise it locally to fuzz harder.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import hypothesis
import pytest
import schemathesis
import yaml
from schemathesis import Case, CheckContext, GenerationMode, Response
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from proxy.emulator.launcher import bootstrap_sequentially
from proxy.http.routes.table import ROUTES
from tests.helpers.fleet import emulator_args
from tests.helpers.processes import emulator_stats, launched

pytestmark = pytest.mark.process  # `vllm-switch serve` and two emulators

KEY = "sk-fuzz-0123456789"
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[schemathesis.BaseSchema]:
    work = tmp_path_factory.mktemp("fuzz")
    servers = [(n, emulator_args(n, work / "ledger")) for n in ("model-a", "model-b")]
    emulators = bootstrap_sequentially(work, servers)
    try:
        config = {
            "host": "127.0.0.1",
            "port": 0,
            "gpus": [{"name": "g0"}],
            "models": [
                {
                    "name": e.port_file.stem,
                    "url": e.url,
                    "gpu": "g0",
                    "aliases": [f"{e.port_file.stem}-alias"],
                }
                for e in emulators
            ],
            "auth": {"api_keys": [KEY]},
            "limits": {"queue_timeout_s": 20},
        }
        path = work / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        with launched(["serve", "--config", str(path)], "vllm-switch listening on") as (_, url):
            schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
            schema.config.update(headers={"Authorization": f"Bearer {KEY}"})
            schema.config.generation.update(max_examples=EXAMPLES, deterministic=True)
            yield schema
        for emu in emulators:
            stats: dict[str, Any] = emulator_stats(emu.url)["stats"]  # type: ignore[assignment]
            assert stats.get("requests_queued_while_asleep", 0) == 0
        ledger = yaml.safe_load((work / "ledger" / "g0.json").read_text())
        assert ledger["oom_events"] == 0
    finally:
        for emu in emulators:
            emu.stop()


def openai_error_body(ctx: CheckContext, response: Response, case: Case[Any]) -> bool | None:
    """Every 4xx/5xx, the proxy's or a backend's, is an OpenAI error object."""
    if response.status_code < 400:
        return None
    body = response.json()
    error = body.get("error") if isinstance(body, dict) else None
    assert isinstance(error, dict), f"not an OpenAI error body: {response.text[:200]}"
    assert isinstance(error.get("message"), str), "no error message"
    assert error["message"], "an empty error message"
    assert isinstance(error.get("type"), str), "no error type"
    return True


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_fuzzed_requests_get_documented_answers(
    api: schemathesis.BaseSchema, mode: GenerationMode
) -> None:
    """Every operation in /openapi.json, driven through schemathesis' Python API (its pytest
    plugin lags behind pytest releases)."""
    operations = [r.ok() for r in api.get_all_operations() if isinstance(r, Ok)]
    # the forwarded routes, GET /v1/models and /v1/models/{id}, /health, /ready, /metrics,
    # /admin/status, /admin/events and POST /admin/models/{name}/{action}
    assert len(operations) == len(ROUTES) + 8
    # an event stream never ends by itself: its own tests read it (tests/proxy/test_admin.py)
    operations = [op for op in operations if op.path != "/admin/events"]
    if mode is GenerationMode.NEGATIVE:  # only request bodies can be made invalid here
        operations = [op for op in operations if op.method.upper() == "POST" and len(op.body)]

    for operation in operations:

        @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
        @hypothesis.settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(hypothesis.HealthCheck),
        )
        def check(case: Case[Any]) -> None:
            # The schema documents fields; validating them is vLLM's job and depends on the
            # model: vLLM's pydantic models are lax (`"stream": 0` is accepted, `prompt` may be
            # absent) and `max_tokens` is bounded by each model's context. So "schema-violating
            # request accepted" and "schema-valid request rejected" are not the proxy's
            # failures; 5xx, undocumented statuses or content types, a request without its key
            # not refused, and non-OpenAI error bodies are.
            case.call_and_validate(
                additional_checks=[openai_error_body],
                excluded_checks=[negative_data_rejection, positive_data_acceptance],
                timeout=60,
            )

        check()
