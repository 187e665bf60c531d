"""The deliberation request: parsing and validation.

execute publishes the request JSON (shared/ray PayloadRequest, built by shared/executor
WorkMessage) as the body of the deliberation's work message; the executor parses it with
parse_request. The Go side already
validated it, but the payload checks again everything it relies on, so that a bad request
ends the deliberation at once (invalid_request, naming every problem) instead of
half-running.
"""

from __future__ import annotations

import json
import math
import re
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Dict, List, Tuple

REQUEST_VERSION = 1
KINDS = ("deliberation", "backlog_review")

# W3C trace context, version 00 style: 2-32-16-2 lowercase hex digits.
_TRACEPARENT_RE = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")


def valid_traceparent(tp: Any) -> bool:
    """A W3C traceparent this executor joins: version-traceid-spanid-flags in lowercase hex,
    neither id all zeros."""
    return (isinstance(tp, str) and bool(_TRACEPARENT_RE.match(tp)) and tp[3:35] != "0" * 32
            and tp[36:52] != "0" * 16 and not tp.startswith("ff"))


class RequestError(ValueError):
    """The request is malformed. Carries what could still be read of the ids."""

    def __init__(self, message: str, deliberation_id: str = "", task_id: str = ""):
        super().__init__(message)
        self.deliberation_id = deliberation_id
        self.task_id = task_id


@dataclass(frozen=True)
class AgentSpec:
    id: str
    role: str
    model: str  # effective: the agent's model, or the request's vllm_model when empty
    prompt_template: str
    vllm_url: str  # effective: the agent's vllm_url, or the request's when empty


@dataclass(frozen=True)
class DeliberationRequest:
    version: int
    deliberation_id: str
    kind: str
    task_id: str
    task_description: str
    role: str
    story_id: str
    plan_id: str
    timeout_seconds: int
    max_retries: int
    metadata: Dict[str, str]
    vllm_url: str
    vllm_model: str
    agents: Tuple[AgentSpec, ...]
    agent_num_cpus: float = 0.0
    traceparent: str = ""  # empty when absent or not a valid W3C traceparent
    warnings: Tuple[str, ...] = field(default=(), compare=False)

    @property
    def task_type(self) -> str:
        return self.metadata.get("task_type", "")


