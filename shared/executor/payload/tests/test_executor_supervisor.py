"""The executor's driver logic (Supervisor) with in-process replicas, on the real NATS server:
heartbeat, scaling on the backlog, the roll when executor.deploy names another submission,
and giving up when NATS has been unreachable for EXECUTOR_NATS_LOST_EXIT_SECONDS."""

import asyncio
from dataclasses import fields
import time
from typing import Any, Dict

import llm_stub
from executor_env import NAMES, Env, delib, settings_for
from helpers import agent
from nats_server import NatsServer, closed_port
from ray_executor_payload import executor, records
from ray_executor_payload.agents import setup_logging
from ray_executor_payload.executor import LocalReplicas, ReplicaBody, Supervisor, _Replica


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


def test_the_heartbeat_counts_only_the_replicas_that_answer(nats_server):
    """A driver that outlived its Ray cluster still beats; its lost replicas do not count, so
    GetStatus can tell it from an executor that runs work."""

    class HalfLost:
        async def stats(self, handle: str) -> Dict[str, Any]:
            if handle == "alive":
                return {"in_flight": 2}
            raise RuntimeError("the actor's node died")

    async def go():
        await Env.reset(nats_server.url)
        sup = Supervisor(settings_for(nats_server.url, version="v1", submission_id="s-1"), HalfLost())
        async with Env(nats_server.url) as env:
            sup.store = env.store
            sup.live = [_Replica("r-1", "alive"), _Replica("r-2", "lost")]
            await sup.heartbeat()
            hb = await env.store.get_json(records.EXECUTOR_KEY)
            assert hb is not None and hb[0]["replicas"] == 1 and hb[0]["in_flight"] == 2
            sup.live = [_Replica("r-2", "lost")]
            await sup.heartbeat()
            hb = await env.store.get_json(records.EXECUTOR_KEY)
            assert hb is not None and hb[0]["replicas"] == 0 and hb[0]["submission_id"] == "s-1"

    asyncio.run(go())


def test_the_supervisor_drains_and_gives_up_when_nats_is_gone(nats_server, stub, tmp_path, capsys):
    setup_logging()
    stub.set("m-ok", llm_stub.ok("done"))
    own = NatsServer(nats_server.binary, str(tmp_path)).start()  # stopped below: not the shared one
    try:
        async def go():
            await Env.reset(own.url)
            settings = settings_for(own.url, nats_lost_exit_seconds=2.0, version="v1", submission_id="ray-executor-v1-1")
            replicas = LocalReplicas(settings)
            sup = Supervisor(settings, replicas)
            running = asyncio.create_task(sup.run())
            try:
                async with Env(own.url) as env:
                    data = delib(stub.url, [agent("a1", "m-ok")])
                    await env.submit(data)
                    rec = await env.wait_state(data["deliberation_id"], records.TERMINAL_STATES, timeout=20)
                    assert rec["state"] == "completed"
                    for _ in range(100):
                        if await env.store.get_json(records.EXECUTOR_KEY):
                            break
                        await asyncio.sleep(0.05)
                    assert await env.store.get_json(records.EXECUTOR_KEY)
                    # The record is written before the work message is acked: wait for the
                    # ack (handled counts acked work), or stopping NATS below would race it.
                    for _ in range(100):
                        if replicas.created and replicas.created[0].handled == 1:
                            break
                        await asyncio.sleep(0.05)
                # A NATS that was there and went away: the supervisor keeps trying (each
                # round fails) until the setting runs out, then drains and returns.
                own.stop()
                stopped = time.monotonic()
                await asyncio.sleep(1.0)
                assert not running.done()
                reason = await asyncio.wait_for(running, 20)
                waited = time.monotonic() - stopped
            finally:
                if not running.done():
                    sup.stop.set()
                    await running
            assert sup.nats_lost and reason.startswith("NATS unreachable for ")
            assert 2.0 <= waited < 2.0 + 10, waited
            assert sup.live == [] and not sup.draining
            assert all(w._stopped.is_set() for w in replicas.created)
            assert replicas.created[0].handled == 1

        asyncio.run(go())
    finally:
        own.stop()
    lines = errors_logged(capsys)
    assert any(line.startswith(f"NATS at {own.url} unreachable for ") and "EXECUTOR_NATS_LOST_EXIT_SECONDS=2" in line
               and "exiting with status 3" in line for line in lines), lines


