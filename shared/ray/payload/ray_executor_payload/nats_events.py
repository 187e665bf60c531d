"""NATS JetStream publisher of a deliberation's events (specs/nats.md).

Two kinds of messages, both built here from the payload's own request and results:

- lifecycle events: structured-mode CloudEvents on ray_executor.deliberation.<id>.<kind>
  (started, agent_completed / agent_failed, completed / failed), with Nats-Msg-Id = the
  CloudEvent id, so a retry, a second publisher or the Go reconciler never store one twice;
- compatible agent responses: the original service's envelope on agent.response.*, one per
  agent, with Nats-Msg-Id = the envelope's idempotency_key.

Before the driver starts any agent, stored_terminal looks up whether the deliberation's end
is already stored (a cancelled event: Ray starts a PENDING job's driver even after it was
stopped). That one look-up is bounded (LOOKUP_TIMEOUT_SECONDS) and made on a connection of
its own, which is closed before the run goes on.

Publishing is best effort and never on the deliberation's critical path: the hooks build the
messages and hand them to one background thread that runs an asyncio event loop with the
nats-py client, which publishes them one at a time, in order. Each message gets a bounded
budget (EVENT_BUDGET_SECONDS, at most MAX_ATTEMPTS attempts, each connect and each
JetStream ack bounded by ~2 s); a message that cannot be published is logged (subject and
id only, never its content) and dropped: the Go reconciler publishes missing events later.
close() waits a bounded time for the queue to drain, then closes the connection.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Set, Tuple

from . import llm
from .events import Events
from .request import DeliberationRequest
from .result import COMPLETED, FAILED, AgentResult, DeliberationResult, iso_utc

log = logging.getLogger("ray_executor_payload")

# Environment of the driver (the Ray pods' own, plus RAY_EXECUTOR_NATS_URL from the job).
URL_ENV = "RAY_EXECUTOR_NATS_URL"
TOKEN_ENV = "RAY_EXECUTOR_NATS_TOKEN"
CREDS_FILE_ENV = "RAY_EXECUTOR_NATS_CREDS_FILE"
TLS_CA_FILE_ENV = "RAY_EXECUTOR_NATS_TLS_CA_FILE"
EVENTS_STREAM_ENV = "RAY_EXECUTOR_NATS_EVENTS_STREAM"  # execute's NATS_EVENTS_STREAM
DEFAULT_EVENTS_STREAM = "RAY_EXECUTOR_EVENTS"

# Bounds of the best-effort publishing.
CONNECT_TIMEOUT_SECONDS = 2.0
ACK_TIMEOUT_SECONDS = 2.0
EVENT_BUDGET_SECONDS = 5.0
MAX_ATTEMPTS = 3
RETRY_DELAY_SECONDS = 0.25  # doubled after each failed attempt
CLOSE_TIMEOUT_SECONDS = 4.0  # close() waits this long for the queue to drain and flush
SHUTDOWN_SECONDS = 1.0  # closing the connection (it flushes first), and the cleanup after
LOOKUP_TIMEOUT_SECONDS = 5.0  # the whole look-up of a stored terminal event, connect included

# Lifecycle events.
SOURCE = "ray-executor/payload"
SUBJECT_PREFIX = "ray_executor.deliberation"
TYPE_PREFIX = "fleet.ray_executor.v1.deliberation."
CLOUDEVENTS_CONTENT_TYPE = "application/cloudevents+json"
STARTED = "started"
AGENT_COMPLETED = "agent_completed"
AGENT_FAILED = "agent_failed"
TERMINAL_COMPLETED = "completed"
TERMINAL_FAILED = "failed"
TERMINAL_CANCELLED = "cancelled"
TERMINAL_KINDS = (TERMINAL_CANCELLED, TERMINAL_COMPLETED, TERMINAL_FAILED)  # cancelled: the likely one
ALL_AGENTS_FAILED = "all_agents_failed"

# Compatible agent responses.
PRODUCER = "ray-executor"
RESPONSE_COMPLETED = "agent.response.completed"
RESPONSE_FAILED = "agent.response.failed"
TASK_EXTRACTION = "TASK_EXTRACTION"
RESPONSE_SUBJECTS_BY_TASK_TYPE = {
    TASK_EXTRACTION: "agent.response.completed.task-extraction",
    "BACKLOG_REVIEW_ROLE": "agent.response.completed.backlog-review.role",
}

# A deliberation id is a NATS subject token (shared/domain/id.go): checked again here, since
# an id with '.', '*', '>' or white space would publish on someone else's subject.
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")


# --- settings ------------------------------------------------------------------------------


@dataclass(frozen=True)
class NatsSettings:
    servers: Tuple[str, ...]
    token: str = field(default="", repr=False)
    creds_file: str = ""
    tls_ca_file: str = ""
    events_stream: str = DEFAULT_EVENTS_STREAM

    @property
    def display(self) -> str:
        """The server list for logs, without any user:password@ part."""
        return ",".join(re.sub(r"//[^/@]*@", "//***@", s) for s in self.servers)


def settings_from_env(environ: Mapping[str, str]) -> Optional[NatsSettings]:
    """None when RAY_EXECUTOR_NATS_URL is unset or empty (events off)."""
    url = environ.get(URL_ENV, "").strip()
    if not url:
        return None
    servers = tuple(s.strip() for s in url.split(",") if s.strip())
    if not servers:
        return None
    return NatsSettings(
        servers=servers,
        token=environ.get(TOKEN_ENV, "").strip(),
        creds_file=environ.get(CREDS_FILE_ENV, "").strip(),
        tls_ca_file=environ.get(TLS_CA_FILE_ENV, "").strip(),
        events_stream=environ.get(EVENTS_STREAM_ENV, "").strip() or DEFAULT_EVENTS_STREAM,
    )


def connect_options(settings: NatsSettings, tls: Optional[ssl.SSLContext], timeout: float, error_cb: Any) -> Dict[str, Any]:
    """nats.connect arguments: one connection attempt per server, no reconnection (each
    caller decides when to connect again), credentials from the settings."""
    kwargs: Dict[str, Any] = {
        "servers": list(settings.servers),
        "name": "ray-executor-payload",
        "connect_timeout": max(0.1, min(CONNECT_TIMEOUT_SECONDS, timeout)),
        "allow_reconnect": False,
        "max_reconnect_attempts": 1,
        "reconnect_time_wait": 0.1,
        "error_cb": error_cb,
    }
    if settings.token:
        kwargs["token"] = settings.token
    if settings.creds_file:
        kwargs["user_credentials"] = settings.creds_file
    if tls is not None:
        kwargs["tls"] = tls
    return kwargs


# --- messages ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    subject: str
    msg_id: str
    body: bytes
    content_type: str

    def headers(self) -> Dict[str, str]:
        return {"Nats-Msg-Id": self.msg_id, "Content-Type": self.content_type}


def _json(value: Any) -> bytes:
    # ensure_ascii: LLM text may hold lone surrogates, which UTF-8 cannot encode.
    return json.dumps(value, ensure_ascii=True, separators=(",", ":"), allow_nan=False).encode("ascii")


def valid_subject_token(deliberation_id: str) -> bool:
    return bool(_ID_RE.match(deliberation_id))


def lifecycle_subject(deliberation_id: str, kind: str) -> str:
    return f"{SUBJECT_PREFIX}.{deliberation_id}.{kind}"


def lifecycle_msg_id(deliberation_id: str, kind: str, agent_index: int = 0) -> str:
    if kind in (AGENT_COMPLETED, AGENT_FAILED):
        return f"{deliberation_id}.agent.{agent_index}"
    if kind in (TERMINAL_COMPLETED, TERMINAL_FAILED):
        return f"{deliberation_id}.terminal"
    return f"{deliberation_id}.{kind}"


def lifecycle_event(req: DeliberationRequest, kind: str, data: Dict[str, Any], agent_index: int = 0, now: Optional[float] = None) -> Message:
    """A structured-mode CloudEvent of `kind` about req's deliberation."""
    msg_id = lifecycle_msg_id(req.deliberation_id, kind, agent_index)
    event: Dict[str, Any] = {
        "specversion": "1.0",
        "id": msg_id,
        "source": SOURCE,
        "type": TYPE_PREFIX + kind,
        "subject": req.deliberation_id,
        "time": iso_utc(time.time() if now is None else now),
        "datacontenttype": "application/json",
    }
    if req.traceparent:
        event["traceparent"] = req.traceparent
    event["data"] = data
    return Message(lifecycle_subject(req.deliberation_id, kind), msg_id, _json(event), CLOUDEVENTS_CONTENT_TYPE)


