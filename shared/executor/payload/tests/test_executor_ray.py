"""The executor as it runs in production: `python -m ray_executor_payload.executor` as the
driver, its Replica actors on a real Ray, deliberations pulled from the real NATS server.

With RAY_ADDRESS set to a dashboard URL (make test: the local head, token from
RAY_AUTH_TOKEN_FILE), the driver is submitted to that head as a Ray job, the payload as its
working_dir. Without it, the driver runs as a subprocess that starts a private local Ray
(RAY_EXECUTOR_LOCAL_RAY), which never touches another cluster. Either way the test ends with
the roll: executor.deploy names another submission and the driver drains and exits 0. A
driver whose NATS server goes away ends too, with status 3, once
EXECUTOR_NATS_LOST_EXIT_SECONDS have passed."""

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

import llm_stub
from executor_env import Env, delib
from helpers import agent
from nats_server import USERS_CONF, NatsServer, stop_process
from ray_executor_payload import records

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
PAYLOAD_DIR = os.path.dirname(TESTS_DIR)


def _head_address():
    addr = os.environ.get("RAY_ADDRESS", "").strip()
    return addr if addr.startswith(("http://", "https://")) else ""


def _token_headers():
    path = os.environ.get("RAY_AUTH_TOKEN_FILE", "").strip() or os.environ.get("RAY_AUTH_TOKEN_PATH", "").strip()
    if not path:
        return {}
    with open(path) as f:
        return {"Authorization": "Bearer " + f.read().strip()}


class _Job:
    """The driver submitted to the Ray head as a job."""

    def __init__(self, address, env):
        from ray.job_submission import JobSubmissionClient

        self.client = JobSubmissionClient(address, headers=_token_headers())
        self.id = self.client.submit_job(
            entrypoint="python -u -m ray_executor_payload.executor",
            submission_id=env["EXECUTOR_SUBMISSION_ID"],
            runtime_env={"working_dir": PAYLOAD_DIR, "excludes": ["tests", "bench", "*.go", "__pycache__"],
                         "env_vars": env},
        )

    def wait(self, timeout):
        from ray.job_submission import JobStatus

        end = time.monotonic() + timeout
        while True:
            status = self.client.get_job_status(self.id)
            if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
                return status == JobStatus.SUCCEEDED
            if time.monotonic() >= end:
                return None
            time.sleep(0.5)

    def logs(self):
        return self.client.get_job_logs(self.id)

    def stop(self):
        self.client.stop_job(self.id)


class _Local:
    """The driver as a subprocess with a private local Ray."""

    def __init__(self, env):
        self.temp = tempfile.mkdtemp(prefix="rxe-", dir="/tmp")
        full = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_EXECUTOR_"))}
        full.update(env)
        full.update({"RAY_EXECUTOR_LOCAL_RAY": "2", "RAY_EXECUTOR_LOCAL_RAY_TEMP_DIR": self.temp,
                     "RAY_AUTH_MODE": "disabled", "PYTHONPATH": PAYLOAD_DIR, "RAY_USAGE_STATS_ENABLED": "0"})
        self.log = open(os.path.join(self.temp, "driver.log"), "w+")
        self.proc = subprocess.Popen([sys.executable, "-u", "-m", "ray_executor_payload.executor"], cwd=PAYLOAD_DIR,
                                     env=full, stdout=self.log, stderr=subprocess.STDOUT)

    def wait(self, timeout):
        try:
            return self.proc.wait(timeout) == 0
        except subprocess.TimeoutExpired:
            return None

    def logs(self):
        self.log.seek(0)
        return self.log.read()

    def stop(self):
        stop_process(self.proc, 30)
        self.log.close()
        shutil.rmtree(self.temp, ignore_errors=True)


# The users of knative/nats/ray-executor-users.conf, as production has them: the test is the
# functions (it provisions, submits, cancels and reads), the executor is its own user.
PASSWORDS = {"RAY_EXECUTOR_FUNCTIONS_NATS_PASSWORD": "functions-pw-" + uuid.uuid4().hex,
             "RAY_EXECUTOR_EXECUTOR_NATS_PASSWORD": "executor-pw-" + uuid.uuid4().hex,
             "RAY_EXECUTOR_READER_NATS_PASSWORD": "reader-pw-" + uuid.uuid4().hex}
EXECUTOR_USER = ("ray-executor-executor", PASSWORDS["RAY_EXECUTOR_EXECUTOR_NATS_PASSWORD"])


