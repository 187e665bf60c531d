"""The messages the executor publishes besides the terminal event (specs/nats.md): the
started and per-agent lifecycle CloudEvents and the compatible agent.response.* envelopes,
built by nats_events from the request and the agents' results; and the NATS settings.

The builders are pure and tested as such; one test stores the messages on the real NATS
server (nats_server fixture, conftest.py) to check their subjects reach the streams and
their Nats-Msg-Ids de-duplicate a second publish.
"""

import hashlib
import json
import re
import time
import uuid
from datetime import datetime, timezone

import pytest

from helpers import agent, request
from ray_executor_payload import nats_events
from ray_executor_payload.result import AgentResult, iso_utc

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
CE_TYPE = "fleet.ray_executor.v1.deliberation."
ISO_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
T0 = 1_800_000_000.0


def new_id(prefix="delib"):
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


def done(agent_id, role, model, proposal, reasoning="", score=1.0, tokens=18, duration_ms=1234, attempts=1, at=T0):
    return AgentResult(
        agent_id=agent_id, role=role, model=model, status="completed", proposal=proposal, reasoning=reasoning,
        score=score, tokens=tokens, prompt_tokens=11, completion_tokens=tokens - 11, duration_ms=duration_ms,
        attempts=attempts, started_at=iso_utc(at), finished_at=iso_utc(at + duration_ms / 1000),
    )


def fail(agent_id, role, model, error_type="http_error", error="HTTP 500 from vllm: GPU on fire", duration_ms=800, attempts=3, at=T0):
    return AgentResult(
        agent_id=agent_id, role=role, model=model, status="failed", duration_ms=duration_ms, attempts=attempts,
        started_at=iso_utc(at), finished_at=iso_utc(at + duration_ms / 1000), error=error, error_type=error_type,
    )


def run_messages(req, in_completion_order):
    """What the executor publishes for a run, in order: the started event, then each agent's
    messages as it ends (its index is its place in the request)."""
    index = {spec.id: i for i, spec in enumerate(req.agents)}
    out = [nats_events.lifecycle_event(req, nats_events.STARTED, nats_events.started_data(req))]
    for a in in_completion_order:
        out.extend(nats_events.agent_messages(req, index[a.agent_id], a))
    return out


def body(m):
    return json.loads(m.body)


def key(event_type, did, agent_id):
    return hashlib.sha256(f"{event_type}:{did}:{agent_id}".encode()).hexdigest()


def epoch(ts):
    return datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()


def recent(ts, slack=120):
    return abs(time.time() - epoch(ts)) < slack


def three_agent_request(did, **overrides):
    agents = [agent("arch-1", "m-arch", role="architect"), agent("dev-1", "m-dev", role="dev"), agent("qa-1", "m-qa", role="qa")]
    return request(agents=agents, deliberation_id=did, traceparent=TRACEPARENT, **overrides)


# --- lifecycle events --------------------------------------------------------------------


def test_lifecycle_events_of_a_three_agent_run():
    did = new_id()
    req = three_agent_request(did)
    arch = done("arch-1", "architect", "m-arch", '{"proposal": "LRU", "score": 0.25}', reasoning="weighed it", score=0.25, tokens=40)
    dev = done("dev-1", "dev", "m-dev", "Use a write-through cache.", tokens=18, duration_ms=900)
    qa = fail("qa-1", "qa", "m-qa")
    before = time.time()
    messages = run_messages(req, [dev, qa, arch])  # completion order

    base = f"ray_executor.deliberation.{did}."
    # Each agent's lifecycle event, then its compatible response.
    assert [(m.subject, m.msg_id) for m in messages] == [
        (base + "started", f"{did}.started"),
        (base + "agent_completed", f"{did}.agent.1"),
        ("agent.response.completed", key("agent.response.completed", did, "dev-1")),
        (base + "agent_failed", f"{did}.agent.2"),
        ("agent.response.failed", key("agent.response.failed", did, "qa-1")),
        (base + "agent_completed", f"{did}.agent.0"),
        ("agent.response.completed", key("agent.response.completed", did, "arch-1")),
    ]
    lifecycle = [m for m in messages if m.subject.startswith(base)]
    kinds = ["started", "agent_completed", "agent_failed", "agent_completed"]
    for m, kind in zip(lifecycle, kinds):
        assert m.headers() == {"Nats-Msg-Id": m.msg_id, "Content-Type": "application/cloudevents+json"}
        assert m.body.isascii()
        ce = body(m)
        assert set(ce) == {"specversion", "id", "source", "type", "subject", "time", "datacontenttype", "traceparent", "data"}
        assert ce["specversion"] == "1.0"
        assert ce["id"] == m.msg_id
        assert ce["source"] == "ray-executor/payload"
        assert ce["type"] == CE_TYPE + kind
        assert ce["subject"] == did
        assert ce["datacontenttype"] == "application/json"
        assert ce["traceparent"] == TRACEPARENT
        assert ISO_RE.match(ce["time"]) and recent(ce["time"])
    assert before - 0.01 <= epoch(body(lifecycle[0])["time"]) <= epoch(body(lifecycle[-1])["time"]) <= time.time()

    data = [body(m)["data"] for m in lifecycle]
    common = {"deliberation_id": did, "task_id": "task-42"}
    assert data[0] == {**common, "num_agents": 3}
    assert data[1] == {
        **common, "agent_index": 1, "agent_id": "dev-1", "role": "dev", "model": "m-dev",
        "proposal": "Use a write-through cache.", "score": 1.0, "tokens": 18, "duration_ms": 900, "attempts": 1,
    }
    assert data[2] == {
        **common, "agent_index": 2, "agent_id": "qa-1", "role": "qa", "model": "m-qa",
        "error": "HTTP 500 from vllm: GPU on fire", "error_type": "http_error", "duration_ms": 800, "attempts": 3,
    }
    assert data[3] == {
        **common, "agent_index": 0, "agent_id": "arch-1", "role": "architect", "model": "m-arch",
        "proposal": '{"proposal": "LRU", "score": 0.25}', "reasoning": "weighed it", "score": 0.25, "tokens": 40,
        "duration_ms": 1234, "attempts": 1,
    }


