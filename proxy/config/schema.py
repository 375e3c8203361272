"""The configuration's schema: one pydantic model per section of the YAML file.

Everything is frozen after loading; unknown keys are errors (a YAML typo must not silently
become a default). Durations carry their unit in the name (`*_s`). Stateless.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    field_validator,
    model_validator,
)

NAME = r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]*$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WarmupConfig(_Strict):
    enabled: bool = Field(default=True, description="send one tiny request after each wake")
    endpoint: Literal["completions", "chat", "embeddings"] = Field(
        default="completions", description="API used for the warm-up request"
    )
    prompt: str = "Hi"
    max_tokens: int = Field(default=1, ge=1, le=16)


class TimeoutsConfig(_Strict):
    sleep_s: float = Field(
        default=120, gt=0, description="one /sleep call (level 1 copies weights to host)"
    )
    wake_s: float = Field(
        default=120, gt=0, description="whole wake: tags, reload_weights, warm-up"
    )
    drain_s: float = Field(
        default=600, gt=0, description="wait for in-flight requests before sleeping"
    )
    control_s: float = Field(
        default=30, gt=0, description="small control calls (/is_sleeping, /health)"
    )
    start_s: float = Field(
        default=900, gt=0, description="a backend still starting at proxy start-up"
    )
    connect_s: float = Field(default=5, gt=0, description="TCP connect to a backend")
    read_s: float = Field(
        default=600,
        gt=0,
        description="forwarded requests: longest wait for the response head, then between body bytes",
    )


class RestartConfig(_Strict):
    max_restarts: int = Field(
        default=5, ge=0, description="crashes tolerated within window_s; then FAILED for good"
    )
    window_s: float = Field(default=600, gt=0)
    backoff_s: float = Field(
        default=2, ge=0, description="first wait before a restart; doubles per crash"
    )
    max_backoff_s: float = Field(default=60, ge=0)
    release_s: float = Field(
        default=60,
        gt=0,
        description="after its process ended, wait at most this long for its GPU memory to be "
        "released (its processes gone, NVML's free memory settled) before anything starts",
    )
    release_settle_s: float = Field(
        default=1,
        ge=0,
        description="NVML: free memory must change less than 0.25 GiB across this interval; "
        "without NVML: this much more after its processes are gone",
    )


class ModelConfig(_Strict):
    name: str = Field(
        pattern=NAME, max_length=256, description="matched against the request's `model`"
    )
    aliases: tuple[str, ...] = Field(default=(), description="other accepted `model` values")
    url: HttpUrl = Field(
        description="base URL of a running vLLM server (started with --enable-sleep-mode)"
    )
    served_name: str | None = Field(
        default=None, description="the backend's --served-model-name; default: name"
    )
    gpu: str = Field(default="default", pattern=NAME, description="GPU group this model shares")
    sleep_level: Literal[1, 2] = 1
    api_key: str | None = Field(
        default=None, description="the backend's --api-key, sent on every call"
    )
    warmup: WarmupConfig = WarmupConfig()
    timeouts: TimeoutsConfig = TimeoutsConfig()
    command: tuple[str, ...] | None = Field(
        default=None,
        description="argv that starts the backend so that it listens at `url`, e.g. vllm serve M --port 8001 "
        "--enable-sleep-mode; the proxy then starts, watches, restarts and stops it (a string is split like a shell would)",
    )
    env: dict[str, str] = Field(default_factory=dict, description="extra environment for `command`")
    start: Literal["eager", "lazy"] = Field(
        default="eager", description="lazy: start on the first request"
    )
    log_file: Path | None = Field(
        default=None,
        description="where the started backend's output goes (appended; relative: to the "
        "config file's directory)",
    )
    cwd: Path | None = Field(
        default=None,
        description="working directory of the started backend (relative: to the config file's "
        "directory); default: the config file's directory, else the proxy's at start-up - "
        "always by path, so a directory replaced by a redeploy is the new one",
    )
    stop_grace_s: float = Field(default=30, gt=0, description="SIGTERM to SIGKILL at shutdown")
    adopt: bool = Field(
        default=True,
        description="at start-up, a vLLM already serving this model at `url` is adopted (kept "
        "and supervised, not started twice): a previous proxy's backend if started from the "
        "same command, or one started by hand; false: such a process is a start-up error",
    )
    restart: RestartConfig = RestartConfig()
    idle_sleep_s: float | None = Field(
        default=None,
        gt=0,
        description="put the model to sleep after this long unused (counted from when it woke)",
    )
    priority: int = Field(
        default=0, description="among waiting models, a higher priority is served first"
    )
    progress: Literal["comments", "reasoning", "off"] = Field(
        default="comments",
        description="a streaming request that waits longer than limits.progress_after_s for a "
        "switch gets its response head at once and, every limits.progress_every_s, an SSE "
        "comment (comments: ignored by every SDK) or a chat chunk whose reasoning_content says "
        "what it waits for (reasoning: shown by chat UIs); off: nothing until the switch ends. "
        "A failure after the head is an SSE error event and [DONE], not a 503",
    )
    preemptible: bool = Field(
        default=False,
        description="a switch away from it while it serves puts it to sleep with mode=keep: "
        "its requests pause (their streams stall) and resume after its next wake, which the "
        "scheduler makes their turn (vLLM recomputes them: sampled text may differ)",
    )
    memory_gib: float | None = Field(
        default=None, gt=0, description="GPU memory the model holds awake (weights + KV cache)"
    )
    asleep_memory_gib: float | None = Field(
        default=None,
        ge=0,
        description="GPU memory it still holds asleep (CUDA context, ~1-2 GiB); unset counts as "
        "memory_gib, so a wake-first decision never rests on a guess",
    )

    @field_validator("command", mode="before")
    @classmethod
    def _split_command(cls, value: object) -> object:
        return tuple(shlex.split(value)) if isinstance(value, str) else value

    @property
    def supervised(self) -> bool:
        return self.command is not None

    @field_validator("api_key", "served_name", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @property
    def backend_model(self) -> str:
        return self.served_name or self.name

    @property
    def base_url(self) -> str:
        return str(self.url).rstrip("/")


class SchedulingConfig(_Strict):
    """How a GPU group picks its next switch (docs/scheduling.md)."""

    policy: Literal["default", "fifo", "naive"] = Field(
        default="default",
        description="default: serve the resident model first, bounded by max_wait_s, and switch "
        "for idle models only after their measured switch-back cost; fifo: switch to the model of "
        "the oldest waiting request at once, requests for the model being switched to join that "
        "switch (as llama-swap); naive: requests start strictly in arrival order across the group "
        "(both for comparison)",
    )
    max_wait_s: float = Field(
        default=5.0,
        gt=0,
        description="longest the oldest request of a waiting model waits, its switch included, "
        "while another model keeps serving: the switch starts its measured cost before that "
        "(no starvation)",
    )
    min_residency_s: float = Field(
        default=2.0,
        ge=0,
        description="a model keeps the GPU at least this long after it woke while it has "
        "requests (anti-thrash)",
    )
    max_hold_s: float | None = Field(
        default=None,
        gt=0,
        description="once a switch away from a model has drained it this long, its streams "
        "still open are ended (SSE error event + [DONE]) so the waiting model is served; "
        "unset: they may run until timeouts.drain_s",
    )


class GpuConfig(_Strict):
    name: str = Field(pattern=NAME)
    max_awake: int = Field(default=1, ge=1, description="models of this group awake at once")
    memory_gib: float | None = Field(
        default=None,
        gt=0,
        description="GPU memory the group's models may use together; with every member's "
        "memory_gib declared, a target that fits beside the resident wakes first and the victim "
        "sleeps afterwards",
    )
    nvml_device: int | str | None = Field(
        default=None,
        description="the GPU's NVML index (0, 1, ...) or UUID (GPU-...): wake-first may then also "
        "be decided on the free memory NVML measures (needs the nvml extra, nvidia-ml-py)",
    )
    scheduling: SchedulingConfig = SchedulingConfig()

    @field_validator("nvml_device")
    @classmethod
    def _nvml_device(cls, v: int | str | None) -> int | str | None:
        if isinstance(v, int) and v < 0:
            raise ValueError("an NVML index is 0 or more")
        if isinstance(v, str) and not v.startswith(("GPU-", "MIG-")):
            raise ValueError("an NVML UUID starts with GPU- or MIG-; give an index as a number")
        return v


class LimitsConfig(_Strict):
    max_body_bytes: int = Field(
        default=32 * 1024 * 1024, gt=0, description="larger requests get 413"
    )
    max_json_depth: int = Field(default=64, ge=2, description="deeper JSON bodies get 400")
    max_header_bytes: int = Field(
        default=16 * 1024, ge=1024, description="larger request lines plus headers get 431"
    )
    queue_size: int = Field(
        default=1024, ge=1, description="requests waiting per model; more get 429"
    )
    queue_timeout_s: float = Field(
        default=600, gt=0, description="longest wait for a model; then 503"
    )
    retry_after_s: int = Field(default=5, ge=1, description="Retry-After sent with 429 and 503")
    head_timeout_s: float = Field(
        default=15,
        gt=0,
        le=300,
        description="a complete request head within this long of the connection's start (or "
        "of a keep-alive request's first byte); then 408 and close",
    )
    body_timeout_s: float = Field(
        default=30, gt=0, description="no request body byte for this long: 408 and close"
    )
    keepalive_s: int = Field(
        default=5, ge=1, description="an idle keep-alive connection is closed after this long"
    )
    progress_after_s: float = Field(
        default=0.5,
        gt=0,
        le=60,
        description="a streaming request still waiting for its model after this long gets "
        "its response head and a first progress event (models[].progress)",
    )
    progress_every_s: float = Field(
        default=3.0, gt=0, le=60, description="then a progress event this often while it waits"
    )
    max_connections: int = Field(
        default=4096,
        ge=1,
        description="open client connections; more get 503 and are closed (never more than "
        "half the open-file limit)",
    )


class AuthConfig(_Strict):
    api_keys: tuple[str, ...] = Field(
        default=(), description="Bearer keys for /v1, /tokenize, /detokenize; empty = open"
    )
    admin_keys: tuple[str, ...] = Field(
        default=(), description="Bearer keys for /admin; empty = same as api_keys"
    )
    metrics_public: bool = Field(default=True, description="false: /metrics needs an admin key")
    cors_origins: tuple[str, ...] = Field(
        default=(), description="origins allowed by CORS; empty = no CORS headers"
    )

    @field_validator("api_keys", "admin_keys", mode="after")
    @classmethod
    def _no_empty_keys(cls, keys: tuple[str, ...]) -> tuple[str, ...]:
        if any(len(k) < 8 for k in keys):
            raise ValueError(
                "keys must be at least 8 characters (an unset ${VAR} gives an empty key)"
            )
        return keys


class LoggingConfig(_Strict):
    format: Literal["plain", "json"] = Field(
        default="plain", description="json: one object per line"
    )
    level: Literal["debug", "info", "warning", "error"] = "info"


class ProxyConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    models: tuple[ModelConfig, ...] = Field(min_length=1)
    gpus: tuple[GpuConfig, ...] = ()
    limits: LimitsConfig = LimitsConfig()
    logging: LoggingConfig = LoggingConfig()
    auth: AuthConfig = AuthConfig()
    runtime_dir: Path | None = Field(
        default=None,
        description="where the proxy records the backend processes it starts, to recognise "
        "them after its own crash; default $XDG_RUNTIME_DIR/vllm-switch, else "
        "<tmp>/vllm-switch-<uid>",
    )

    @model_validator(mode="after")
    def _names_backends_and_groups_are_unique(self) -> Self:
        seen: dict[str, str] = {}
        for m in self.models:
            for name in (m.name, *m.aliases):
                if name in seen:
                    raise ValueError(
                        f"model name {name!r} is used by both {seen[name]!r} and {m.name!r}"
                    )
                seen[name] = m.name
        backends: dict[str, str] = {}
        for m in self.models:
            url = f"{m.url.scheme}://{(m.url.host or '').lower()}:{m.url.port}"
            if url in backends:
                raise ValueError(
                    f"models {backends[url]!r} and {m.name!r} both use the backend {url}: one vLLM "
                    "engine serves one model here (sleeping one would put the other to sleep "
                    "too); give each model its own server, or one model several aliases"
                )
            backends[url] = m.name
        declared = [g.name for g in self.gpus]
        if len(set(declared)) != len(declared):
            raise ValueError("gpu names must be unique")
        unknown = {m.gpu for m in self.models} - set(declared) - {"default"}
        if unknown and self.gpus:
            raise ValueError(
                f"models use undeclared gpu group(s) {sorted(unknown)}; declared: {declared}"
            )
        return self

    def gpu(self, name: str) -> GpuConfig:
        for g in self.gpus:
            if g.name == name:
                return g
        return GpuConfig(name=name)
