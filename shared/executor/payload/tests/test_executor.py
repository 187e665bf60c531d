"""The standing executor's Worker against the real NATS server and the LLM stub (specs/records.md).

Each test re-provisions the work stream, its consumer, the counters stream and the records
bucket (their subjects are fixed by the spec) and runs Workers in this process."""

import asyncio
import logging
import time

import pytest

import llm_stub
from executor_env import Env, delib, worker
from helpers import agent
from ray_executor_payload import records
from ray_executor_payload.agents import log, setup_logging


@pytest.fixture(autouse=True)
def _logging():
    setup_logging()
    yield
    log.setLevel(logging.INFO)


def run(coro):
    return asyncio.run(coro)


def test_a_deliberation_completes_with_its_record_events_counters_and_ack(nats_server, stub, capsys):
    stub.set("m-ok", llm_stub.ok("proposal A"))
    stub.set("m-bad", llm_stub.status(400, b'{"error": {"message": "bad model"}}'))
    data = delib(stub.url, [agent("a1", "m-ok"), agent("a2", "m-bad")], max_retries=1)
    did = data["deliberation_id"]
    log.setLevel(logging.DEBUG)  # EXECUTOR_LOG_LEVEL=debug: a line as it starts and ends

    async def go():
        await Env.reset(nats_server.url)
        async with Env(nats_server.url) as env:
            await env.submit(data)
            assert (await env.active(did))[0]["state"] == "pending"
            w = worker(nats_server.url)
            await w.start()
            try:
                rec = await env.wait_state(did, records.TERMINAL_STATES)
            finally:
                await w.drain()
            assert rec["state"] == "completed" and rec["attempts"] == 1 and rec["executor"] == "w1"
            assert rec["started_at"] and rec["ended_at"] and rec["error"] == ""
            out = rec["outcome"]
            assert (out["status"], out["completed_agents"], out["failed_agents"]) == ("completed", 1, 1)
            assert out["agents"][0]["proposal"] == "proposal A"
            assert out["agents"][1]["error_type"] == "http_error" and out["agents"][1]["attempts"] == 1
            assert await env.active(did) is None
            assert await env.index_subjects() == 0, "the index entry left a delete marker"
            assert await env.work_messages() == 0
            evs = await env.events(did)
            kinds = [k for k, _, _ in evs]
            assert kinds[0] == "started" and kinds.count("completed") == 1 and kinds[-1] == "completed"
            assert sorted(kinds[1:-1]) == ["agent_completed", "agent_failed"]
            term = evs[-1][2]
            assert (term["status"], term["completed_agents"], term["failed_agents"]) == ("completed", 1, 1)
            assert await env.counter("completed") == 1
            assert await env.counter("duration_ms") == records.duration_ms(rec) > 0
            assert await env.counter("failed") == 0

    run(go())
    assert len(stub.requests) == 2
    # Prompts are never logged, not even at debug, where the deliberation's lines are.
    logged = capsys.readouterr().err
    assert f'"event":"deliberation_started","id":"{did}"' in logged and f'"event":"deliberation_ended","id":"{did}"' in logged
    assert "Design the cache layer" not in logged


def test_all_agents_failing_ends_failed(nats_server, stub, capsys):
    stub.set("m-400", llm_stub.status(400))
    data = delib(stub.url, [agent("x1", "m-400")], max_retries=0)
    did = data["deliberation_id"]

    async def go():
        await Env.reset(nats_server.url)
        async with Env(nats_server.url) as env:
            rec = records.new_record(did, task_id=data["task_id"], num_agents=1, timeout_seconds=data["timeout_seconds"])
            rec["owner"] = "alice"
            await env.submit(data, record=rec)
            w = worker(nats_server.url)
            await w.start()
            try:
                rec = await env.wait_state(did, records.TERMINAL_STATES)
            finally:
                await w.drain()
            assert (rec["state"], rec["error_type"]) == ("failed", "all_agents_failed")
            assert rec["error"].startswith("all 1 agents failed: x1: http_error")
            assert await env.counter("failed") == 1
            evs = await env.events(did)
            assert evs[-1][0] == "failed" and evs[-1][2]["error_type"] == "all_agents_failed"
            # The owner's own counters too (list's statistics for a caller that is no admin).
            assert await env.counter(records.owner_counter("failed", "alice")) == 1
            assert await env.counter(records.owner_counter("failed", "bob")) == 0
            assert await env.counter(records.owner_counter("duration_ms", "alice")) == await env.counter("duration_ms")

    run(go())
    # At the default level (info) a deliberation adds no line: the executor's logs grow with
    # events, not with load (EXECUTOR_LOG_LEVEL).
    logged = capsys.readouterr().err
    assert did not in logged, logged[-2000:]


def test_owner_counters_are_named_as_the_go_side_names_them():
    # The vector of shared/records' TestOwnerCounter.
    assert records.owner_counter("completed", "alice") == "completed-by-2bd806c97f0e00af"


