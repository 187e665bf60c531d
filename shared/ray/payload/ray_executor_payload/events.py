"""Progress events of a deliberation, for a publisher (NATS) to be added later.

The driver calls, in this order: on_started once, on_agent_done once per agent as each
result arrives (in completion order, not request order), on_finished once with the final
result, just after the result line is printed (so the result is in the job log before any
publisher I/O), then close. A publisher subclasses Events and is
returned by make_events; nothing else in the payload needs to change.

Hooks must never break a deliberation: the driver calls them through EventsGuard, which
logs and swallows any exception a hook raises. They run on the driver, synchronously,
so a publisher should bound its own latency (the deliberation deadline is running).
Hook arguments are the payload's own objects; never publish prompts from them.
"""

from __future__ import annotations

import logging
from typing import Mapping

from .request import DeliberationRequest
from .result import AgentResult, DeliberationResult

log = logging.getLogger("ray_executor_payload")


class Events:
    """No-op hooks."""

    def on_started(self, request: DeliberationRequest) -> None:
        pass

    def on_agent_done(self, request: DeliberationRequest, agent: AgentResult) -> None:
        pass

    def on_finished(self, request: DeliberationRequest, result: DeliberationResult) -> None:
        pass

    def close(self) -> None:
        """Flush and release resources; called once after on_finished."""


class EventsGuard:
    """Calls the hooks of an Events and keeps their failures out of the deliberation."""

    def __init__(self, events: Events):
        self.events = events

    def _call(self, name: str, *args) -> None:
        try:
            getattr(self.events, name)(*args)
        except Exception as exc:  # noqa: BLE001 - a hook must never fail the run
            log.warning("event hook %s failed: %s: %s", name, type(exc).__name__, exc)

    def on_started(self, request: DeliberationRequest) -> None:
        self._call("on_started", request)

    def on_agent_done(self, request: DeliberationRequest, agent: AgentResult) -> None:
        self._call("on_agent_done", request, agent)

    def on_finished(self, request: DeliberationRequest, result: DeliberationResult) -> None:
        self._call("on_finished", request, result)

    def close(self) -> None:
        self._call("close")


def make_events(environ: Mapping[str, str]) -> Events:
    """The publisher for this run. Today always the no-op Events; a NATS publisher will
    be chosen here from its environment settings."""
    return Events()
