"""Adoption: what a starting proxy does with a process already listening at a supervised
backend's URL - a previous instance's backend that outlived it, or a vLLM started by hand.

`decide(...)` is pure: adopt it, replace it (ours, but another command or unhealthy), refuse it
(a stranger, another user's, or one the proxy cannot see), or start (the port is free). What it
decides on is read by host.py (who listens, process groups) and runtime.py (the records);
the Supervisor carries it out, an adopted backend's process being adopted.py's. Stateless.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

from proxy.backends.runtime import Record


@dataclass(frozen=True)
class Listener:
    pid: int
    group: int
    started: float  # seconds since the epoch
    uid: int  # its owner: only a process of the proxy's own user is ever adopted


@dataclass(frozen=True)
class Claim:
    action: Literal["start", "adopt", "replace", "refuse"]
    reason: str
    listener: Listener | None = None
    owned: bool = False  # the runtime record says the proxy started it (its group may be signalled)


def decide(
    *,
    where: str,
    model: str,
    healthy: bool,
    served: tuple[str, ...],
    listener: Listener | None,
    record: Record | None,
    record_alive: bool,
    fingerprint: str,
    adopt: bool,
) -> Claim:
    """What to do with what listens at a supervised backend's URL. `healthy`: /health 200;
    `served`: what its /v1/models lists; `record`: the runtime record for the URL;
    `record_alive`: a process of the record's group still runs."""
    mine = listener is not None and listener.uid == os.getuid()
    ours = (
        record is not None
        and listener is not None
        and mine
        and listener.group == record.group
        and listener.started >= record.started - 1.0  # create times are rounded by the kernel
    )
    if not ours and record_alive:  # ours, but not (yet) listening: a start cut short
        return Claim("replace", "a previous proxy's backend that does not listen", None, True)
    if listener is None and not healthy:
        return Claim("start", "nothing listens there")
    if ours:
        assert record is not None
        if not healthy:
            return Claim(
                "replace", "a previous proxy's backend that is not healthy", listener, True
            )
        if record.fingerprint != fingerprint:
            return Claim(
                "replace", "a previous proxy's backend started from another command", listener, True
            )
        if model not in served:
            return Claim(
                "replace", f"a previous proxy's backend not serving {model!r}", listener, True
            )
        return Claim("adopt", "a previous proxy's backend, same command", listener, True)
    if model in served and healthy:
        if not adopt:
            return Claim(
                "refuse",
                f"a vLLM serving {model!r} already listens at {where}, not started by this "
                "proxy, and the model says adopt: false: stop it, or set adopt: true",
            )
        if listener is None or not mine:
            return Claim(
                "refuse",
                f"a vLLM serving {model!r} listens at {where} but its process is not visible to "
                "the proxy or belongs to another user (another container, another account): it "
                "is not adopted - configure the model with `url` only (no `command`) to attach it",
            )
        return Claim("adopt", "a vLLM serving the model, not started by this proxy", listener)
    what = ", ".join(map(repr, served)) or ("no vLLM model" if healthy else "no /health")
    pid = f" (pid {listener.pid})" if listener is not None else ""
    return Claim(
        "refuse",
        f"the port of {where} is taken by another process{pid} (it serves {what}); free the "
        "port or change the model's url",
    )
