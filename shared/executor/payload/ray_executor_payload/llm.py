"""OpenAI-compatible chat completions client (vLLM), standard library only.

It uses http.client directly rather than urllib.request so that every socket operation is
bounded by the time left until the deliberation deadline (the timeout is re-armed before
each read), redirects are never followed (a POST carrying an Authorization header must not
wander to another host), and only http/https URLs can ever be opened. Environment proxy
settings (http_proxy, ...) are deliberately not honoured: the endpoints are in-cluster.
"""

from __future__ import annotations

import http.client
import json
import random
import re
import socket
import ssl
import time
import unicodedata
import urllib.parse
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

API_KEY_ENV = "RAY_EXECUTOR_LLM_API_KEY"
# The endpoints (comma-separated URL prefixes) the key is sent to; to any other, none is.
API_KEY_ENDPOINTS_ENV = "RAY_EXECUTOR_LLM_API_KEY_ENDPOINTS"
USER_AGENT = "ray-executor-payload/1"

DEFAULT_TEMPERATURE = 0.7
JSON_MODE_TEMPERATURE = 0  # TASK_EXTRACTION: deterministic JSON
DEFAULT_MAX_TOKENS = 2048
MAX_RESPONSE_BYTES = 8 << 20  # a completion of 2048 tokens is far smaller
SNIPPET_CHARS = 200
BACKOFF_BASE_SECONDS = 0.5
BACKOFF_CAP_SECONDS = 10.0
RETRY_AFTER_CAP_SECONDS = 60.0

# error_type values of a failed agent (AgentResult.error_type, in the record's outcome).
TIMEOUT = "timeout"
HTTP_ERROR = "http_error"
CONNECTION_ERROR = "connection_error"
INVALID_RESPONSE = "invalid_response"
INTERNAL = "internal"


class LLMError(Exception):
    def __init__(self, error_type: str, message: str, retryable: bool = False, retry_after: float = 0.0):
        super().__init__(message)
        self.error_type = error_type
        self.message = message
        self.retryable = retryable
        self.retry_after = retry_after


@dataclass(frozen=True)
class ChatCall:
    """Everything one agent's LLM call needs, planned from the request (agents.plan_jobs)."""

    url: str  # the full chat completions URL (see chat_completions_url)
    model: str
    system_prompt: str
    user_prompt: str
    json_mode: bool = False  # TASK_EXTRACTION: temperature 0 and a JSON object response
    traceparent: str = ""


@dataclass(frozen=True)
class Completion:
    proposal: str
    reasoning: str
    tokens: int
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class CallOutcome:
    completion: Optional[Completion]
    error: Optional[LLMError]
    attempts: int


def chat_completions_url(base: str) -> str:
    """{base}/v1/chat/completions, without doubling a trailing slash or a trailing /v1."""
    parts = urllib.parse.urlsplit(base.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"not an absolute http(s) URL: {base[:100]!r}")
    path = parts.path.rstrip("/")
    if not path.endswith("/v1"):
        path += "/v1"
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path + "/chat/completions", parts.query, ""))


def temperature(json_mode: bool) -> float:
    """The sampling temperature of a call (also reported in the compatible agent responses)."""
    return JSON_MODE_TEMPERATURE if json_mode else DEFAULT_TEMPERATURE


def request_body(call: ChatCall) -> Dict[str, Any]:
    body: Dict[str, Any] = {
        "model": call.model,
        "messages": [
            {"role": "system", "content": call.system_prompt},
            {"role": "user", "content": call.user_prompt},
        ],
        "temperature": temperature(call.json_mode),
        "max_tokens": DEFAULT_MAX_TOKENS,
    }
    if call.json_mode:
        body["response_format"] = {"type": "json_object"}
    return body


def _plain_path(raw: str) -> bool:
    lower = raw.lower()
    if any(bad in lower for bad in ("%2e", "%2f", "%5c", "\\", ";")):
        return False
    return all(seg not in (".", "..") for seg in raw.split("/"))


def key_bound_to(url: str, entries: str) -> bool:
    """Whether url is one of the endpoints the LLM key is bound to: entries are URL
    prefixes (scheme, host and port must match, an entry without a port meaning the
    scheme's default one; the raw
    path must start with the entry's on a segment boundary and be plain: no dot segments,
    encoded slashes, backslashes or ';'). A wildcard entry binds nothing: the cluster's key
    never goes to a host a caller picked."""
    try:
        u = urllib.parse.urlsplit(url)
    except ValueError:
        return False
    for raw in entries.split(","):
        raw = raw.strip()
        if not raw or "*" in raw:
            continue
        try:
            e = urllib.parse.urlsplit(raw)
            eport, uport = e.port, u.port
        except ValueError:
            continue
        if e.scheme != u.scheme or not e.hostname or (e.hostname or "").lower() != (u.hostname or "").lower():
            continue
        default = 443 if u.scheme == "https" else 80
        if (eport or default) != (uport or default):  # stricter than the allowlist: no port is the default one
            continue
        prefix = e.path.rstrip("/")
        if not prefix:
            return True
        if _plain_path(u.path) and (u.path == prefix or u.path.startswith(prefix + "/")):
            return True
    return False


