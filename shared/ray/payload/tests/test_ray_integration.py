"""End-to-end tests on a real, private Ray.

One Ray is started for the whole module, in this process, through the payload's own
local-start path (RAY_EXECUTOR_LOCAL_RAY, a temp dir of its own, no dashboard, token auth
off): it never connects to or disturbs the shared head at 127.0.0.1:8265, and Ray starts
only once (it takes several seconds on a small machine). The payload then runs as a job
driver would: `python -m ray_executor_payload` in a subprocess, with the request module on its
PYTHONPATH and named by RAY_EXECUTOR_REQUEST_MODULE (as a job's py_modules package puts it)
and RAY_ADDRESS pointing at that private cluster, just as the Ray job supervisor sets it. Set RXP_DEBUG=1 (with -s) to see each payload run's stderr.

With the test NATS server (conftest.py, optional_nats_server) the runs also get
RAY_EXECUTOR_NATS_URL, and the tests check the events that land on the two streams.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

import pytest

import llm_stub
from helpers import NASTY_DESCRIPTION, agent, request, request_dict, write_request_module
from nats_server import closed_port
from ray_executor_payload.__main__ import init_ray
from ray_executor_payload.events import Events, EventsGuard
from ray_executor_payload.request import REQUEST_MODULE_ENV
from ray_executor_payload.result import RESULT_MARKER
from ray_executor_payload.runner import AgentJob, run_agent, run_deliberation

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
PAYLOAD_DIR = os.path.dirname(TESTS_DIR)


@pytest.fixture(scope="module")
def private_ray():
    import ray

    assert not ray.is_initialized()
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "RAY_AUTH_MODE", "RAY_ADDRESS")}
    temp_dir = tempfile.mkdtemp(prefix="rxp-", dir="/tmp")  # short: Ray puts sockets in it
    # Workers inherit the environment of the raylet this process starts: let them import
    # the payload and this test module (for the task functions below).
    os.environ["PYTHONPATH"] = os.pathsep.join([PAYLOAD_DIR, TESTS_DIR])
    os.environ.pop("RAY_ADDRESS", None)
    try:
        init_ray({"RAY_EXECUTOR_LOCAL_RAY": "2", "RAY_EXECUTOR_LOCAL_RAY_TEMP_DIR": temp_dir})
        assert os.environ["RAY_AUTH_MODE"] == "disabled"
        ctx = ray.get_runtime_context()
        # A cluster of our own (its sessions live in our temp dir), not the shared head.
        assert ray._private.worker._global_node.get_temp_dir_path().startswith(temp_dir)

        # Start three workers for this driver now, so the in-process tests don't wait on them.
        @ray.remote(num_cpus=0)
        def warm():
            time.sleep(0.5)
            return os.getpid()

        ray.get([warm.remote() for _ in range(3)])
        yield ctx.gcs_address
    finally:
        ray.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(temp_dir, ignore_errors=True)


def run_payload(gcs_address, request_data, timeout=180, nats=None, nats_url=""):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_EXECUTOR_")}
    modules = tempfile.mkdtemp(prefix="rxp-request-")
    env.update(
        {
            REQUEST_MODULE_ENV: write_request_module(modules, request_data),
            "RAY_ADDRESS": gcs_address,
            "RAY_AUTH_MODE": "disabled",
            "PYTHONPATH": os.pathsep.join([PAYLOAD_DIR, modules]),
        }
    )
    if nats is not None:
        env["RAY_EXECUTOR_NATS_URL"] = nats.url
    if nats_url:
        env["RAY_EXECUTOR_NATS_URL"] = nats_url
    start = time.time()
    try:
        proc = subprocess.run(
            [sys.executable, "-u", "-m", "ray_executor_payload"],
            cwd=PAYLOAD_DIR, env=env, capture_output=True, text=True, timeout=timeout,
        )
    finally:
        shutil.rmtree(modules, ignore_errors=True)
    elapsed = time.time() - start
    if os.environ.get("RXP_DEBUG"):
        print(f"--- payload took {elapsed:.1f}s; stderr:\n{proc.stderr}")
    lines = proc.stdout.splitlines()
    # Exactly one line on stdout, and it is the result.
    assert len(lines) == 1 and lines[0].startswith(RESULT_MARKER), (proc.stdout, proc.stderr[-3000:])
    return proc, json.loads(lines[0][len(RESULT_MARKER):]), elapsed


def new_id():
    return f"delib-{uuid.uuid4().hex[:16]}"


def check_events(nats, did, res, response_subject):
    """The payload's lifecycle events and compatible responses for result `res` are on the
    streams: started first, one event per agent (in completion order), the terminal last."""
    if nats is None:
        return
    n = res["num_agents"]
    stored = nats.lifecycle(did)
    ids = [m.msg_id for m in stored]
    assert ids[0] == f"{did}.started" and ids[-1] == f"{did}.terminal", ids
    assert sorted(ids[1:-1]) == [f"{did}.agent.{i}" for i in range(n)]
    assert stored[0].json["data"] == {"deliberation_id": did, "task_id": res["task_id"], "num_agents": n}
    for m in stored[1:-1]:
        data = m.json["data"]
        a = res["agents"][data["agent_index"]]
        kind = "agent_completed" if a["status"] == "completed" else "agent_failed"
        assert m.subject == f"ray_executor.deliberation.{did}.{kind}"
        assert (data["agent_id"], data["duration_ms"], data.get("error_type", "")) == (a["agent_id"], a["duration_ms"], a["error_type"])
        assert data.get("proposal", "") == a["proposal"]
    terminal = stored[-1]
    assert terminal.subject == f"ray_executor.deliberation.{did}.{res['status']}"
    assert terminal.json["source"] == "ray-executor/payload"
    d = terminal.json["data"]
    assert (d["status"], d["num_agents"], d["completed_agents"], d["failed_agents"]) == (
        res["status"], n, res["completed_agents"], res["failed_agents"])

    responses = nats.responses(did)
    assert sorted(m.json["payload"]["agent_id"] for m in responses) == sorted(a["agent_id"] for a in res["agents"])
    for m in responses:
        p = m.json["payload"]
        a = next(a for a in res["agents"] if a["agent_id"] == p["agent_id"])
        assert m.subject == (response_subject if a["status"] == "completed" else "agent.response.failed")
        assert (p["success"], p["num_agents"], p["duration_ms"]) == (a["status"] == "completed", n, a["duration_ms"])
        if a["status"] == "completed":
            assert p["proposal"]["content"] == a["proposal"]


def test_agents_run_in_parallel(private_ray, stub, optional_nats_server):
    # Each request is held until all three are in flight together (or 45 s pass): the
    # maximum in flight reaches 3 only if the three agents really ran at the same time.
    stub.set("m-par", llm_stub.gather(3, hold=1.5, then=llm_stub.ok("parallel proposal")))
    agents = [agent(f"p{i}", "m-par", role=f"role-{i}") for i in range(3)]
    did = new_id()
    data = request_dict(stub.url, agents, timeout_seconds=90, max_retries=0, deliberation_id=did)
    proc, res, _ = run_payload(private_ray, data, nats=optional_nats_server)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert res["status"] == "completed"
    assert (res["num_agents"], res["completed_agents"], res["failed_agents"]) == (3, 3, 0)
    assert [a["agent_id"] for a in res["agents"]] == ["p0", "p1", "p2"]
    assert all(a["proposal"] == "parallel proposal" and a["attempts"] == 1 for a in res["agents"])
    assert stub.max_inflight == 3
    # Progress is logged to stderr; prompts never are.
    assert "p0" in proc.stderr and "Design the cache layer" not in proc.stderr
    check_events(optional_nats_server, did, res, "agent.response.completed")
    if optional_nats_server is not None:
        assert "events: 8 message(s) published" in proc.stderr


def test_one_failing_agent_is_reported_while_the_others_succeed(private_ray, stub, optional_nats_server):
    failing = llm_stub.StubLLM()
    failing.default = llm_stub.status(500, b'{"error": {"message": "GPU on fire"}}')
    try:
        stub.set("m-think", llm_stub.ok("<think>compare</think>Use a write-through cache."))
        stub.set("m-score", llm_stub.ok(json.dumps({"proposal": "LRU", "score": 0.25})))
        agents = [
            agent("good-1", "m-think", role="architect"),
            agent("bad", "m-any", role="critic", url=failing.url + "/v1/"),
            agent("good-2", "", role="dev", template="As {role}, solve: {task_description}"),
        ]
        stub.set("default-model", llm_stub.ok(json.dumps({"proposal": "LRU", "score": 0.25})))
        did = new_id()
        data = request_dict(
            stub.url, agents, task_description=NASTY_DESCRIPTION, timeout_seconds=60, max_retries=1,
            deliberation_id=did, metadata={"task_type": "BACKLOG_REVIEW_ROLE"},
        )
        proc, res, _ = run_payload(private_ray, data, nats=optional_nats_server)
    finally:
        failing.close()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert res["status"] == "completed" and res["error"] == ""
    assert (res["completed_agents"], res["failed_agents"]) == (2, 1)
    good1, bad, good2 = res["agents"]
    assert [good1["agent_id"], bad["agent_id"], good2["agent_id"]] == ["good-1", "bad", "good-2"]

    assert (good1["status"], good1["proposal"], good1["reasoning"], good1["score"]) == (
        "completed", "Use a write-through cache.", "compare", 1.0)
    assert (good2["status"], good2["model"], good2["score"]) == ("completed", "default-model", 0.25)
    assert good1["tokens"] == 18 and good1["error"] == "" and good1["error_type"] == ""

    assert bad["status"] == "failed" and bad["score"] == 0.0
    assert bad["error_type"] == "http_error"
    assert bad["attempts"] == 2  # max_retries=1
    assert bad["error"] == "HTTP 500 from 127.0.0.1: GPU on fire"
    assert len(failing.requests) == 2 and failing.requests[0].path == "/v1/chat/completions"

    # The description went through the request module, JSON, Ray and HTTP unchanged.
    (rec,) = stub.requests_for("default-model")
    assert rec.messages[1]["content"].startswith(NASTY_DESCRIPTION)
    assert rec.messages[0]["content"] == "As dev, solve: " + NASTY_DESCRIPTION
    assert not os.path.exists("/tmp/pwned")
    check_events(optional_nats_server, did, res, "agent.response.completed.backlog-review.role")


def test_a_description_at_the_gateways_limit_reaches_the_llm_byte_for_byte(private_ray, stub):
    # 256 KiB, the gateway's default limit: a backlog review's task-extraction prompt (~70 KB)
    # with room to spare. It would not fit in an environment variable (128 KiB at most).
    limit = 256 * 1024
    desc = NASTY_DESCRIPTION * (limit // len(NASTY_DESCRIPTION.encode()))
    desc += "y" * (limit - len(desc.encode()))
    stub.set("m-big", llm_stub.ok('{"tasks": []}'))
    data = request_dict(stub.url, [agent("big", "m-big", template="Extract tasks from: {task_description}")],
                        task_description=desc, deliberation_id=new_id(), metadata={"task_type": "TASK_EXTRACTION"})
    proc, res, _ = run_payload(private_ray, data)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert res["status"] == "completed"
    (rec,) = stub.requests_for("m-big")
    assert rec.messages[0]["content"] == "Extract tasks from: " + desc
    assert rec.messages[1]["content"].startswith(desc + "\n\n")


def test_all_agents_failing_fails_the_job(private_ray, stub, optional_nats_server):
    stub.set("m-400", llm_stub.status(400, b'{"error": {"message": "bad model"}}'))
    agents = [agent("x1", "m-400"), agent("x2", "m-400")]
    did = new_id()
    data = request_dict(stub.url, agents, timeout_seconds=60, max_retries=3, deliberation_id=did)
    proc, res, _ = run_payload(private_ray, data, nats=optional_nats_server)
    assert proc.returncode == 1
    assert res["status"] == "failed"
    assert (res["num_agents"], res["completed_agents"], res["failed_agents"]) == (2, 0, 2)
    assert res["error"].startswith("all 2 agents failed: x1: http_error: HTTP 400")
    assert all(a["attempts"] == 1 and a["error_type"] == "http_error" for a in res["agents"])
    assert len(stub.requests) == 2  # 400 is not retried
    check_events(optional_nats_server, did, res, "agent.response.completed")
    if optional_nats_server is not None:
        terminal = optional_nats_server.lifecycle(did)[-1].json["data"]
        assert (terminal["error"], terminal["error_type"]) == (res["error"], "all_agents_failed")


# --- cancelled while it waited for its reservation ----------------------------------------
# Ray starts a PENDING job's driver even after the job was stopped; execute stores the
# cancelled event first. The driver, a real one on a real Ray, must then ask no LLM.


def test_a_deliberation_cancelled_before_it_started_asks_no_llm(private_ray, stub, nats_server):
    stub.set("m-cx", llm_stub.ok("must never be asked"))
    did = new_id()
    nats_server.store_terminal(did, "cancelled", num_agents=2)
    data = request_dict(stub.url, [agent("c1", "m-cx"), agent("c2", "m-cx")], deliberation_id=did)
    proc, res, _ = run_payload(private_ray, data, nats=nats_server)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (res["status"], res["error"], res["num_agents"], res["completed_agents"], res["agents"]) == (
        "cancelled", "cancelled before it started", 2, 0, [])
    assert stub.requests == []
    assert [m.msg_id for m in nats_server.lifecycle(did)] == [f"{did}.terminal"]
    assert nats_server.responses(did) == []
    assert "Design the cache layer" not in proc.stderr


def test_a_deliberation_with_no_stored_end_runs(private_ray, stub, nats_server):
    stub.set("m-run", llm_stub.ok("ran"))
    did = new_id()
    data = request_dict(stub.url, [agent("r1", "m-run")], deliberation_id=did)
    proc, res, _ = run_payload(private_ray, data, nats=nats_server)
    assert proc.returncode == 0 and res["status"] == "completed", proc.stderr[-3000:]
    assert len(stub.requests_for("m-run")) == 1
    check_events(nats_server, did, res, "agent.response.completed")


def test_with_nats_unreachable_a_deliberation_runs(private_ray, stub):
    stub.set("m-down", llm_stub.ok("ran without NATS"))
    did = new_id()
    data = request_dict(stub.url, [agent("u1", "m-down")], deliberation_id=did)
    proc, res, _ = run_payload(private_ray, data, nats_url=f"nats://127.0.0.1:{closed_port()}")
    assert proc.returncode == 0 and res["status"] == "completed", proc.stderr[-3000:]
    assert len(stub.requests_for("m-down")) == 1
    assert "cannot tell whether it was cancelled before it started" in proc.stderr


# --- driver-side failures, in this process (it is a driver of the private Ray too) -------


def flaky_task(job: AgentJob):
    """Task body for the test below: behaves by agent id."""
    if job.agent_id == "boom":
        raise ValueError("kaboom in the task")
    if job.agent_id == "hang":
        with open(job.model, "w") as f:  # the model field carries a pid file path here
            f.write(str(os.getpid()))
        time.sleep(600)
    return run_agent(job)


class Recorder(Events):
    def __init__(self):
        self.calls = []

    def on_agent_done(self, request, agent):
        self.calls.append((agent.agent_id, agent.status, agent.error_type))


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_raising_and_hanging_tasks_are_reported_not_hidden(private_ray, stub, tmp_path):
    pid_file = tmp_path / "hang.pid"
    req = request(
        stub.url,
        agents=[agent("ok", "m-ok"), agent("boom", "m-ok"), agent("hang", str(pid_file))],
        timeout_seconds=5,
        max_retries=0,
    )
    recorder = Recorder()
    started = time.time()
    results = run_deliberation(req, started, EventsGuard(recorder), task_fn=flaky_task)
    elapsed = time.time() - started

    ok, boom, hang = results
    assert (ok.agent_id, ok.status) == ("ok", "completed")
    assert (boom.status, boom.error_type, boom.score) == ("failed", "internal", 0.0)
    assert boom.error == "agent task failed: ValueError: kaboom in the task"
    assert (hang.status, hang.error_type) == ("failed", "timeout")
    assert "no result by the deadline" in hang.error and "cancelled" in hang.error
    # Gave up at the deadline plus the grace (5 s + 2.25 s), not after the task's 600 s.
    assert 7.2 <= elapsed < 14
    # Events: one per agent, the straggler last.
    assert sorted(recorder.calls[:2]) == [("boom", "failed", "internal"), ("ok", "completed", "")]
    assert recorder.calls[2] == ("hang", "failed", "timeout")
    # The straggler was really started, then killed by the cancellation.
    pid = int(pid_file.read_text())
    for _ in range(100):
        if not pid_alive(pid):
            break
        time.sleep(0.1)
    assert not pid_alive(pid)