def _set(d: Dict[str, Any], key: str, value: Any) -> None:
    """Fields are absent when unknown (empty or zero), as on the Go side."""
    if value:
        d[key] = value


def started_data(req: DeliberationRequest) -> Dict[str, Any]:
    return {"deliberation_id": req.deliberation_id, "task_id": req.task_id, "num_agents": len(req.agents)}


def agent_data(req: DeliberationRequest, index: int, a: AgentResult) -> Dict[str, Any]:
    d: Dict[str, Any] = {
        "deliberation_id": req.deliberation_id,
        "task_id": req.task_id,
        "agent_index": index,
        "agent_id": a.agent_id,
    }
    _set(d, "role", a.role)
    _set(d, "model", a.model)
    if a.status == COMPLETED:
        _set(d, "proposal", a.proposal)
        _set(d, "reasoning", a.reasoning)
        _set(d, "score", a.score)
        _set(d, "tokens", a.tokens)
    else:
        _set(d, "error", a.error)
        _set(d, "error_type", a.error_type)
    d["duration_ms"] = a.duration_ms
    _set(d, "attempts", a.attempts)
    return d


def terminal_data(req: DeliberationRequest, result: DeliberationResult) -> Dict[str, Any]:
    d: Dict[str, Any] = {
        "deliberation_id": req.deliberation_id,
        "task_id": req.task_id,
        "status": result.status,
        "num_agents": len(req.agents),
        "completed_agents": result.completed_agents,
        "failed_agents": result.failed_agents,
    }
    if result.status == COMPLETED:
        d["duration_ms"] = result.duration_ms
    else:
        _set(d, "error", result.error)
        d["error_type"] = ALL_AGENTS_FAILED
    return d