def api_key_for(url: str, environ: Any) -> str:
    """The LLM key to send to url: RAY_EXECUTOR_LLM_API_KEY when url is one of
    RAY_EXECUTOR_LLM_API_KEY_ENDPOINTS, else none."""
    key = str(environ.get(API_KEY_ENV, "") or "")
    if key and key_bound_to(url, str(environ.get(API_KEY_ENDPOINTS_ENV, "") or "")):
        return key
    return ""


def request_headers(call: ChatCall, api_key: str) -> Dict[str, str]:
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json",
        "User-Agent": USER_AGENT,
    }
    if api_key:
        headers["Authorization"] = "Bearer " + api_key
    if call.traceparent:
        headers["traceparent"] = call.traceparent
    return headers


# Credential-shaped text in what an upstream says, redacted before it reaches a record, an
# event or a log: a bearer token, an OpenAI-style key, and `key=value` / "key": "value"
# pairs of secret-sounding names.
_CREDENTIALS = (
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}"), r"\1 [redacted]"),
    (re.compile(r"\bsk-[A-Za-z0-9_-]{8,}"), "[redacted]"),
    (re.compile(r"""(?i)\b((?:api[_-]?key|access[_-]?token|token|password|secret)["']?\s*[:=]\s*["']?)[^\s"',;}&]+"""),
     r"\1[redacted]"),
)


def snippet(text: str, limit: int = SNIPPET_CHARS, secrets: Tuple[str, ...] = ()) -> str:
    """A short, single-line, printable excerpt of text that an upstream or a caller wrote,
    for a record or a log: white space collapsed, control and format characters (terminal
    escapes, bidi overrides) replaced by '?', credentials and the given secrets redacted,
    then cut to `limit` characters."""
    one_line = " ".join(text.split())
    one_line = "".join("?" if unicodedata.category(c).startswith("C") else c for c in one_line)
    for secret in secrets:
        if len(secret) >= 4:
            one_line = one_line.replace(secret, "[redacted]")
    for pattern, repl in _CREDENTIALS:
        one_line = pattern.sub(repl, one_line)
    return one_line if len(one_line) <= limit else one_line[: limit - 3] + "..."


def _error_detail(raw: bytes, secrets: Tuple[str, ...] = ()) -> str:
    """A short readable detail of an error body: the message of an OpenAI/vLLM style JSON
    error when there is one, else the start of the body; sanitised (snippet)."""
    text = raw[:4096].decode("utf-8", errors="replace")
    try:
        data = json.loads(raw)
    except ValueError:
        return snippet(text, secrets=secrets)
    if isinstance(data, dict):
        err = data.get("error")
        for candidate in (
            err.get("message") if isinstance(err, dict) else err,
            data.get("message"),
            data.get("detail"),
        ):
            if isinstance(candidate, str) and candidate.strip():
                return snippet(candidate, secrets=secrets)
    return snippet(text, secrets=secrets)


def _retry_after(value: Optional[str]) -> float:
    try:
        seconds = float(value or "")
    except ValueError:
        return 0.0  # HTTP-date form: ignored, the exponential backoff applies
    return min(max(seconds, 0.0), RETRY_AFTER_CAP_SECONDS)


def split_reasoning(message: Dict[str, Any], content: str) -> Tuple[str, str]:
    """(proposal, reasoning): reasoning_content / reasoning when the server separated it,
    else a leading <think>...</think> block moved out of the content."""
    for key in ("reasoning_content", "reasoning"):
        value = message.get(key)
        if isinstance(value, str) and value.strip():
            return content.strip(), value.strip()
    stripped = content.lstrip()
    if stripped.startswith("<think>"):
        end = stripped.find("</think>")
        if end >= 0:
            reasoning = stripped[len("<think>") : end]
            return stripped[end + len("</think>") :].strip(), reasoning.strip()
    return content.strip(), ""


def _count(usage: Dict[str, Any], key: str) -> int:
    v = usage.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or v < 0:
        return 0
    return int(v)


