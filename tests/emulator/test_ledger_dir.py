"""Where the fake GPU's ledger lives: a directory of the user's own, never a shared /tmp path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from proxy.emulator.ledger import GpuLedger, LedgerDirError
from proxy.emulator.settings import default_ledger_dir, parse_settings

GIB = 1024**3


def test_default_is_the_users_runtime_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert default_ledger_dir() == tmp_path / "vllm-switch-emulator"
    assert parse_settings(["m"]).ledger_dir == tmp_path / "vllm-switch-emulator"


def test_without_a_runtime_dir_it_is_under_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_ledger_dir() == tmp_path / ".cache" / "vllm-switch" / "emulator"
    assert not str(default_ledger_dir()).startswith("/tmp/vllm-switch")


def test_a_new_directory_is_private(tmp_path: Path) -> None:
    where = tmp_path / "a" / "ledger"
    GpuLedger(where, "gpu0", 80 * GIB, label="m")
    assert where.stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o1777])
def test_a_directory_others_can_write_is_refused(tmp_path: Path, mode: int) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(mode)
    with pytest.raises(LedgerDirError, match="must belong to this user"):
        GpuLedger(shared, "gpu0", 80 * GIB, label="m")
    assert not (shared / "gpu0.json").exists()


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to make a directory another user owns")
def test_a_directory_another_user_owns_is_refused(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, 65534, 65534)
    with pytest.raises(LedgerDirError):
        GpuLedger(theirs, "gpu0", 80 * GIB, label="m")
