"""A deliberation's agents: the work of each (AgentJob, planned from the request), the
failed result of one that could not run, the grace past the deadline, and the payload's log.

The executor runs the jobs concurrently with asyncio (allm.run_agent).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import List

from . import llm
from .prompts import system_prompt, user_prompt
from .request import DeliberationRequest
from .result import FAILED, AgentResult, duration_ms, iso_utc

log = logging.getLogger("ray_executor_payload")

# The executor waits this long past the deadline for agents to report their own timeout
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
    """Progress logs go to stderr, each line prefixed with the payload's name."""
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
    """One agent's work, planned from the request."""

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
