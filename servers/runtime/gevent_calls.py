"""What both gevent servers (gevent.pywsgi and gevent-h11) do the same gevent way: call a
blocking library. Imported only in a process that gevent has monkey-patched."""

from __future__ import annotations

import gevent

from servers import contract
from servers.contract import Blocking, legacy_blocking_call

__all__ = ["call_blocking", "size_thread_pool"]


def size_thread_pool() -> None:
    """The hub's thread pool as large as the async servers' offload pools, so that offloading
    compares the runtimes, not two pool sizes."""
    gevent.get_hub().threadpool.maxsize = contract.OFFLOAD_THREADS


def call_blocking(plan: Blocking) -> None:
    """Python code is called directly whether asked to offload or not (monkey patching made
    its waits cooperative); C code would block the hub's thread, so offloading it goes to the
    hub's thread pool, and calling it inline stalls every greenlet."""
    if plan.offload and not plan.yields_under_gevent:
        gevent.get_hub().threadpool.apply(legacy_blocking_call, (plan.ms, plan.kind))
    else:
        legacy_blocking_call(plan.ms, plan.kind)
