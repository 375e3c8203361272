"""FakeVllm: several vLLM 0.26 servers' control API, played in memory through httpx.MockTransport.

One `FakeServer` per base URL (host:port), each with its own engine state, as real vLLM has it
(vllm/v1/executor/abstract.py and the emulator's engine, proxy/emulator/engine.py):

  - `/sleep?level=N&mode=M` puts both tags (weights, kv_cache) to sleep; level 2 discards the
    weights; `mode=wait` waits for running generations (`abort`, vLLM's default, would abort
    them: counted in `stats["aborted"]`); sleeping again is a no-op. Success is an empty 200.
  - `/wake_up` wakes every sleeping tag, `?tags=weights` / `?tags=kv_cache` one; `/is_sleeping`
    stays true until no tag sleeps. After a level-2 sleep, waking the KV cache while the weights
    still sleep, or `reload_weights` into sleeping weights, kills the engine (as on a GPU).
  - a failed engine call answers 500 `{"error": {"message": "Call to wake_up method failed: CUDA
    Error: out of memory ..."}}`; an engine that failed a wake for lack of memory is wedged: every
    later wake fails too.
  - a generation request (`/v1/completions`, `/v1/chat/completions`, `/v1/embeddings`) while the
    engine sleeps *hangs* until it is woken; on weights discarded by a level-2 sleep and never
    reloaded it answers garbage (counted in `stats["garbage"]`).
  - a server that is down refuses connections (`httpx.ConnectError`); calls in progress when it
    goes down fail with `httpx.RemoteProtocolError`.

Start-up probe (proxy/backends/probe.py): `GET /v1/models` lists `served_names` (default: the
served name) with `max_model_len`; `GET /server_info` (dev mode) has
`vllm_config.model_config.enable_sleep_mode` (`sleep_mode`), or answers 404 with
`server_info=False` (an older emulator); `dev_mode=False` answers every dev endpoint
(/is_sleeping, /sleep, /wake_up, ...) 404, as vLLM does without VLLM_SERVER_DEV_MODE=1. The
probe's two reads stay out of `log()` unless `probe=True`, as /health polls do unless `health`.

Faults per server: `fail()` (an error answer, or any answer), `hold()` (a call waits at a `Gate`
the test opens), `lie_is_sleeping`. Every call is recorded in order, per server and for all
servers together (`FakeVllm.log()`), as short strings such as "POST /sleep?level=1&mode=wait".
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import httpx

TAGS = ("weights", "kv_cache")
OOM = "CUDA Error: out of memory at <path>:163"
WEDGED = "CUDA Error: invalid argument at <path>:169"
ENGINE_DEAD = "EngineCore encountered an issue. See stack trace (above) for the root cause."
GENERATION = ("/v1/completions", "/v1/chat/completions", "/v1/embeddings")
HEALTH = "GET /health"
PROBE_READS = ("/v1/models", "/server_info")  # GETs of the start-up probe, not in log() by default
DEV_ROUTES = (
    "/is_sleeping",
    "/sleep",
    "/wake_up",
    "/collective_rpc",
    "/reset_prefix_cache",
    "/server_info",
)


def error_body(message: str, err_type: str, code: int) -> dict[str, Any]:
    return {"error": {"message": message, "type": err_type, "param": None, "code": code}}


@dataclass(frozen=True)
class Call:
    """One request a server received."""

    method: str
    path: str
    params: tuple[tuple[str, str], ...]
    body: Any
    headers: dict[str, str]

    def __str__(self) -> str:
        if not self.path:  # an event noted in the log, not a call
            return self.method
        query = "&".join(f"{k}={v}" for k, v in self.params)
        text = f"{self.method} {self.path}" + (f"?{query}" if query else "")
        if self.path == "/collective_rpc" and isinstance(self.body, dict):
            text += f" {self.body.get('method')}"
        return text


@dataclass
class Rule:
    """Which calls a fault or a gate applies to; `times` None = every matching call."""

    method: str
    path: str
    params: dict[str, str]
    times: int | None

    def take(self, call: Call) -> bool:
        if call.method != self.method or call.path != self.path:
            return False
        if any(dict(call.params).get(k) != v for k, v in self.params.items()):
            return False
        if self.times is not None:
            if self.times == 0:
                return False
            self.times -= 1
        return True


@dataclass
class Fault(Rule):
    status: int = 500
    body: Any = None
    wedge: bool = False  # a failed wake for lack of memory: later wakes fail too


class Gate(Rule):
    """Holds matching calls until `open()`; `await reached()` until one is held."""

    def __init__(self, rule: Rule, notify: Callable[[], None]) -> None:
        super().__init__(rule.method, rule.path, rule.params, rule.times)
        self.held = 0
        self.is_open = False
        self._entered = asyncio.Event()
        self._notify = notify

    def enter(self) -> None:
        self.held += 1
        self._entered.set()

    async def reached(self, within_s: float = 86_400) -> None:
        """Until a call is held here. Bounded in (virtual) time: under looptime a call that never
        comes fails the test at once instead of hanging it."""
        try:
            async with asyncio.timeout(within_s):
                await self._entered.wait()
        except TimeoutError:
            raise AssertionError(f"no {self.method} {self.path} reached this gate") from None

    def open(self) -> None:
        self.is_open = True
        self._notify()

    def opened(self) -> bool:
        return self.is_open


@dataclass
class FakeServer:
    name: str
    address: str
    served_name: str
    record: Callable[[str, Call], None]
    up: bool = True
    embeddings: bool = False  # a generative model: /v1/embeddings is refused
    sleeping_tags: set[str] = field(default_factory=set)
    slept_level: int = 0
    weights_valid: bool = True
    wedged: bool = False
    dead: bool = False
    lie_is_sleeping: bool | None = None  # /is_sleeping answers this instead of the truth
    dev_mode: bool = True  # False: the dev endpoints answer 404 (no VLLM_SERVER_DEV_MODE=1)
    sleep_mode: bool = True  # /server_info's enable_sleep_mode
    server_info: bool = True  # False: /server_info answers 404
    served_names: tuple[str, ...] = ()  # what /v1/models lists; () = (served_name,)
    max_model_len: int = 4096
    running: int = 0  # generation requests in progress
    call_s: float = 0.0  # how long a /sleep or /wake_up that changes something takes (virtual)
    calls: list[Call] = field(default_factory=list)
    stats: Counter[str] = field(default_factory=Counter)
    faults: list[Fault] = field(default_factory=list)
    gates: list[Gate] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def is_sleeping(self) -> bool:
        return bool(self.sleeping_tags)

    # ----- what tests script -----------------------------------------------------------------
    def fail(
        self,
        method: str,
        path: str,
        message: str = "injected failure",
        *,
        status: int = 500,
        body: Any = None,
        times: int | None = 1,
        wedge: bool = False,
        **params: str,
    ) -> Fault:
        """The next `times` matching calls answer `status` with vLLM's error body (or `body`)."""
        if body is None:
            body = error_body(
                f"Call to {path.strip('/')} method failed: {message}", "Error", status
            )
        fault = Fault(method, path, params, times, status=status, body=body, wedge=wedge)
        self.faults.append(fault)
        return fault

    def wake_oom(self) -> Fault:
        """The next wake runs out of GPU memory, as vLLM 0.26 does (500, engine wedged)."""
        return self.fail("POST", "/wake_up", OOM, wedge=True)

    def hold(self, method: str, path: str, *, times: int | None = 1, **params: str) -> Gate:
        gate = Gate(Rule(method, path, params, times), self._notify)
        self.gates.append(gate)
        return gate

    def power_on(self, *, asleep: bool = False, level: int = 1) -> None:
        """A freshly started engine (awake unless `asleep`), listening."""
        self.up, self.dead, self.wedged = True, False, False
        self.weights_valid = not asleep or level == 1  # level 2 discarded them
        self.sleeping_tags = set(TAGS) if asleep else set()
        self.slept_level = level if asleep else 0
        self._notify()

    def power_off(self) -> None:
        self.up = False
        self._notify()

    def log(self, *, health: bool = False, probe: bool = False) -> list[str]:
        return [str(c) for c in self.calls if shown(c, health=health, probe=probe)]

    def count(self, text: str) -> int:
        return sum(str(c) == text for c in self.calls)

    # ----- serving ---------------------------------------------------------------------------
    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _until(self, request: httpx.Request, ready: Callable[[], bool]) -> None:
        while not ready():
            if not self.up:
                raise httpx.RemoteProtocolError(
                    "Server disconnected without sending a response.", request=request
                )
            await self._changed.wait()
        if not self.up:
            raise httpx.RemoteProtocolError("Server disconnected", request=request)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        body: Any = None
        if request.content:
            try:
                body = json.loads(request.content)
            except ValueError:
                body = request.content.decode(errors="replace")
        wanted = ("authorization", "connection")
        call = Call(
            request.method,
            request.url.path,
            tuple(request.url.params.multi_items()),
            body,
            {k: v for k, v in request.headers.items() if k in wanted},
        )
        self.calls.append(call)
        self.record(self.name, call)
        generation = call.path in GENERATION
        self.running += generation
        try:
            return await self._respond(request, call)
        finally:
            self.running -= generation
            self._notify()

    async def _respond(self, request: httpx.Request, call: Call) -> httpx.Response:
        for gate in [g for g in self.gates if g.take(call)]:
            gate.enter()
            await self._until(request, gate.opened)
        for fault in self.faults:
            if fault.take(call):
                if fault.wedge:
                    self.wedged = True
                return httpx.Response(fault.status, json=fault.body)
        route = ROUTES.get((call.method, call.path))
        if route is None or (call.path in DEV_ROUTES and not self.dev_mode):
            return httpx.Response(404, json={"detail": "Not Found"})
        return await route(self, request, call)

    def _engine_error(self, method: str, message: str) -> httpx.Response:
        return httpx.Response(
            500,
            json=error_body(
                f"Call to {method} method failed: {message}", "InternalServerError", 500
            ),
        )

    def _die(self) -> httpx.Response:
        self.dead = True
        self._notify()
        return httpx.Response(500, json=error_body(ENGINE_DEAD, "InternalServerError", 500))

    async def _health(self, request: httpx.Request, call: Call) -> httpx.Response:
        return httpx.Response(503 if self.dead else 200)

    async def _is_sleeping(self, request: httpx.Request, call: Call) -> httpx.Response:
        if self.dead:
            return self._die()
        answer = self.is_sleeping if self.lie_is_sleeping is None else self.lie_is_sleeping
        return httpx.Response(200, json={"is_sleeping": answer})

    async def _sleep(self, request: httpx.Request, call: Call) -> httpx.Response:
        params = dict(call.params)
        try:
            level = int(params.get("level", "1"))
        except ValueError as exc:
            return httpx.Response(400, json=error_body(str(exc), "BadRequestError", 400))
        if self.dead:
            return self._die()
        mode = params.get("mode", "abort")
        if mode == "wait":
            await self._until(request, lambda: self.running == 0)
        elif mode == "keep":
            self.stats["paused"] += self.running  # they resume after the wake
        else:
            self.stats["aborted"] += self.running
        if not self.sleeping_tags:  # else "Executor is already sleeping."
            await asyncio.sleep(self.call_s)
            self.sleeping_tags = set(TAGS)
            self.slept_level = level
            if level != 1:
                self.weights_valid = False
        self.stats[f"sleeps_level_{level}"] += 1
        self._notify()
        return httpx.Response(200)

    async def _wake_up(self, request: httpx.Request, call: Call) -> httpx.Response:
        if self.dead:
            return self._die()
        tags = [v for k, v in call.params if k == "tags"] or None
        order = [t for t in TAGS if t in self.sleeping_tags and (tags is None or t in tags)]
        if not order:
            return httpx.Response(200)  # not sleeping, or those tags are awake: a no-op
        self.stats["wake_calls"] += 1
        if self.wedged:
            return self._engine_error("wake_up", WEDGED)
        if self.slept_level != 1 and order == ["kv_cache"] and "weights" in self.sleeping_tags:
            return self._die()  # KV cache restored into unmapped weight memory
        await asyncio.sleep(self.call_s)
        self.sleeping_tags -= set(order)
        self._notify()
        return httpx.Response(200)

    async def _collective_rpc(self, request: httpx.Request, call: Call) -> httpx.Response:
        method = call.body.get("method") if isinstance(call.body, dict) else None
        if self.dead:
            return self._die()
        if method != "reload_weights":
            return self._engine_error("collective_rpc", f"Method '{method}' is not implemented.")
        if "weights" in self.sleeping_tags:
            return self._die()  # writes into unmapped weight memory
        self.weights_valid = True
        self.stats["reloads"] += 1
        return httpx.Response(200, json={"results": [None]})

    async def _reset_prefix_cache(self, request: httpx.Request, call: Call) -> httpx.Response:
        if self.dead:
            return self._die()
        return httpx.Response(200, json={"success": self.running == 0})

    async def _models(self, request: httpx.Request, call: Call) -> httpx.Response:
        cards = [
            {"id": n, "object": "model", "owned_by": "vllm", "max_model_len": self.max_model_len}
            for n in self.served_names or (self.served_name,)
        ]
        return httpx.Response(200, json={"object": "list", "data": cards})

    async def _server_info(self, request: httpx.Request, call: Call) -> httpx.Response:
        if not self.server_info:
            return httpx.Response(404, json={"detail": "Not Found"})
        model_config = {"max_model_len": self.max_model_len, "enable_sleep_mode": self.sleep_mode}
        config = {"model_config": model_config}
        return httpx.Response(200, json={"vllm_config": config, "vllm_env": {}, "system_env": {}})

    async def _generate(self, request: httpx.Request, call: Call) -> httpx.Response:
        model = call.body.get("model") if isinstance(call.body, dict) else None
        if model != self.served_name:
            message = f"The model `{model}` does not exist."
            return httpx.Response(404, json=error_body(message, "NotFoundError", 404))
        if call.path == "/v1/embeddings" and not self.embeddings:
            message = "The model does not support Embeddings API"
            return httpx.Response(400, json=error_body(message, "BadRequestError", 400))
        await self._until(request, lambda: not self.is_sleeping or self.dead)
        if self.dead:
            return httpx.Response(500, json=error_body(ENGINE_DEAD, "InternalServerError", 500))
        self.stats["generations"] += 1
        if not self.weights_valid:
            self.stats["garbage"] += 1
        text = "Hello" if self.weights_valid else "!!!!"
        return httpx.Response(200, json={"model": model, "choices": [{"text": text}]})


