"""Progress events of a deliberation, and the choice of their publisher.

The driver calls, in this order: on_started once, on_agent_done once per agent as each
result arrives (in completion order, not request order), on_finished once with the final
result, just after the result line is printed (so the result is in the job log before any
publisher I/O), then close. on_finished is not called when the driver is interrupted
(`ray job stop`, KeyboardInterrupt): close is. A publisher subclasses Events and is
returned by make_events; nothing else in the payload needs to change. The NATS JetStream
publisher (nats_events.NatsEvents, specs/nats.md) is used when RAY_EXECUTOR_NATS_URL is set.

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
    """The publisher for this run: NATS JetStream when RAY_EXECUTOR_NATS_URL is set and not
    empty, else the no-op Events. Events are best effort: whatever keeps them from being
    published (nats-py missing, a bad setting) is logged and the run goes on without them;
    the Go reconciler publishes missing events later."""
    from . import nats_events

    settings = nats_events.settings_from_env(environ)
    if settings is None:
        return Events()
    try:
        import nats  # noqa: F401 - nats-py, the NATS client
    except ImportError as exc:
        log.warning("events: %s is set but nats-py cannot be imported (%s); not publishing events",
                    nats_events.URL_ENV, exc)
        return Events()
    if settings.creds_file:
        try:
            import nkeys  # noqa: F401 - nats-py needs it to sign with a credentials file
        except ImportError:
            log.warning("events: %s needs the nkeys package (pip install nats-py[nkeys]); not publishing events",
                        nats_events.CREDS_FILE_ENV)
            return Events()
    try:
        return nats_events.NatsEvents(settings)
    except Exception as exc:  # noqa: BLE001 - e.g. an unreadable TLS CA file
        log.warning("events: cannot set up the NATS publisher: %s: %s; not publishing events", type(exc).__name__, exc)
        return Events()
