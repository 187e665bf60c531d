"""The record state machine, the executor's settings and its asyncio LLM path (against the stub)."""

import asyncio
import logging
import time

import pytest

import llm_stub
from ray_executor_payload import allm, llm, records
from ray_executor_payload.executor import SettingsError, desired_replicas, ray_init_kwargs, settings_from_env

T0 = 1_800_000_000.25


def test_times_round_trip_in_gos_rfc3339nano_form():
    assert records.format_time(1_800_000_000.0) == "2027-01-15T08:00:00Z"
    assert records.format_time(T0) == "2027-01-15T08:00:00.25Z"
    assert records.parse_time("2027-01-15T08:00:00.250000001Z") == pytest.approx(T0)
    assert records.parse_time("") is None and records.parse_time("yesterday") is None


def test_the_state_machine_mirrors_domain_record():
    rec = records.new_record("d1", task_id="t", num_agents=2, timeout_seconds=60, now=T0)
    assert rec["state"] == "pending" and rec["deadline"] == records.format_time(T0 + 90)
    run1 = records.start(dict(rec, owner="alice"), 1, "r1", T0 + 1)
    run2 = records.start(run1, 2, "r2", T0 + 5)
    assert (run2["state"], run2["attempts"], run2["executor"], run2["started_at"]) == (
        "running", 2, "r2", records.format_time(T0 + 1))
    assert rec["state"] == "pending"  # pure: the input is unchanged
    done = records.finish(run2, {"status": "completed", "completed_agents": 2}, T0 + 3)
    assert done["state"] == "completed" and records.duration_ms(done) == 2000
    failed = records.finish(run2, {"status": "failed", "error": "all 2 agents failed"}, T0 + 3)
    assert (failed["state"], failed["error_type"], failed["error"]) == ("failed", "all_agents_failed", "all 2 agents failed")
    lost = records.fail_lost(run2, 4, 3, T0 + 9)
    assert lost["error_type"] == "executor_lost" and "4" in lost["error"]
    c, ended = records.cancel(rec, "why", T0)
    assert ended and c["state"] == "cancelled"
    c, ended = records.cancel(run1, "why", T0)
    assert not ended and c["cancel_requested"] and c["state"] == "running"
    assert records.cancelled(c, T0 + 1)["reason"] == "why"
    for terminal in (done, failed, lost, records.cancelled(c, T0)):
        for step in (lambda r: records.start(r, 1, "x", T0), lambda r: records.finish(r, {}, T0),
                     lambda r: records.fail(r, "x", "y", T0), lambda r: records.cancel(r, "", T0),
                     lambda r: records.cancelled(r, T0)):
            with pytest.raises(records.TerminalError):
                step(terminal)
    assert records.active_entry(run1) == {"id": "d1", "task_id": "t", "kind": "deliberation", "role": "",
                                          "state": "running", "num_agents": 2,
                                          "created_at": run1["created_at"], "started_at": run1["started_at"],
                                          "owner": "alice"}


def test_a_bad_record_is_refused():
    with pytest.raises(records.RecordError):
        records.decode(b'{"v": 2, "id": "x", "state": "pending"}', "d.x")
    with pytest.raises(records.RecordError):
        records.decode(b'{"v": 1, "id": "x", "state": "odd"}', "d.x")


def test_settings_are_validated_at_start():
    s = settings_from_env({"RAY_EXECUTOR_NATS_URL": "nats://u:secret@h:4222", "EXECUTOR_MAX_REPLICAS": "6",
                           "NATS_EVENTS_STREAM": "EV"})
    assert (s.concurrency, s.max_deliveries, s.min_replicas, s.max_replicas, s.replica_num_cpus) == (64, 3, 1, 6, 0.0)
    assert s.names.events_stream == "EV" and s.nats.events_stream == "EV"
    assert "secret" not in s.nats.display
    with pytest.raises(SettingsError) as exc:
        settings_from_env({"EXECUTOR_MIN_REPLICAS": "5", "EXECUTOR_MAX_REPLICAS": "2", "NATS_WORK_STREAM": "a.b",
                           "EXECUTOR_REPLICA_CONCURRENCY": "lots"})
    text = str(exc.value)
    for needle in ("RAY_EXECUTOR_NATS_URL is required", "NATS_WORK_STREAM", "EXECUTOR_REPLICA_CONCURRENCY",
                   "must not exceed"):
        assert needle in text


def test_the_log_level_keeps_per_deliberation_lines_out_by_default(capsys):
    from ray_executor_payload.agents import log, setup_logging
    from ray_executor_payload.executor import _event

    base = {"RAY_EXECUTOR_NATS_URL": "nats://h:4222"}
    assert settings_from_env(base).log_level == logging.INFO
    assert settings_from_env({**base, "EXECUTOR_LOG_LEVEL": "DEBUG"}).log_level == logging.DEBUG
    assert settings_from_env({**base, "EXECUTOR_LOG_LEVEL": "warning"}).log_level == logging.WARNING
    with pytest.raises(SettingsError) as exc:
        settings_from_env({**base, "EXECUTOR_LOG_LEVEL": "loud"})
    assert "EXECUTOR_LOG_LEVEL must be one of debug, info, warning" in str(exc.value)

    setup_logging()
    try:
        for level, want in ((logging.INFO, False), (logging.DEBUG, True)):
            log.setLevel(level)
            _event("deliberation_started", logging.DEBUG, id="d-1")
            _event("replica_added", replica="r-1")
            err = capsys.readouterr().err
            assert ('"event":"deliberation_started","id":"d-1"' in err) is want, (level, err)
            assert '"event":"replica_added","replica":"r-1"' in err, (level, err)
    finally:
        log.setLevel(logging.INFO)


