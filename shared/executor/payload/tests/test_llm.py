"""The LLM client: llm.py's request shape and parsing, allm.py's retries and deadline (the
executor's path, driven through allm.run_agent as the executor runs an agent), and llm.py's
synchronous post_chat (the benchmarks' client)."""

import asyncio
import dataclasses
import json
import socket
import time

import pytest

import llm_stub
from helpers import NASTY_DESCRIPTION, agent, request
from ray_executor_payload import allm, llm
from ray_executor_payload.agents import plan_jobs


def job_for(req, index=0, deadline=None, backoff_base=0.01):
    deadline = deadline if deadline is not None else time.time() + req.timeout_seconds
    job = plan_jobs(req, deadline)[index]
    return dataclasses.replace(job, backoff_base=backoff_base)


def run_agent(job):
    """allm.run_agent in an event loop of its own (the session is per loop)."""

    async def go():
        try:
            return await allm.run_agent(job, "delib-1")
        finally:
            await allm.close_session()

    return asyncio.run(go())


def closed_port_url():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there any more: connections are refused
    return f"http://127.0.0.1:{port}"


# --- URLs -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "base, url",
    [
        ("http://vllm:8000", "http://vllm:8000/v1/chat/completions"),
        ("http://vllm:8000/", "http://vllm:8000/v1/chat/completions"),
        ("http://vllm:8000/v1", "http://vllm:8000/v1/chat/completions"),
        ("http://vllm:8000/v1/", "http://vllm:8000/v1/chat/completions"),
        ("https://gw.example.com/llm/team-a", "https://gw.example.com/llm/team-a/v1/chat/completions"),
        ("https://gw.example.com/llm/v1//", "https://gw.example.com/llm/v1/chat/completions"),
        ("http://[::1]:8000", "http://[::1]:8000/v1/chat/completions"),
        ("http://vllm:8000/v10", "http://vllm:8000/v10/v1/chat/completions"),
    ],
)
def test_chat_completions_url(base, url):
    assert llm.chat_completions_url(base) == url


@pytest.mark.parametrize("bad", ["file:///etc/passwd", "vllm:8000", "", "ftp://h/"])
def test_chat_completions_url_rejects_non_http(bad):
    with pytest.raises(ValueError):
        llm.chat_completions_url(bad)


# --- request shape ----------------------------------------------------------------------


def test_request_body_and_headers_reach_the_server(stub, monkeypatch):
    monkeypatch.setenv(llm.API_KEY_ENV, "sekret-key")
    monkeypatch.setenv(llm.API_KEY_ENDPOINTS_ENV, stub.url + "/v1")
    req = request(
        stub.url + "/",
        agents=[agent("a1", "m-ok", role="dev")],
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    )
    res = run_agent(job_for(req))
    assert res.status == "completed", res.error
    (rec,) = stub.requests
    assert rec.path == "/v1/chat/completions"
    assert rec.headers["authorization"] == "Bearer sekret-key"
    assert rec.headers["content-type"] == "application/json"
    assert rec.headers["traceparent"] == "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert rec.body["model"] == "m-ok"
    assert rec.body["temperature"] == 0.7
    assert rec.body["max_tokens"] == 2048
    assert "response_format" not in rec.body
    assert [m["role"] for m in rec.messages] == ["system", "user"]


def test_the_key_goes_only_to_its_endpoints(stub, monkeypatch):
    """The cluster's LLM key is bound to the endpoints it is for: an allowed endpoint it is
    not bound to, or a wildcard binding, gets no Authorization header."""
    monkeypatch.setenv(llm.API_KEY_ENV, "sekret-key")
    for bound in ("", "*", "http://other.example:1/v1", stub.url + "/v2"):
        monkeypatch.setenv(llm.API_KEY_ENDPOINTS_ENV, bound)
        stub.requests.clear()
        assert run_agent(job_for(request(stub.url))).status == "completed"
        assert "authorization" not in stub.requests[0].headers, bound


