"""The emulator's `/metrics`: the vLLM 0.26.0 series a proxy or dashboard reads.

`EngineMetrics` owns its own CollectorRegistry (no globals). Names, labels and buckets follow
vllm/v1/metrics/loggers.py of 0.26.0. With `--disable-log-stats` nothing is registered, as in
vLLM, where every `vllm:*` series disappears (the sleep-state gauge included).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

TTFT_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    640.0,
    2560.0,
)
REQUEST_LATENCY_BUCKETS = (
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    120.0,
    240.0,
    480.0,
    960.0,
    1920.0,
    7680.0,
)
FINISH_REASONS = ("stop", "length", "abort", "error")


class EngineMetrics:
    """Prometheus series of one emulated engine (engine index "0")."""

    def __init__(self, model_name: str, *, enabled: bool) -> None:
        self.registry = CollectorRegistry()
        self.enabled = enabled
        labels = {"engine": "0", "model_name": model_name}
        names = list(labels)
        r = (
            self.registry if enabled else CollectorRegistry()
        )  # disabled: registered nowhere visible

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, names, registry=r)

        self._running = gauge(
            "vllm:num_requests_running", "Number of requests in model execution batches."
        ).labels(**labels)
        self._waiting = gauge(
            "vllm:num_requests_waiting", "Number of requests waiting to be processed."
        ).labels(**labels)
        by_reason = Gauge(
            "vllm:num_requests_waiting_by_reason",
            "Number of requests waiting to be processed, by reason.",
            [*names, "reason"],
            registry=r,
        )
        self._waiting_by_reason = {
            reason: by_reason.labels(**labels, reason=reason) for reason in ("capacity", "deferred")
        }
        sleep = Gauge(
            "vllm:engine_sleep_state",
            "Engine sleep state; awake = 0 means engine is sleeping; awake = 1 means engine is awake; "
            "weights_offloaded = 1 means sleep level 1; discard_all = 1 means sleep level 2.",
            [*names, "sleep_state"],
            registry=r,
        )
        self._sleep = {
            s: sleep.labels(**labels, sleep_state=s)
            for s in ("awake", "weights_offloaded", "discard_all")
        }
        self._prefix_queries = Counter(
            "vllm:prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried tokens.",
            names,
            registry=r,
        ).labels(**labels)
        self._prefix_hits = Counter(
            "vllm:prefix_cache_hits",
            "Prefix cache hits, in terms of number of cached tokens.",
            names,
            registry=r,
        ).labels(**labels)
        self._prompt_tokens = Counter(
            "vllm:prompt_tokens", "Number of prefill tokens processed.", names, registry=r
        ).labels(**labels)
        self._generation_tokens = Counter(
            "vllm:generation_tokens", "Number of generation tokens processed.", names, registry=r
        ).labels(**labels)
        success = Counter(
            "vllm:request_success",
            "Count of successfully processed requests.",
            [*names, "finished_reason"],
            registry=r,
        )
        self._success = {
            reason: success.labels(**labels, finished_reason=reason) for reason in FINISH_REASONS
        }
        self._ttft = Histogram(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            names,
            buckets=TTFT_BUCKETS,
            registry=r,
        ).labels(**labels)
        self._e2e = Histogram(
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds.",
            names,
            buckets=REQUEST_LATENCY_BUCKETS,
            registry=r,
        ).labels(**labels)
        self._queue = Histogram(
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.",
            names,
            buckets=REQUEST_LATENCY_BUCKETS,
            registry=r,
        ).labels(**labels)
        self.record_sleep_state(sleeping=False, level=0)

    def record_sleep_state(self, *, sleeping: bool, level: int) -> None:
        """vLLM's record_sleep_state: any successful wake, even a partial one, sets awake=1."""
        self._sleep["awake"].set(0 if sleeping else 1)
        self._sleep["weights_offloaded"].set(1 if sleeping and level == 1 else 0)
        self._sleep["discard_all"].set(1 if sleeping and level == 2 else 0)

    def record_step(self, *, running: int, waiting: int) -> None:
        """Queue gauges move only when the engine steps, so they go stale while paused."""
        self._running.set(running)
        self._waiting.set(waiting)
        self._waiting_by_reason["capacity"].set(waiting)

    def record_admission(self, *, prompt_tokens: int, cached_tokens: int, queue_s: float) -> None:
        self._prefix_queries.inc(prompt_tokens)
        self._prefix_hits.inc(cached_tokens)
        self._prompt_tokens.inc(prompt_tokens)
        self._queue.observe(queue_s)

    def record_first_token(self, ttft_s: float) -> None:
        self._ttft.observe(ttft_s)

    def record_finish(self, *, reason: str, generated: int, e2e_s: float) -> None:
        self._generation_tokens.inc(generated)
        self._success[reason if reason in self._success else "error"].inc()
        self._e2e.observe(e2e_s)

    def render(self) -> bytes:
        return generate_latest(self.registry)
