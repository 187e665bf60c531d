"""The NATS JetStream publisher (specs/nats.md) against a real NATS server.

The server and its two streams come from the nats_server fixture (conftest.py); every test
uses deliberation ids of its own, so tests share the server without seeing each other's
messages. Publishers are driven directly with realistic results.
"""

import hashlib
import json
import re
import sys
import time
import uuid
from datetime import datetime, timezone

import pytest

from helpers import agent, request
from nats_server import EVENTS_STREAM, RESPONSES_STREAM, Listener, NatsServer
from ray_executor_payload import nats_events
from ray_executor_payload.events import Events, make_events
from ray_executor_payload.nats_events import NatsEvents
from ray_executor_payload.result import AgentResult, iso_utc, summarize
from ray_executor_payload.agents import setup_logging

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
CE_TYPE = "fleet.ray_executor.v1.deliberation."
ISO_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
T0 = 1_800_000_000.0


@pytest.fixture(autouse=True)
def logging_to_stderr():
    setup_logging()


def new_id(prefix="delib"):
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


def publisher(url):
    ev = make_events({"RAY_EXECUTOR_NATS_URL": url})
    assert isinstance(ev, NatsEvents)
    return ev


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


def publish_run(url, req, in_completion_order, finish=True):
    """Drives a publisher as the driver does; returns the final result."""
    ev = publisher(url)
    ev.on_started(req)
    for a in in_completion_order:
        ev.on_agent_done(req, a)
    by_id = {a.agent_id: a for a in in_completion_order}
    result = summarize(req.deliberation_id, req.task_id, [by_id[s.id] for s in req.agents], T0, T0 + 3.5)
    if finish:
        ev.on_finished(req, result)
    ev.close()
    return ev, result


def key(event_type, did, agent_id):
    return hashlib.sha256(f"{event_type}:{did}:{agent_id}".encode()).hexdigest()


def epoch(ts):
    return datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()


def recent(ts, slack=120):
    return abs(time.time() - epoch(ts)) < slack


# --- lifecycle events --------------------------------------------------------------------


def three_agent_request(did, **overrides):
    agents = [agent("arch-1", "m-arch", role="architect"), agent("dev-1", "m-dev", role="dev"), agent("qa-1", "m-qa", role="qa")]
    return request(agents=agents, deliberation_id=did, traceparent=TRACEPARENT, **overrides)


def test_streams_are_provisioned_like_the_gateway_does(nats_server):
    for name, subject in ((EVENTS_STREAM, "ray_executor.deliberation.>"), (RESPONSES_STREAM, "agent.response.>")):
        cfg = nats_server.stream_config(name)
        assert cfg.subjects == [subject]
        assert cfg.duplicate_window == 7200


def test_lifecycle_events_of_a_three_agent_run(nats_server):
    did = new_id()
    req = three_agent_request(did)
    arch = done("arch-1", "architect", "m-arch", '{"proposal": "LRU", "score": 0.25}', reasoning="weighed it", score=0.25, tokens=40)
    dev = done("dev-1", "dev", "m-dev", "Use a write-through cache.", tokens=18, duration_ms=900)
    qa = fail("qa-1", "qa", "m-qa")
    listener = Listener(nats_server.url, [f"ray_executor.deliberation.{did}.>", "agent.response.>"])
    before = time.time()
    ev, result = publish_run(nats_server.url, req, [dev, qa, arch])  # completion order
    assert (ev.published, ev.failed, ev.dropped) == (8, 0, 0)
    received = listener.stop()

    stored = nats_server.lifecycle(did)
    base = f"ray_executor.deliberation.{did}."
    assert [m.subject for m in stored] == [
        base + "started", base + "agent_completed", base + "agent_failed", base + "agent_completed", base + "completed",
    ]
    ids = [f"{did}.started", f"{did}.agent.1", f"{did}.agent.2", f"{did}.agent.0", f"{did}.terminal"]
    assert [m.msg_id for m in stored] == ids
    kinds = ["started", "agent_completed", "agent_failed", "agent_completed", "completed"]
    for m, msg_id, kind in zip(stored, ids, kinds):
        assert m.headers["Content-Type"] == "application/cloudevents+json"
        ce = m.json
        assert set(ce) == {"specversion", "id", "source", "type", "subject", "time", "datacontenttype", "traceparent", "data"}
        assert ce["specversion"] == "1.0"
        assert ce["id"] == msg_id
        assert ce["source"] == "ray-executor/payload"
        assert ce["type"] == CE_TYPE + kind
        assert ce["subject"] == did
        assert ce["datacontenttype"] == "application/json"
        assert ce["traceparent"] == TRACEPARENT
        assert ISO_RE.match(ce["time"]) and recent(ce["time"])
    assert before - 0.01 <= epoch(stored[0].json["time"]) <= epoch(stored[-1].json["time"]) <= time.time()

    data = [m.json["data"] for m in stored]
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
    assert data[4] == {
        **common, "status": "completed", "num_agents": 3, "completed_agents": 2, "failed_agents": 1,
        "duration_ms": result.duration_ms,
    }

    # One publisher, in order: each agent's lifecycle event, then its compatible response.
    assert received == [
        (base + "started", f"{did}.started"),
        (base + "agent_completed", f"{did}.agent.1"),
        ("agent.response.completed", key("agent.response.completed", did, "dev-1")),
        (base + "agent_failed", f"{did}.agent.2"),
        ("agent.response.failed", key("agent.response.failed", did, "qa-1")),
        (base + "agent_completed", f"{did}.agent.0"),
        ("agent.response.completed", key("agent.response.completed", did, "arch-1")),
        (base + "completed", f"{did}.terminal"),
    ]