@pytest.mark.parametrize("url,bound", [
    ("https://api.example.com/v1/chat/completions", True),
    ("https://API.example.com:443/v1/chat/completions", True),
    ("https://api.example.com/v10/chat/completions", False),
    ("https://api.example.com/v1/../admin", False),
    ("https://api.example.com/v1/%2e%2e/admin", False),
    ("https://api.example.com/v1%2fx", False),
    ("https://api.example.com/v1;x/chat", False),
    ("http://api.example.com/v1/chat/completions", False),
    ("https://api.example.com:8443/v1/chat/completions", False),
    ("https://api.example.com.evil.example/v1/chat/completions", False),
])
def test_key_bound_to(url, bound):
    assert llm.key_bound_to(url, "https://api.example.com/v1, *") is bound


def test_no_authorization_header_without_api_key(stub, monkeypatch):
    monkeypatch.delenv(llm.API_KEY_ENV, raising=False)
    req = request(stub.url)
    assert run_agent(job_for(req)).status == "completed"
    assert "authorization" not in stub.requests[0].headers
    assert "traceparent" not in stub.requests[0].headers


def test_task_extraction_uses_temperature_zero_and_json_object(stub):
    stub.set("m-ok", llm_stub.ok('{"tasks": []}'))
    req = request(stub.url, metadata={"task_type": "TASK_EXTRACTION"})
    res = run_agent(job_for(req))
    assert res.status == "completed", res.error
    body = stub.requests[0].body
    assert body["temperature"] == 0
    assert body["response_format"] == {"type": "json_object"}


def test_nasty_description_reaches_the_llm_byte_for_byte(stub):
    template = "Task for {role}: {task_description}"
    req = request(
        stub.url,
        task_description=NASTY_DESCRIPTION,
        agents=[agent("a1", "m-ok", role="dev", template=template), agent("a2", "m-ok")],
    )
    for i in range(2):
        assert run_agent(job_for(req, i)).status == "completed"
    first, second = stub.requests
    user = first.messages[1]["content"]
    assert user.startswith(NASTY_DESCRIPTION)
    assert user[: len(NASTY_DESCRIPTION)].encode("utf-8") == NASTY_DESCRIPTION.encode("utf-8")
    assert user[len(NASTY_DESCRIPTION):] == (
        "\n\ntask_id: task-42\nstory_id: story-7\nplan_id: plan-3\narea: storage\npriority: high"
    )
    assert first.messages[0]["content"] == "Task for dev: " + NASTY_DESCRIPTION
    assert second.messages[1]["content"] == user
    assert second.messages[0]["content"].startswith("You are dev (agent a2)")


# --- retries and errors -----------------------------------------------------------------


def test_retries_500_then_succeeds_and_counts_attempts(stub):
    stub.set("m-flaky", llm_stub.fail_then(2, 500, llm_stub.ok("third time lucky")))
    req = request(stub.url, agents=[agent("a1", "m-flaky")], max_retries=3)
    res = run_agent(job_for(req))
    assert res.status == "completed", res.error
    assert res.attempts == 3
    assert res.proposal == "third time lucky"
    assert len(stub.requests_for("m-flaky")) == 3


def test_429_is_retried(stub):
    stub.set("m-busy", llm_stub.fail_then(1, 429))
    req = request(stub.url, agents=[agent("a1", "m-busy")], max_retries=1)
    res = run_agent(job_for(req))
    assert (res.status, res.attempts) == ("completed", 2)


def test_retries_are_bounded_by_max_retries(stub):
    stub.set("m-down", llm_stub.status(503, b"upstream overloaded"))
    req = request(stub.url, agents=[agent("a1", "m-down")], max_retries=2)
    res = run_agent(job_for(req))
    assert res.status == "failed"
    assert res.attempts == 3
    assert res.error_type == "http_error"
    assert res.error.startswith("HTTP 503 from 127.0.0.1: upstream overloaded")
    assert res.score == 0.0
    assert len(stub.requests) == 3


def test_400_is_not_retried_and_reports_status_and_snippet(stub):
    stub.set("m-bad", llm_stub.status(400, json.dumps({"object": "error", "message": "model m-bad does not exist"}).encode()))
    req = request(stub.url, agents=[agent("a1", "m-bad")], max_retries=5)
    res = run_agent(job_for(req))
    assert res.status == "failed"
    assert res.attempts == 1
    assert res.error_type == "http_error"
    assert res.error == "HTTP 400 from 127.0.0.1: model m-bad does not exist"
    assert len(stub.requests) == 1


