"""VllmControl: the HTTP calls that drive one vLLM 0.26 server's Sleep Mode.

Stateless apart from its config. Every control call uses a fresh connection
(`Connection: close`): vLLM drops a keep-alive connection after a failed engine call's 500, so a
reused one could be reset (seen on an H100; see docs/conformance.md). Sleep always passes
`level` (never the blog's `sleep_level`, which vLLM ignores) and `mode=wait`, so nothing
in flight is ever aborted. Timeouts are the caller's (`asyncio.timeout` around the operation).
"""

from __future__ import annotations

from typing import Any

import httpx

from proxy.config import ModelConfig

CLOSE = {"Connection": "close"}


class ControlError(Exception):
    """A control call failed: non-2xx answer, unexpected body, or transport error."""


class VllmControl:
    def __init__(self, config: ModelConfig, client: httpx.AsyncClient) -> None:
        self._cfg = config
        self._client = client
        self._base = config.base_url
        self._auth = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
        # the model's own connect limit; how long a call may take is the caller's (see above),
        # except /health, which polling loops call bare
        t = config.timeouts
        self._timeout = httpx.Timeout(None, connect=t.connect_s)
        self._health_timeout = httpx.Timeout(t.control_s, connect=t.connect_s)

    @property
    def client(self) -> httpx.AsyncClient:
        """The HTTP client its calls use (start-up's probe reads the same backend with it)."""
        return self._client

    async def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self._client.request(
                method,
                f"{self._base}{path}",
                headers={**CLOSE, **self._auth},
                timeout=self._timeout,
                **kwargs,
            )
        except httpx.HTTPError as exc:
            raise ControlError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        if response.status_code >= 300:
            raise ControlError(
                f"{method} {path} answered {response.status_code}: {response.text[:300]}"
            )
        return response

    async def health(self) -> bool:
        """True when the server answers /health 200 (it only listens once ready)."""
        try:
            r = await self._client.get(
                f"{self._base}/health", headers=CLOSE, timeout=self._health_timeout
            )
        except httpx.HTTPError:
            return False
        return r.status_code == 200

    async def is_sleeping(self) -> bool:
        r = await self._call("GET", "/is_sleeping")
        try:
            value = r.json()["is_sleeping"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ControlError(f"/is_sleeping answered {r.text[:100]!r}") from exc
        if not isinstance(value, bool):
            raise ControlError(f"/is_sleeping answered {r.text[:100]!r}")
        return value

    async def sleep(self, level: int, *, keep: bool = False) -> None:
        """`mode=wait` (in-flight requests finish first), or `mode=keep` (they pause, and
        resume after the wake): never vLLM's default `abort`."""
        mode = "keep" if keep else "wait"
        await self._call("POST", "/sleep", params={"level": level, "mode": mode})

    async def wake(self, level: int) -> None:
        """Level 1: one /wake_up. Level 2: weights, reload_weights, KV cache, prefix cache.

        The staged order keeps vLLM's scheduler paused until valid weights are back, so no
        queued request ever runs on the discarded (garbage) weights.
        """
        if level == 1:
            await self._call("POST", "/wake_up")
            return
        await self._call("POST", "/wake_up", params={"tags": "weights"})
        await self._call("POST", "/collective_rpc", json={"method": "reload_weights"})
        await self._call("POST", "/wake_up", params={"tags": "kv_cache"})
        await self._call("POST", "/reset_prefix_cache")

    async def warm_up(self) -> None:
        """One tiny request through the model (kernels, allocator, prefix cache warm)."""
        w = self._cfg.warmup
        model = self._cfg.backend_model
        if w.endpoint == "chat":
            path = "/v1/chat/completions"
            body: dict[str, Any] = {
                "model": model,
                "messages": [{"role": "user", "content": w.prompt}],
                "max_tokens": w.max_tokens,
            }
        elif w.endpoint == "embeddings":
            path, body = "/v1/embeddings", {"model": model, "input": w.prompt}
        else:
            path, body = (
                "/v1/completions",
                {"model": model, "prompt": w.prompt, "max_tokens": w.max_tokens},
            )
        await self._call("POST", path, json=body)
