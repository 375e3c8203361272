"""The emulated vLLM 0.26.0 engine core: scheduler pause, sleep/wake, memory, requests.

State (all owned by `Engine`, changed only inside its methods, between two awaits):

    sched          UNPAUSED | PAUSED_NEW (running requests go on, none admitted)
                   | PAUSED_ALL (nothing steps)
    sleeping_tags  subset of {weights, kv_cache}: memory the executor has released
    slept_level    level of the last executor sleep (1 = weights offloaded, 2 = discarded)
    weights_valid  False after a level-2 sleep until `reload_weights`: output turns to "!!!"
    wedged         a wake failed (CUDA OOM): every later wake fails, memory stays held
    dead           engine died: requests fail with 500, /health is 503, the process exits

    is_sleeping = sched != UNPAUSED or bool(sleeping_tags)      (as vLLM's EngineCore)

Control calls (sleep, wake_up, is_sleeping, pause, collective_rpc, reset_prefix_cache) are
serialised by `_utility`, like vLLM's engine-core utility queue: `/is_sleeping` blocks while a
sleep or wake runs, except during a `mode=wait` drain. Requests arriving while paused or asleep
are queued and simply wait (no error, no auto-wake): the trap a proxy must avoid.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from proxy.emulator.engine_request import EngineRequest, Output, Signal
from proxy.emulator.ledger import GpuLedger
from proxy.emulator.metrics import EngineMetrics
from proxy.emulator.settings import EmulatorSettings
from proxy.emulator.tokenizer import FakeModel, FakeTokenizer

log = logging.getLogger(__name__)

PAUSE_MODES = ("abort", "wait", "keep")
TAGS = ("weights", "kv_cache")
ILLEGAL_ACCESS = "CUDA error: an illegal memory access was encountered"
ENGINE_DEAD = "EngineCore encountered an issue. See stack trace (above) for the root cause."


class Sched(enum.StrEnum):
    UNPAUSED = "unpaused"
    PAUSED_NEW = "paused_new"
    PAUSED_ALL = "paused_all"


class EngineCallError(Exception):
    """A utility call failed inside the engine: the route answers 500 `Call to X method failed`."""


class EngineDeadError(Exception):
    """The engine is dead: routes answer 500 with vLLM's EngineCore message."""


