"""The LLM path of the standing executor, in asyncio over aiohttp.

Same request body, headers, parsing, error types and messages as llm.py's post_chat, whose
pure helpers it reuses; complete adds the retry rules (connection errors, timeouts, HTTP 429
and 5xx; exponential backoff with jitter, Retry-After honoured) and never goes past the
deadline. One aiohttp session per process, created lazily in the running event loop.
Redirects are never followed, environment proxies never honoured, and only http/https URLs
are called.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import ssl
import time
import urllib.parse
from typing import Any, Callable, Optional

from . import llm, telemetry
from .agents import AgentJob, failed_agent, log
from .result import COMPLETED, AgentResult, completed_score, duration_ms, iso_utc

_session: Any = None
_session_loop: Optional[asyncio.AbstractEventLoop] = None


async def session() -> Any:
    """The process's aiohttp session (one per event loop)."""
    import aiohttp

    global _session, _session_loop
    loop = asyncio.get_running_loop()
    if _session is None or _session.closed or _session_loop is not loop:
        _session = aiohttp.ClientSession(
            trust_env=False,
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=60),
            headers={"User-Agent": llm.USER_AGENT},
        )
        _session_loop = loop
    return _session


async def close_session() -> None:
    global _session
    if _session is not None and not _session.closed:
        await _session.close()
    _session = None


