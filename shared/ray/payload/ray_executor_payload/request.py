"""The deliberation request: loading and validation.

The Go gateway (shared/ray/deliberation.go, DeliberationJob) writes the request as JSON
(PayloadRequest) into a package of its own, which the job names in runtime_env.py_modules:
a Python package ray_executor_request_<16 hex digits> holding request.json, the digits being
the first 16 of the file's SHA-256. Ray unpacks it on each node and puts it on the job's
PYTHONPATH; RAY_EXECUTOR_REQUEST_MODULE names the module. The request never travels in an
environment variable (Ray's workers cannot start with one over 128 KiB, and Ray expands $NAME
in them) nor on the command line. The Go side already validated it, but the payload checks
again everything it relies on, so that a bad request fails fast with a clear message (exit
code 2) instead of half-running.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import math
import os
import re
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Tuple

REQUEST_MODULE_ENV = "RAY_EXECUTOR_REQUEST_MODULE"
REQUEST_MODULE_PREFIX = "ray_executor_request_"
REQUEST_FILE = "request.json"
REQUEST_VERSION = 1
KINDS = ("deliberation", "backlog_review")

# The request module's name: the prefix and the first 16 hex digits of request.json's SHA-256.
_MODULE_RE = re.compile(r"^" + REQUEST_MODULE_PREFIX + r"([0-9a-f]{16})$")

# W3C trace context, version 00 style: 2-32-16-2 lowercase hex digits.
_TRACEPARENT_RE = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")


class RequestError(ValueError):
    """The request is missing or malformed. Carries what could still be read of the ids,
    so the failed result line can name the deliberation when possible."""

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


def request_module_name(request_json: bytes) -> str:
    """The module name the gateway gives a request: the prefix and the first 16 hex digits
    of the JSON's SHA-256 (ray.RequestPackage)."""
    return REQUEST_MODULE_PREFIX + hashlib.sha256(request_json).hexdigest()[:16]


def load_request(environ: Mapping[str, str]) -> DeliberationRequest:
    """Reads and validates the request from the module RAY_EXECUTOR_REQUEST_MODULE names."""
    raw = read_request_file(environ)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(f"{REQUEST_FILE} is not valid UTF-8: {exc}") from None
    return parse_request(text)


def read_request_file(environ: Mapping[str, str]) -> bytes:
    """The bytes of request.json in the request module, checked against the module's name.
    The module is located on sys.path (where Ray's py_modules put it), never imported: no
    code of it runs."""
    name = environ.get(REQUEST_MODULE_ENV)
    if name is None:
        raise RequestError(f"environment variable {REQUEST_MODULE_ENV} is not set")
    name = name.strip()
    if not name:
        raise RequestError(f"environment variable {REQUEST_MODULE_ENV} is empty")
    m = _MODULE_RE.match(name)
    if m is None:
        raise RequestError(f"{REQUEST_MODULE_ENV} must be {REQUEST_MODULE_PREFIX}<16 hex digits>, got {name[:100]!r}")
    importlib.invalidate_caches()
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError) as exc:
        spec = None
        why = f": {exc}"
    else:
        why = ""
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise RequestError(
            f"request module {name} is not on the Python path{why}: the job's runtime_env.py_modules must name its package"
        )
    path = os.path.join(locations[0], REQUEST_FILE)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise RequestError(f"cannot read {REQUEST_FILE} of request module {name}: {exc.strerror or exc}") from None
    if hashlib.sha256(raw).hexdigest()[:16] != m.group(1):
        raise RequestError(f"{REQUEST_FILE} of request module {name} does not hash to the name of its module: it is not the request the gateway sent")
    return raw


def parse_request(raw: str) -> DeliberationRequest:
    """Parses and validates the request JSON (the text of request.json)."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise RequestError(f"{REQUEST_FILE} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise RequestError(f"{REQUEST_FILE} must be a JSON object, got {_json_type(data)}")
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