async def _refused_to_the_executor(address):
    """What the executor's user must not do, each tried on the real server: the list of
    the ones NATS let through (empty when the permissions hold)."""
    import nats
    from nats.js.api import ConsumerConfig, StreamConfig

    async def quiet(exc):  # each refusal also arrives here as an asynchronous -ERR
        pass

    nc = await nats.connect(address, user=EXECUTOR_USER[0], password=EXECUTOR_USER[1], connect_timeout=5,
                            allow_reconnect=False, error_cb=quiet)
    js = nc.jetstream(timeout=2)
    attempts = {
        "queue work": lambda: js.publish(records.WORK_SUBJECT_PREFIX + "forged", b"{}"),
        "create a stream": lambda: js.add_stream(StreamConfig(name="EXFIL", subjects=["exfil.>"])),
        "purge the work queue": lambda: js.purge_stream(records.DEFAULT_WORK_STREAM),
        "purge the counters": lambda: js.purge_stream(records.DEFAULT_COUNTERS_STREAM),
        "purge the events": lambda: js.purge_stream(records.DEFAULT_EVENTS_STREAM),
        "delete the records": lambda: js.delete_stream("KV_" + records.DEFAULT_RECORDS_BUCKET),
        "delete the work consumer": lambda: js.delete_consumer(records.DEFAULT_WORK_STREAM, records.WORK_CONSUMER),
        "follow the events": lambda: js.add_consumer(records.DEFAULT_EVENTS_STREAM, ConsumerConfig()),
        "read agent responses": lambda: js.stream_info("AGENT_RESPONSES"),
    }
    allowed = []
    try:
        for name, attempt in attempts.items():
            try:
                await attempt()
                allowed.append(name)
            except Exception:  # noqa: BLE001 - a permissions violation surfaces as a timeout or an error
                pass
    finally:
        await nc.close()
    return allowed


def test_the_driver_runs_replica_actors_on_ray_as_its_own_nats_user_and_rolls(nats_server, stub, tmp_path, otlp_sink):
    stub.set("m-ray", llm_stub.ok("from a replica"))
    stub.set("m-slow", llm_stub.sleep(60))
    own = NatsServer(nats_server.binary, str(tmp_path), config=USERS_CONF, env=PASSWORDS,
                     user=("ray-executor-functions", PASSWORDS["RAY_EXECUTOR_FUNCTIONS_NATS_PASSWORD"])).start()
    submission = f"ray-executor-test-{uuid.uuid4().hex[:8]}"
    # In production the user and password are the Ray pods' environment; a test has only the
    # job's, on its own server.
    env = {
        "RAY_EXECUTOR_NATS_URL": own.address, "RAY_EXECUTOR_NATS_USER": EXECUTOR_USER[0],
        "RAY_EXECUTOR_NATS_PASSWORD": EXECUTOR_USER[1],
        "EXECUTOR_VERSION": "test", "EXECUTOR_SUBMISSION_ID": submission,
        "EXECUTOR_MIN_REPLICAS": "1", "EXECUTOR_MAX_REPLICAS": "2", "EXECUTOR_REPLICA_CONCURRENCY": "8",
        # Traces and metrics from the Replica actors (processes of their own) to a real receiver.
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_sink.http_endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_METRIC_EXPORT_INTERVAL": "500",
    }
    batch = [delib(stub.url, [agent("r1", "m-ray"), agent("r2", "m-ray")]) for _ in range(3)]
    caller = f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"
    slow = delib(stub.url, [agent("r1", "m-slow")])
    driver = None
    try:
        asyncio.run(Env.reset(own.url))
        address = _head_address()
        driver = _Job(address, env) if address else _Local(env)

        async def go():
            async with Env(own.url) as e:
                await e.store.put_json(records.DEPLOY_KEY, {"version": "test", "submission_id": submission,
                                                            "generation": 1, "at": records.format_time(time.time())})
                # The driver is up once it heartbeats; fail fast if it died instead.
                end = time.monotonic() + 120
                while await e.store.get_json(records.EXECUTOR_KEY) is None:
                    assert driver.wait(0) is None, driver.logs()[-4000:]
                    assert time.monotonic() < end, "no executor heartbeat within 120 s:\n" + driver.logs()[-4000:]
                    await asyncio.sleep(0.5)
                for i, data in enumerate(batch):
                    rec = records.new_record(data["deliberation_id"], task_id=data["task_id"], num_agents=2,
                                             timeout_seconds=data["timeout_seconds"])
                    rec["traceparent"], rec["owner"] = (caller, "alice") if i == 0 else ("", "")
                    await e.submit(data, record=rec)
                for data in batch:
                    rec = await e.wait_state(data["deliberation_id"], records.TERMINAL_STATES, timeout=120)
                    assert rec["state"] == "completed", rec
                    assert rec["executor"].startswith(submission + "/replica-")
                    assert rec["outcome"]["agents"][0]["proposal"] == "from a replica"
                # The heartbeat counts the replicas that answer the driver: the first beats
                # may come before the replica actor is up, the ones after its work may not.
                hb = None
                for _ in range(150):
                    hb = await e.store.get_json(records.EXECUTOR_KEY)
                    if hb and hb[0]["replicas"] >= 1:
                        break
                    await asyncio.sleep(0.1)
                assert hb and hb[0]["submission_id"] == submission and hb[0]["replicas"] >= 1, hb
                # The counter is counted after the record is written (then the ack): wait for it.
                for _ in range(100):
                    if await e.counter("completed") == 3:
                        break
                    await asyncio.sleep(0.1)
                assert await e.counter("completed") == 3
                # The executor's user took them out of the active index, leaving no marker.
                for _ in range(100):
                    if await e.index_subjects() == 0:
                        break
                    await asyncio.sleep(0.1)
                assert await e.index_subjects() == 0
                # A running deliberation hears its cancel on the executor's subscription.
                did = slow["deliberation_id"]
                await e.submit(slow)
                await e.wait_state(did, ("running",), timeout=60)
                await e.store.transition(did, lambda r: records.cancel(r, "stop it", time.time())[0])
                await e.nc.publish(records.CANCEL_SUBJECT_PREFIX + did, b"")
                rec = await e.wait_state(did, records.TERMINAL_STATES, timeout=30)
                assert (rec["state"], rec["reason"]) == ("cancelled", "stop it"), rec
                assert [k for k, _, _ in await e.events(did)] == ["started", "cancelled"]
                assert await _refused_to_the_executor(own.address) == []
                await e.store.put_json(records.DEPLOY_KEY, {"version": "next", "submission_id": "ray-executor-next-2",
                                                            "generation": 2, "at": records.format_time(time.time())})

        asyncio.run(go())
        ok = driver.wait(60)
        assert ok is True, driver.logs()[-4000:]
        logs = driver.logs()
        assert "superseded by ray-executor-next-2" in logs
        assert "Design the cache layer" not in logs
        assert "ermissions" not in logs, logs[-4000:]  # no permissions violation on the way
        assert "Permissions Violation" not in own.tail()
    finally:
        if driver is not None:
            driver.stop()
        own.stop()
    assert len([r for r in stub.requests if r.model == "m-ray"]) == 6
    # The first deliberation's spans, from a replica: one trace from the caller's traceparent
    # to the LLM requests, which carried their llm.chat spans' context.
    trace_id = caller[3:35]
    spans = [s for s in otlp_sink.wait(otlp_sink.spans, lambda got: len([s for s in got if s["trace_id"] == trace_id]) >= 5)
             if s["trace_id"] == trace_id]
    (d,) = [s for s in spans if s["name"] == "deliberation"]
    assert d["parent_span_id"] == caller[36:52] and d["service.name"] == "ray-executor-executor", d
    assert (d["attributes"]["deliberation.id"], d["attributes"]["caller"], d["attributes"]["deliberation.outcome"]) == (
        batch[0]["deliberation_id"], "alice", "completed")
    agent_ids = {s["span_id"] for s in spans if s["name"] == "agent" and s["parent_span_id"] == d["span_id"]}
    llm_ids = {s["span_id"] for s in spans if s["name"] == "llm.chat" and s["parent_span_id"] in agent_ids}
    assert len(agent_ids) == 2 and len(llm_ids) == 2, spans
    assert {r.headers["traceparent"][36:52] for r in stub.requests if trace_id in r.headers.get("traceparent", "")} == llm_ids
    otlp_sink.wait(otlp_sink.metrics, lambda m: any(p["name"] == "rex.executor.deliberation.duration"
                                                    and p["attributes"] == {"outcome": "completed"} for p in m))