def test_the_executor_user_needs_its_password_and_only_one_way_in():
    base = {"RAY_EXECUTOR_NATS_URL": "nats://h:4222"}
    s = settings_from_env({**base, "RAY_EXECUTOR_NATS_USER": "ray-executor-executor",
                           "RAY_EXECUTOR_NATS_PASSWORD": "pw-0123456789"})
    assert (s.nats.user, s.nats.password) == ("ray-executor-executor", "pw-0123456789")
    assert "pw-0123456789" not in repr(s) and "pw-0123456789" not in s.nats.display
    for extra, needle in (({"RAY_EXECUTOR_NATS_USER": "u"}, "go together"),
                          ({"RAY_EXECUTOR_NATS_PASSWORD": "pw-0123456789"}, "go together"),
                          ({"RAY_EXECUTOR_NATS_USER": "u", "RAY_EXECUTOR_NATS_PASSWORD": "pw-0123456789",
                            "RAY_EXECUTOR_NATS_TOKEN": "t"}, "set one way")):
        with pytest.raises(SettingsError) as exc:
            settings_from_env({**base, **extra})
        assert needle in str(exc.value) and "pw-0123456789" not in str(exc.value)


def test_desired_replicas_follow_the_backlog_within_bounds():
    assert [desired_replicas(b, 64, 1, 4) for b in (0, 1, 64, 65, 200, 10_000)] == [1, 1, 1, 2, 4, 4]


def test_ray_init_kwargs():
    assert ray_init_kwargs({}) == {}
    assert ray_init_kwargs({"RAY_EXECUTOR_LOCAL_RAY": "2", "RAY_EXECUTOR_LOCAL_RAY_TEMP_DIR": "/tmp/x"}) == {
        "address": "local", "num_cpus": 2, "include_dashboard": False, "_temp_dir": "/tmp/x",
    }
    with pytest.raises(ValueError):
        ray_init_kwargs({"RAY_EXECUTOR_LOCAL_RAY": "many"})


def call(url, model="m"):
    return llm.ChatCall(url=llm.chat_completions_url(url), model=model, system_prompt="s", user_prompt="u")


def test_async_complete_retries_retryable_failures_only(stub):
    stub.set("m-flaky", llm_stub.fail_then(2, 503))
    stub.set("m-429", llm_stub.status(429, headers={"Retry-After": "0.2"}))
    stub.set("m-400", llm_stub.status(400, b'{"error": {"message": "no such model"}}'))

    async def go():
        try:
            ok = await allm.complete(call(stub.url, "m-flaky"), time.time() + 20, 3, backoff_base=0.01)
            assert ok.completion is not None and ok.attempts == 3
            retried = []
            bad = await allm.complete(call(stub.url, "m-429"), time.time() + 20, 1, backoff_base=0.01,
                                      on_retry=lambda a, e, d: retried.append(d))
            assert bad.error.error_type == "http_error" and bad.attempts == 2 and retried == [0.2]
            refused = await allm.complete(call(stub.url, "m-400"), time.time() + 20, 3)
            assert refused.attempts == 1 and refused.error.message == "HTTP 400 from 127.0.0.1: no such model"
            gone = await allm.complete(call(f"http://127.0.0.1:{llm_stub_free_port()}"), time.time() + 2, 0)
            assert gone.error.error_type == "connection_error"
        finally:
            await allm.close_session()

    asyncio.run(go())


def test_async_complete_stops_at_the_deadline(stub):
    stub.set("m-slow", llm_stub.sleep(5))

    async def go():
        try:
            t = time.time()
            out = await allm.complete(call(stub.url, "m-slow"), t + 0.5, 3)
            assert out.error.error_type == "timeout" and time.time() - t < 1.5
            assert "deadline reached" in out.error.message
        finally:
            await allm.close_session()

    asyncio.run(go())


def llm_stub_free_port():
    from nats_server import closed_port

    return closed_port()


def test_provision_takes_a_retention_shorter_than_the_duplicate_window(nats_server, tmp_path):
    # NATS refuses a duplicate window longer than a stream's max age; RETENTION may be 1h
    # (the Go side's minimum), shorter than the 2h window, so the window follows it there.
    import nats

    from nats_server import NatsServer

    own = NatsServer(nats_server.binary, str(tmp_path)).start()

    async def go():
        nc = await nats.connect(own.url, connect_timeout=5)
        try:
            js = nc.jetstream(timeout=5)
            for s in await js.streams_info():
                await js.delete_stream(s.config.name)
            names = records.Names(retention_seconds=3600)
            await records.provision(js, names)
            for stream in (names.work_stream, names.events_stream):
                cfg = (await js.stream_info(stream)).config
                assert (cfg.max_age, cfg.duplicate_window) == (3600, 3600), (stream, cfg)
            kv = (await js.stream_info(f"KV_{names.bucket}")).config
            assert (kv.max_age, kv.duplicate_window) == (3600, records.KV_DUPLICATE_WINDOW_SECONDS), kv
            counters = (await js.stream_info(names.counters_stream)).config
            assert counters.duplicate_window == records.DUPLICATE_WINDOW_SECONDS
        finally:
            await nc.close()

    try:
        asyncio.run(go())
    finally:
        own.stop()