def parse_request(raw: str) -> DeliberationRequest:
    """Parses and validates the request JSON (a work message's body)."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise RequestError(f"the request is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise RequestError(f"the request must be a JSON object, got {_json_type(data)}")
    return _validate(data)


def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    return "object"


class _Checker:
    """Collects every problem of a request so one error message names them all."""

    def __init__(self, data: Dict[str, Any]):
        self.data = data
        self.problems: List[str] = []

    def string(self, obj: Dict[str, Any], key: str, where: str, required: bool = False) -> str:
        v = obj.get(key)
        if v is None:
            if required:
                self.problems.append(f"{where} is required")
            return ""
        if not isinstance(v, str):
            self.problems.append(f"{where} must be a string, got {_json_type(v)}")
            return ""
        if required and not v.strip():
            self.problems.append(f"{where} must not be empty")
        return v

    def integer(self, key: str, minimum: int) -> int:
        v = self.data.get(key)
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int):
            if v is None:
                self.problems.append(f"{key} is required")
            else:
                self.problems.append(f"{key} must be an integer, got {_json_type(v)}")
            return minimum
        if v < minimum:
            self.problems.append(f"{key} must be >= {minimum}, got {v}")
            return minimum
        return v

    def url(self, value: str, where: str) -> None:
        if not value:
            return
        parsed = urllib.parse.urlsplit(value)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            self.problems.append(f"{where} must be an absolute http(s) URL, got {value[:100]!r}")


def _validate(data: Dict[str, Any]) -> DeliberationRequest:
    c = _Checker(data)
    # Read the ids first: even a failed request is reported under its deliberation id.
    raw_did = data.get("deliberation_id")
    raw_tid = data.get("task_id")
    did = raw_did if isinstance(raw_did, str) else ""
    tid = raw_tid if isinstance(raw_tid, str) else ""

    version = data.get("version")
    if isinstance(version, bool) or version != REQUEST_VERSION:
        c.problems.append(f"version must be {REQUEST_VERSION}, got {version!r}")
    c.string(data, "deliberation_id", "deliberation_id", required=True)
    kind = c.string(data, "kind", "kind", required=True)
    if kind and kind not in KINDS:
        c.problems.append(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    c.string(data, "task_id", "task_id", required=True)
    description = c.string(data, "task_description", "task_description", required=True)
    role = c.string(data, "role", "role")
    story_id = c.string(data, "story_id", "story_id")
    plan_id = c.string(data, "plan_id", "plan_id")
    timeout_seconds = c.integer("timeout_seconds", 1)
    max_retries = c.integer("max_retries", 0)
    vllm_url = c.string(data, "vllm_url", "vllm_url")
    c.url(vllm_url, "vllm_url")
    vllm_model = c.string(data, "vllm_model", "vllm_model")

    metadata: Dict[str, str] = {}
    raw_meta = data.get("metadata")
    if raw_meta is None:
        pass
    elif not isinstance(raw_meta, dict):
        c.problems.append(f"metadata must be an object, got {_json_type(raw_meta)}")
    else:
        for k, v in raw_meta.items():
            if not isinstance(v, str):
                c.problems.append(f"metadata[{k!r}] must be a string, got {_json_type(v)}")
            else:
                metadata[k] = v

    num_cpus = data.get("agent_num_cpus", 0)
    if num_cpus is None:
        num_cpus = 0
    if (
        isinstance(num_cpus, bool)
        or not isinstance(num_cpus, (int, float))
        or not math.isfinite(num_cpus)
        or num_cpus < 0
    ):
        c.problems.append(f"agent_num_cpus must be a number >= 0, got {num_cpus!r}")
        num_cpus = 0

    warnings: List[str] = []
    traceparent = data.get("traceparent") or ""
    if not isinstance(traceparent, str):
        c.problems.append(f"traceparent must be a string, got {_json_type(traceparent)}")
        traceparent = ""
    elif traceparent and not _TRACEPARENT_RE.match(traceparent):
        # Tracing is best effort: a malformed traceparent is dropped, not fatal.
        warnings.append("traceparent is not a valid W3C traceparent; ignoring it")
        traceparent = ""

    agents: List[AgentSpec] = []
    raw_agents = data.get("agents")
    if not isinstance(raw_agents, list):
        if raw_agents is None:
            c.problems.append("agents is required")
        else:
            c.problems.append(f"agents must be an array, got {_json_type(raw_agents)}")
    elif not raw_agents:
        c.problems.append("agents must name at least one agent")
    else:
        seen: Dict[str, int] = {}
        for i, a in enumerate(raw_agents):
            where = f"agents[{i}]"
            if not isinstance(a, dict):
                c.problems.append(f"{where} must be an object, got {_json_type(a)}")
                continue
            aid = c.string(a, "id", f"{where}.id", required=True)
            if aid in seen:
                c.problems.append(f"{where}.id {aid!r} repeats agents[{seen[aid]}].id")
            elif aid:
                seen[aid] = i
            arole = c.string(a, "role", f"{where}.role")
            model = c.string(a, "model", f"{where}.model") or vllm_model
            if not model:
                c.problems.append(f"{where}.model is empty and so is vllm_model")
            template = c.string(a, "prompt_template", f"{where}.prompt_template")
            url = c.string(a, "vllm_url", f"{where}.vllm_url")
            c.url(url, f"{where}.vllm_url")
            url = url or vllm_url
            if not url:
                c.problems.append(f"{where}.vllm_url is empty and so is vllm_url")
            agents.append(AgentSpec(id=aid, role=arole, model=model, prompt_template=template, vllm_url=url))

    if c.problems:
        raise RequestError("; ".join(c.problems), did, tid)

    return DeliberationRequest(
        version=REQUEST_VERSION,
        deliberation_id=did,
        kind=kind,
        task_id=tid,
        task_description=description,
        role=role,
        story_id=story_id,
        plan_id=plan_id,
        timeout_seconds=timeout_seconds,
        max_retries=max_retries,
        metadata=metadata,
        vllm_url=vllm_url,
        vllm_model=vllm_model,
        agents=tuple(agents),
        agent_num_cpus=float(num_cpus),
        traceparent=traceparent,
        warnings=tuple(warnings),
    )

