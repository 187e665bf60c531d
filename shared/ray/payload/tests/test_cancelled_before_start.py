"""A deliberation cancelled while it waited for its reservation never runs its agents.

Ray starts a PENDING job's driver even after the job was stopped; execute stores the
cancelled event first, and the payload looks for a stored terminal event before it does
anything else. These tests run main() in this process against the real NATS server of
conftest.py, with Ray and the agents replaced by recorders (test_ray_integration.py runs
the same cases as a real driver on a real Ray).
"""

import io
import json
import socket
import time
import uuid

import pytest

from helpers import agent, request_dict
from nats_server import closed_port
from ray_executor_payload import nats_events
from ray_executor_payload.__main__ import main
from ray_executor_payload.result import RESULT_MARKER, AgentResult, ResultPrinter, iso_utc
from ray_executor_payload.runner import setup_logging

SECRET_DESCRIPTION = "SECRET-TASK-TEXT: design the vault."


def new_id():
    return f"delib-{uuid.uuid4().hex[:16]}"


class Recorder:
    """Stands in for init_ray and run_deliberation, and records whether they were called."""

    def __init__(self):
        self.ray_started = False
        self.agents_run = []

    def init_ray(self, environ):
        self.ray_started = True

    def run_deliberation(self, req, started, events):
        out = []
        for spec in req.agents:
            self.agents_run.append(spec.id)
            a = AgentResult(agent_id=spec.id, role=spec.role, model=spec.model, status="completed",
                            proposal="p", score=1.0, duration_ms=5, attempts=1,
                            started_at=iso_utc(started), finished_at=iso_utc(time.time()))
            events.on_agent_done(req, a)
            out.append(a)
        return out


@pytest.fixture
def recorder(monkeypatch):
    setup_logging()
    import ray_executor_payload.__main__ as entry

    r = Recorder()
    monkeypatch.setattr(entry, "init_ray", r.init_ray)
    monkeypatch.setattr(entry, "run_deliberation", r.run_deliberation)
    monkeypatch.setattr(entry, "shutdown_ray", lambda: None)
    return r


def run(env):
    out = io.StringIO()
    code = main(env, ResultPrinter(out))
    (line,) = out.getvalue().splitlines()
    assert line.startswith(RESULT_MARKER)
    return code, json.loads(line[len(RESULT_MARKER):])


@pytest.fixture
def env_for(request_env):
    """env_for(did, url, **extra): a run's environment with NATS at url."""

    def make(did, url, **extra):
        data = request_dict(agents=[agent("a1", "m"), agent("a2", "m")], deliberation_id=did,
                            task_description=SECRET_DESCRIPTION)
        return {**request_env(data), "RAY_EXECUTOR_NATS_URL": url, **extra}

    return make


def test_a_stored_cancelled_event_runs_nothing_and_publishes_nothing(nats_server, recorder, capsys, env_for):
    did = new_id()
    nats_server.store_terminal(did, "cancelled", num_agents=2)
    code, res = run(env_for(did, nats_server.url))
    assert code == 0
    assert not recorder.ray_started and recorder.agents_run == []
    assert (res["deliberation_id"], res["task_id"], res["status"], res["error"]) == (
        did, "task-42", "cancelled", "cancelled before it started")
    assert (res["num_agents"], res["completed_agents"], res["failed_agents"], res["agents"]) == (2, 0, 0, [])
    # Only the event execute stored: no started, agent or second terminal event, no response.
    assert [(m.subject, m.msg_id) for m in nats_server.lifecycle(did)] == [
        (f"ray_executor.deliberation.{did}.cancelled", f"{did}.terminal")]
    assert nats_server.responses(did) == []
    err = capsys.readouterr().err
    assert f"deliberation {did}: its cancelled event is already stored; no agent runs" in err
    assert SECRET_DESCRIPTION not in err


@pytest.mark.parametrize("kind", ["completed", "failed"])
def test_any_stored_terminal_event_keeps_the_agents_from_running(nats_server, recorder, kind, env_for):
    did = new_id()
    nats_server.store_terminal(did, kind, num_agents=2)
    code, res = run(env_for(did, nats_server.url))
    assert code == 0 and not recorder.ray_started and recorder.agents_run == []
    assert res["status"] == "cancelled" and res["error"] == f"not started: its end ({kind}) is already stored"
    assert [m.msg_id for m in nats_server.lifecycle(did)] == [f"{did}.terminal"]


