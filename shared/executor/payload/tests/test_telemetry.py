"""The executor's traces and metrics (ray_executor_payload/telemetry.py), exported to a real
OTLP receiver (bin/otlp-sink, the OpenTelemetry Collector's) by Workers on the real NATS
server, with the LLM stub recording the traceparent each request carried."""

import asyncio
import json
import logging
import secrets
import sys
import time

import pytest

import llm_stub
from executor_env import Env, delib, worker
from helpers import agent
from ray_executor_payload import records, telemetry
from ray_executor_payload.agents import log, setup_logging

PROMPT = "Design the cache layer."  # the task description of every request (helpers.request_dict)


@pytest.fixture(autouse=True)
def _logging():
    setup_logging()


@pytest.fixture
def payload_log(caplog):
    """The payload's log lines (its logger does not propagate to the root's)."""
    log.addHandler(caplog.handler)
    try:
        yield caplog
    finally:
        log.removeHandler(caplog.handler)


def new_traceparent():
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


def tel_config(**env):
    return telemetry.config_from_env({"OTEL_BSP_SCHEDULE_DELAY": "50", **env})


async def run_one(url, data, tel_cfg, record_traceparent="", header_traceparent="", owner="alice"):
    """Submits data as execute does (the record keeps record_traceparent; the work message
    carries header_traceparent, when given, as the submitter's publish span), runs a Worker
    until the deliberation ends and drains it (which flushes its telemetry)."""
    did = data["deliberation_id"]
    async with Env(url) as env:
        rec = records.new_record(did, task_id=data["task_id"], num_agents=len(data["agents"]),
                                 timeout_seconds=data["timeout_seconds"])
        rec["owner"], rec["traceparent"] = owner, record_traceparent
        await env.store.create(rec)
        await env.store.put_active(rec)
        headers = {"Nats-Msg-Id": did}
        if header_traceparent:
            headers["Traceparent"] = header_traceparent  # as Go's propagator (http.Header) writes it
        await env.js.publish(records.WORK_SUBJECT_PREFIX + did, json.dumps(data).encode(), headers=headers)
        w = worker(url, telemetry=tel_cfg)
        await w.start()
        try:
            return await env.wait_state(did, records.TERMINAL_STATES), w
        finally:
            await w.drain()


def children(spans, parent):
    return [s for s in spans if s["parent_span_id"] == parent["span_id"] and s["trace_id"] == parent["trace_id"]]