def test_error_snippet_never_carries_the_whole_prompt(stub):
    long_description = "SECRET-PROMPT " * 500
    # A server that echoes the whole request body in its error (pydantic style).
    def echo(stub_, n, body):
        return llm_stub.Reply(422, json.dumps({"detail": [{"input": body}]}).encode())

    stub.set("m-echo", echo)
    req = request(stub.url, agents=[agent("a1", "m-echo")], task_description=long_description)
    res = run_agent(job_for(req))
    assert res.error_type == "http_error"
    assert res.error.startswith("HTTP 422 from 127.0.0.1: ")
    assert len(res.error) < 300
    assert long_description not in res.error
    assert "\n" not in res.error


def test_error_excerpts_are_sanitised(stub, monkeypatch):
    """An upstream's error text reaches the record (and so the caller) only as a short,
    printable excerpt with credentials redacted: the endpoint's own key echoed back, a bearer
    token, an sk- key, token=/password= pairs; terminal escapes and bidi overrides go too."""
    key = "cluster-key-0123456789abcdef"
    monkeypatch.setenv(llm.API_KEY_ENV, key)
    monkeypatch.setenv(llm.API_KEY_ENDPOINTS_ENV, stub.url + "/v1")
    echoed = (f"Incorrect API key provided: {key}. Sent Authorization: Bearer {key}; also sk-proj-abcdefghijkl, "
              "token=tok_live_987654321 and \"password\": \"hunter2hunter2\" \x1b[31mred\x1b[0m \u202eevil")
    stub.set("m-echo", llm_stub.status(401, json.dumps({"error": {"message": echoed}}).encode()))
    stub.set("m-text", llm_stub.status(500, echoed.encode()))
    for model, code in (("m-echo", 401), ("m-text", 500)):
        res = run_agent(job_for(request(stub.url, agents=[agent("a1", model)], max_retries=0)))
        assert res.error_type == "http_error" and res.error.startswith(f"HTTP {code} from 127.0.0.1: "), res.error
        for leaked in (key, "sk-proj-abcdefghijkl", "tok_live_987654321", "hunter2hunter2", "\x1b", "\u202e"):
            assert leaked not in res.error, (leaked, res.error)
        assert "[redacted]" in res.error and len(res.error) <= 230, res.error
    with pytest.raises(llm.LLMError) as info:
        llm.post_chat(plan_jobs(request(stub.url, agents=[agent("a1", "m-echo")]), 0)[0].call, time.time() + 10, key)
    assert key not in info.value.message and "[redacted]" in info.value.message


def test_snippet_keeps_ordinary_text():
    assert llm.snippet("model  m-bad\n does not exist") == "model m-bad does not exist"
    assert llm.snippet("the token budget was exceeded") == "the token budget was exceeded"
    assert llm.snippet("x" * 500) == "x" * 197 + "..."


def test_invalid_json_response_is_not_retried(stub):
    stub.set("m-garbage", lambda s, n, b: llm_stub.Reply(200, b"<html>gateway</html>"))
    req = request(stub.url, agents=[agent("a1", "m-garbage")], max_retries=3)
    res = run_agent(job_for(req))
    assert (res.status, res.error_type, res.attempts) == ("failed", "invalid_response", 1)
    assert "not JSON" in res.error and "<html>gateway</html>" in res.error


def test_response_without_choices_is_invalid(stub):
    stub.set("m-empty", lambda s, n, b: llm_stub.Reply(200, b'{"choices": []}'))
    req = request(stub.url, agents=[agent("a1", "m-empty")], max_retries=3)
    res = run_agent(job_for(req))
    assert (res.status, res.error_type, res.attempts) == ("failed", "invalid_response", 1)


def test_connection_refused_is_retried_then_reported():
    req = request(closed_port_url(), max_retries=2)
    res = run_agent(job_for(req))
    assert res.status == "failed"
    assert res.error_type == "connection_error"
    assert res.attempts == 3
    assert res.error.startswith("cannot reach 127.0.0.1")