def ends_normally(result: DeliberationResult) -> bool:
    """Completed, or failed because every agent failed: the runs whose terminal event the
    payload publishes (anything else is left to the gateway and the reconciler)."""
    if result.status == COMPLETED:
        return True
    return result.status == FAILED and len(result.agents) > 0 and result.completed_agents == 0


def response_subject(req: DeliberationRequest, a: AgentResult) -> str:
    if a.status != COMPLETED:
        return RESPONSE_FAILED
    return RESPONSE_SUBJECTS_BY_TASK_TYPE.get(req.task_type, RESPONSE_COMPLETED)


def idempotency_key(event_type: str, deliberation_id: str, agent_id: str) -> str:
    return hashlib.sha256(f"{event_type}:{deliberation_id}:{agent_id}".encode("utf-8")).hexdigest()


def proposal_tasks(proposal: str) -> List[Any]:
    """The `tasks` array of a TASK_EXTRACTION proposal (a JSON object); [] when the proposal
    is not such an object or has no such array."""
    try:
        data = json.loads(proposal)
    except (ValueError, RecursionError):
        return []
    if not isinstance(data, dict):
        return []
    tasks = data.get("tasks")
    return tasks if isinstance(tasks, list) else []


def response_payload(req: DeliberationRequest, a: AgentResult, now: float) -> Dict[str, Any]:
    """The payload of a compatible agent response (the original's fields)."""
    task_id = req.metadata.get("task_id") or req.task_id
    timestamp = a.finished_at or iso_utc(now)
    if a.status != COMPLETED:
        return {
            "task_id": task_id,
            "agent_id": a.agent_id,
            "role": a.role,
            "status": "failed",
            "error": a.error,
            "error_type": a.error_type,
            "success": False,
            "num_agents": len(req.agents),
            "duration_ms": a.duration_ms,
            "timestamp": timestamp,
            "model": a.model,
        }
    proposal: Dict[str, Any] = {
        "content": a.proposal,
        "author_id": a.agent_id,
        "author_role": a.role,
        "model": a.model,
        "temperature": llm.temperature(req.task_type == TASK_EXTRACTION),
        "tokens": a.tokens,
    }
    if a.reasoning:
        proposal["reasoning"] = a.reasoning
    p: Dict[str, Any] = {
        "task_id": task_id,
        "agent_id": a.agent_id,
        "role": a.role,
        "status": "completed",
        "duration_ms": a.duration_ms,
        "timestamp": timestamp,
        "proposal": proposal,
        "success": True,
        "model": a.model,
        "num_agents": len(req.agents),
        "constraints": {
            "story_id": req.story_id,
            "plan_id": req.plan_id,
            "timeout_seconds": req.timeout_seconds,
            "max_retries": req.max_retries,
            "metadata": dict(req.metadata),
        },
    }
    if req.task_type == TASK_EXTRACTION:
        p["tasks"] = proposal_tasks(a.proposal)
        p["story_id"] = req.metadata.get("story_id") or req.story_id
        p["ceremony_id"] = req.metadata.get("ceremony_id", "")
    return p