async def post_chat(call: llm.ChatCall, deadline: float, api_key: str = "",
                    clock: Callable[[], float] = time.time, *, attempt: int = 1,
                    tel: telemetry.Telemetry = telemetry.OFF) -> llm.Completion:
    """One HTTP attempt, bounded by the time left until deadline (epoch seconds), in a
    CLIENT span of its own when telemetry is on: the request's traceparent is then that
    span's, else the call's (the caller's, as it came)."""
    parts = urllib.parse.urlsplit(call.url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise llm.LLMError(llm.INTERNAL, f"refusing to call a non-http(s) URL {call.url[:100]!r}")
    try:
        port = parts.port
    except ValueError:
        port = None
    with tel.llm_attempt(call.model, attempt, parts.hostname, port) as a:
        try:
            return await _post_chat(call, parts.hostname, deadline, api_key, clock, a)
        except llm.LLMError as exc:
            a.error_type = exc.error_type
            raise
        except asyncio.CancelledError:
            a.error_type = "cancelled"
            raise
        except Exception:
            a.error_type = llm.INTERNAL
            raise


async def _post_chat(call: llm.ChatCall, host: str, deadline: float, api_key: str,
                     clock: Callable[[], float], a: telemetry.Attempt) -> llm.Completion:
    import aiohttp

    started = clock()
    remaining = deadline - started
    if remaining <= 0:
        raise llm.LLMError(llm.TIMEOUT, "timed out after 0.0s calling %s (deadline reached)" % host, retryable=True)
    body = json.dumps(llm.request_body(call)).encode("utf-8")
    headers = llm.request_headers(call, api_key)
    if a.traceparent:
        headers["traceparent"] = a.traceparent
    s = await session()
    try:
        async with asyncio.timeout(remaining):
            async with s.post(call.url, data=body, headers=headers, allow_redirects=False) as resp:
                raw = await resp.content.read(llm.MAX_RESPONSE_BYTES + 1)
                if len(raw) > llm.MAX_RESPONSE_BYTES:
                    raise llm.LLMError(llm.INVALID_RESPONSE,
                                       f"response from {host} is larger than {llm.MAX_RESPONSE_BYTES} bytes")
                status = a.status = resp.status
                retry_after_header = resp.headers.get("Retry-After")
    except llm.LLMError:
        raise
    except (asyncio.TimeoutError, TimeoutError):
        raise llm.LLMError(llm.TIMEOUT, f"timed out after {clock() - started:.1f}s calling {host} (deadline reached)",
                           retryable=True) from None
    except aiohttp.ClientConnectorCertificateError as exc:
        raise llm.LLMError(llm.CONNECTION_ERROR, f"TLS certificate of {host} rejected: {exc}") from None
    except ssl.SSLCertVerificationError as exc:
        raise llm.LLMError(llm.CONNECTION_ERROR, f"TLS certificate of {host} rejected: {exc.verify_message}") from None
    except (aiohttp.ClientError, OSError) as exc:
        detail = str(exc) or type(exc).__name__
        raise llm.LLMError(llm.CONNECTION_ERROR, f"cannot reach {host}: {llm.snippet(detail)}", retryable=True) from None
    if status < 200 or status > 299:
        retryable = status == 429 or 500 <= status <= 599
        raise llm.LLMError(
            llm.HTTP_ERROR,
            f"HTTP {status} from {host}: {llm._error_detail(raw, (api_key,))}",
            retryable=retryable,
            retry_after=llm._retry_after(retry_after_header) if retryable else 0.0,
        )
    try:
        data = json.loads(raw)
    except ValueError:
        raise llm.LLMError(
            llm.INVALID_RESPONSE,
            f"response from {host} is not JSON: "
            f"{llm.snippet(raw[:1024].decode('utf-8', errors='replace'), secrets=(api_key,))}",
        ) from None
    return llm.parse_completion(data)


async def complete(
    call: llm.ChatCall,
    deadline: float,
    max_retries: int,
    api_key: str = "",
    *,
    backoff_base: float = llm.BACKOFF_BASE_SECONDS,
    backoff_cap: float = llm.BACKOFF_CAP_SECONDS,
    clock: Callable[[], float] = time.time,
    rng: Callable[[], float] = random.random,
    on_retry: Optional[Callable[[int, llm.LLMError, float], None]] = None,
    tel: telemetry.Telemetry = telemetry.OFF,
) -> llm.CallOutcome:
    """Up to 1 + max_retries attempts. Only retryable failures (connection errors, timeouts,
    HTTP 429 and 5xx) are retried, with backoff, and never past the deadline."""
    attempts = 0
    last: Optional[llm.LLMError] = None
    for attempt in range(1, max_retries + 2):
        if deadline - clock() <= 0:
            if last is None:
                last = llm.LLMError(llm.TIMEOUT, "deadline reached before the first attempt")
            break
        attempts += 1
        try:
            return llm.CallOutcome(await post_chat(call, deadline, api_key, clock, attempt=attempt, tel=tel), None, attempts)
        except llm.LLMError as exc:
            last = exc
        if not last.retryable or attempt > max_retries:
            break
        delay = max(llm.backoff_delay(attempt, backoff_base, backoff_cap, rng), last.retry_after)
        if clock() + delay >= deadline:
            if last.error_type != llm.TIMEOUT:
                last.message += " (no time left to retry before the deadline)"
            break
        if on_retry is not None:
            on_retry(attempt, last, delay)
        await asyncio.sleep(delay)
    assert last is not None
    return llm.CallOutcome(None, last, attempts)


async def run_agent(job: AgentJob, deliberation_id: str = "", tel: telemetry.Telemetry = telemetry.OFF) -> AgentResult:
    """One agent's LLM call, as an AgentResult. Never raises (cancellation aside): every
    failure becomes a failed AgentResult."""
    started = time.time()
    try:
        api_key = llm.api_key_for(job.call.url, os.environ)  # bound to its endpoints only

        def on_retry(attempt: int, err: llm.LLMError, delay: float) -> None:
            log.info("deliberation %s agent %s: attempt %d failed (%s: %s); retrying in %.1fs",
                     deliberation_id, job.agent_id, attempt, err.error_type, err.message, delay)

        outcome = await complete(job.call, job.deadline, job.max_retries, api_key,
                                 backoff_base=job.backoff_base, backoff_cap=job.backoff_cap, on_retry=on_retry, tel=tel)
        finished = time.time()
        if outcome.completion is None:
            err = outcome.error
            assert err is not None
            return failed_agent(job, err.error_type, err.message, started, finished, outcome.attempts)
        c = outcome.completion
        return AgentResult(
            agent_id=job.agent_id, role=job.role, model=job.model, status=COMPLETED,
            proposal=c.proposal, reasoning=c.reasoning, score=completed_score(c.proposal),
            tokens=c.tokens, prompt_tokens=c.prompt_tokens, completion_tokens=c.completion_tokens,
            duration_ms=duration_ms(started, finished), attempts=outcome.attempts,
            started_at=iso_utc(started), finished_at=iso_utc(finished),
        )
    except Exception as exc:  # noqa: BLE001 - reported, never hidden
        log.exception("deliberation %s agent %s: internal error", deliberation_id, job.agent_id)
        return failed_agent(job, llm.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"[:300], started, time.time())