def test_timeout_is_honoured(stub):
    stub.set("m-slow", llm_stub.sleep(30))
    req = request(stub.url, agents=[agent("a1", "m-slow")], timeout_seconds=1, max_retries=3)
    start = time.time()
    res = run_agent(job_for(req, deadline=start + req.timeout_seconds))
    elapsed = time.time() - start
    assert res.status == "failed"
    assert res.error_type == "timeout"
    assert "timed out" in res.error
    assert res.attempts == 1  # the one attempt used the whole budget; no retry past it
    assert 0.9 <= elapsed < 1.8


def test_retries_never_go_past_the_deadline(stub):
    stub.set("m-down", llm_stub.status(500))
    req = request(stub.url, agents=[agent("a1", "m-down")], timeout_seconds=1, max_retries=10)
    start = time.time()
    res = run_agent(job_for(req, deadline=start + 1, backoff_base=0.2))
    elapsed = time.time() - start
    assert res.status == "failed"
    assert res.error_type in ("http_error", "timeout")  # whichever ended the last attempt
    assert 2 <= res.attempts < 11
    assert elapsed < 1.3


def test_backoff_stops_before_the_deadline_deterministic(stub):
    """With a fake clock, advanced by each backoff: delays 0.1, 0.2 and 0.4 fit before the
    deadline at +1 s, 0.8 would not."""
    now = [1000.0]
    sleeps = []

    def before_sleep(attempt, err, delay):
        sleeps.append(delay)
        now[0] += delay

    stub.set("m-down", llm_stub.status(500, b"down"))
    call = plan_jobs(request(stub.url, agents=[agent("a1", "m-down")]), 0)[0].call

    async def go():
        try:
            return await allm.complete(
                call, deadline=1001.0, max_retries=10, backoff_base=0.1, backoff_cap=30.0,
                clock=lambda: now[0], rng=lambda: 1.0, on_retry=before_sleep,
            )
        finally:
            await allm.close_session()

    out = asyncio.run(go())
    assert out.completion is None
    assert out.attempts == 4
    assert sleeps == [0.1, 0.2, 0.4]
    assert out.error.error_type == "http_error"
    assert out.error.message == "HTTP 500 from 127.0.0.1: down (no time left to retry before the deadline)"
    assert len(stub.requests) == 4


def test_deadline_already_passed_makes_no_attempt(stub):
    req = request(stub.url)
    res = run_agent(job_for(req, deadline=time.time() - 1))
    assert (res.status, res.error_type, res.attempts) == ("failed", "timeout", 0)
    assert stub.requests == []


def test_retry_after_is_honoured(stub):
    stub.set(
        "m-429",
        lambda s, n, b: llm_stub.Reply(429, b"slow down", {"Retry-After": "1"}) if n == 1 else llm_stub.ok()(s, n, b),
    )
    req = request(stub.url, agents=[agent("a1", "m-429")], max_retries=1)
    start = time.time()
    res = run_agent(job_for(req))
    assert (res.status, res.attempts) == ("completed", 2)
    assert time.time() - start >= 1.0


def test_backoff_is_exponential_with_jitter():
    assert llm.backoff_delay(1, base=0.5, rng=lambda: 0.0) == 0.25
    assert llm.backoff_delay(1, base=0.5, rng=lambda: 1.0) == 0.5
    assert llm.backoff_delay(3, base=0.5, rng=lambda: 1.0) == 2.0
    assert llm.backoff_delay(20, base=0.5, cap=10, rng=lambda: 1.0) == 10.0
    delays = {llm.backoff_delay(2, base=0.5) for _ in range(20)}
    assert all(0.5 <= d <= 1.0 for d in delays) and len(delays) > 1


# --- responses ----------------------------------------------------------------------------


def test_think_block_moves_to_reasoning(stub):
    stub.set("m-think", llm_stub.ok("\n<think>\nweigh A vs B\n</think>\n\nPick A."))
    req = request(stub.url, agents=[agent("a1", "m-think")])
    res = run_agent(job_for(req))
    assert (res.proposal, res.reasoning) == ("Pick A.", "weigh A vs B")


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_reasoning_field_is_used(stub, field):
    stub.set("m-r", llm_stub.ok("Pick B.", message_extra={field: "because B is simpler"}))
    req = request(stub.url, agents=[agent("a1", "m-r")])
    res = run_agent(job_for(req))
    assert (res.proposal, res.reasoning) == ("Pick B.", "because B is simpler")


