"""Command line of the emulator: `vllm serve`'s flags that matter, plus `--emu-*` knobs.

Unknown vLLM flags are accepted and ignored, so a real `vllm serve` command line can be pointed
at the emulator unchanged. Timing defaults come from vLLM 0.26.0 measured on an H100
(docs/conformance.md); `--emu-timing instant` zeroes them for tests.
"""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

GIB = 1024**3


def default_ledger_dir() -> Path:
    """A directory of this user's own: `$XDG_RUNTIME_DIR/vllm-switch-emulator` (per-user, 0700 by
    definition), else `~/.cache/vllm-switch/emulator`. Never a shared path like /tmp, where
    another user could plant or read a ledger (the ledger also refuses a directory that is not
    the user's own, see ledger.py)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and Path(runtime).is_dir():
        return Path(runtime) / "vllm-switch-emulator"
    return Path.home() / ".cache" / "vllm-switch" / "emulator"


# vLLM flags that take a value, so that their value is not mistaken for the positional model.
_IGNORED_VALUE_FLAGS = (
    "--dtype",
    "--tensor-parallel-size",
    "-tp",
    "--pipeline-parallel-size",
    "--max-num-batched-tokens",
    "--load-format",
    "--kv-cache-dtype",
    "--quantization",
    "-q",
    "--tokenizer",
    "--revision",
    "--seed",
    "--swap-space",
    "--block-size",
    "--download-dir",
    "--compilation-config",
    "-cc",
    "--chat-template",
    "--kv-cache-memory-bytes",
    "--uvicorn-log-level",
    "--shutdown-timeout",
    "--generation-config",
    "--reasoning-parser",
    "--limit-mm-per-prompt",
    "--hf-overrides",
    "--data-parallel-size",
    "-dp",
    "--distributed-executor-backend",
    "--root-path",
    "--allowed-origins",
    "--max-logprobs",
    "-O",
    "--optimization-level",
    "--override-generation-config",
)


@dataclass(frozen=True)
class Timings:
    """Seconds each emulated operation takes (H100-observed defaults, see module docstring)."""

    startup_s: float
    first_sleep_s: float
    sleep_l1_s: float
    sleep_l2_s: float
    wake_weights_l1_s: float
    wake_weights_l2_s: float
    wake_kv_s: float
    reload_s: float
    ttft_s: float
    itl_s: float
    oom_s: float = 0.06

    @classmethod
    def h100(cls, weights_gib: float) -> Timings:
        """Scaled from 0.6B (1.1 GiB) and 8B (13 GiB) runs of vLLM 0.26.0 on one H100."""
        return cls(
            startup_s=110.0,  # warm compile cache restart: 76-110 s; cold: 113-164 s
            first_sleep_s=max(0.5, 1.05 * weights_gib),  # pinned host buffers allocated once
            sleep_l1_s=0.05 + weights_gib / 45,
            sleep_l2_s=0.05,
            wake_weights_l1_s=0.05 + weights_gib / 45,
            wake_weights_l2_s=0.025,
            wake_kv_s=0.03,
            reload_s=0.6 + weights_gib / 7,
            ttft_s=0.02,
            itl_s=0.0025,
        )

    @classmethod
    def instant(cls) -> Timings:
        return cls(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)


@dataclass(frozen=True)
class EmulatorSettings:
    """Everything an emulated server is started with; frozen after parsing."""

    model: str
    served_model_names: tuple[str, ...]
    host: str = "127.0.0.1"
    port: int = 8000
    gpu_memory_utilization: float = 0.92
    max_model_len: int = 4096
    max_num_seqs: int = 256
    enable_sleep_mode: bool = False
    api_keys: tuple[str, ...] = ()
    disable_log_stats: bool = False
    enable_server_load_tracking: bool = False
    enable_request_id_headers: bool = False
    task: str = "generate"  # generate | embed | classify (--runner pooling, --convert)
    enable_auto_tool_choice: bool = False
    tool_call_parser: str | None = None
    weights_gib: float = 1.11
    gpu_name: str = "fake-h100-0"
    gpu_memory_gib: float = 79.19
    residual_gib: float = 1.3
    ledger_dir: Path = field(default_factory=default_ledger_dir)
    vocab_size: int = 4096
    timings: Timings = field(default_factory=lambda: Timings.h100(1.11))
    faults: tuple[str, ...] = ()
    port_file: Path | None = None
    nodelay: bool = (
        False  # TCP_NODELAY on connections (vLLM 0.26: no, see proxy/http/edge/listen.py)
    )

    @property
    def total_bytes(self) -> int:
        return int(self.gpu_memory_gib * GIB)

    @property
    def awake_bytes(self) -> int:
        """What vLLM reserves at start and holds while awake: ceil(util x total)."""
        return math.ceil(self.gpu_memory_utilization * self.total_bytes)

    @property
    def weights_bytes(self) -> int:
        return int(self.weights_gib * GIB)

    @property
    def residual_bytes(self) -> int:
        """Held while fully asleep: CUDA context, graph pool, buffers outside the sleep pool."""
        return int(self.residual_gib * GIB)

    @property
    def kv_bytes(self) -> int:
        return self.awake_bytes - self.residual_bytes - self.weights_bytes


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vllm-switch emulate",
        description="Emulate a vLLM 0.26.0 OpenAI server (Sleep Mode included) without a GPU. "
        "Accepts `vllm serve` flags; unknown vLLM flags are ignored.",
    )
    p.add_argument("model_tag", nargs="?", help="model path or name, as for `vllm serve MODEL`")
    p.add_argument("--model", dest="model_flag")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--served-model-name", nargs="+", default=None)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.92)
    p.add_argument("--max-model-len", type=_model_len, default=4096)
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--enable-sleep-mode", action="store_true")
    p.add_argument("--api-key", nargs="+", action="extend", default=None)
    p.add_argument("--disable-log-stats", action="store_true")
    p.add_argument("--enable-server-load-tracking", action="store_true")
    p.add_argument("--enable-request-id-headers", action="store_true")
    p.add_argument("--runner", choices=("auto", "generate", "pooling"), default="auto")
    p.add_argument(
        "--convert", default=None, help="`embed` or `classify`: serve the model as a pooling one"
    )
    p.add_argument("--enable-auto-tool-choice", action="store_true")
    p.add_argument("--tool-call-parser", default=None, help="any name (the parser is emulated)")
    for flag in _IGNORED_VALUE_FLAGS:
        p.add_argument(
            flag, dest=f"ignored_{flag.lstrip('-').replace('-', '_')}", help=argparse.SUPPRESS
        )
    emu = p.add_argument_group("emulator knobs (not vLLM flags)")
    emu.add_argument(
        "--emu-weights-gib", type=float, default=1.11, help="bf16 weight size (Qwen3-0.6B: 1.11)"
    )
    emu.add_argument(
        "--emu-gpu", default="fake-h100-0", help="fake GPU name; same name = shared memory"
    )
    emu.add_argument(
        "--emu-gpu-memory-gib", type=float, default=79.19, help="fake GPU size (H100 80GB: 79.19)"
    )
    emu.add_argument("--emu-residual-gib", type=float, default=1.3, help="held while asleep")
    emu.add_argument(
        "--emu-ledger-dir",
        type=Path,
        default=None,
        help="where fake GPUs' ledgers live (default: a directory of this user's own)",
    )
    emu.add_argument("--emu-vocab-size", type=int, default=4096)
    emu.add_argument("--emu-timing", choices=("h100", "instant"), default="h100")
    emu.add_argument(
        "--emu-port-file",
        type=Path,
        default=None,
        help="write the bound port here once listening (use with --port 0)",
    )
    for name in Timings.__dataclass_fields__:
        emu.add_argument(
            f"--emu-{name.replace('_', '-')}",
            type=float,
            default=None,
            dest=f"emu_t_{name}",
            metavar="S",
            help=f"seconds: {name.removesuffix('_s').replace('_', ' ')} (overrides --emu-timing)",
        )
    emu.add_argument(
        "--emu-nodelay",
        action="store_true",
        help="TCP_NODELAY on client connections (vLLM 0.26 leaves Nagle on: small stream chunks "
        "may leave in bursts); for benchmarks that measure the gap between chunks",
    )
    emu.add_argument(
        "--emu-fault",
        action="append",
        default=[],
        metavar="FAULT",
        help="inject a fault from the start: wake_oom, hang_sleep, hang_wake, die_on_request",
    )
    return p


def _model_len(text: str) -> int:
    """vLLM accepts 32k / 1K / 4096."""
    t = text.strip().lower()
    if t.endswith("k"):
        return int(float(t[:-1]) * 1024)
    return int(t)


class SettingsError(ValueError):
    """A flag combination vLLM refuses at start-up; the message is what vLLM prints."""


def _task(runner: str, convert: str | None) -> str:
    if convert in ("embed", "classify"):
        return convert
    return "embed" if runner == "pooling" else "generate"


def parse_settings(argv: list[str]) -> EmulatorSettings:
    ns, _unknown = build_parser().parse_known_args(argv)
    if ns.enable_auto_tool_choice and not ns.tool_call_parser:
        raise SettingsError(
            "TypeError: Error: --enable-auto-tool-choice requires --tool-call-parser"
        )
    model = ns.model_flag or ns.model_tag or "Qwen/Qwen3-0.6B"
    base = Timings.h100(ns.emu_weights_gib) if ns.emu_timing == "h100" else Timings.instant()
    overrides = {
        name: getattr(ns, f"emu_t_{name}")
        for name in Timings.__dataclass_fields__
        if getattr(ns, f"emu_t_{name}") is not None
    }
    timings = Timings(**{**base.__dict__, **overrides})
    return EmulatorSettings(
        model=model,
        served_model_names=tuple(ns.served_model_name or [model]),
        host=ns.host,
        port=ns.port,
        gpu_memory_utilization=ns.gpu_memory_utilization,
        max_model_len=ns.max_model_len,
        max_num_seqs=ns.max_num_seqs,
        enable_sleep_mode=ns.enable_sleep_mode,
        api_keys=tuple(ns.api_key or ()),
        disable_log_stats=ns.disable_log_stats,
        enable_server_load_tracking=ns.enable_server_load_tracking,
        enable_request_id_headers=ns.enable_request_id_headers,
        task=_task(ns.runner, ns.convert),
        enable_auto_tool_choice=ns.enable_auto_tool_choice,
        tool_call_parser=ns.tool_call_parser,
        weights_gib=ns.emu_weights_gib,
        gpu_name=ns.emu_gpu,
        gpu_memory_gib=ns.emu_gpu_memory_gib,
        residual_gib=ns.emu_residual_gib,
        ledger_dir=ns.emu_ledger_dir or default_ledger_dir(),
        vocab_size=ns.emu_vocab_size,
        timings=timings,
        faults=tuple(ns.emu_fault),
        port_file=ns.emu_port_file,
        nodelay=ns.emu_nodelay,
    )
