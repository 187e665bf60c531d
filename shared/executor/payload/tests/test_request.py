import json

import pytest

from helpers import NASTY_DESCRIPTION, agent, request_dict
from ray_executor_payload.request import RequestError, parse_request


def parse(data):
    return parse_request(json.dumps(data))


def test_valid_request_is_parsed_with_effective_model_and_url():
    data = request_dict(
        "http://vllm:8000",
        agents=[
            agent("a1", model="", role="reviewer"),
            agent("a2", model="big", url="http://other:9000/v1"),
        ],
        agent_num_cpus=0.5,
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    )
    req = parse(data)
    assert req.deliberation_id == "delib-1"
    assert req.kind == "deliberation"
    assert req.timeout_seconds == 30 and req.max_retries == 2
    assert req.metadata == {"priority": "high", "area": "storage"}
    assert req.agent_num_cpus == 0.5
    assert req.traceparent.startswith("00-0af7")
    a1, a2 = req.agents
    assert (a1.id, a1.role, a1.model, a1.vllm_url) == ("a1", "reviewer", "default-model", "http://vllm:8000")
    assert (a2.model, a2.vllm_url) == ("big", "http://other:9000/v1")


def test_optional_fields_default():
    data = request_dict()
    for key in ("metadata", "story_id", "plan_id"):
        del data[key]
    del data["agents"][0]["prompt_template"]
    del data["agents"][0]["vllm_url"]
    req = parse(data)
    assert req.metadata == {}
    assert req.story_id == "" and req.plan_id == ""
    assert req.agent_num_cpus == 0.0
    assert req.traceparent == ""
    assert req.agents[0].prompt_template == ""
    assert req.agents[0].vllm_url == "http://127.0.0.1:9"


def test_description_is_kept_verbatim():
    req = parse(request_dict(task_description=NASTY_DESCRIPTION))
    assert req.task_description == NASTY_DESCRIPTION


def test_invalid_traceparent_is_dropped_with_a_warning():
    req = parse(request_dict(traceparent="not-a-trace\r\nX-Evil: 1"))
    assert req.traceparent == ""
    assert any("traceparent" in w for w in req.warnings)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.update(version=2), "version must be 1"),
        (lambda d: d.update(version=True), "version must be 1"),
        (lambda d: d.update(kind="poll"), "kind must be one of"),
        (lambda d: d.pop("deliberation_id"), "deliberation_id is required"),
        (lambda d: d.update(task_description="  "), "task_description must not be empty"),
        (lambda d: d.update(task_id=7), "task_id must be a string"),
        (lambda d: d.update(timeout_seconds=0), "timeout_seconds must be >= 1"),
        (lambda d: d.update(timeout_seconds=True), "timeout_seconds must be an integer"),
        (lambda d: d.update(timeout_seconds="30"), "timeout_seconds must be an integer"),
        (lambda d: d.update(max_retries=-1), "max_retries must be >= 0"),
        (lambda d: d.update(metadata={"k": 1}), "metadata['k'] must be a string"),
        (lambda d: d.update(metadata=[]), "metadata must be an object"),
        (lambda d: d.update(agents=[]), "agents must name at least one agent"),
        (lambda d: d.update(agents="a1"), "agents must be an array"),
        (lambda d: d.update(agents=[agent("x"), agent("x")]), "agents[1].id 'x' repeats agents[0].id"),
        (lambda d: d.update(agents=[agent("")]), "agents[0].id must not be empty"),
        (lambda d: d.update(vllm_model="", agents=[agent("x", model="")]), "agents[0].model is empty and so is vllm_model"),
        (lambda d: d.update(vllm_url="file:///etc/passwd"), "vllm_url must be an absolute http(s) URL"),
        (lambda d: d.update(vllm_url="", agents=[agent("x")]), "agents[0].vllm_url is empty and so is vllm_url"),
        (lambda d: d.update(agents=[agent("x", url="ftp://h/")]), "agents[0].vllm_url must be an absolute http(s) URL"),
        (lambda d: d.update(agent_num_cpus=-1), "agent_num_cpus must be a number >= 0"),
    ],
)
def test_invalid_requests_are_rejected_with_a_clear_message(change, message):
    data = request_dict()
    change(data)
    with pytest.raises(RequestError) as info:
        parse(data)
    assert message in str(info.value)


def test_every_problem_is_named_and_ids_are_kept():
    data = request_dict(timeout_seconds=-5, max_retries=-1)
    with pytest.raises(RequestError) as info:
        parse(data)
    msg = str(info.value)
    assert "timeout_seconds" in msg and "max_retries" in msg
    assert info.value.deliberation_id == "delib-1"
    assert info.value.task_id == "task-42"


@pytest.mark.parametrize(
    "text, message",
    [
        ("{not json", "the request is not valid JSON"),
        ("[1, 2]", "the request must be a JSON object, got array"),
        ('"a string"', "the request must be a JSON object, got string"),
        ("[" * 100000, "the request is not valid JSON"),
    ],
)
def test_malformed_request_text(text, message):
    with pytest.raises(RequestError) as info:
        parse_request(text)
    assert message in str(info.value)


def test_a_large_nasty_request_is_parsed_verbatim():
    # A description of the gateway's default limit (256 KiB), full of what a shell, an env
    # var expansion or a format string could misread: it arrives as sent.
    desc = (NASTY_DESCRIPTION * (256 * 1024 // len(NASTY_DESCRIPTION.encode())))
    desc += "x" * (256 * 1024 - len(desc.encode()))
    assert len(desc.encode()) == 256 * 1024
    req = parse_request(json.dumps(request_dict(task_description=desc, metadata={"k": "$HOME ${PATH}"})))
    assert req.task_id == "task-42"
    assert req.task_description == desc
    assert req.metadata == {"k": "$HOME ${PATH}"}