Route = Callable[[FakeServer, httpx.Request, Call], Coroutine[Any, Any, httpx.Response]]
ROUTES: dict[tuple[str, str], Route] = {
    ("GET", "/health"): FakeServer._health,
    ("GET", "/is_sleeping"): FakeServer._is_sleeping,
    ("POST", "/sleep"): FakeServer._sleep,
    ("POST", "/wake_up"): FakeServer._wake_up,
    ("POST", "/collective_rpc"): FakeServer._collective_rpc,
    ("POST", "/reset_prefix_cache"): FakeServer._reset_prefix_cache,
    ("GET", "/v1/models"): FakeServer._models,
    ("GET", "/server_info"): FakeServer._server_info,
    **{("POST", path): FakeServer._generate for path in GENERATION},
}


def shown(call: Call, *, health: bool, probe: bool) -> bool:
    """Whether `log()` lists a call: /health polls and the probe's reads only when asked."""
    if str(call) == HEALTH:
        return health
    if call.method == "GET" and call.path in PROBE_READS:
        return probe
    return True


class FakeVllm:
    """The servers by address; `transport` is what the proxy's client is built on."""

    def __init__(self) -> None:
        self.servers: dict[str, FakeServer] = {}
        self.calls: list[tuple[str, Call]] = []
        self.transport = httpx.MockTransport(self.handle)

    def add(
        self,
        name: str,
        url: str,
        *,
        served_name: str | None = None,
        up: bool = True,
        asleep: bool = False,
        level: int = 1,
    ) -> FakeServer:
        parsed = httpx.URL(url)
        address = f"{parsed.host}:{parsed.port}"
        server = FakeServer(name, address, served_name or name, self._record, up=False)
        if up:
            server.power_on(asleep=asleep, level=level)
        self.servers[address] = server
        return server

    def _record(self, name: str, call: Call) -> None:
        self.calls.append((name, call))

    def log(self, *, health: bool = False, probe: bool = False, since: int = 0) -> list[str]:
        """Every call to every server since the `since`-th, as "name: METHOD path?query"."""
        return [f"{n}: {c}" for n, c in self.calls[since:] if shown(c, health=health, probe=probe)]

    def note(self, name: str, event: str) -> None:
        """An event that is not a call (a process started or died), in the same log."""
        self.calls.append((name, Call(event, "", (), None, {})))

    async def handle(self, request: httpx.Request) -> httpx.Response:
        server = self.servers.get(f"{request.url.host}:{request.url.port}")
        if server is None or not server.up:
            raise httpx.ConnectError("All connection attempts failed", request=request)
        return await server.handle(request)
