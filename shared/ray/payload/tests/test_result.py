import io
import json
import os
import subprocess
import sys
from datetime import datetime

import pytest

from helpers import NASTY_DESCRIPTION, request_dict
from ray_executor_payload.__main__ import main, ray_init_kwargs
from ray_executor_payload.events import Events, EventsGuard
from ray_executor_payload.result import (
    RESULT_MARKER,
    AgentResult,
    ResultPrinter,
    failure,
    parse_score,
    result_line,
    summarize,
)

PAYLOAD_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

AGENT_KEYS = {
    "agent_id", "role", "model", "status", "proposal", "reasoning", "score", "tokens", "prompt_tokens",
    "completion_tokens", "duration_ms", "attempts", "started_at", "finished_at", "error", "error_type",
}
TOP_KEYS = {
    "version", "deliberation_id", "task_id", "status", "num_agents", "completed_agents", "failed_agents",
    "started_at", "finished_at", "duration_ms", "error", "agents",
}


@pytest.fixture(autouse=True)
def no_ray_shutdown(monkeypatch):
    """main() shuts Ray down at the end; these in-process tests never start one and must
    not stop one another module may have started in this process."""
    import ray_executor_payload.__main__ as entry

    monkeypatch.setattr(entry, "shutdown_ray", lambda: None)


def parse_line(line):
    assert line.startswith(RESULT_MARKER)
    return json.loads(line[len(RESULT_MARKER):])


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


def test_result_line_is_one_parsable_ascii_line_with_every_field():
    tricky = NASTY_DESCRIPTION + "\r\n\u0085\u2028 \x1c end"
    agents = [agent_result("a1", "completed", proposal=tricky, reasoning="r\nr", score=0.5, tokens=3)]
    line = result_line(summarize("d-1", "t-1", agents, 0, 1))
    assert line.startswith(RESULT_MARKER)
    assert len(line.splitlines()) == 1  # str.splitlines also splits on \x1c, \x85, \u2028, ...
    assert line.isascii()
    d = parse_line(line)
    assert set(d) == TOP_KEYS
    assert set(d["agents"][0]) == AGENT_KEYS
    assert d["agents"][0]["proposal"] == tricky
    assert d["version"] == 1
    assert isinstance(d["agents"][0]["score"], float)
    datetime.fromisoformat(d["started_at"].replace("Z", "+00:00"))


def test_printer_prints_exactly_once():
    out = io.StringIO()
    p = ResultPrinter(out)
    p.print(failure("d", "t", "first", 0, 0))
    p.print(failure("d", "t", "second", 0, 0))
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    assert parse_line(lines[0])["error"] == "first"
    assert out.getvalue().endswith("\n")


def test_printer_writes_to_the_file_descriptor(capfd):
    ResultPrinter(sys.stdout).print(failure("d", "t", "via fd", 0, 0))
    out, _ = capfd.readouterr()
    assert parse_line(out.rstrip("\n"))["error"] == "via fd"


@pytest.mark.parametrize(
    "data, fragment",
    [
        (None, "RAY_EXECUTOR_REQUEST_MODULE is not set"),
        ("{", "not valid JSON"),
        (request_dict(timeout_seconds=0), "timeout_seconds must be >= 1"),
    ],
)
def test_bad_request_exits_2_with_a_failed_result_line(request_env, data, fragment, capsys):
    out = io.StringIO()
    code = main({} if data is None else request_env(data), ResultPrinter(out))
    assert code == 2
    d = parse_line(out.getvalue().rstrip("\n"))
    assert d["status"] == "failed"
    assert d["error"].startswith("invalid request: ") and fragment in d["error"]
    assert d["agents"] == [] and d["num_agents"] == 0
    assert fragment in capsys.readouterr().err


def test_bad_request_keeps_the_ids_it_could_read(request_env):
    out = io.StringIO()
    assert main(request_env(request_dict(max_retries=-1)), ResultPrinter(out)) == 2
    d = parse_line(out.getvalue().rstrip("\n"))
    assert (d["deliberation_id"], d["task_id"]) == ("delib-1", "task-42")