def test_a_deliberation_is_one_trace_from_the_callers_traceparent_to_each_llm_request(nats_server, stub, otlp_sink):
    stub.set("m-ok", llm_stub.ok("proposal A"))
    stub.set("m-flaky", llm_stub.fail_then(1, 503))
    data = delib(stub.url, [agent("a1", "m-ok"), agent("a2", "m-flaky")], max_retries=2)
    did = data["deliberation_id"]
    caller = new_traceparent()
    data["traceparent"] = caller
    trace_id, caller_span = caller[3:35], caller[36:52]
    cfg = tel_config(OTEL_EXPORTER_OTLP_ENDPOINT=otlp_sink.http_endpoint, OTEL_METRIC_EXPORT_INTERVAL="200")
    assert cfg.traces_endpoint == otlp_sink.http_endpoint + "/v1/traces" and cfg.service_name == "ray-executor-executor"

    async def go():
        await Env.reset(nats_server.url)
        rec, w = await run_one(nats_server.url, data, cfg, record_traceparent=caller)
        assert w.tel is telemetry.OFF  # shut down by the drain
        return rec

    rec = asyncio.run(go())
    assert rec["state"] == "completed", rec

    spans = otlp_sink.wait(otlp_sink.spans, lambda s: len([x for x in s if x["trace_id"] == trace_id]) >= 6)
    mine = [s for s in spans if s["trace_id"] == trace_id]
    assert {s["service.name"] for s in mine} == {"ray-executor-executor"}
    (d,) = [s for s in mine if s["name"] == "deliberation"]
    assert d["parent_span_id"] == caller_span and d["kind"] == "Consumer", d
    a = d["attributes"]
    assert (a["deliberation.id"], a["task.id"], a["caller"], a["deliberation.outcome"]) == (did, "task-42", "alice", "completed")
    assert a["deliberation.attempt"] == "1" and a["deliberation.rerun"] == "false"
    agents = children(mine, d)
    assert sorted((s["name"], s["attributes"]["agent.id"], s["attributes"]["gen_ai.request.model"]) for s in agents) == [
        ("agent", "a1", "m-ok"), ("agent", "a2", "m-flaky")]
    by_agent = {s["attributes"]["agent.id"]: s for s in agents}
    assert by_agent["a2"]["attributes"]["agent.attempts"] == "2" and by_agent["a2"]["attributes"]["agent.status"] == "completed"
    calls = {aid: sorted(children(mine, s), key=lambda c: int(c["attributes"]["llm.attempt"])) for aid, s in by_agent.items()}
    assert [c["attributes"]["http.response.status_code"] for c in calls["a1"]] == ["200"]
    flaky = calls["a2"]
    assert [(c["name"], c["kind"], c["attributes"]["llm.attempt"], c["attributes"]["http.response.status_code"]) for c in flaky] == [
        ("llm.chat", "Client", "1", "503"), ("llm.chat", "Client", "2", "200")]
    assert flaky[0]["attributes"]["error.type"] == "http_error" and flaky[0]["status_code"] == "Error"
    assert "error.type" not in flaky[1]["attributes"] and flaky[1]["status_code"] == "Unset"
    assert flaky[0]["attributes"]["server.address"] == "127.0.0.1" and flaky[0]["attributes"]["server.port"] == str(stub.port)

    # Each LLM request carried its own llm.chat span's context: the stand-in proves the chain.
    llm_spans = {c["span_id"] for cs in calls.values() for c in cs}
    sent = [r.headers.get("traceparent", "") for r in stub.requests]
    assert len(sent) == 3 and {tp[36:52] for tp in sent} == llm_spans
    assert all(tp.startswith(f"00-{trace_id}-") and tp.endswith("-01") for tp in sent), sent

    # No prompt, reply or agent text in any span.
    texts = [PROMPT, "proposal A", "a fine proposal", "ARCHITECT"]
    for s in spans:
        for v in list(s["attributes"].values()) + list(s["resource"].values()) + [s["name"], s.get("status_message", "")]:
            assert not any(t in v for t in texts), (s["name"], v)

    # Metrics: bounded labels only, never an id.
    points = otlp_sink.wait(otlp_sink.metrics, lambda m: {"rex.executor.llm.duration", "rex.executor.llm.errors",
                                                          "rex.executor.deliberation.duration"} <= {p["name"] for p in m})
    allowed = {"rex.executor.llm.duration": {"model", "outcome"}, "rex.executor.llm.errors": {"model", "error_type"},
               "rex.executor.deliberation.duration": {"outcome"}}
    for p in points:
        assert p["service.name"] == "ray-executor-executor"
        assert set(p["attributes"]) == allowed[p["name"]], p
        assert did not in json.dumps(p)

    def last(name, **attrs):
        got = [p for p in points if p["name"] == name and all(p["attributes"].get(k) == v for k, v in attrs.items())]
        assert got, (name, attrs, points)
        return max(got, key=lambda p: p["time_unix_nano"])

    assert last("rex.executor.llm.errors", model="m-flaky", error_type="http_error")["value"] == 1
    assert last("rex.executor.llm.duration", model="m-flaky", outcome="error")["count"] == 1
    assert last("rex.executor.llm.duration", model="m-flaky", outcome="ok")["count"] == 1
    assert last("rex.executor.llm.duration", model="m-ok", outcome="ok")["count"] == 1
    d_point = last("rex.executor.deliberation.duration", outcome="completed")
    assert d_point["count"] == 1 and d_point["unit"] == "s" and 0 < d_point["sum"] < 30