def test_tokens_are_reported(stub):
    stub.set("m-ok", llm_stub.ok("x", usage={"prompt_tokens": 100, "completion_tokens": 23, "total_tokens": 123}))
    res = run_agent(job_for(request(stub.url)))
    assert (res.tokens, res.prompt_tokens, res.completion_tokens) == (123, 100, 23)
    assert res.duration_ms >= 0 and res.started_at.endswith("Z") and res.finished_at.endswith("Z")


def test_score_from_json_proposal(stub):
    stub.set("m-score", llm_stub.ok(json.dumps({"proposal": "use redis", "score": 0.42})))
    res = run_agent(job_for(request(stub.url, agents=[agent("a1", "m-score")])))
    assert res.status == "completed"
    assert res.score == 0.42


def test_split_reasoning_cases():
    assert llm.split_reasoning({}, "plain") == ("plain", "")
    assert llm.split_reasoning({}, "<think>unfinished") == ("<think>unfinished", "")
    assert llm.split_reasoning({}, "answer <think>x</think>") == ("answer <think>x</think>", "")
    assert llm.split_reasoning({"reasoning_content": "  "}, "<think>t</think>a") == ("a", "t")
    assert llm.split_reasoning({"reasoning_content": "r"}, "<think>t</think>a") == ("<think>t</think>a", "r")


def test_parse_completion_edge_cases():
    def data(message, usage=None):
        return {"choices": [{"message": message, "finish_reason": "length"}], "usage": usage}

    c = llm.parse_completion(data({"content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}))
    assert c.proposal == "ab" and c.tokens == 0
    c = llm.parse_completion(data({"content": "x"}, {"prompt_tokens": 3, "completion_tokens": 4}))
    assert c.tokens == 7
    for bad in ([], {"choices": [{}]}, data({"content": None}), data({"content": "<think>only</think>  "}), data({"content": 5})):
        with pytest.raises(llm.LLMError) as info:
            llm.parse_completion(bad)
        assert info.value.error_type == "invalid_response"
        assert not info.value.retryable


# --- the synchronous client (bench/) -------------------------------------------------------


def test_sync_post_chat_sends_the_same_request_and_parses_the_same_way(stub, monkeypatch):
    stub.set("m-ok", llm_stub.ok("<think>why</think>Pick A.", usage={"prompt_tokens": 5, "completion_tokens": 2}))
    call = plan_jobs(request(stub.url, metadata={"task_type": "TASK_EXTRACTION"}), 0)[0].call
    c = llm.post_chat(call, time.time() + 10, "k")
    assert (c.proposal, c.reasoning, c.tokens) == ("Pick A.", "why", 7)
    (rec,) = stub.requests
    assert rec.path == "/v1/chat/completions" and rec.headers["authorization"] == "Bearer k"
    assert rec.body["temperature"] == 0 and rec.body["response_format"] == {"type": "json_object"}


def test_sync_post_chat_errors(stub):
    stub.set("m-down", llm_stub.status(503, b"upstream overloaded"))
    stub.set("m-slow", llm_stub.sleep(5))
    down = plan_jobs(request(stub.url, agents=[agent("a1", "m-down")]), 0)[0].call
    with pytest.raises(llm.LLMError) as info:
        llm.post_chat(down, time.time() + 10)
    assert (info.value.error_type, info.value.retryable) == ("http_error", True)
    assert info.value.message == "HTTP 503 from 127.0.0.1: upstream overloaded"
    slow = plan_jobs(request(stub.url, agents=[agent("a1", "m-slow")]), 0)[0].call
    t = time.time()
    with pytest.raises(llm.LLMError) as info:
        llm.post_chat(slow, t + 0.5)
    assert info.value.error_type == "timeout" and time.time() - t < 1.5
    with pytest.raises(llm.LLMError) as info:
        llm.post_chat(plan_jobs(request(closed_port_url()), 0)[0].call, time.time() + 5)
    assert info.value.error_type == "connection_error" and info.value.message.startswith("cannot reach 127.0.0.1")