def test_a_deliberation_cancelled_while_queued_runs_no_agent(nats_server, stub):
    stub.set("m-never", llm_stub.ok("never asked"))
    data = delib(stub.url, [agent("c1", "m-never")])
    did = data["deliberation_id"]

    async def go():
        await Env.reset(nats_server.url)
        async with Env(nats_server.url) as env:
            await env.submit(data)
            # execute's Cancel of a pending record: it ends at once.
            rec, _ = await env.store.transition(did, lambda r: records.cancel(r, "user asked", time.time())[0])
            assert rec["state"] == "cancelled"
            w = worker(nats_server.url)
            await w.start()
            try:
                for _ in range(100):
                    if await env.work_messages() == 0:
                        break
                    await asyncio.sleep(0.05)
            finally:
                await w.drain()
            assert await env.work_messages() == 0
            rec = await env.record(did)
            assert (rec["state"], rec["reason"], rec["started_at"]) == ("cancelled", "user asked", "")
            evs = await env.events(did)
            assert [(k, i) for k, i, _ in evs] == [("cancelled", f"{did}.terminal")]
            assert evs[0][2]["reason"] == "user asked"
            assert await env.active(did) is None
            assert await env.counter("cancelled") == 1

    run(go())
    assert stub.requests == []


def test_a_running_deliberation_is_cancelled_within_a_second(nats_server, stub):
    stub.set("m-slow", llm_stub.sleep(30))
    data = delib(stub.url, [agent("s1", "m-slow"), agent("s2", "m-slow")], timeout_seconds=60)
    did = data["deliberation_id"]

    async def go():
        await Env.reset(nats_server.url)
        async with Env(nats_server.url) as env:
            await env.submit(data)
            w = worker(nats_server.url, in_progress_seconds=30)  # only the signal can cancel it in time
            await w.start()
            try:
                await env.wait_state(did, ["running"])
                while len(stub.requests) < 2:
                    await asyncio.sleep(0.05)
                # execute's Cancel of a running record: mark it, then signal.
                await env.store.transition(did, lambda r: records.cancel(r, "stop it", time.time())[0])
                t0 = time.monotonic()
                await env.nc.publish(records.CANCEL_SUBJECT_PREFIX + did, b"")
                rec = await env.wait_state(did, records.TERMINAL_STATES, timeout=5)
                elapsed = time.monotonic() - t0
            finally:
                await w.drain()
            assert rec["state"] == "cancelled" and rec["reason"] == "stop it" and rec["outcome"] is None
            assert elapsed < 1.0, elapsed
            assert await env.active(did) is None
            assert await env.work_messages() == 0
            kinds = [k for k, _, _ in await env.events(did)]
            assert kinds == ["started", "cancelled"]
            assert await env.counter("cancelled") == 1

    run(go())


def _hang_first(stub, n, body):
    if n == 1:
        stub.closing.wait(60)
    return llm_stub.Reply(200, llm_stub.completion_json("second try"))


def test_a_deliberation_of_a_dead_worker_is_redelivered_and_finished_once(nats_server, stub):
    stub.set("m-hang", _hang_first)
    data = delib(stub.url, [agent("h1", "m-hang")], timeout_seconds=30)
    did = data["deliberation_id"]

    async def go():
        await Env.reset(nats_server.url, ack_wait=1.5)
        async with Env(nats_server.url) as env:
            await env.submit(data)
            a = worker(nats_server.url, "dies", in_progress_seconds=60)
            await a.start()
            await env.wait_state(did, ["running"])
            while not stub.requests:
                await asyncio.sleep(0.05)
            await a.abort()  # no ack: JetStream redelivers after AckWait
            b = worker(nats_server.url, "survivor", in_progress_seconds=0.5)
            await b.start()
            try:
                rec = await env.wait_state(did, records.TERMINAL_STATES, timeout=15)
            finally:
                await b.drain()
            assert (rec["state"], rec["attempts"], rec["executor"]) == ("completed", 2, "survivor")
            assert rec["outcome"]["agents"][0]["proposal"] == "second try"
            kinds = [k for k, _, _ in await env.events(did)]
            assert kinds == ["started", "agent_completed", "completed"]
            assert await env.counter("completed") == 1
            assert await env.work_messages() == 0

    run(go())


def test_more_deliveries_than_allowed_end_executor_lost(nats_server, stub):
    stub.set("m-hang2", lambda s, n, b: (s.closing.wait(60), llm_stub.Reply(500))[1])
    data = delib(stub.url, [agent("l1", "m-hang2")], timeout_seconds=30)
    did = data["deliberation_id"]

    async def go():
        await Env.reset(nats_server.url, ack_wait=1.0)
        async with Env(nats_server.url) as env:
            await env.submit(data)
            a = worker(nats_server.url, "dies", in_progress_seconds=60)
            await a.start()
            await env.wait_state(did, ["running"])
            await a.abort()
            b = worker(nats_server.url, "next", max_deliveries=1)
            await b.start()
            try:
                rec = await env.wait_state(did, records.TERMINAL_STATES, timeout=15)
            finally:
                await b.drain()
            assert (rec["state"], rec["error_type"]) == ("failed", "executor_lost")
            assert "delivered 2 times" in rec["error"] and "1 allowed" in rec["error"]
            assert rec["outcome"] is None
            evs = await env.events(did)
            assert [k for k, _, _ in evs] == ["started", "failed"]
            assert evs[-1][2]["error_type"] == "executor_lost"
            assert await env.active(did) is None
            assert await env.counter("failed") == 1
            assert await env.work_messages() == 0

    run(go())
    assert len(stub.requests) == 1