def test_the_work_messages_traceparent_is_the_parent_and_failures_are_recorded_over_grpc(nats_server, stub, otlp_sink):
    """The submitter's publish span (the work message's traceparent header) comes before the
    record's; OTLP over gRPC works as over HTTP; a failed deliberation says why, in types."""
    stub.set("m-400", llm_stub.status(400, b'{"error": {"message": "no such model"}}'))
    data = delib(stub.url, [agent("b1", "m-400")], max_retries=3)
    record_tp, header_tp = new_traceparent(), new_traceparent()
    data["traceparent"] = record_tp
    cfg = tel_config(OTEL_EXPORTER_OTLP_ENDPOINT=otlp_sink.grpc_endpoint, OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
                     OTEL_SERVICE_NAME="executor-under-test")
    assert cfg.traces_endpoint == otlp_sink.grpc_endpoint

    async def go():
        await Env.reset(nats_server.url)
        rec, _ = await run_one(nats_server.url, data, cfg, record_traceparent=record_tp, header_traceparent=header_tp)
        return rec

    rec = asyncio.run(go())
    assert rec["state"] == "failed", rec
    trace_id = header_tp[3:35]
    spans = otlp_sink.wait(otlp_sink.spans, lambda s: len([x for x in s if x["trace_id"] == trace_id]) >= 3)
    assert not [s for s in spans if s["trace_id"] == record_tp[3:35]]
    (d,) = [s for s in spans if s["name"] == "deliberation"]
    assert d["parent_span_id"] == header_tp[36:52] and d["service.name"] == "executor-under-test"
    assert d["attributes"]["deliberation.outcome"] == "failed" and d["attributes"]["caller"] == "alice"
    assert d["attributes"]["deliberation.error_type"] == rec["error_type"]
    (ag,) = children(spans, d)
    assert ag["status_code"] == "Error" and ag["attributes"]["error.type"] == "http_error" and ag["attributes"]["agent.attempts"] == "1"
    (call,) = children(spans, ag)
    assert call["attributes"]["http.response.status_code"] == "400" and call["status_code"] == "Error"
    assert "no such model" not in json.dumps(spans)
    assert stub.requests[0].headers["traceparent"] == f"00-{trace_id}-{call['span_id']}-01"
    points = otlp_sink.wait(otlp_sink.metrics, lambda m: any(p["name"] == "rex.executor.deliberation.duration" for p in m))
    # Cumulative: each export (periodic, and the last at the drain) repeats the totals.
    assert {json.dumps(p["attributes"]) for p in points if p["name"] == "rex.executor.deliberation.duration"} == {'{"outcome": "failed"}'}
    assert {(json.dumps(p["attributes"], sort_keys=True), p["value"]) for p in points if p["name"] == "rex.executor.llm.errors"} == {
        ('{"error_type": "http_error", "model": "m-400"}', 1)}


def test_without_an_endpoint_nothing_is_exported_and_the_callers_traceparent_goes_on(nats_server, stub, otlp_sink):
    stub.set("m-ok", llm_stub.ok())
    # No endpoint at all, and an endpoint with the SDK disabled: both off.
    assert not telemetry.config_from_env({}).enabled
    off = telemetry.config_from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": otlp_sink.http_endpoint, "OTEL_SDK_DISABLED": "true"})
    assert not off.enabled and telemetry.setup(off) is telemetry.OFF
    data = delib(stub.url, [agent("c1", "m-ok")])
    caller = new_traceparent()
    data["traceparent"] = caller

    async def go():
        await Env.reset(nats_server.url)
        rec, _ = await run_one(nats_server.url, data, off, record_traceparent=caller, header_traceparent=new_traceparent())
        return rec

    assert asyncio.run(go())["state"] == "completed"
    assert [r.headers.get("traceparent") for r in stub.requests] == [caller]
    time.sleep(0.5)  # what would have been exported has had time to arrive
    assert otlp_sink.spans() == [] and otlp_sink.metrics() == []