def test_no_traceparent_no_extension():
    did = new_id()
    req = request(agents=[agent("a1", "m")], deliberation_id=did)
    started, event, response = run_messages(req, [done("a1", "dev", "m", "p")])
    assert "traceparent" not in body(started) and "traceparent" not in body(event)
    assert body(response)["metadata"] == {"deliberation_id": did, "task_type": ""}


def test_subject_tokens():
    assert nats_events.valid_subject_token("delib-" + "a" * 100)
    for bad in ("bad.id", "a*", "a>", "a b", "", "-lead", "x" * 129):
        assert not nats_events.valid_subject_token(bad), bad


# --- compatible agent responses ----------------------------------------------------------


@pytest.mark.parametrize(
    "task_type, subject",
    [
        (None, "agent.response.completed"),
        ("BACKLOG_REVIEW_ROLE", "agent.response.completed.backlog-review.role"),
        ("TASK_EXTRACTION", "agent.response.completed.task-extraction"),
    ],
)
def test_compatible_responses_by_task_type(task_type, subject):
    did = new_id()
    metadata = {"priority": "high", "task_id": "meta-task-9"}
    if task_type:
        metadata["task_type"] = task_type
    if task_type == "TASK_EXTRACTION":
        metadata.update({"story_id": "meta-story-1", "ceremony_id": "cer-5"})
    req = three_agent_request(did, metadata=metadata)
    tasks = [{"title": "Add the cache", "description": "write-through"}, {"title": "Test it"}]
    results = [
        done("arch-1", "architect", "m-arch", json.dumps({"tasks": tasks}), reasoning="thought", tokens=40, duration_ms=1500),
        done("dev-1", "dev", "m-dev", "not JSON at all", tokens=18, duration_ms=900),
        done("qa-1", "qa", "m-qa", '{"tasks": "none"}', tokens=20, duration_ms=700),
    ]
    responses = [m for m in run_messages(req, results) if m.subject.startswith("agent.response.")]
    assert [m.subject for m in responses] == [subject] * 3

    temperature = 0 if task_type == "TASK_EXTRACTION" else 0.7
    expected_tasks = {"arch-1": tasks, "dev-1": [], "qa-1": []}
    for m, a in zip(responses, results):
        env = body(m)
        k = key(subject, did, a.agent_id)
        assert m.msg_id == k
        assert m.headers() == {"Nats-Msg-Id": k, "Content-Type": "application/json"}
        assert set(env) == {"event_type", "payload", "idempotency_key", "correlation_id", "timestamp", "producer", "metadata"}
        assert env["event_type"] == subject
        assert env["idempotency_key"] == k
        assert env["correlation_id"] == did
        assert env["producer"] == "ray-executor"
        assert ISO_RE.match(env["timestamp"]) and recent(env["timestamp"])
        assert env["metadata"] == {"deliberation_id": did, "task_type": task_type or "", "traceparent": TRACEPARENT}
        proposal = {
            "content": a.proposal, "author_id": a.agent_id, "author_role": a.role, "model": a.model,
            "temperature": temperature, "tokens": a.tokens,
        }
        if a.reasoning:
            proposal["reasoning"] = a.reasoning
        expected = {
            "task_id": "meta-task-9",
            "agent_id": a.agent_id,
            "role": a.role,
            "status": "completed",
            "duration_ms": a.duration_ms,
            "timestamp": a.finished_at,
            "proposal": proposal,
            "success": True,
            "model": a.model,
            "num_agents": 3,
            "constraints": {
                "story_id": "story-7", "plan_id": "plan-3", "timeout_seconds": 30, "max_retries": 2,
                "metadata": metadata,
            },
        }
        if task_type == "TASK_EXTRACTION":
            expected.update({"tasks": expected_tasks[a.agent_id], "story_id": "meta-story-1", "ceremony_id": "cer-5"})
        assert env["payload"] == expected


