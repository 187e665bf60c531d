"""Runs a deliberation on Ray: one task per agent, all submitted at once, collected within
the deadline.

run_agent is the body of an agent's Ray task (plain Python, testable without Ray); it never
raises, every failure becomes a failed AgentResult. run_deliberation is the driver side:
it submits the tasks, gathers their results as they arrive, and reports every task that
raised or did not return by the deadline (plus a small grace) as a failed agent, cancelling
the stragglers.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

from . import llm
from .events import EventsGuard
from .prompts import system_prompt, user_prompt
from .request import DeliberationRequest
from .result import COMPLETED, FAILED, AgentResult, completed_score, duration_ms, iso_utc

log = logging.getLogger("ray_executor_payload")

# The driver waits this long past the deadline for tasks to report their own timeout
# (which carries their attempt count) before it gives up on them.
GRACE_MIN_SECONDS = 2.0
GRACE_MAX_SECONDS = 10.0


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time of each record."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_logging() -> None:
    """Progress logs go to stderr (never stdout, which carries only the result line)."""
    if getattr(log, "_ray_executor_configured", False):
        return
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s ray_executor_payload: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    log._ray_executor_configured = True  # type: ignore[attr-defined]


def grace_seconds(timeout_seconds: int) -> float:
    return min(GRACE_MAX_SECONDS, GRACE_MIN_SECONDS + 0.05 * timeout_seconds)


@dataclass(frozen=True)
class AgentJob:
    """One agent's work, built on the driver and shipped to its Ray task."""

    agent_id: str
    role: str
    model: str
    call: llm.ChatCall
    deadline: float  # epoch seconds; the whole deliberation's deadline
    max_retries: int
    backoff_base: float = llm.BACKOFF_BASE_SECONDS
    backoff_cap: float = llm.BACKOFF_CAP_SECONDS


def plan_jobs(req: DeliberationRequest, deadline: float) -> List[AgentJob]:
    user = user_prompt(req)
    json_mode = req.task_type == "TASK_EXTRACTION"
    jobs = []
    for agent in req.agents:
        call = llm.ChatCall(
            url=llm.chat_completions_url(agent.vllm_url),
            model=agent.model,
            system_prompt=system_prompt(req, agent),
            user_prompt=user,
            json_mode=json_mode,
            traceparent=req.traceparent,
        )
        jobs.append(AgentJob(agent.id, agent.role, agent.model, call, deadline, req.max_retries))
    return jobs


def failed_agent(job: AgentJob, error_type: str, error: str, started: float, finished: float, attempts: int = 0) -> AgentResult:
    return AgentResult(
        agent_id=job.agent_id,
        role=job.role,
        model=job.model,
        status=FAILED,
        score=0.0,
        duration_ms=duration_ms(started, finished),
        attempts=attempts,
        started_at=iso_utc(started),
        finished_at=iso_utc(finished),
        error=error,
        error_type=error_type,
    )