def test_no_traceparent_no_extension(nats_server):
    did = new_id()
    req = request(agents=[agent("a1", "m")], deliberation_id=did)
    publish_run(nats_server.url, req, [done("a1", "dev", "m", "p")])
    stored = nats_server.lifecycle(did)
    assert len(stored) == 3
    assert all("traceparent" not in m.json for m in stored)
    (resp,) = nats_server.responses(did)
    assert resp.json["metadata"] == {"deliberation_id": did, "task_type": ""}


def test_every_agent_failing_publishes_the_failed_terminal_event(nats_server):
    did = new_id()
    req = request(agents=[agent("x1", "m"), agent("x2", "m")], deliberation_id=did)
    x1 = fail("x1", "dev", "m", error="HTTP 400 from vllm: bad model", attempts=1)
    x2 = fail("x2", "dev", "m", error_type="timeout", error="deadline exceeded", attempts=2)
    _, result = publish_run(nats_server.url, req, [x2, x1])
    stored = nats_server.lifecycle(did)
    assert [m.subject.rsplit(".", 1)[1] for m in stored] == ["started", "agent_failed", "agent_failed", "failed"]
    assert [m.msg_id for m in stored] == [f"{did}.started", f"{did}.agent.1", f"{did}.agent.0", f"{did}.terminal"]
    terminal = stored[-1].json
    assert terminal["type"] == CE_TYPE + "failed"
    assert terminal["data"] == {
        "deliberation_id": did, "task_id": "task-42", "status": "failed", "num_agents": 2,
        "completed_agents": 0, "failed_agents": 2, "error": result.error, "error_type": "all_agents_failed",
    }
    assert result.error.startswith("all 2 agents failed: x1: http_error")
    assert [m.subject for m in nats_server.responses(did)] == ["agent.response.failed"] * 2


def test_no_terminal_event_without_on_finished(nats_server):
    # An interrupted driver (ray job stop) calls close but not on_finished: the gateway
    # publishes the cancelled event then.
    did = new_id()
    req = request(agents=[agent("a1", "m"), agent("a2", "m")], deliberation_id=did)
    publish_run(nats_server.url, req, [done("a1", "dev", "m", "p"), done("a2", "dev", "m", "q")], finish=False)
    assert [m.msg_id for m in nats_server.lifecycle(did)] == [f"{did}.started", f"{did}.agent.0", f"{did}.agent.1"]


# --- compatible agent responses ----------------------------------------------------------