def test_without_a_stored_terminal_event_it_runs(nats_server, recorder, env_for):
    did = new_id()
    other = new_id()
    nats_server.store_terminal(other, "cancelled")  # another deliberation's end changes nothing
    code, res = run(env_for(did, nats_server.url))
    assert code == 0 and res["status"] == "completed"
    assert recorder.ray_started and recorder.agents_run == ["a1", "a2"]
    assert [m.msg_id for m in nats_server.lifecycle(did)] == [
        f"{did}.started", f"{did}.agent.0", f"{did}.agent.1", f"{did}.terminal"]


def test_with_nats_unreachable_it_runs(recorder, capsys, env_for):
    did = new_id()
    start = time.time()
    code, res = run(env_for(did, f"nats://127.0.0.1:{closed_port()}"))
    assert code == 0 and res["status"] == "completed"
    assert recorder.ray_started and recorder.agents_run == ["a1", "a2"]
    assert time.time() - start < 3.0
    err = capsys.readouterr().err
    assert f"deliberation {did}: cannot tell whether it was cancelled before it started (ConnectionRefusedError" in err
    assert "running it" in err and SECRET_DESCRIPTION not in err


def test_with_the_events_stream_missing_it_runs(nats_server, recorder, capsys, env_for):
    # The stream name comes from execute (NATS_EVENTS_STREAM): one NATS does not hold is a
    # look-up that cannot answer, not "nothing stored".
    did = new_id()
    nats_server.store_terminal(did, "cancelled")
    code, res = run(env_for(did, nats_server.url, RAY_EXECUTOR_NATS_EVENTS_STREAM="NO_SUCH_STREAM"))
    assert res["status"] == "completed" and recorder.agents_run == ["a1", "a2"]
    assert "cannot tell whether it was cancelled before it started (stream NO_SUCH_STREAM: NotFoundError" in capsys.readouterr().err


def test_stored_terminal_reads_the_configured_stream(nats_server):
    did = new_id()
    settings = nats_events.settings_from_env({"RAY_EXECUTOR_NATS_URL": nats_server.url})
    assert settings.events_stream == "RAY_EXECUTOR_EVENTS"
    assert nats_events.stored_terminal(settings, did) is None
    nats_server.store_terminal(did, "cancelled")
    assert nats_events.stored_terminal(settings, did) == "cancelled"
    named = nats_events.settings_from_env({"RAY_EXECUTOR_NATS_URL": nats_server.url,
                                           "RAY_EXECUTOR_NATS_EVENTS_STREAM": " RAY_EXECUTOR_EVENTS "})
    assert nats_events.stored_terminal(named, did) == "cancelled"


def test_the_lookup_is_bounded_on_a_silent_server():
    # Accepts TCP connections but never speaks NATS.
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(16)
        settings = nats_events.settings_from_env({"RAY_EXECUTOR_NATS_URL": f"nats://127.0.0.1:{hole.getsockname()[1]}"})
        start = time.time()
        with pytest.raises(nats_events.LookupFailed):
            nats_events.stored_terminal(settings, new_id(), timeout=1.0)
        assert time.time() - start < 2.0


def test_an_id_that_is_no_subject_token_is_never_looked_up():
    settings = nats_events.settings_from_env({"RAY_EXECUTOR_NATS_URL": "nats://127.0.0.1:1"})
    with pytest.raises(nats_events.LookupFailed, match="not a valid NATS subject token"):
        nats_events.stored_terminal(settings, "d1.*")


def test_an_unreadable_tls_ca_file_does_not_stop_the_run(recorder, tmp_path, capsys, env_for):
    did = new_id()
    env = env_for(did, f"nats://127.0.0.1:{closed_port()}", RAY_EXECUTOR_NATS_TLS_CA_FILE=str(tmp_path / "missing.pem"))
    code, res = run(env)
    assert code == 0 and res["status"] == "completed" and recorder.agents_run == ["a1", "a2"]
    assert "cannot tell whether it was cancelled before it started (RAY_EXECUTOR_NATS_TLS_CA_FILE: FileNotFoundError" in capsys.readouterr().err
