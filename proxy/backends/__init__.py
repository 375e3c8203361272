"""Backends: one vLLM server each - its state, leases, and the calls that change it."""

from proxy.backends.backend import Backend, Lease, WakeTimings
from proxy.backends.control import ControlError, VllmControl
from proxy.backends.state import BackendState

__all__ = ["Backend", "BackendState", "ControlError", "Lease", "VllmControl", "WakeTimings"]