class Engine:
    def __init__(
        self,
        settings: EmulatorSettings,
        *,
        ledger: GpuLedger,
        metrics: EngineMetrics,
        on_death: Callable[[str], None],
    ) -> None:
        self.settings = settings
        self.tokenizer = FakeTokenizer(settings.vocab_size)
        self._model = FakeModel(self.tokenizer)
        self._ledger = ledger
        self._metrics = metrics
        self._on_death = on_death
        self._t = settings.timings
        self.sched = Sched.UNPAUSED
        self.sleeping_tags: set[str] = set()
        self.slept_level = 0
        self.weights_valid = True
        self.wedged = False
        self.dead = False
        self.faults: set[str] = set(settings.faults)
        self._first_sleep_done = False
        self._prefix_cache: set[tuple[int, ...]] = set()
        self._utility = asyncio.Lock()
        self._waiting: deque[EngineRequest] = deque()
        self._running: set[EngineRequest] = set()
        self._changed = Signal()
        self._forever = asyncio.Event()  # never set: what a hung operation awaits
        self.stats: Counter[str] = Counter()

    # ----- derived state -------------------------------------------------------------------
    @property
    def is_sleeping(self) -> bool:
        return self.sched is not Sched.UNPAUSED or bool(self.sleeping_tags)

    @property
    def is_paused(self) -> bool:
        return self.sched is not Sched.UNPAUSED

    @property
    def num_running(self) -> int:
        return len(self._running)

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    def _tag_bytes(self, tag: str) -> int:
        if not self.settings.enable_sleep_mode:
            return 0  # without --enable-sleep-mode the cumem pool is empty: sleep frees nothing
        return self.settings.weights_bytes if tag == "weights" else self.settings.kv_bytes

    # ----- requests ------------------------------------------------------------------------
    def add_request(self, req: EngineRequest) -> None:
        if self.dead:
            raise EngineDeadError(ENGINE_DEAD)
        self.stats["requests_received"] += 1
        if self.is_sleeping:
            self.stats["requests_queued_while_asleep"] += 1
        if "die_on_request" in self.faults:
            self.die("injected fault: die_on_request")
            raise EngineDeadError(ENGINE_DEAD)
        self._waiting.append(req)
        req.task = asyncio.create_task(self._drive(req), name=f"emu-request:{req.request_id}")

    def cancel(self, req: EngineRequest) -> None:
        """The client went away: abort the request (vLLM's with_cancellation)."""
        if not req.finished:
            self.stats["requests_cancelled_by_client"] += 1
            self._finish(req, Output(finish_reason="abort"), count=False)

    async def _drive(self, req: EngineRequest) -> None:
        """Admit in FIFO order when unpaused, prefill, then one token per inter-token latency."""
        await self._changed.wait_for(lambda: self._can_admit(req))
        self._waiting.popleft()
        self._running.add(req)
        self.stats["max_running"] = max(self.stats["max_running"], len(self._running))
        self._changed.changed()
        if self.sleeping_tags:  # only reachable through /resume on a sleeping engine
            self.die(ILLEGAL_ACCESS)
            return
        cached = tuple(req.prompt_ids) in self._prefix_cache
        if not req.admitted_once:
            req.admitted_once = True
            self._metrics.record_admission(
                prompt_tokens=len(req.prompt_ids),
                cached_tokens=len(req.prompt_ids) if cached else 0,
                queue_s=time.monotonic() - req.arrival,
            )
            req.rng, req.natural_length = self._model.stream(req.prompt_ids, req.seed)
        self._prefix_cache.add(tuple(req.prompt_ids))
        self._metrics.record_step(running=len(self._running), waiting=len(self._waiting))
        await asyncio.sleep(self._t.ttft_s / 2 if cached else self._t.ttft_s)
        while True:
            await self._changed.wait_for(lambda: self.sched is not Sched.PAUSED_ALL)
            self._emit(req)
            if req.finished:
                return
            await asyncio.sleep(self._t.itl_s)

    def _can_admit(self, req: EngineRequest) -> bool:
        return (
            self.sched is Sched.UNPAUSED
            and bool(self._waiting)
            and self._waiting[0] is req
            and len(self._running) < self.settings.max_num_seqs
        )

    def _emit(self, req: EngineRequest) -> None:
        assert req.rng is not None
        n = len(req.generated)
        if req.script is not None:  # grammar-constrained output: the script, then EOS
            done = n >= len(req.script)
        else:
            done = not req.ignore_eos and n >= max(req.natural_length, req.min_tokens)
        if done:
            req.generated.append(self.tokenizer.vocab_size - 1)  # the EOS step: no text
            self._finish(req, Output(finish_reason="stop"))
            return
        if req.script is not None:
            token, text = req.script[n]
        else:
            token = self._model.next_token(req.rng, weights_valid=self.weights_valid)
            text = self.tokenizer.piece(token)
        req.generated.append(token)
        if req.first_token_at is None:
            req.first_token_at = time.monotonic()
            self._metrics.record_first_token(req.first_token_at - req.arrival)
        if len(req.generated) >= req.max_tokens:
            self._finish(req, Output(token_id=token, text=text, finish_reason="length"))
        else:
            req.outputs.put_nowait(Output(token_id=token, text=text))

    def _finish(self, req: EngineRequest, last: Output, *, count: bool = True) -> None:
        if req.finished:
            return
        req.finished = True
        if req.task is not None and req.task is not asyncio.current_task():
            req.task.cancel()
        self._running.discard(req)
        if req in self._waiting:
            self._waiting.remove(req)
        req.outputs.put_nowait(last)
        if count:
            reason = last.finish_reason or "error"
            self.stats[f"requests_finished_{reason}"] += 1
            self._metrics.record_finish(
                reason=reason, generated=len(req.generated), e2e_s=time.monotonic() - req.arrival
            )
        self._metrics.record_step(running=len(self._running), waiting=len(self._waiting))
        self._changed.changed()

    def _all_requests(self) -> list[EngineRequest]:
        return [*self._running, *self._waiting]

    def _pause(self, mode: str, *, clear_cache: bool) -> None:
        """vLLM's pause_scheduler: abort everything, stop admitting, or freeze everything."""
        if mode not in PAUSE_MODES:
            raise EngineCallError(f"Invalid pause mode: {mode}")
        if mode == "abort":
            for req in self._all_requests():
                self._finish(req, Output(finish_reason="abort"))
            self.sched = Sched.PAUSED_NEW
        elif mode == "wait":
            self.sched = Sched.PAUSED_NEW
        else:
            self.sched = Sched.PAUSED_ALL
            if clear_cache:  # the cache reset preempts running requests back to the queue
                for req in sorted(self._running, key=lambda r: r.arrival, reverse=True):
                    self._running.discard(req)
                    if req.task is not None:
                        req.task.cancel()
                    self._waiting.appendleft(req)
                    req.task = asyncio.create_task(
                        self._drive(req), name=f"emu-request:{req.request_id}"
                    )
        self._changed.changed()

    def abort_requests(self, request_ids: list[str] | None) -> int:
        victims = [
            r for r in self._all_requests() if not request_ids or r.request_id in request_ids
        ]
        for req in victims:
            self._finish(req, Output(finish_reason="abort"))
        return len(victims)

    # ----- control calls -------------------------------------------------------------------
    def _check_alive(self) -> None:
        if self.dead:
            raise EngineDeadError(ENGINE_DEAD)

    async def sleep(self, level: int, mode: str) -> None:
        async with self._utility:
            self._check_alive()
            self._pause(mode, clear_cache=level >= 1)
        if mode == "wait":
            await self._changed.wait_for(lambda: not self._running or self.dead)
        async with self._utility:
            self._check_alive()
            if level >= 1:
                self._prefix_cache.clear()
                if not self.sleeping_tags:
                    await self._executor_sleep(level)
            self.stats[f"sleeps_level_{level}"] += 1
            self._metrics.record_sleep_state(sleeping=True, level=level)

    async def _executor_sleep(self, level: int) -> None:
        if "hang_sleep" in self.faults:
            await self._forever.wait()
        if level == 1:
            await asyncio.sleep(
                self._t.sleep_l1_s if self._first_sleep_done else self._t.first_sleep_s
            )
            self._first_sleep_done = True
        else:
            await asyncio.sleep(self._t.sleep_l2_s)
            self.weights_valid = False  # level 2 (or any level but 1) discards the weights
        self.sleeping_tags = set(TAGS)
        self.slept_level = level
        self._ledger.set_held(self._ledger.held() - sum(self._tag_bytes(t) for t in TAGS))
        self._changed.changed()

    async def wake_up(self, tags: list[str] | None) -> None:
        async with self._utility:
            self._check_alive()
            wanted = None if tags is None else [t for t in tags if t != "scheduling"]
            if wanted is None or wanted:
                await self._executor_wake(wanted)
            if not self.sleeping_tags:
                self.sched = Sched.UNPAUSED  # also resumes an engine that was merely paused
                self._changed.changed()
            self._metrics.record_sleep_state(sleeping=False, level=0)

    async def _executor_wake(self, wanted: list[str] | None) -> None:
        if not self.sleeping_tags:
            return  # "Executor is not sleeping."
        order = [t for t in TAGS if t in self.sleeping_tags and (wanted is None or t in wanted)]
        if not order:
            return  # unknown tags, or tags that are not asleep: a silent no-op
        self.stats["wake_calls"] += 1
        if self.wedged:
            await asyncio.sleep(self._t.oom_s / 2)
            self.stats["wake_failures"] += 1
            raise EngineCallError("CUDA Error: invalid argument at <path>:169")
        if "hang_wake" in self.faults:
            await self._forever.wait()
        if self.slept_level != 1 and order == ["kv_cache"] and "weights" in self.sleeping_tags:
            self.die(ILLEGAL_ACCESS)  # buffers restored into unmapped weight memory
            raise EngineDeadError(ENGINE_DEAD)
        need = sum(self._tag_bytes(t) for t in order)
        oom = "wake_oom" in self.faults or self._ledger.grow(need) is not None
        if oom:
            await asyncio.sleep(self._t.oom_s)
            self.wedged = True
            self.stats["wake_failures"] += 1
            raise EngineCallError("CUDA Error: out of memory at <path>:163")
        for tag in order:
            if tag == "weights":
                await asyncio.sleep(
                    self._t.wake_weights_l1_s
                    if self.slept_level == 1
                    else self._t.wake_weights_l2_s
                )
            else:
                await asyncio.sleep(self._t.wake_kv_s)
            self.sleeping_tags.discard(tag)
            self.stats[f"wakes_{tag}"] += 1
        self._changed.changed()

    async def query_is_sleeping(self) -> bool:
        async with self._utility:
            self._check_alive()
            return self.is_sleeping

    async def query_is_paused(self) -> bool:
        async with self._utility:
            self._check_alive()
            return self.is_paused

    async def pause(self, mode: str, *, clear_cache: bool) -> None:
        async with self._utility:
            self._check_alive()
            self._pause(mode, clear_cache=clear_cache)
            if clear_cache:
                self._prefix_cache.clear()
        if mode == "wait":
            await self._changed.wait_for(lambda: not self._running or self.dead)

    async def resume(self) -> None:
        async with self._utility:
            self._check_alive()
            self.sched = Sched.UNPAUSED  # no sleeping check, as in vLLM: the hazard is real
            self._changed.changed()

    async def reset_prefix_cache(self, *, reset_running_requests: bool) -> bool:
        async with self._utility:
            self._check_alive()
            if self._running and not reset_running_requests:
                return False
            self._prefix_cache.clear()
            return True

    async def collective_rpc(self, method: str) -> list[Any]:
        async with self._utility:
            self._check_alive()
            if method != "reload_weights":
                raise EngineCallError(f"Method '{method}' is not implemented.")
            if "weights" in self.sleeping_tags:
                self.die(ILLEGAL_ACCESS)  # writes into unmapped weight memory
                raise EngineDeadError(ENGINE_DEAD)
            await asyncio.sleep(self._t.reload_s)
            self.weights_valid = True
            self.stats["reloads"] += 1
            return [None]

    def die(self, reason: str) -> None:
        """Engine death: fail every request, /health turns 503, the server exits soon after."""
        if self.dead:
            return
        log.error("engine died: %s", reason)
        self.dead = True
        for req in self._all_requests():
            self._finish(req, Output(error=ENGINE_DEAD))
        self._changed.changed()
        self._on_death(reason)

    def snapshot(self) -> dict[str, Any]:
        return {
            "sched": self.sched.value,
            "sleeping_tags": sorted(self.sleeping_tags),
            "slept_level": self.slept_level,
            "is_sleeping": self.is_sleeping,
            "weights_valid": self.weights_valid,
            "wedged": self.wedged,
            "dead": self.dead,
            "running": len(self._running),
            "waiting": len(self._waiting),
            "faults": sorted(self.faults),
        }