def test_missing_opentelemetry_packages_are_a_warning_and_the_executor_runs_as_without(nats_server, stub, otlp_sink,
                                                                                       payload_log, monkeypatch):
    # As on a Ray node whose image lacks the SDK: importing it fails.
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.resources", None)
    stub.set("m-ok", llm_stub.ok())
    data = delib(stub.url, [agent("e1", "m-ok")])
    caller = new_traceparent()
    data["traceparent"] = caller
    cfg = tel_config(OTEL_EXPORTER_OTLP_ENDPOINT=otlp_sink.http_endpoint)
    assert cfg.enabled

    async def go():
        await Env.reset(nats_server.url)
        rec, _ = await run_one(nats_server.url, data, cfg, record_traceparent=caller)
        return rec

    with payload_log.at_level(logging.INFO, logger=log.name):
        assert asyncio.run(go())["state"] == "completed"
    assert "the OpenTelemetry SDK or its http/protobuf exporter is not installed" in payload_log.text
    assert [r.headers.get("traceparent") for r in stub.requests] == [caller]
    time.sleep(0.5)
    assert otlp_sink.spans() == []


def test_config_from_the_standard_variables(payload_log):
    c = telemetry.config_from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/"})
    assert (c.traces_endpoint, c.metrics_endpoint, c.protocol) == (
        "http://collector:4318/v1/traces", "http://collector:4318/v1/metrics", "http/protobuf")
    assert (c.schedule_delay_ms, c.export_interval_ms, c.export_timeout_ms) == (5000, 60000, 10000)
    c = telemetry.config_from_env({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://t.example/x",
                                   "OTEL_BSP_SCHEDULE_DELAY": "250", "OTEL_METRIC_EXPORT_INTERVAL": "1000"})
    assert (c.traces_endpoint, c.metrics_endpoint, c.schedule_delay_ms, c.export_interval_ms) == (
        "https://t.example/x", "", 250, 1000)
    c = telemetry.config_from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                                   "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://m:4317"})
    assert (c.traces_endpoint, c.metrics_endpoint) == ("http://c:4317", "http://m:4317")
    # Bad values never stop the executor: a default, or telemetry off, with a warning.
    c = telemetry.config_from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_BSP_SCHEDULE_DELAY": "soon"})
    assert c.enabled and c.schedule_delay_ms == 5000
    assert not telemetry.config_from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}).enabled
    assert not telemetry.config_from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "c:4318"}).enabled
    assert "OTEL_BSP_SCHEDULE_DELAY='soon'" in payload_log.text and "http/json" in payload_log.text


def test_the_model_label_is_bounded():
    label = telemetry.BoundedLabel(telemetry.MAX_MODELS)
    names = [label(f"model-{i}") for i in range(telemetry.MAX_MODELS + 5)]
    assert names[:telemetry.MAX_MODELS] == [f"model-{i}" for i in range(telemetry.MAX_MODELS)]
    assert set(names[telemetry.MAX_MODELS:]) == {telemetry.OTHER_MODEL}
    assert label("model-3") == "model-3" and label("x" * 500) == telemetry.OTHER_MODEL
    assert telemetry.BoundedLabel(2)("y" * 500) == "y" * 100


def test_a_collector_that_is_down_neither_fails_deliberations_nor_holds_the_drain(nats_server, stub):
    import nats_server as ns

    stub.set("m-ok", llm_stub.ok())
    data = delib(stub.url, [agent("f1", "m-ok")])
    cfg = tel_config(OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{ns.closed_port()}", OTEL_EXPORTER_OTLP_TIMEOUT="1000")
    assert cfg.export_timeout_ms == 1000 and cfg.shutdown_seconds == 4

    async def go():
        await Env.reset(nats_server.url)
        t0 = time.monotonic()
        rec, _ = await run_one(nats_server.url, data, cfg)
        return rec, time.monotonic() - t0

    rec, took = asyncio.run(go())
    assert rec["state"] == "completed"
    assert took < cfg.shutdown_seconds + 5, took
    assert stub.requests[0].headers.get("traceparent", "").startswith("00-")  # its own span's, though never exported