def test_a_driver_whose_nats_is_gone_exits_non_zero(nats_server, tmp_path):
    own = NatsServer(nats_server.binary, str(tmp_path)).start()  # stopped below: not the shared one
    submission = f"ray-executor-test-{uuid.uuid4().hex[:8]}"
    env = {
        "RAY_EXECUTOR_NATS_URL": own.url, "EXECUTOR_VERSION": "test", "EXECUTOR_SUBMISSION_ID": submission,
        "EXECUTOR_MIN_REPLICAS": "1", "EXECUTOR_MAX_REPLICAS": "1", "EXECUTOR_NATS_LOST_EXIT_SECONDS": "3",
    }
    driver = None
    try:
        asyncio.run(Env.reset(own.url))
        address = _head_address()
        driver = _Job(address, env) if address else _Local(env)

        async def up():
            async with Env(own.url) as e:
                end = time.monotonic() + 120
                while await e.store.get_json(records.EXECUTOR_KEY) is None:
                    assert driver.wait(0) is None, driver.logs()[-4000:]
                    assert time.monotonic() < end, "no executor heartbeat within 120 s:\n" + driver.logs()[-4000:]
                    await asyncio.sleep(0.5)

        asyncio.run(up())
        own.stop()
        ok = driver.wait(90)
        logs = driver.logs()
        assert ok is False, f"got {ok} (None: still running), want the driver to fail:\n" + logs[-4000:]
        assert "unreachable for" in logs and "exiting with status 3" in logs, logs[-4000:]
        if isinstance(driver, _Local):
            assert driver.proc.returncode == 3
    finally:
        if driver is not None:
            driver.stop()
        own.stop()


def test_bad_settings_fail_the_driver_at_start():
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_EXECUTOR_")}
    env.update({"PYTHONPATH": PAYLOAD_DIR, "EXECUTOR_MAX_REPLICAS": "zero"})
    proc = subprocess.run([sys.executable, "-m", "ray_executor_payload.executor"], cwd=PAYLOAD_DIR, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "RAY_EXECUTOR_NATS_URL is required" in proc.stderr and "EXECUTOR_MAX_REPLICAS" in proc.stderr