@pytest.mark.parametrize(
    "task_type, subject",
    [
        (None, "agent.response.completed"),
        ("BACKLOG_REVIEW_ROLE", "agent.response.completed.backlog-review.role"),
        ("TASK_EXTRACTION", "agent.response.completed.task-extraction"),
    ],
)
def test_compatible_responses_by_task_type(nats_server, task_type, subject):
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
    publish_run(nats_server.url, req, results)
    stored = nats_server.responses(did)
    assert [m.subject for m in stored] == [subject] * 3

    temperature = 0 if task_type == "TASK_EXTRACTION" else 0.7
    expected_tasks = {"arch-1": tasks, "dev-1": [], "qa-1": []}
    for m, a in zip(stored, results):
        env = m.json
        k = key(subject, did, a.agent_id)
        assert m.msg_id == k
        assert m.headers["Content-Type"] == "application/json"
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


def test_task_extraction_story_id_falls_back_to_the_request(nats_server):
    did = new_id()
    req = request(agents=[agent("a1", "m")], deliberation_id=did, metadata={"task_type": "TASK_EXTRACTION"})
    publish_run(nats_server.url, req, [done("a1", "dev", "m", '{"tasks": [{"title": "T"}]}')])
    (m,) = nats_server.responses(did)
    p = m.json["payload"]
    assert (p["task_id"], p["story_id"], p["ceremony_id"], p["tasks"]) == ("task-42", "story-7", "", [{"title": "T"}])


def test_failed_agent_gives_agent_response_failed(nats_server):
    did = new_id()
    req = request(
        agents=[agent("ok", "m-ok", role="dev"), agent("bad", "m-bad", role="critic")], deliberation_id=did,
        metadata={"task_type": "TASK_EXTRACTION", "task_id": "meta-task-1"},
    )
    bad = fail("bad", "critic", "m-bad", error_type="timeout", error="no result by the deadline", duration_ms=30000, attempts=2)
    publish_run(nats_server.url, req, [bad, done("ok", "dev", "m-ok", "{}")])
    failed, completed = nats_server.responses(did)
    assert completed.subject == "agent.response.completed.task-extraction"
    assert failed.subject == "agent.response.failed"
    env = failed.json
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


# --- de-duplication ----------------------------------------------------------------------


def test_publishing_twice_stores_every_message_once(nats_server):
    did = new_id()
    req = three_agent_request(did)
    results = [done("arch-1", "architect", "m-arch", "a"), done("dev-1", "dev", "m-dev", "b"), fail("qa-1", "qa", "m-qa")]
    first, _ = publish_run(nats_server.url, req, results)
    second, _ = publish_run(nats_server.url, req, list(reversed(results)))
    assert first.published == second.published == 8 and first.failed == second.failed == 0
    lifecycle = nats_server.lifecycle(did)
    assert sorted(m.msg_id for m in lifecycle) == sorted(
        [f"{did}.started", f"{did}.agent.0", f"{did}.agent.1", f"{did}.agent.2", f"{did}.terminal"])
    assert len(nats_server.responses(did)) == 3

    # Every terminal kind shares one id: a later "failed" for the same deliberation (say, a
    # confused repair) is dropped as a duplicate, the first terminal event stays.
    all_failed = [fail("arch-1", "architect", "m-arch"), fail("dev-1", "dev", "m-dev"), fail("qa-1", "qa", "m-qa")]
    publish_run(nats_server.url, req, all_failed)
    terminals = [m for m in nats_server.lifecycle(did) if m.msg_id == f"{did}.terminal"]
    assert len(terminals) == 1 and terminals[0].subject.endswith(".completed")
    assert len(nats_server.lifecycle(did)) == 5
    # Compatible responses are keyed by their subject: a failure of an agent that had
    # completed is a different message (as in the original).
    assert len(nats_server.responses(did)) == 5


def test_a_nats_restart_during_the_run_is_survived(nats_server, tmp_path):
    own = NatsServer(nats_server.binary, str(tmp_path)).start()
    try:
        port = int(own.url.rsplit(":", 1)[1])
        did = new_id()
        req = request(agents=[agent("a1", "m"), agent("a2", "m")], deliberation_id=did)
        ev = publisher(own.url)
        ev.on_started(req)
        deadline = time.time() + 10
        while ev.published < 1 and time.time() < deadline:
            time.sleep(0.02)
        own.stop()
        own.start(port)  # same port, same store: the streams and the first event survive
        a1, a2 = done("a1", "dev", "m", "p"), done("a2", "dev", "m", "q")
        ev.on_agent_done(req, a1)
        ev.on_agent_done(req, a2)
        ev.on_finished(req, summarize(did, "task-42", [a1, a2], T0, T0 + 1))
        ev.close()
        assert [m.msg_id for m in own.lifecycle(did)] == [f"{did}.started", f"{did}.agent.0", f"{did}.agent.1", f"{did}.terminal"]
        assert len(own.responses(did)) == 2
    finally:
        own.stop()


