"""A proxy that dies - SIGKILL, nothing of its own cleanup runs - takes its supervised backends
along: each runs under the reaper (proxy/backends/reaper.py), which Linux signals when the proxy
dies and which then ends its whole process group. A proxy started again on the same config
finds the ports free and serves every model. The reaper alone: a command and what it started
are gone after its parent's death, and a command that ignores SIGTERM is killed after the grace.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from proxy.backends import reaper
from proxy.backends.process import ManagedProcess
from tests.helpers.bodies import chat
from tests.helpers.fleet import GPU, MECHANICS
from tests.helpers.processes import launched
from tests.helpers.proxy_server import serve_proxy
from tests.helpers.serve_process import group_alive
from tests.proxy.test_supervision import config, ledger, supervised

pytestmark = pytest.mark.process


async def until(condition: Any, within_s: float, what: str) -> float:
    """Poll `condition` (a condition, not a delay) until it holds; seconds it took."""
    t0 = time.monotonic()
    while not condition():
        if time.monotonic() - t0 > within_s:
            raise AssertionError(f"{what} not within {within_s:g}s")
        await asyncio.sleep(0.05)
    return time.monotonic() - t0


async def ready(url: str, within_s: float) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url, timeout=5) as c:
        t0 = time.monotonic()
        while (await c.get("/ready")).status_code != 200:
            assert time.monotonic() - t0 < within_s, "the proxy never became ready"
            await asyncio.sleep(0.1)
        status: dict[str, Any] = (await c.get("/admin/status")).json()
        return status


async def test_a_killed_proxy_leaves_no_backend_and_a_new_one_serves_both(
    tmp_path: Path,
) -> None:
    models = [supervised("model-a", tmp_path), supervised("model-b", tmp_path)]
    config = {"host": "127.0.0.1", "port": 0, "gpus": [{"name": GPU, "scheduling": MECHANICS}]}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({**config, "models": models}))
    with launched(["serve", "--config", str(path)], "vllm-switch listening on") as (proc, url):
        status = await ready(url, 60)
        groups = [m["process"]["pid"] for m in status["models"]]
        assert all(group_alive(g) for g in groups), ("both backends run", status)
        os.kill(proc.pid, signal.SIGKILL)  # the proxy itself, by the PID this test started
        took = await until(lambda: not any(group_alive(g) for g in groups), 3, "every backend gone")
    with launched(["serve", "--config", str(path)], "vllm-switch listening on") as (_, url):
        await ready(url, 60)
        async with httpx.AsyncClient(base_url=url, timeout=30) as c:
            for name in ("model-a", "model-b"):
                r = await c.post("/v1/chat/completions", json=chat(name))
                assert r.status_code == 200, r.text
    assert took < 3
    assert ledger(tmp_path)["oom_events"] == 0


def run_reaper(command: list[str], grace_s: float) -> tuple[subprocess.Popen[str], int]:
    """A parent (python) that starts the reaper over `command` and prints the reaper's PID."""
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, subprocess, sys, time\n"
            "p = subprocess.Popen([sys.executable, '-I', sys.argv[1], '--parent', str(os.getpid()),"
            " '--grace', sys.argv[2], '--', *sys.argv[3:]], start_new_session=True)\n"
            "print(p.pid, flush=True)\n"
            "time.sleep(3600)\n",
            reaper.__file__,
            str(grace_s),
            *command,
        ],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert parent.stdout is not None
    return parent, int(parent.stdout.readline())


SPAWNER = (
    "import signal, subprocess, sys, time\n"
    "if sys.argv[1] == 'stubborn': signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(3600)'])\n"
    "time.sleep(3600)\n"
)


@pytest.mark.parametrize(("kind", "grace_s", "within_s"), [("polite", 30, 3), ("stubborn", 1, 4)])
async def test_the_reaper_ends_its_whole_group_when_its_parent_dies(
    kind: str, grace_s: float, within_s: float
) -> None:
    """A command with a child of its own; its parent SIGKILLed: the reaper, the command and
    the grandchild are gone - a command that ignores SIGTERM after the grace (SIGKILL)."""
    parent, group = run_reaper([sys.executable, "-c", SPAWNER, kind], grace_s)
    try:
        await until(lambda: len(group_alive(group)) >= 3, 10, "reaper, command, grandchild")
        os.killpg(parent.pid, signal.SIGKILL)  # the parent only: its own session
        parent.wait()
        await until(lambda: not group_alive(group), within_s, "the reaper's group gone")
    finally:
        if group_alive(group):
            os.killpg(group, signal.SIGKILL)
        if parent.stdout is not None:
            parent.stdout.close()