def agent_response(req: DeliberationRequest, a: AgentResult, now: Optional[float] = None) -> Message:
    """The compatible agent.response.* message of one agent."""
    now = time.time() if now is None else now
    subject = response_subject(req, a)
    key = idempotency_key(subject, req.deliberation_id, a.agent_id)
    metadata = {"deliberation_id": req.deliberation_id, "task_type": req.task_type}
    if req.traceparent:
        metadata["traceparent"] = req.traceparent
    envelope = {
        "event_type": subject,
        "payload": response_payload(req, a, now),
        "idempotency_key": key,
        "correlation_id": req.deliberation_id,
        "timestamp": iso_utc(now),
        "producer": PRODUCER,
        "metadata": metadata,
    }
    return Message(subject, key, _json(envelope), "application/json")


def agent_messages(req: DeliberationRequest, index: int, a: AgentResult, now: Optional[float] = None) -> List[Message]:
    """What one ended agent publishes, in order: its lifecycle event, then its compatible
    response."""
    now = time.time() if now is None else now
    kind = AGENT_COMPLETED if a.status == COMPLETED else AGENT_FAILED
    return [lifecycle_event(req, kind, agent_data(req, index, a), index, now), agent_response(req, a, now)]


# --- the terminal event already stored ----------------------------------------------------


class LookupFailed(Exception):
    """NATS could not say whether a terminal event is stored (unreachable, no answer in
    time, no such stream, ...). The message names the cause, never any request text."""


# JetStream's error code for "no message" (as opposed to 10059, "stream not found").
_NO_MESSAGE_FOUND = 10037


def stored_terminal(settings: NatsSettings, deliberation_id: str, timeout: float = LOOKUP_TIMEOUT_SECONDS) -> Optional[str]:
    """The kind (cancelled, completed or failed) of the terminal event of deliberation_id
    stored on the events stream, or None when none is. Raises LookupFailed when NATS cannot
    answer within `timeout` seconds, the whole look-up included."""
    if not valid_subject_token(deliberation_id):
        raise LookupFailed("the deliberation id is not a valid NATS subject token")
    try:
        import nats
        from nats.js.errors import NotFoundError
    except ImportError as exc:
        raise LookupFailed(f"nats-py cannot be imported: {exc}") from None
    try:
        tls = ssl.create_default_context(cafile=settings.tls_ca_file) if settings.tls_ca_file else None
    except (OSError, ssl.SSLError) as exc:
        raise LookupFailed(f"{TLS_CA_FILE_ENV}: {_describe(exc)}") from None
    last_error: List[BaseException] = []

    async def remember(exc: Exception) -> None:
        last_error.append(exc)

    async def look_up() -> Optional[str]:
        nc = nats.NATS()
        await nc.connect(**connect_options(settings, tls, timeout, remember))
        try:
            js = nc.jetstream(timeout=timeout)
            for kind in TERMINAL_KINDS:
                try:
                    await js.get_last_msg(settings.events_stream, lifecycle_subject(deliberation_id, kind))
                except NotFoundError as exc:
                    if getattr(exc, "err_code", None) != _NO_MESSAGE_FOUND:
                        raise LookupFailed(f"stream {settings.events_stream}: {_describe(exc)}") from None
                    continue
                return kind
            return None
        finally:
            try:
                await asyncio.wait_for(nc.close(), SHUTDOWN_SECONDS)
            except BaseException:  # noqa: BLE001 - best effort
                pass

    async def bounded() -> Optional[str]:
        return await asyncio.wait_for(look_up(), timeout)

    begun = time.monotonic()
    try:
        return asyncio.run(bounded())
    except LookupFailed:
        raise
    except asyncio.TimeoutError:
        what = "connecting timed out" if time.monotonic() - begun < timeout else f"no answer within {timeout:g}s"
        raise LookupFailed(f"NATS at {settings.display}: {what}") from None
    except Exception as exc:  # noqa: BLE001 - refused, auth, TLS, no responders ...
        cause = last_error[-1] if isinstance(exc, nats.errors.NoServersError) and last_error else exc
        raise LookupFailed(_describe(cause)) from None