def test_a_message_too_large_is_skipped_and_the_rest_published(nats_server, capsys):
    did = new_id()
    req = request(agents=[agent("big", "m"), agent("small", "m")], deliberation_id=did)
    huge = "x" * (1 << 20)
    ev, _ = publish_run(nats_server.url, req, [done("big", "dev", "m", huge), done("small", "dev", "m", "ok")])
    assert ev.failed == 2  # the agent event and the response of "big"
    assert [m.msg_id for m in nats_server.lifecycle(did)] == [f"{did}.started", f"{did}.agent.1", f"{did}.terminal"]
    assert [m.json["payload"]["agent_id"] for m in nats_server.responses(did)] == ["small"]
    err = capsys.readouterr().err
    assert "MaxPayloadError" in err and huge[:100] not in err


# --- choosing the publisher --------------------------------------------------------------


def test_no_url_no_publisher():
    assert type(make_events({})) is Events
    assert type(make_events({"RAY_EXECUTOR_NATS_URL": "  "})) is Events


def test_without_nats_py_events_are_off(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "nats", None)  # import nats -> ImportError
    assert type(make_events({"RAY_EXECUTOR_NATS_URL": "nats://127.0.0.1:4222"})) is Events
    assert "nats-py cannot be imported" in capsys.readouterr().err


def test_creds_file_without_nkeys_turns_events_off(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "nkeys", None)
    env = {"RAY_EXECUTOR_NATS_URL": "nats://127.0.0.1:4222", "RAY_EXECUTOR_NATS_CREDS_FILE": str(tmp_path / "u.creds")}
    assert type(make_events(env)) is Events
    assert "needs the nkeys package" in capsys.readouterr().err


def test_settings_from_env_never_show_credentials():
    s = nats_events.settings_from_env({
        "RAY_EXECUTOR_NATS_URL": "nats://user:pw@nats-a:4222, nats://nats-b:4222",
        "RAY_EXECUTOR_NATS_TOKEN": "tok-123",
        "RAY_EXECUTOR_NATS_TLS_CA_FILE": "/etc/ca.pem",
    })
    assert s.servers == ("nats://user:pw@nats-a:4222", "nats://nats-b:4222")
    assert (s.token, s.tls_ca_file, s.creds_file) == ("tok-123", "/etc/ca.pem", "")
    assert s.display == "nats://***@nats-a:4222,nats://nats-b:4222"
    assert "tok-123" not in repr(s)


def test_token_is_sent(nats_server):
    # The test server has no auth: a token is accepted and ignored; this checks the option
    # reaches the client without breaking the connection.
    did = new_id()
    ev = make_events({"RAY_EXECUTOR_NATS_URL": nats_server.url, "RAY_EXECUTOR_NATS_TOKEN": "tok-123"})
    req = request(agents=[agent("a1", "m")], deliberation_id=did)
    ev.on_started(req)
    ev.close()
    assert [m.msg_id for m in nats_server.lifecycle(did)] == [f"{did}.started"]


def test_a_deliberation_id_that_is_no_subject_token_publishes_nothing(nats_server, capsys):
    req = request(agents=[agent("a1", "m")], deliberation_id="bad.id.>")
    ev, _ = publish_run(nats_server.url, req, [done("a1", "dev", "m", "p")])
    assert ev.published == 0
    assert "not a valid NATS subject token" in capsys.readouterr().err


def test_idempotency_key_and_tasks():
    assert nats_events.idempotency_key("agent.response.completed", "d1", "a1") == hashlib.sha256(
        b"agent.response.completed:d1:a1").hexdigest()
    assert nats_events.proposal_tasks('{"tasks": [{"title": "a"}]}') == [{"title": "a"}]
    assert nats_events.proposal_tasks('["tasks"]') == []
    assert nats_events.proposal_tasks("```json\n{}\n```") == []
    assert nats_events.proposal_tasks('{"tasks": null}') == []
