from helpers import NASTY_DESCRIPTION, agent, request
from ray_executor_payload.prompts import render_template, system_prompt, user_prompt


def test_template_placeholders_are_substituted():
    template = "You are {role} ({agent_id}) on {task_id}/{story_id}/{plan_id}: {task_description}"
    req = request(agents=[agent("a1", role="tester", template=template)])
    assert system_prompt(req, req.agents[0]) == (
        "You are tester (a1) on task-42/story-7/plan-3: Design the cache layer."
    )


def test_unknown_placeholders_and_format_syntax_stay_literal():
    template = "{role} {unknown} {0} {} {{role}} {role!r} {role:>10} %(role)s ${role} {ROLE} { role }"
    req = request(agents=[agent("a1", role="R", template=template)])
    assert system_prompt(req, req.agents[0]) == "R {unknown} {0} {} {R} {role!r} {role:>10} %(role)s $R {ROLE} { role }"


def test_substituted_text_is_not_rescanned():
    # The description contains placeholders itself; they must arrive untouched.
    req = request(
        task_description="use {role} and {agent_id} literally",
        agents=[agent("a1", role="R", template="[{task_description}] as {role}")],
    )
    assert system_prompt(req, req.agents[0]) == "[use {role} and {agent_id} literally] as R"


def test_render_template_handles_backslashes_in_values():
    # re.sub would interpret "\1" or "\g<0>" in a replacement string; values must not be.
    values = {k: "" for k in ("role", "agent_id", "task_id", "task_description", "story_id", "plan_id")}
    values["role"] = r"C:\new\1\g<0>"
    assert render_template("{role}", values) == r"C:\new\1\g<0>"


def test_default_system_prompt_names_agent_role_and_request_role():
    req = request(agents=[agent("a7", role="security reviewer")])
    prompt = system_prompt(req, req.agents[0])
    assert prompt.startswith("You are security reviewer (agent a7) taking part in a deliberation for role ARCHITECT")
    assert "task-42" in prompt
    assert "JSON" not in prompt


def test_blank_template_falls_back_to_default_and_extraction_asks_for_json():
    req = request(agents=[agent("a1", template="   ")], metadata={"task_type": "TASK_EXTRACTION"})
    prompt = system_prompt(req, req.agents[0])
    assert prompt.startswith("You are dev (agent a1)")
    assert "JSON object" in prompt


def test_user_prompt_is_description_then_context_lines():
    req = request(task_description=NASTY_DESCRIPTION, metadata={"zeta": "last", "alpha": "first\nsecond"})
    assert user_prompt(req) == (
        NASTY_DESCRIPTION
        + "\n\n"
        + "task_id: task-42\nstory_id: story-7\nplan_id: plan-3\nalpha: first\nsecond\nzeta: last"
    )


def test_user_prompt_skips_empty_ids():
    req = request(story_id="", plan_id="", metadata={})
    assert user_prompt(req) == "Design the cache layer.\n\ntask_id: task-42"