async def test_a_port_taken_by_a_foreign_process_is_a_clear_start_up_error(
    tmp_path: Path,
) -> None:
    """Something that is not a vLLM serving model-a listens on model-a's port: model-a is not
    started next to it (a second server could not bind), it fails with a message naming the
    port and what listens there, and model-b serves."""
    a, b = supervised("model-a", tmp_path), supervised("model-b", tmp_path)
    port = int(a["url"].rsplit(":", 1)[1])
    cards = b'{"object":"list","data":[{"id":"someone-else"}]}'

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n"
        writer.write(head + b"content-length: %d\r\n\r\n" % len(cards) + cards)
        await writer.drain()
        writer.close()

    foreign = await asyncio.start_server(answer, "127.0.0.1", port)
    try:
        async with (
            serve_proxy(config(a, b)) as proxy,
            httpx.AsyncClient(base_url=proxy.url, timeout=30) as c,
        ):
            failure = proxy.services.backends["model-a"].failure or ""
            assert proxy.state("model-a") == "failed"
            assert f"127.0.0.1:{port}" in failure
            assert "taken by another process" in failure
            assert "'someone-else'" in failure
            r = await c.post("/v1/chat/completions", json=chat("model-b"))
            assert r.status_code == 200
            launched_a = proxy.services.supervisor.process("model-a")
            assert launched_a is not None
            assert launched_a.pid is None, "never launched"
    finally:
        foreign.close()


SUBREAPER_DRIVER = (
    "import ctypes, os, signal, subprocess, sys, time\n"
    "ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: orphans come to us\n"
    "r = subprocess.Popen([sys.executable, '-I', sys.argv[1], '--parent', str(os.getpid()),"
    " '--', *sys.argv[2:]], start_new_session=True)\n"
    "def group():\n"
    "    found = []\n"
    "    for e in os.listdir('/proc'):\n"
    "        try:\n"
    "            f = open(f'/proc/{e}/stat').read().rsplit(')', 1)[1].split()\n"
    "        except (OSError, ValueError):\n"
    "            continue\n"
    "        if e.isdigit() and int(f[2]) == r.pid and int(e) != r.pid:\n"
    "            found.append(f[0])\n"
    "    return found\n"
    "deadline = time.monotonic() + 10\n"
    "while len(group()) < 2 and time.monotonic() < deadline: time.sleep(0.02)\n"
    "print('before', len(group()), flush=True)\n"
    "os.kill(r.pid, signal.SIGUSR1)  # what ManagedProcess.kill sends\n"
    "r.wait(10)\n"
    "print('after', ' '.join(group()) or '-', flush=True)\n"
    "os.killpg(r.pid, signal.SIGKILL) if group() else None\n"
)


async def test_a_killed_backend_leaves_no_zombie_behind() -> None:
    """The proxy kills a wedged engine: the reaper SIGKILLs its group and reaps all of it before
    it exits, so nothing - not even a zombie - is left for a PID 1 that reaps nothing (the
    driver here is such a subreaper: an orphan it got would stay a zombie it can see)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        SUBREAPER_DRIVER,
        reaper.__file__,
        sys.executable,
        "-c",
        SPAWNER,
        "stubborn",
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    lines = out.decode().split("\n")
    assert lines[0] == "before 2", lines  # the command and its own child ran
    assert lines[1] == "after -", f"left in the group (states): {lines[1]}"


async def test_a_log_file_that_cannot_be_opened_never_stops_the_output_being_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The child's pipe is read whatever happens to its log file (a child whose pipe is not
    read blocks once it is full): its lines reach the tail, with the reason the log did not."""
    (tmp_path / "a-file").write_text("")
    lines = 20_000  # over 64 KiB of output: a pipe nobody reads would block the child
    proc = ManagedProcess(
        "m",
        [sys.executable, "-c", f"for i in range({lines}): print('line', i)"],
        {},
        tmp_path / "a-file" / "m.log",  # its "directory" is a file
        grace_s=1,
    )
    await proc.start()
    assert await asyncio.wait_for(proc.wait(), 30) == 0
    assert proc.tail()[-1] == f"line {lines - 1}"
    assert "m: cannot write its log" in caplog.text


async def test_a_stop_that_comes_before_the_command_exists_still_ends_it() -> None:
    """The proxy's death signal (or a stop) can reach the reaper between its handlers and its
    fork: the command it then starts is ended at once, never left to run unsupervised."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); from reaper import Reaper\n"
        "r = Reaper([sys.executable, '-c', 'import time; time.sleep(60)'], 1.0)\n"
        "r.stop()  # as the SIGTERM handler would, before run() forks\n"
        "sys.exit(r.run())\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, str(Path(reaper.__file__).parent), start_new_session=True
    )
    try:
        assert await asyncio.wait_for(proc.wait(), 10) == 128 + signal.SIGTERM
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