# --- the publisher -------------------------------------------------------------------------


class _Unreachable(Exception):
    """Connecting to NATS failed (as opposed to a publish that got no ack)."""


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class NatsEvents(Events):
    """Publishes the events of one deliberation run on NATS JetStream, in the background."""

    def __init__(self, settings: NatsSettings):
        import nats  # the caller checked it imports

        self._nats = nats
        self._settings = settings
        self._tls = ssl.create_default_context(cafile=settings.tls_ca_file) if settings.tls_ca_file else None
        self._disabled = False
        self._sent_agents: Set[int] = set()
        self._closed = False
        self.published = 0
        self.failed = 0
        self.dropped = 0
        # Loop-thread state.
        self._nc: Any = None
        self._js: Any = None
        self._unreachable = False
        self._last_error: Optional[BaseException] = None
        self._current: Optional[Message] = None
        self._queue: "Optional[asyncio.Queue[Optional[Message]]]" = None
        self._main_task: "Optional[asyncio.Task[None]]" = None
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._thread_main, name="ray-executor-nats", daemon=True)
        self._thread.start()
        self._ready.wait(5.0)
        log.info("events: publishing to NATS at %s", settings.display)

    # hooks (driver thread) ------------------------------------------------------------

    def on_started(self, request: DeliberationRequest) -> None:
        if not valid_subject_token(request.deliberation_id):
            self._disabled = True
            log.warning("events: deliberation id is not a valid NATS subject token; not publishing")
            return
        self._put(lifecycle_event(request, STARTED, started_data(request)))

    def on_agent_done(self, request: DeliberationRequest, agent: AgentResult) -> None:
        index = self._index(request, agent.agent_id)
        if index is None or index in self._sent_agents:
            return
        self._sent_agents.add(index)
        for m in agent_messages(request, index, agent):
            self._put(m)

    def on_finished(self, request: DeliberationRequest, result: DeliberationResult) -> None:
        # Agents that never ran as tasks (Ray unavailable) end here; publish them first, so
        # every agent's event precedes the terminal one.
        for agent in result.agents:
            self.on_agent_done(request, agent)
        if ends_normally(result):
            kind = TERMINAL_COMPLETED if result.status == COMPLETED else TERMINAL_FAILED
            self._put(lifecycle_event(request, kind, terminal_data(request, result)))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._call_soon(self._enqueue, None)  # the worker stops after what is queued
        self._thread.join(CLOSE_TIMEOUT_SECONDS)
        if self._thread.is_alive():
            self._call_soon(self._cancel)
            self._thread.join(SHUTDOWN_SECONDS + 0.5)
        if self.failed or self.dropped:
            log.warning(
                "events: %d message(s) published, %d failed, %d not sent before close; "
                "the reconciler publishes missing lifecycle events", self.published, self.failed, self.dropped,
            )
        else:
            log.info("events: %d message(s) published", self.published)

    def _index(self, request: DeliberationRequest, agent_id: str) -> Optional[int]:
        if self._disabled:
            return None
        for i, spec in enumerate(request.agents):
            if spec.id == agent_id:
                return i
        log.warning("events: agent %s is not in the request; not publishing its events", agent_id)
        return None

    def _put(self, message: Message) -> None:
        if self._disabled or self._closed:
            return
        self._call_soon(self._enqueue, message)

    def _call_soon(self, fn: Any, *args: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed already
            pass

    # the event-loop thread -------------------------------------------------------------

    def _enqueue(self, message: Optional[Message]) -> None:
        if self._queue is not None:
            self._queue.put_nowait(message)

    def _cancel(self) -> None:
        if self._main_task is not None:
            self._main_task.cancel()

    def _thread_main(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._main_task = self._loop.create_task(self._main())
            self._loop.run_until_complete(self._main_task)
        except BaseException as exc:  # noqa: BLE001 - cancellation, or a bug: never fatal
            if not isinstance(exc, asyncio.CancelledError):
                log.warning("events: publisher stopped: %s", _describe(exc))
        finally:
            try:
                pending = [t for t in asyncio.all_tasks(self._loop) if not t.done()]
                for t in pending:
                    t.cancel()
                if pending:
                    self._loop.run_until_complete(asyncio.wait(pending, timeout=SHUTDOWN_SECONDS))
            except BaseException:  # noqa: BLE001
                pass
            self._loop.close()
            self._ready.set()

    async def _main(self) -> None:
        self._queue = asyncio.Queue()
        self._ready.set()
        try:
            # Connect now, while Ray starts; a failure here is retried by the first publish.
            try:
                await self._connect(CONNECT_TIMEOUT_SECONDS)
            except _Unreachable:
                pass
            while True:
                message = await self._queue.get()
                if message is None:
                    break
                self._current = message
                await self._deliver(message)
                self._current = None
        finally:
            # Cancelled by close(): what was not sent is dropped (and counted).
            self.dropped += (self._current is not None) + sum(1 for m in self._drain() if m is not None)
            self._current = None
            await self._disconnect()

    def _drain(self) -> List[Optional[Message]]:
        items: List[Optional[Message]] = []
        while self._queue is not None and not self._queue.empty():
            items.append(self._queue.get_nowait())
        return items

    async def _connect(self, timeout: float) -> Any:
        if self._nc is not None and self._nc.is_connected:
            return self._js
        await self._disconnect()

        async def remember(exc: Exception) -> None:  # our own failure log reports it
            self._last_error = exc

        # Reconnection is ours: the next publish connects again.
        kwargs = connect_options(self._settings, self._tls, timeout, remember)
        nc = self._nats.NATS()
        self._last_error = None
        try:
            await asyncio.wait_for(nc.connect(**kwargs), timeout=max(0.1, timeout))
        except BaseException as exc:  # refused, timeout, auth, TLS ..., or close() gave up
            try:
                await asyncio.wait_for(nc.close(), 0.5)
            except BaseException:  # noqa: BLE001 - best effort
                pass
            if not isinstance(exc, Exception):
                raise
            why = _describe(exc)
            if isinstance(exc, self._nats.errors.NoServersError) and self._last_error is not None:
                why = _describe(self._last_error)
            raise _Unreachable(why) from exc
        self._nc, self._js = nc, nc.jetstream(timeout=ACK_TIMEOUT_SECONDS)
        return self._js

    async def _disconnect(self) -> None:
        nc, self._nc, self._js = self._nc, None, None
        if nc is None:
            return
        try:
            await asyncio.wait_for(nc.close(), SHUTDOWN_SECONDS)  # flushes first
        except BaseException:  # noqa: BLE001 - best effort
            pass

    async def _deliver(self, message: Message) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + EVENT_BUDGET_SECONDS
        attempts = 1 if self._unreachable else MAX_ATTEMPTS
        delay = RETRY_DELAY_SECONDS
        last = ""
        unreachable = False
        for attempt in range(1, attempts + 1):
            remaining = deadline - loop.time()
            try:
                js = await self._connect(remaining)
                remaining = deadline - loop.time()
                await js.publish(
                    message.subject, message.body,
                    timeout=max(0.1, min(ACK_TIMEOUT_SECONDS, remaining)), headers=message.headers(),
                )
            except _Unreachable as exc:
                unreachable, last = True, f"cannot connect: {exc}"
            except self._nats.errors.MaxPayloadError as exc:
                unreachable, last = False, _describe(exc)
                break  # will never fit
            except Exception as exc:  # noqa: BLE001 - no ack, no stream, connection lost ...
                unreachable, last = False, _describe(exc)
                if self._nc is not None and not self._nc.is_connected:
                    await self._disconnect()
            else:
                self.published += 1
                self._unreachable = False
                return True
            if attempt == attempts or deadline - loop.time() <= delay + 0.1:
                break
            await asyncio.sleep(delay)
            delay *= 2
        self.failed += 1
        self._unreachable = unreachable
        log.warning("events: could not publish %s (Nats-Msg-Id %s) after %d attempt(s): %s",
                    message.subject, message.msg_id, attempt, last)
        return False
