"""A deliberation's outcome (domain.Outcome): each agent's result and their summary.

The executor writes DeliberationResult.to_dict as the record's `outcome` when the agents have
ended (records.finish); the Go side reads it from there.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Dict, List, Optional

RESULT_VERSION = 1

COMPLETED = "completed"
FAILED = "failed"


def iso_utc(epoch: float) -> str:
    """RFC 3339 UTC with milliseconds, e.g. 2026-01-02T03:04:05.678Z."""
    dt = datetime.fromtimestamp(epoch, tz=timezone.utc)
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def duration_ms(start: float, end: float) -> int:
    return max(0, int(round((end - start) * 1000)))


def parse_score(proposal: str) -> Optional[float]:
    """The proposal's own score: a JSON object with a numeric "score" (or else
    "confidence") in [0, 1]. None when the proposal is not such an object."""
    try:
        data = json.loads(proposal)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    for key in ("score", "confidence"):
        v = data.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if math.isfinite(v) and 0.0 <= v <= 1.0:
            return float(v)
    return None


def completed_score(proposal: str) -> float:
    s = parse_score(proposal)
    return 1.0 if s is None else s


@dataclass
class AgentResult:
    agent_id: str
    role: str
    model: str
    status: str
    proposal: str = ""
    reasoning: str = ""
    score: float = 0.0
    tokens: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    duration_ms: int = 0
    attempts: int = 0
    started_at: str = ""
    finished_at: str = ""
    error: str = ""
    error_type: str = ""

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


@dataclass
class DeliberationResult:
    deliberation_id: str
    task_id: str
    status: str
    started_at: str
    finished_at: str
    duration_ms: int
    error: str = ""
    agents: List[AgentResult] = field(default_factory=list)

    @property
    def completed_agents(self) -> int:
        return sum(1 for a in self.agents if a.status == COMPLETED)

    @property
    def failed_agents(self) -> int:
        return len(self.agents) - self.completed_agents

    def to_dict(self) -> Dict[str, Any]:
        return {
            "version": RESULT_VERSION,
            "deliberation_id": self.deliberation_id,
            "task_id": self.task_id,
            "status": self.status,
            "num_agents": len(self.agents),
            "completed_agents": self.completed_agents,
            "failed_agents": self.failed_agents,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "duration_ms": self.duration_ms,
            "error": self.error,
            "agents": [a.to_dict() for a in self.agents],
        }


def summarize(
    deliberation_id: str,
    task_id: str,
    agents: List[AgentResult],
    started: float,
    finished: float,
) -> DeliberationResult:
    """Completed when at least one agent completed; failed (with an error naming every
    agent's failure, briefly) when none did."""
    res = DeliberationResult(
        deliberation_id=deliberation_id,
        task_id=task_id,
        status=COMPLETED,
        started_at=iso_utc(started),
        finished_at=iso_utc(finished),
        duration_ms=duration_ms(started, finished),
        agents=list(agents),
    )
    if res.completed_agents == 0:
        res.status = FAILED
        reasons = "; ".join(f"{a.agent_id}: {a.error_type}: {_short(a.error, 120)}" for a in agents)
        res.error = _short(f"all {len(agents)} agents failed: {reasons}", 1000)
    return res


def _short(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