def test_the_supervisor_gives_up_when_nats_never_answers_at_start(capsys):
    setup_logging()
    url = f"nats://127.0.0.1:{closed_port()}"

    async def go():
        settings = settings_for(url, nats_lost_exit_seconds=1.0)
        sup = Supervisor(settings, LocalReplicas(settings))
        start = time.monotonic()
        reason = await asyncio.wait_for(sup.run(), 15)
        return sup, reason, time.monotonic() - start

    sup, reason, took = asyncio.run(go())
    assert sup.nats_lost and reason == "NATS unreachable for 1s at start" and 1.0 <= took < 5, (reason, took)
    assert sup.live == [] and sup.replicas.created == []
    lines = errors_logged(capsys)
    assert any(line.startswith(f"NATS at {url} not reachable within 1s of the executor's start (last error: ")
               and "Connect call failed" in line and "exiting with status 3" in line and "PAYLOAD_NATS_URL" in line
               for line in lines), lines


def test_the_start_bound_is_its_own_and_below_the_lost_bound():
    """A driver that never reaches NATS exits after start_nats_seconds (90 by default, below
    the deployers' 3-min StartupGrace) however long EXECUTOR_NATS_LOST_EXIT_SECONDS is."""
    setup_logging()
    url = f"nats://127.0.0.1:{closed_port()}"
    assert executor.START_NATS_SECONDS == 90.0 < 180

    async def go():
        settings = settings_for(url, nats_lost_exit_seconds=600.0, start_nats_seconds=1.0)
        sup = Supervisor(settings, LocalReplicas(settings))
        reason = await asyncio.wait_for(sup.run(), 15)
        return sup, reason

    sup, reason = asyncio.run(go())
    assert sup.nats_lost and reason == "NATS unreachable for 1s at start", reason


def errors_logged(capsys) -> list:
    """The payload's ERROR lines on stderr so far, without their prefix (its logger does not
    propagate, so caplog never sees them)."""
    marker = " ERROR ray_executor_payload: "
    return [line.split(marker, 1)[1] for line in capsys.readouterr().err.splitlines() if marker in line]


def test_a_replica_whose_start_failed_starts_afresh(nats_server, stub, tmp_path, monkeypatch):
    """A replica's start fails after it connected (NATS went away while it set up: in CI a
    JetStream request timed out; here the records bucket is missing). The next run() starts
    the worker afresh, so once NATS is whole the replica pulls work. Before, run() re-raised
    the first failure on every call and the replica never pulled again."""
    setup_logging()
    stub.set("m-ok", llm_stub.ok("done"))
    own = NatsServer(nats_server.binary, str(tmp_path)).start()  # its bucket is deleted below
    monkeypatch.setenv("RAY_EXECUTOR_NATS_URL", own.url)
    try:
        async def go():
            import nats

            await Env.reset(own.url)
            nc = await nats.connect(own.url, connect_timeout=5)
            await nc.jetstream(timeout=5).delete_stream(f"KV_{NAMES.bucket}")
            await nc.close()
            settings = settings_for(own.url)
            body = ReplicaBody("replica-1", {f.name: getattr(settings, f.name) for f in fields(settings)})
            for _ in range(2):  # the supervisor calls run() again each tick
                try:
                    await asyncio.wait_for(body.run(), 10)
                    raise AssertionError("run() returned with the records bucket missing")
                except asyncio.TimeoutError:
                    raise
                except Exception as exc:  # noqa: BLE001 - the failed start, as the supervisor sees it
                    assert "not found" in str(exc).lower() or "bucket" in str(exc).lower(), repr(exc)
                    assert body.worker.nc is None, "a failed start must leave no half-made connection"
            await Env.reset(own.url)  # NATS whole again
            running = asyncio.create_task(body.run())
            try:
                async with Env(own.url) as env:
                    data = delib(stub.url, [agent("a1", "m-ok")])
                    await env.submit(data)
                    rec = await env.wait_state(data["deliberation_id"], records.TERMINAL_STATES, timeout=20)
                    assert rec["state"] == "completed", rec
            finally:
                await body.drain()
                await asyncio.wait_for(running, 10)

        asyncio.run(go())
    finally:
        own.stop()