def test_bad_request_as_a_process_exits_2_with_only_the_result_line_on_stdout(request_env):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_EXECUTOR_")}
    env.update(request_env("not json at all"))
    env["PYTHONPATH"] = os.pathsep.join([PAYLOAD_DIR, request_env.path])
    proc = subprocess.run(
        [sys.executable, "-u", "-m", "ray_executor_payload"],
        cwd=PAYLOAD_DIR, env=env, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    lines = proc.stdout.splitlines()
    assert len(lines) == 1
    d = parse_line(lines[0])
    assert d["status"] == "failed" and "not valid JSON" in d["error"]
    assert "not valid JSON" in proc.stderr


def test_ray_init_kwargs():
    assert ray_init_kwargs({}) == {}
    assert ray_init_kwargs({"RAY_EXECUTOR_LOCAL_RAY": "2", "RAY_EXECUTOR_LOCAL_RAY_TEMP_DIR": "/tmp/x"}) == {
        "address": "local", "num_cpus": 2, "include_dashboard": False, "_temp_dir": "/tmp/x",
    }
    with pytest.raises(ValueError):
        ray_init_kwargs({"RAY_EXECUTOR_LOCAL_RAY": "many"})


def test_event_hook_failures_are_swallowed_and_logged(capsys):
    calls = []

    class Broken(Events):
        def on_started(self, request):
            raise RuntimeError("nats down")

        def on_agent_done(self, request, agent):
            calls.append(("agent", agent))

    guard = EventsGuard(Broken())
    guard.on_started(None)  # must not raise
    guard.on_agent_done(None, "a1")
    guard.on_finished(None, None)
    guard.close()
    assert calls == [("agent", "a1")]
    err = capsys.readouterr().err
    assert "event hook on_started failed: RuntimeError: nats down" in err


def test_ray_unavailable_fails_every_agent_with_exit_1(monkeypatch, request_env):
    import ray_executor_payload.__main__ as entry

    def no_ray(environ):
        raise ConnectionError("GCS at 10.0.0.1:6379 unreachable")

    monkeypatch.setattr(entry, "init_ray", no_ray)
    out = io.StringIO()
    env = request_env(request_dict(agents=[{"id": "a1", "role": "r", "model": "m"}, {"id": "a2", "role": "r", "model": ""}]))
    assert main(env, ResultPrinter(out)) == 1
    d = parse_line(out.getvalue().rstrip("\n"))
    assert d["status"] == "failed"
    assert d["error"] == "Ray unavailable: ConnectionError: GCS at 10.0.0.1:6379 unreachable"
    assert [(a["agent_id"], a["model"], a["status"], a["error_type"]) for a in d["agents"]] == [
        ("a1", "m", "failed", "internal"), ("a2", "default-model", "failed", "internal"),
    ]
    assert d["failed_agents"] == 2


def test_interruption_still_prints_a_result_line(monkeypatch, request_env):
    import ray_executor_payload.__main__ as entry

    monkeypatch.setattr(entry, "init_ray", lambda environ: None)

    def stopped(*args, **kwargs):
        raise SystemExit(15)  # what Ray's SIGTERM handler does on `ray job stop`

    monkeypatch.setattr(entry, "run_deliberation", stopped)
    out = io.StringIO()
    with pytest.raises(SystemExit):
        main(request_env(request_dict()), ResultPrinter(out))
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    d = parse_line(lines[0])
    assert (d["status"], d["deliberation_id"], d["error"]) == ("failed", "delib-1", "interrupted: SystemExit: 15")


def test_events_are_called_around_a_run(monkeypatch, request_env):
    import ray_executor_payload.__main__ as entry

    calls = []

    class Recording(Events):
        def on_started(self, request):
            calls.append(("started", request.deliberation_id))

        def on_finished(self, request, result):
            calls.append(("finished", result.status, printer.printed))

        def close(self):
            calls.append(("close",))

    def fake_run(req, started, events):
        agent = AgentResult(agent_id="a1", role="dev", model="m", status="completed", proposal="p", score=1.0)
        events.on_agent_done(req, agent)
        return [agent]

    monkeypatch.setattr(entry, "init_ray", lambda environ: None)
    monkeypatch.setattr(entry, "make_events", lambda environ: Recording())
    monkeypatch.setattr(entry, "run_deliberation", fake_run)
    printer = ResultPrinter(io.StringIO())
    assert main(request_env(request_dict()), printer) == 0
    # The result line is out before on_finished runs (a slow publisher cannot delay it).
    assert calls == [("started", "delib-1"), ("finished", "completed", True), ("close",)]
