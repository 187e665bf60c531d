"""The executor's driver logic (Supervisor) with in-process replicas, on the real NATS server:
heartbeat, scaling on the backlog, and the roll when executor.deploy names another submission."""

import asyncio
import time

import llm_stub
from executor_env import Env, delib, settings_for
from helpers import agent
from ray_executor_payload import records
from ray_executor_payload.executor import LocalReplicas, Supervisor
from ray_executor_payload.agents import setup_logging


def test_the_supervisor_scales_on_the_backlog_heartbeats_and_rolls(nats_server, stub):
    setup_logging()
    stub.set("m-busy", llm_stub.sleep(1.5, llm_stub.ok("done")))
    batch = [delib(stub.url, [agent("b1", "m-busy")]) for _ in range(6)]

    async def go():
        await Env.reset(nats_server.url)
        settings = settings_for(nats_server.url, concurrency=2, min_replicas=1, max_replicas=3,
                                version="v1", submission_id="ray-executor-v1-1")
        replicas = LocalReplicas(settings)
        sup = Supervisor(settings, replicas)
        async with Env(nats_server.url) as env:
            await env.store.put_json(records.DEPLOY_KEY, {"version": "v1", "submission_id": "ray-executor-v1-1",
                                                          "generation": 1, "at": records.format_time(time.time())})
            running = asyncio.create_task(sup.run())
            try:
                for _ in range(100):
                    if sup.live:
                        break
                    await asyncio.sleep(0.05)
                assert len(sup.live) == 1
                hb = None
                for _ in range(100):
                    hb = await env.store.get_json(records.EXECUTOR_KEY)
                    if hb:
                        break
                    await asyncio.sleep(0.05)
                assert hb[0]["submission_id"] == "ray-executor-v1-1" and hb[0]["max_replicas"] == 3
                for data in batch:
                    await env.submit(data)
                # backlog 6 / concurrency 2 -> 3 replicas
                for _ in range(100):
                    if len(sup.live) == 3:
                        break
                    await asyncio.sleep(0.05)
                assert len(sup.live) == 3
                for data in batch:
                    rec = await env.wait_state(data["deliberation_id"], records.TERMINAL_STATES, timeout=20)
                    assert rec["state"] == "completed"
                # Back to the minimum once the queue is empty (no scale-down delay here).
                for _ in range(100):
                    if len(sup.live) == 1 and not sup.draining:
                        break
                    await asyncio.sleep(0.05)
                assert len(sup.live) == 1 and not sup.draining
                assert not running.done()
                # The roll: another submission is named; the driver drains and returns.
                await env.store.put_json(records.DEPLOY_KEY, {"version": "v2", "submission_id": "ray-executor-v2-2",
                                                              "generation": 2, "at": records.format_time(time.time())})
                reason = await asyncio.wait_for(running, 10)
            finally:
                if not running.done():
                    sup.stop.set()
                    await running
            assert reason == "superseded by ray-executor-v2-2"
            assert all(w.nc.is_closed for w in replicas.created)
            assert sum(w.handled for w in replicas.created) == 6
            assert await env.counter("completed") == 6

    asyncio.run(go())
