"""Start emulator processes (for the demo and the tests): kernel-chosen port, stop by PID.

`emulator_argv` is the one place that writes an emulator's command line (the arguments after
`vllm-switch emulate`): the demo, the tests and the benchmarks all build theirs with it, and
`emulate_command` puts the interpreter in front for a config's `command`.

`EmulatorProcess` owns one `vllm-switch emulate` child in its own process group and stops it by
signalling that group (never by name). Readiness is the port file the emulator writes once its
socket listens, so there is no port race.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

START_TIMEOUT_S = 30.0


def emulator_argv(
    model: str,
    *,
    ledger_dir: Path,
    served_names: Sequence[str] = (),
    sleep_mode: bool = True,
    gpu: str | None = None,
    gpu_memory_gib: float | None = None,
    util: float | None = None,
    weights_gib: float | None = None,
    max_model_len: int | None = None,
    timing: str | None = None,
    startup_s: float | None = None,
    port: int | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """The arguments of `vllm-switch emulate` for one emulated server of `model`.

    `served_names` defaults to `(model,)`; `ledger_dir` (where emulators sharing a fake GPU keep
    its memory ledger) is required, so that nothing falls back to the user's default ledger.
    Every other knob left at None is left out, so the emulator's own default applies. `timing`
    is "h100" or "instant"; `extra` goes last (a later flag wins: it may override one above)."""
    argv = [model, "--served-model-name", *(served_names or (model,))]
    if sleep_mode:
        argv.append("--enable-sleep-mode")
    for flag, value in (
        ("--gpu-memory-utilization", util),
        ("--max-model-len", max_model_len),
        ("--port", port),
        ("--emu-gpu", gpu),
        ("--emu-gpu-memory-gib", gpu_memory_gib),
        ("--emu-weights-gib", weights_gib),
        ("--emu-timing", timing),
        ("--emu-startup-s", startup_s),
    ):
        if value is not None:
            argv += [flag, str(value)]
    return [*argv, "--emu-ledger-dir", str(ledger_dir), *extra]


def emulate_command(argv: Sequence[str]) -> list[str]:
    """The full command that runs `vllm-switch emulate ARGV` with this interpreter."""
    return [sys.executable, "-m", "proxy", "emulate", *argv]


@dataclass
class EmulatorProcess:
    proc: subprocess.Popen[bytes]
    log_path: Path
    port_file: Path
    port: int | None = None

    @property
    def url(self) -> str:
        assert self.port is not None, "not listening yet"
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_listening(self, timeout_s: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.port_file.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"emulator exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"emulator did not listen within {timeout_s}s:\n{self.log()}")
            time.sleep(0.01)
        self.port = int(self.port_file.read_text())

    def wait_exit(self, timeout_s: float = START_TIMEOUT_S) -> int:
        return self.proc.wait(timeout=timeout_s)

    def kill(self) -> None:
        """SIGKILL the whole group now (a crash, for tests)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


def spawn_emulator(
    workdir: Path,
    args: Sequence[str],
    *,
    name: str = "emu",
    dev_mode: bool = True,
    env: dict[str, str] | None = None,
    port: int = 0,
) -> EmulatorProcess:
    """Start `vllm-switch emulate ARGS --port PORT` (0: kernel-chosen), log and port file in `workdir`."""
    workdir.mkdir(parents=True, exist_ok=True)
    port_file = workdir / f"{name}.port"
    log_path = workdir / f"{name}.log"
    port_file.unlink(missing_ok=True)
    child_env = {k: v for k, v in os.environ.items() if k != "VLLM_SERVER_DEV_MODE"}
    if dev_mode:
        child_env["VLLM_SERVER_DEV_MODE"] = "1"
    child_env.update(env or {})
    argv = emulate_command(
        [*args, "--host", "127.0.0.1", "--port", str(port), "--emu-port-file", str(port_file)]
    )
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env=child_env, start_new_session=True
        )
    return EmulatorProcess(proc=proc, log_path=log_path, port_file=port_file)


@contextlib.contextmanager
def running_emulator(
    workdir: Path, args: Sequence[str], **kwargs: object
) -> Iterator[EmulatorProcess]:
    emu = spawn_emulator(workdir, args, **kwargs)  # type: ignore[arg-type]
    try:
        emu.wait_listening()
        yield emu
    finally:
        emu.stop()


def bootstrap_sequentially(
    workdir: Path, servers: Sequence[tuple[str, Sequence[str]]]
) -> list[EmulatorProcess]:
    """Start servers one at a time, putting each to sleep (level 1) before the next starts.

    This is how several vLLM servers must come up on one GPU: each sizes its memory from what
    is free at its start. The last one stays awake. On failure every started one is stopped.
    """
    import httpx

    started: list[EmulatorProcess] = []
    try:
        for i, (name, args) in enumerate(servers):
            emu = spawn_emulator(workdir, args, name=name)
            started.append(emu)
            emu.wait_listening()
            if i < len(servers) - 1:
                httpx.post(f"{emu.url}/sleep", params={"level": 1}, timeout=120).raise_for_status()
    except BaseException:
        for emu in started:
            emu.stop()
        raise
    return started
