"""An emulated vLLM server that ignores SIGTERM, as a vLLM stuck in a CUDA call may:

    python tests/helpers/stubborn_emulator.py EMULATOR-ARGS...

SIGTERM is set to ignored and stays so - whoever asks for a SIGTERM handler later (uvicorn,
asyncio) gets none - then `vllm-switch emulate EMULATOR-ARGS` runs in this process. It serves
like any emulator; only SIGKILL ends it. Run as a script (a backend's `command`). No state.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # this checkout's `proxy`

Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None
_install = signal.signal


def _sigterm_stays_ignored(signalnum: int | signal.Signals, handler: Handler) -> Handler:
    if signalnum == signal.SIGTERM:
        return signal.SIG_IGN
    return _install(signalnum, handler)


def main() -> int:
    _install(signal.SIGTERM, signal.SIG_IGN)
    signal.signal = _sigterm_stays_ignored  # uvicorn's and asyncio's handlers: not for SIGTERM
    from proxy.emulator.server import main as emulate

    return emulate(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
