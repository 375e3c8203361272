"""Prometheus metrics of the proxy: names and labels are a public contract (README lists them).

`Metrics` owns its own CollectorRegistry (no globals; every app builds one). Event metrics
(histograms, counters) are recorded by the switcher and the routes. Gauges that describe live
state (backend state, in-flight requests, queue depth, switch in progress) are read from the
objects themselves at scrape time by `_LiveStateCollector`, so they can never drift.
Label values come from the config only; requests naming no configured model count as "unknown".
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from proxy.backends.state import BackendState

# fine between 0.05 and 0.5 s, where real switches (0.1-0.3 s on an H200) and their parts fall
BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.125, 0.15, 0.175, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75,
    1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip
UNKNOWN_MODEL = "unknown"


@dataclass(frozen=True)
class LiveBackend:
    """What the collector reads about one backend at scrape time."""

    model: str
    gpu: str
    state: BackendState
    inflight: int
    queue_depth: int


@dataclass(frozen=True)
class LiveGroup:
    gpu: str
    switching: bool


class _LiveStateCollector(Collector):
    def __init__(
        self, read: Callable[[], tuple[Sequence[LiveBackend], Sequence[LiveGroup]]]
    ) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        backends, groups = self._read()
        state = GaugeMetricFamily(
            "vllm_switch_backend_state",
            "1 for the state each model's backend is in (one-hot).",
            labels=["model", "state"],
        )
        inflight = GaugeMetricFamily(
            "vllm_switch_inflight_requests",
            "Requests being forwarded to the model (streams included).",
            labels=["model"],
        )
        queue = GaugeMetricFamily(
            "vllm_switch_queue_depth",
            "Requests waiting for the model to become ready.",
            labels=["model"],
        )
        for b in backends:
            for s in BackendState:
                state.add_metric([b.model, s.value], 1.0 if b.state is s else 0.0)
            inflight.add_metric([b.model], b.inflight)
            queue.add_metric([b.model], b.queue_depth)
        switching = GaugeMetricFamily(
            "vllm_switch_switch_in_progress",
            "1 while a switch runs on the GPU group.",
            labels=["gpu"],
        )
        for g in groups:
            switching.add_metric([g.gpu], 1.0 if g.switching else 0.0)
        yield from (state, inflight, queue, switching)


WAKE_FAILURE_REASONS = ("oom", "timeout", "error", "warmup")
REJECT_REASONS = (
    "queue_full",
    "timeout",
    "unavailable",
    "bad_input",
    "not_found",
    "too_large",
    "auth",
)


class Metrics:
    def __init__(self, models: Sequence[str] = ()) -> None:
        # the *_created series add nothing to dashboards; this is a library-wide switch
        disable_created_metrics()  # type: ignore[no-untyped-call]
        r = self.registry = CollectorRegistry()
        self.sleep_seconds = Histogram(
            "vllm_switch_sleep_seconds",
            "Time to put a model to sleep (/sleep until /is_sleeping confirms).",
            ["model", "level"],
            buckets=BUCKETS,
            registry=r,
        )
        self.wake_seconds = Histogram(
            "vllm_switch_wake_seconds",
            "Time to wake a model (all wake calls until /is_sleeping confirms), without warm-up.",
            ["model", "level"],
            buckets=BUCKETS,
            registry=r,
        )
        self.warmup_seconds = Histogram(
            "vllm_switch_warmup_seconds",
            "Time of the 1-token warm-up request after a wake.",
            ["model"],
            buckets=BUCKETS,
            registry=r,
        )
        self.switch_seconds = Histogram(
            "vllm_switch_switch_seconds",
            "Whole switch: first waiting request's arrival until the target is ready.",
            ["from_model", "to_model"],
            buckets=BUCKETS,
            registry=r,
        )
        self.queue_wait_seconds = Histogram(
            "vllm_switch_queue_wait_seconds",
            "Request arrival until it may be forwarded (includes any switch it waited for).",
            ["model"],
            buckets=BUCKETS,
            registry=r,
        )
        self.request_seconds = Histogram(
            "vllm_switch_request_seconds",
            "Request arrival until its response ended.",
            ["model", "endpoint"],
            buckets=BUCKETS,
            registry=r,
        )
        self.ttft_seconds = Histogram(
            "vllm_switch_ttft_seconds",
            "Streaming requests: arrival until the first byte of the body was sent.",
            ["model"],
            buckets=BUCKETS,
            registry=r,
        )
        self.requests = Counter(
            "vllm_switch_requests",
            "Requests answered, by HTTP status.",
            ["model", "endpoint", "status"],
            registry=r,
        )
        self.switches = Counter(
            "vllm_switch_switches",
            "Switches, by outcome: ok, failed, or restored (a victim woken back after the switch failed).",
            ["from_model", "to_model", "result"],
            registry=r,
        )
        self.wake_failures = Counter(
            "vllm_switch_wake_failures",
            "Failed wakes, by reason (oom, timeout, error, warmup).",
            ["model", "reason"],
            registry=r,
        )
        self.rejected = Counter(
            "vllm_switch_rejected",
            "Requests refused by the proxy, by reason (queue_full, timeout, unavailable, bad_input, not_found, too_large).",
            ["model", "reason"],
            registry=r,
        )
        self.restarts = Counter(
            "vllm_switch_restarts",
            "Restarts of supervised backends (after a crash, or after killing a wedged or hung engine).",
            ["model"],
            registry=r,
        )
        self.decisions = Counter(
            "vllm_switch_decisions",
            "Scheduling decisions of a GPU group, by reason: a switch (free_slot, memory_fits, "
            "max_wait, early_sleep, no_return, preempt; fifo, naive) or a hold while another model "
            "waits "
            "(serving, min_residency, linger).",
            ["gpu", "reason"],
            registry=r,
        )
        self.switching_seconds = Counter(
            "vllm_switch_switching_seconds",
            "Seconds spent switching on the GPU group (rate() = fraction of time lost to switching).",
            ["gpu"],
            registry=r,
        )

        for (
            model
        ) in models:  # zero series exist from the start, so rate() and alerts see 0, not nothing
            for reason in WAKE_FAILURE_REASONS:
                self.wake_failures.labels(model, reason)
            for reason in REJECT_REASONS:
                self.rejected.labels(model, reason)
            self.restarts.labels(model)

    def watch(self, read: Callable[[], tuple[Sequence[LiveBackend], Sequence[LiveGroup]]]) -> None:
        self.registry.register(_LiveStateCollector(read))

    def render(self) -> bytes:
        return generate_latest(self.registry)
