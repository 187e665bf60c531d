"""What a process says about itself: resident memory and CPU time, read in the process
(/proc/self, Linux, as the Ray nodes are), so the figures are right on a multi-node
cluster too.

probe() returns a function for an actor's __ray_call__ (Ray runs it inside the actor,
whatever its class: our actors, Serve's replicas and its controller). It is built as a
closure with only local imports so that cloudpickle ships it by value: the Serve
controller is started outside this job and cannot import this package.
"""

from __future__ import annotations

from typing import Any, Callable, Tuple


def probe() -> Callable[[Any], Tuple[float, float, int]]:
    """A function (actor) -> (VmRSS MiB, user+system CPU seconds, pid) of the process it
    runs in."""

    def _probe(_actor: Any) -> Tuple[float, float, int]:
        import os

        rss = 0.0
        try:
            with open("/proc/self/status", encoding="ascii") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss = int(line.split()[1]) / 1024.0
                        break
        except OSError:
            pass
        t = os.times()
        return rss, t.user + t.system, os.getpid()

    return _probe