def run_agent(job: AgentJob) -> AgentResult:
    """The body of an agent's Ray task. Never raises."""
    setup_logging()
    started = time.time()
    try:
        api_key = os.environ.get(llm.API_KEY_ENV, "")

        def on_retry(attempt: int, err: llm.LLMError, delay: float) -> None:
            log.info(
                "agent %s: attempt %d failed (%s: %s); retrying in %.1fs",
                job.agent_id, attempt, err.error_type, err.message, delay,
            )

        outcome = llm.complete(
            job.call,
            job.deadline,
            job.max_retries,
            api_key,
            backoff_base=job.backoff_base,
            backoff_cap=job.backoff_cap,
            on_retry=on_retry,
        )
        finished = time.time()
        if outcome.completion is None:
            err = outcome.error
            assert err is not None
            log.info(
                "agent %s: failed after %d attempt(s) in %dms (%s: %s)",
                job.agent_id, outcome.attempts, duration_ms(started, finished), err.error_type, err.message,
            )
            return failed_agent(job, err.error_type, err.message, started, finished, outcome.attempts)
        c = outcome.completion
        log.info(
            "agent %s: completed after %d attempt(s) in %dms (%d tokens)",
            job.agent_id, outcome.attempts, duration_ms(started, finished), c.tokens,
        )
        return AgentResult(
            agent_id=job.agent_id,
            role=job.role,
            model=job.model,
            status=COMPLETED,
            proposal=c.proposal,
            reasoning=c.reasoning,
            score=completed_score(c.proposal),
            tokens=c.tokens,
            prompt_tokens=c.prompt_tokens,
            completion_tokens=c.completion_tokens,
            duration_ms=duration_ms(started, finished),
            attempts=outcome.attempts,
            started_at=iso_utc(started),
            finished_at=iso_utc(finished),
        )
    except Exception as exc:  # noqa: BLE001 - reported, never hidden
        log.exception("agent %s: internal error", job.agent_id)
        return failed_agent(job, llm.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"[:300], started, time.time())


def _task_failure(exc: BaseException) -> str:
    """A short message for a task that raised instead of returning a result."""
    cause = getattr(exc, "cause", None)  # RayTaskError wraps the task's own exception
    shown = cause if isinstance(cause, BaseException) else exc
    text = str(shown).strip().splitlines()
    first = text[0] if text else ""
    return llm.snippet(f"agent task failed: {type(shown).__name__}: {first}", 300)


def run_deliberation(
    req: DeliberationRequest,
    started: float,
    events: EventsGuard,
    task_fn: Optional[Callable[[AgentJob], AgentResult]] = None,
) -> List[AgentResult]:
    """Runs every agent as its own Ray task, in parallel, and returns their results in
    request order. Needs a connected Ray (ray.init already called). `task_fn` replaces
    run_agent in tests."""
    import ray

    deadline = started + req.timeout_seconds
    grace = grace_seconds(req.timeout_seconds)
    give_up = deadline + grace
    jobs = plan_jobs(req, deadline)
    remote = ray.remote(max_retries=0)(task_fn or run_agent)

    index: Dict[object, int] = {}
    for i, job in enumerate(jobs):
        ref = remote.options(num_cpus=req.agent_num_cpus, name=f"agent-{job.agent_id}"[:100]).remote(job)
        index[ref] = i
    submitted = time.time()
    log.info(
        "deliberation %s: submitted %d agent task(s) (num_cpus=%g each); deadline in %.1fs",
        req.deliberation_id, len(jobs), req.agent_num_cpus, deadline - submitted,
    )

    results: Dict[int, AgentResult] = {}

    def done(i: int, res: AgentResult) -> None:
        results[i] = res
        log.info(
            "agent %s: %s in %dms%s",
            res.agent_id, res.status, res.duration_ms,
            f" ({res.error_type}: {res.error})" if res.status != COMPLETED else "",
        )
        events.on_agent_done(req, res)

    pending = list(index)
    while pending:
        wait_for = give_up - time.time()
        if wait_for <= 0:
            break
        ready, pending = ray.wait(pending, num_returns=1, timeout=wait_for)
        for ref in ready:
            i = index[ref]
            job = jobs[i]
            try:
                value = ray.get(ref, timeout=max(1.0, give_up - time.time()))
                if not isinstance(value, AgentResult):
                    raise TypeError(f"agent task returned {type(value).__name__}, not AgentResult")
                done(i, value)
            except ray.exceptions.GetTimeoutError:
                done(i, failed_agent(job, llm.TIMEOUT, "agent result could not be fetched before the deadline", submitted, time.time()))
            except Exception as exc:  # noqa: BLE001 - task raised, worker died, ...
                done(i, failed_agent(job, llm.INTERNAL, _task_failure(exc), submitted, time.time()))

    for straggler in pending:
        i = index[straggler]
        try:
            ray.cancel(straggler, force=True)
        except Exception as exc:  # noqa: BLE001 - best effort; the job ends anyway
            log.warning("agent %s: cancelling its task failed: %s", jobs[i].agent_id, exc)
        done(
            i,
            failed_agent(
                jobs[i],
                llm.TIMEOUT,
                f"no result by the deadline (timeout_seconds={req.timeout_seconds} plus {grace:g}s grace); "
                "the agent task was still pending or running and was cancelled",
                submitted,
                time.time(),
            ),
        )
    return [results[i] for i in range(len(jobs))]