def parse_completion(data: Any) -> Completion:
    if not isinstance(data, dict):
        raise LLMError(INVALID_RESPONSE, "response is not a JSON object")
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise LLMError(INVALID_RESPONSE, "response has no choices")
    message = choices[0].get("message")
    if not isinstance(message, dict):
        raise LLMError(INVALID_RESPONSE, "response choice has no message")
    content = message.get("content")
    if content is None:
        content = ""
    elif isinstance(content, list):  # content parts: keep the text ones
        content = "".join(
            p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    elif not isinstance(content, str):
        raise LLMError(INVALID_RESPONSE, "response message content is not a string")
    proposal, reasoning = split_reasoning(message, content)
    if not proposal:
        finish = choices[0].get("finish_reason")
        raise LLMError(INVALID_RESPONSE, f"response has an empty completion (finish_reason={finish!r})")
    usage = data.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    prompt_tokens = _count(usage, "prompt_tokens")
    completion_tokens = _count(usage, "completion_tokens")
    tokens = _count(usage, "total_tokens") or prompt_tokens + completion_tokens
    return Completion(proposal, reasoning, tokens, prompt_tokens, completion_tokens)


class _Deadline:
    def __init__(self, deadline: float, clock: Callable[[], float]):
        self.deadline = deadline
        self.clock = clock

    def remaining(self) -> float:
        left = self.deadline - self.clock()
        if left <= 0:
            raise LLMError(TIMEOUT, "deadline exceeded", retryable=True)
        return left


def post_chat(
    call: ChatCall,
    deadline: float,
    api_key: str = "",
    clock: Callable[[], float] = time.time,
) -> Completion:
    """One HTTP attempt. Every socket operation is bounded by the time left until deadline
    (an epoch timestamp). Raises LLMError."""
    parts = urllib.parse.urlsplit(call.url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise LLMError(INTERNAL, f"refusing to call a non-http(s) URL {call.url[:100]!r}")
    host = parts.hostname
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    body = json.dumps(request_body(call)).encode("utf-8")
    headers = request_headers(call, api_key)
    dl = _Deadline(deadline, clock)
    started = clock()
    conn: Optional[http.client.HTTPConnection] = None
    try:
        if parts.scheme == "https":
            conn = http.client.HTTPSConnection(host, parts.port, timeout=dl.remaining())
        else:
            conn = http.client.HTTPConnection(host, parts.port, timeout=dl.remaining())
        conn.request("POST", path, body=body, headers=headers)
        sock = conn.sock
        if sock is not None:
            sock.settimeout(dl.remaining())
        resp = conn.getresponse()
        chunks = []
        size = 0
        while not resp.isclosed():  # the response closes itself once the body is read
            if sock is not None:
                sock.settimeout(dl.remaining())
            chunk = resp.read(65536)
            if not chunk:
                break
            size += len(chunk)
            if size > MAX_RESPONSE_BYTES:
                raise LLMError(INVALID_RESPONSE, f"response from {host} is larger than {MAX_RESPONSE_BYTES} bytes")
            chunks.append(chunk)
        raw = b"".join(chunks)
        status = resp.status
        if status < 200 or status > 299:
            retryable = status == 429 or 500 <= status <= 599
            raise LLMError(
                HTTP_ERROR,
                f"HTTP {status} from {host}: {_error_detail(raw, (api_key,))}",
                retryable=retryable,
                retry_after=_retry_after(resp.getheader("Retry-After")) if retryable else 0.0,
            )
        try:
            data = json.loads(raw)
        except ValueError:
            raise LLMError(
                INVALID_RESPONSE,
                f"response from {host} is not JSON: "
                f"{snippet(raw[:1024].decode('utf-8', errors='replace'), secrets=(api_key,))}",
            ) from None
        return parse_completion(data)
    except LLMError as exc:
        if exc.error_type == TIMEOUT:
            exc.message = f"timed out after {clock() - started:.1f}s calling {host} (deadline reached)"
            exc.args = (exc.message,)
        raise
    except (socket.timeout, TimeoutError):
        raise LLMError(TIMEOUT, f"timed out after {clock() - started:.1f}s calling {host}", retryable=True) from None
    except ssl.SSLCertVerificationError as exc:
        raise LLMError(CONNECTION_ERROR, f"TLS certificate of {host} rejected: {exc.verify_message}") from None
    except (OSError, http.client.HTTPException) as exc:
        detail = str(exc) or type(exc).__name__
        raise LLMError(CONNECTION_ERROR, f"cannot reach {host}: {snippet(detail)}", retryable=True) from None
    finally:
        if conn is not None:
            conn.close()


def backoff_delay(
    attempt: int,
    base: float = BACKOFF_BASE_SECONDS,
    cap: float = BACKOFF_CAP_SECONDS,
    rng: Callable[[], float] = random.random,
) -> float:
    """Exponential backoff with jitter after the given (1-based) failed attempt: a random
    delay between half and all of min(cap, base * 2**(attempt-1))."""
    delay = min(cap, base * (2 ** (attempt - 1)))
    return delay / 2 + rng() * delay / 2
