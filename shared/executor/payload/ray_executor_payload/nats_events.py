"""The NATS settings of the payload, and the messages the executor publishes besides the
terminal event (specs/nats.md), built here from the request and the agents' results:

- lifecycle events: structured-mode CloudEvents on ray_executor.deliberation.<id>.<kind>
  (started, agent_completed / agent_failed), with Nats-Msg-Id = the CloudEvent id, so a
  redelivery or the Go reconciler never store one twice;
- compatible agent responses: the original service's envelope on agent.response.*, one per
  agent, with Nats-Msg-Id = the envelope's idempotency_key.

The terminal event is built from the record (records.terminal_event).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

from . import llm
from .request import DeliberationRequest
from .result import COMPLETED, AgentResult, iso_utc

# Environment of the executor (the Ray pods' own, plus what the executor job sets).
URL_ENV = "RAY_EXECUTOR_NATS_URL"
TOKEN_ENV = "RAY_EXECUTOR_NATS_TOKEN"
# The executor's own NATS user (knative/nats/ray-executor-users.conf: ray-executor-executor),
# from the Ray pods' environment, never from the job's runtime_env.
USER_ENV = "RAY_EXECUTOR_NATS_USER"
PASSWORD_ENV = "RAY_EXECUTOR_NATS_PASSWORD"
CREDS_FILE_ENV = "RAY_EXECUTOR_NATS_CREDS_FILE"
TLS_CA_FILE_ENV = "RAY_EXECUTOR_NATS_TLS_CA_FILE"
EVENTS_STREAM_ENV = "RAY_EXECUTOR_NATS_EVENTS_STREAM"  # execute's NATS_EVENTS_STREAM
DEFAULT_EVENTS_STREAM = "RAY_EXECUTOR_EVENTS"

# Lifecycle events.
SOURCE = "ray-executor/payload"
SUBJECT_PREFIX = "ray_executor.deliberation"
TYPE_PREFIX = "fleet.ray_executor.v1.deliberation."
CLOUDEVENTS_CONTENT_TYPE = "application/cloudevents+json"
STARTED = "started"
AGENT_COMPLETED = "agent_completed"
AGENT_FAILED = "agent_failed"

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
    user: str = ""
    password: str = field(default="", repr=False)
    creds_file: str = ""
    tls_ca_file: str = ""
    events_stream: str = DEFAULT_EVENTS_STREAM

    @property
    def display(self) -> str:
        """The server list for logs, without any user:password@ part."""
        return ",".join(re.sub(r"//[^/@]*@", "//***@", s) for s in self.servers)


def settings_from_env(environ: Mapping[str, str]) -> Optional[NatsSettings]:
    """None when RAY_EXECUTOR_NATS_URL is unset or empty (the executor then refuses to start)."""
    url = environ.get(URL_ENV, "").strip()
    if not url:
        return None
    servers = tuple(s.strip() for s in url.split(",") if s.strip())
    if not servers:
        return None
    return NatsSettings(
        servers=servers,
        token=environ.get(TOKEN_ENV, "").strip(),
        user=environ.get(USER_ENV, "").strip(),
        password=environ.get(PASSWORD_ENV, ""),
        creds_file=environ.get(CREDS_FILE_ENV, "").strip(),
        tls_ca_file=environ.get(TLS_CA_FILE_ENV, "").strip(),
        events_stream=environ.get(EVENTS_STREAM_ENV, "").strip() or DEFAULT_EVENTS_STREAM,
    )


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


# --- logs ----------------------------------------------------------------------------------


def _describe(exc: BaseException) -> str:
    """An exception for a log line: its type and the first 200 characters of its message."""
    text = " ".join(str(exc).split())[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
