"""Adoption's decision (pure) and the runtime records it rests on (the release wait: in
tests/proxy/test_adoption.py, on real processes)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from proxy.backends.adoption import Listener, decide
from proxy.backends.runtime import Record, RuntimeDir, fingerprint, this_host
from proxy.config import ModelConfig

URL = "http://127.0.0.1:8001"
BOOT, PIDNS = this_host()
RECORD = Record(URL, "m", 500, 1000.0, "f1", proxy_pid=1, boot=BOOT, pidns=PIDNS)


def claim(**overrides: Any) -> tuple[str, str, bool]:
    args: dict[str, Any] = {
        "where": URL,
        "model": "m",
        "healthy": True,
        "served": ("m",),
        "listener": Listener(pid=501, group=500, started=1000.5, uid=os.getuid()),
        "record": RECORD,
        "record_alive": True,
        "fingerprint": "f1",
        "adopt": True,
    }
    c = decide(**{**args, **overrides})
    return c.action, c.reason, c.owned


def test_a_previous_proxys_backend_from_the_same_command_is_adopted_as_owned() -> None:
    action, _, owned = claim()
    assert (action, owned) == ("adopt", True)


@pytest.mark.parametrize(
    ("overrides", "why"),
    [
        ({"fingerprint": "f2"}, "another command"),
        ({"healthy": False}, "not healthy"),
        ({"served": ("other",)}, "not serving"),
        ({"listener": None, "healthy": False}, "does not listen"),  # killed mid-start
    ],
)
def test_a_previous_proxys_backend_is_replaced_when(overrides: dict[str, Any], why: str) -> None:
    action, reason, owned = claim(**overrides)
    assert (action, owned) == ("replace", True)
    assert why in reason


def test_a_listener_in_a_reused_group_id_is_not_ours() -> None:
    """Older than the record: the group id was reused by something else - a stranger."""
    action, reason, owned = claim(
        listener=Listener(pid=501, group=500, started=900.0, uid=os.getuid()), record_alive=False
    )
    assert (action, owned) == ("adopt", False)  # it serves the model: adopted, never owned
    assert "not started by this proxy" in reason


def test_without_a_record_a_vllm_serving_the_model_is_adopted_unless_adopt_is_off() -> None:
    assert claim(record=None, record_alive=False)[:1] == ("adopt",)
    action, reason, _ = claim(record=None, record_alive=False, adopt=False)
    assert action == "refuse"
    assert "adopt: false" in reason


def test_a_stranger_on_the_port_is_refused_with_the_port_and_its_pid() -> None:
    action, reason, _ = claim(record=None, record_alive=False, served=("other-model",))
    assert action == "refuse"
    assert URL in reason
    assert "pid 501" in reason
    assert "'other-model'" in reason
    action, reason, _ = claim(record=None, record_alive=False, healthy=False, served=())
    assert action == "refuse"
    assert "no /health" in reason


def test_an_invisible_process_or_another_users_is_not_adopted() -> None:
    """Adopting means forwarding clients' traffic to it: a process another account started on
    the port (a squatter) is never adopted, even with a record that names its group."""
    action, reason, _ = claim(record=None, record_alive=False, listener=None)
    assert action == "refuse"
    assert "not visible" in reason
    other = Listener(pid=501, group=500, started=1000.5, uid=os.getuid() + 1)
    for record in (None, RECORD):
        action, reason, _ = claim(record=record, record_alive=False, listener=other)
        assert action == "refuse"
        assert "another user" in reason


def test_nothing_listening_and_no_live_record_means_start() -> None:
    assert claim(listener=None, healthy=False, record_alive=False)[0] == "start"
    assert claim(listener=None, healthy=False, record=None, record_alive=False)[0] == "start"


def test_records_round_trip_and_garbage_reads_as_none(tmp_path: Path) -> None:
    rd = RuntimeDir(tmp_path / "run")
    assert rd.read(URL) is None
    rd.write(RECORD)
    assert rd.read(URL) == RECORD
    assert rd.read("http://127.0.0.1:8002") is None
    (next((tmp_path / "run").glob("*.json"))).write_text('{"url": 1}')
    assert rd.read(URL) is None
    rd.forget(URL)
    rd.forget(URL)  # twice: no error
    assert list((tmp_path / "run").iterdir()) == []


def test_the_fingerprint_changes_with_command_env_and_cwd() -> None:
    base = {"name": "m", "url": URL, "command": "vllm serve m --port 8001"}
    prints = {
        fingerprint(ModelConfig.model_validate({**base, **extra}))
        for extra in ({}, {"command": "vllm serve m --port 8001 --x"}, {"env": {"A": "1"}})
    } | {fingerprint(ModelConfig.model_validate({**base, "cwd": "/srv"}))}
    assert len(prints) == 4
    same = ModelConfig.model_validate({**base, "idle_sleep_s": 5})
    assert fingerprint(same) == fingerprint(ModelConfig.model_validate(base))


def test_records_in_a_directory_others_may_write_are_never_read(tmp_path: Path) -> None:
    """A record names process groups the proxy may end: one another user could have planted
    (a shared temporary directory) is ignored, and nothing is written there."""
    rd = RuntimeDir(tmp_path / "run")
    rd.write(RECORD)
    assert rd.read(URL) == RECORD
    (tmp_path / "run").chmod(0o777)
    assert rd.read(URL) is None
    (tmp_path / "run").chmod(0o700)
    next((tmp_path / "run").glob("*.json")).chmod(0o666)
    assert rd.read(URL) is None
    shared = RuntimeDir(tmp_path / "shared")
    (tmp_path / "shared").mkdir(mode=0o777)
    (tmp_path / "shared").chmod(0o777)
    shared.write(RECORD)
    assert list((tmp_path / "shared").iterdir()) == []


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
FIELDS = ("url", "name", "group", "started", "fingerprint", "proxy_pid", "boot", "pidns")


@given(
    st.binary(max_size=300)
    | st.dictionaries(st.sampled_from(FIELDS), JSONISH).map(lambda d: json.dumps(d).encode())
    | st.just(b'{"group": 1e999}')
    | st.just(b"[" * 5000 + b"]" * 5000)
)
@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_bytes_in_a_record_file_read_as_a_record_or_none(tmp_path: Path, data: bytes) -> None:
    rd = RuntimeDir(tmp_path / "fuzz")
    rd.write(RECORD)
    next((tmp_path / "fuzz").glob("*.json")).write_bytes(data)
    assert rd.read(URL) in (None, RECORD)


def test_a_record_from_before_a_reboot_or_another_pid_namespace_is_stale(tmp_path: Path) -> None:
    rd = RuntimeDir(tmp_path / "run")
    for stale in (
        Record(URL, "m", 500, 1000.0, "f1", proxy_pid=1, boot=BOOT - 3600, pidns=PIDNS),
        Record(URL, "m", 500, 1000.0, "f1", proxy_pid=1, boot=BOOT, pidns=PIDNS + 1),
    ):
        rd.write(stale)
        assert rd.read(URL) is None


def test_records_are_per_port_whatever_the_url_calls_the_host(tmp_path: Path) -> None:
    rd = RuntimeDir(tmp_path / "run")
    rd.write(RECORD)
    assert rd.read("http://localhost:8001") == RECORD
    assert rd.read("http://localhost:8002") is None