def test_a_terminal_record_pulled_again_publishes_no_second_end(nats_server, stub):
    stub.set("m-once", llm_stub.ok("once"))
    data = delib(stub.url, [agent("o1", "m-once")])
    did = data["deliberation_id"]

    async def go():
        await Env.reset(nats_server.url)
        async with Env(nats_server.url) as env:
            await env.submit(data)
            w = worker(nats_server.url)
            await w.start()
            try:
                await env.wait_state(did, records.TERMINAL_STATES)
                while await env.work_messages():
                    await asyncio.sleep(0.05)
                before = await env.record(did)
                await env.publish_work(data, f"{did}.again")  # a copy past the duplicate window
                for _ in range(100):
                    if w.handled == 2:
                        break
                    await asyncio.sleep(0.05)
                assert w.handled == 2
            finally:
                await w.drain()
            assert await env.record(did) == before
            kinds = [k for k, _, _ in await env.events(did)]
            assert kinds.count("completed") == 1 and kinds.count("started") == 1
            assert await env.counter("completed") == 1
            assert await env.work_messages() == 0

    run(go())
    assert len(stub.requests) == 1


def test_a_record_ended_by_someone_else_meanwhile_is_not_overwritten(nats_server, stub):
    stub.set("m-late", llm_stub.sleep(1.0, llm_stub.ok("too late")))
    data = delib(stub.url, [agent("d1", "m-late")])
    did = data["deliberation_id"]

    async def go():
        await Env.reset(nats_server.url)
        async with Env(nats_server.url) as env:
            await env.submit(data)
            w = worker(nats_server.url, in_progress_seconds=30)
            await w.start()
            try:
                await env.wait_state(did, ["running"])
                # The gateway's deadline reconciler ends it while the agent still runs.
                await env.store.transition(did, lambda r: records.fail(r, "deadline_exceeded", "too slow", time.time()))
                for _ in range(100):
                    if w.handled:
                        break
                    await asyncio.sleep(0.05)
            finally:
                await w.drain()
            rec = await env.record(did)
            assert (rec["state"], rec["error_type"], rec["outcome"]) == ("failed", "deadline_exceeded", None)
            evs = await env.events(did)
            assert [k for k, _, _ in evs][-1] == "failed" and evs[-1][2]["error_type"] == "deadline_exceeded"
            assert [k for k, _, _ in evs].count("failed") == 1
            assert await env.active(did) is None
            assert await env.work_messages() == 0

    run(go())


def test_a_record_with_no_record_is_acked(nats_server, stub):
    data = delib(stub.url, [agent("n1", "m-any")])

    async def go():
        await Env.reset(nats_server.url)
        async with Env(nats_server.url) as env:
            await env.publish_work(data, data["deliberation_id"])
            w = worker(nats_server.url)
            await w.start()
            try:
                for _ in range(100):
                    if await env.work_messages() == 0:
                        break
                    await asyncio.sleep(0.05)
            finally:
                await w.drain()
            assert await env.work_messages() == 0

    run(go())
    assert stub.requests == []


def test_an_unreadable_record_drops_its_work_and_the_rest_goes_on(nats_server, stub):
    """One bad record never stops a pass over the others: its work message is acked and
    dropped (it could only be redelivered forever), and the next deliberation completes."""
    bad = delib(stub.url, [agent("b1", "m-any")])
    good = delib(stub.url, [agent("g1", "m-any")])

    async def go():
        await Env.reset(nats_server.url)
        async with Env(nats_server.url) as env:
            assert env.store is not None
            await env.store.kv.put(records.record_key(bad["deliberation_id"]), b"{not a record")
            await env.publish_work(bad, bad["deliberation_id"])
            await env.submit(good)
            w = worker(nats_server.url)
            await w.start()
            try:
                rec = await env.wait_state(good["deliberation_id"], records.TERMINAL_STATES, timeout=20)
                assert rec["state"] == "completed"
                for _ in range(100):
                    if await env.work_messages() == 0:
                        break
                    await asyncio.sleep(0.05)
            finally:
                await w.drain()
            assert await env.work_messages() == 0
            raw = await env.store.kv.get(records.record_key(bad["deliberation_id"]))
            assert raw.value == b"{not a record"

    run(go())
    assert len(stub.requests) == 1