def test_task_extraction_story_id_falls_back_to_the_request():
    did = new_id()
    req = request(agents=[agent("a1", "m")], deliberation_id=did, metadata={"task_type": "TASK_EXTRACTION"})
    _, _, response = run_messages(req, [done("a1", "dev", "m", '{"tasks": [{"title": "T"}]}')])
    p = body(response)["payload"]
    assert (p["task_id"], p["story_id"], p["ceremony_id"], p["tasks"]) == ("task-42", "story-7", "", [{"title": "T"}])


def test_failed_agent_gives_agent_response_failed():
    did = new_id()
    req = request(
        agents=[agent("ok", "m-ok", role="dev"), agent("bad", "m-bad", role="critic")], deliberation_id=did,
        metadata={"task_type": "TASK_EXTRACTION", "task_id": "meta-task-1"},
    )
    bad = fail("bad", "critic", "m-bad", error_type="timeout", error="no result by the deadline", duration_ms=30000, attempts=2)
    messages = run_messages(req, [bad, done("ok", "dev", "m-ok", "{}")])
    failed, completed = [m for m in messages if m.subject.startswith("agent.response.")]
    assert completed.subject == "agent.response.completed.task-extraction"
    assert failed.subject == "agent.response.failed"
    env = body(failed)
    assert env["event_type"] == "agent.response.failed"
    assert failed.msg_id == env["idempotency_key"] == key("agent.response.failed", did, "bad")
    assert env["payload"] == {
        "task_id": "meta-task-1",
        "agent_id": "bad",
        "role": "critic",
        "status": "failed",
        "error": "no result by the deadline",
        "error_type": "timeout",
        "success": False,
        "num_agents": 2,
        "duration_ms": 30000,
        "timestamp": bad.finished_at,
        "model": "m-bad",
    }


def test_idempotency_key_and_tasks():
    assert nats_events.idempotency_key("agent.response.completed", "d1", "a1") == hashlib.sha256(
        b"agent.response.completed:d1:a1").hexdigest()
    assert nats_events.proposal_tasks('{"tasks": [{"title": "a"}]}') == [{"title": "a"}]
    assert nats_events.proposal_tasks('["tasks"]') == []
    assert nats_events.proposal_tasks("```json\n{}\n```") == []
    assert nats_events.proposal_tasks('{"tasks": null}') == []


# --- on the real server ------------------------------------------------------------------


def test_the_messages_reach_their_streams_once_however_often_published(nats_server):
    did = new_id()
    req = three_agent_request(did)
    results = [done("arch-1", "architect", "m-arch", "a"), done("dev-1", "dev", "m-dev", "b"), fail("qa-1", "qa", "m-qa")]
    # A redelivered deliberation publishes its messages again, in another order.
    for order in (results, list(reversed(results))):
        for m in run_messages(req, order):
            nats_server.publish(m.subject, m.body, m.msg_id, m.content_type)
    assert sorted(m.msg_id for m in nats_server.lifecycle(did)) == sorted(
        [f"{did}.started", f"{did}.agent.0", f"{did}.agent.1", f"{did}.agent.2"])
    assert len(nats_server.responses(did)) == 3
    # Compatible responses are keyed by their subject: a failure of an agent that had
    # completed is a different message (as in the original).
    for m in run_messages(req, [fail("arch-1", "architect", "m-arch")]):
        nats_server.publish(m.subject, m.body, m.msg_id, m.content_type)
    assert len(nats_server.lifecycle(did)) == 4
    assert len(nats_server.responses(did)) == 4


# --- settings ----------------------------------------------------------------------------


def test_settings_from_env_never_show_credentials():
    assert nats_events.settings_from_env({}) is None
    assert nats_events.settings_from_env({"RAY_EXECUTOR_NATS_URL": " , "}) is None
    s = nats_events.settings_from_env({
        "RAY_EXECUTOR_NATS_URL": "nats://user:pw@nats-a:4222, nats://nats-b:4222",
        "RAY_EXECUTOR_NATS_TOKEN": "tok-123",
        "RAY_EXECUTOR_NATS_TLS_CA_FILE": "/etc/ca.pem",
    })
    assert s.servers == ("nats://user:pw@nats-a:4222", "nats://nats-b:4222")
    assert (s.token, s.tls_ca_file, s.creds_file) == ("tok-123", "/etc/ca.pem", "")
    assert s.events_stream == "RAY_EXECUTOR_EVENTS"
    assert s.display == "nats://***@nats-a:4222,nats://nats-b:4222"
    assert "tok-123" not in repr(s)
