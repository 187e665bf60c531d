"""The outcome the executor writes to a deliberation's record (DeliberationResult.to_dict)."""

import json
from datetime import datetime

import pytest

from helpers import NASTY_DESCRIPTION
from ray_executor_payload import records
from ray_executor_payload.result import AgentResult, parse_score, summarize

AGENT_KEYS = {
    "agent_id", "role", "model", "status", "proposal", "reasoning", "score", "tokens", "prompt_tokens",
    "completion_tokens", "duration_ms", "attempts", "started_at", "finished_at", "error", "error_type",
}
TOP_KEYS = {
    "version", "deliberation_id", "task_id", "status", "num_agents", "completed_agents", "failed_agents",
    "started_at", "finished_at", "duration_ms", "error", "agents",
}


@pytest.mark.parametrize(
    "proposal, score",
    [
        ('{"score": 0.8, "text": "x"}', 0.8),
        ('{"confidence": 0.3}', 0.3),
        ('  {"score": 1}  ', 1.0),
        ('{"score": 0}', 0.0),
        ('{"score": 7, "confidence": 0.6}', 0.6),  # out-of-range score, valid confidence
        ('{"score": 1.5}', None),
        ('{"score": -0.1}', None),
        ('{"score": "0.9"}', None),
        ('{"score": true}', None),
        ('{"score": NaN}', None),
        ("[0.5]", None),
        ("score: 0.9", None),
        ("", None),
    ],
)
def test_parse_score(proposal, score):
    assert parse_score(proposal) == score


def agent_result(agent_id, status, **kw):
    return AgentResult(agent_id=agent_id, role="dev", model="m", status=status, **kw)


def test_summarize_completed_when_any_agent_completed():
    res = summarize("d", "t", [agent_result("a", "failed", error="x", error_type="timeout"), agent_result("b", "completed", score=1.0)], 1000.0, 1002.5)
    d = res.to_dict()
    assert (d["status"], d["num_agents"], d["completed_agents"], d["failed_agents"]) == ("completed", 2, 1, 1)
    assert d["error"] == ""
    assert d["duration_ms"] == 2500
    assert d["started_at"] == "1970-01-01T00:16:40.000Z"
    assert [a["agent_id"] for a in d["agents"]] == ["a", "b"]


def test_summarize_failed_when_every_agent_failed():
    agents = [
        agent_result("a", "failed", error="HTTP 500 from h: boom", error_type="http_error"),
        agent_result("b", "failed", error="timed out", error_type="timeout"),
    ]
    d = summarize("d", "t", agents, 0, 1).to_dict()
    assert d["status"] == "failed"
    assert d["error"] == "all 2 agents failed: a: http_error: HTTP 500 from h: boom; b: timeout: timed out"


def test_the_outcome_survives_the_record_with_every_field():
    tricky = NASTY_DESCRIPTION + "\r\n\u0085\u2028 \x1c end \ud800"
    agents = [agent_result("a1", "completed", proposal=tricky, reasoning="r\nr", score=0.5, tokens=3)]
    rec = records.finish(records.new_record("d-1", task_id="t-1"), summarize("d-1", "t-1", agents, 0, 1).to_dict(), 2)
    raw = records.encode(rec)
    assert raw.isascii()  # a lone surrogate from an LLM does not break the write
    d = records.decode(raw, "d.d-1")["outcome"]
    assert set(d) == TOP_KEYS
    assert set(d["agents"][0]) == AGENT_KEYS
    assert d["agents"][0]["proposal"] == tricky
    assert d["version"] == 1
    assert isinstance(d["agents"][0]["score"], float)
    datetime.fromisoformat(d["started_at"].replace("Z", "+00:00"))
    assert json.loads(raw)["state"] == "completed"
