"""System and user prompts of an agent.

Caller text (task description, metadata, templates) is only ever concatenated or
substituted in one pass by plain string replacement: never str.format, never a shell, never
re-scanned after substitution. The task description reaches the LLM byte for byte.
"""

from __future__ import annotations

import re
from typing import Dict

from .request import AgentSpec, DeliberationRequest

# The only placeholders a prompt_template may use. Anything else in braces stays literal.
PLACEHOLDERS = ("role", "agent_id", "task_id", "task_description", "story_id", "plan_id")
_PLACEHOLDER_RE = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")


def placeholder_values(req: DeliberationRequest, agent: AgentSpec) -> Dict[str, str]:
    return {
        "role": agent.role,
        "agent_id": agent.id,
        "task_id": req.task_id,
        "task_description": req.task_description,
        "story_id": req.story_id,
        "plan_id": req.plan_id,
    }


def render_template(template: str, values: Dict[str, str]) -> str:
    """Substitutes the known placeholders in a single pass: text inserted for one
    placeholder is never scanned again, so a description containing "{role}" stays as is."""
    return _PLACEHOLDER_RE.sub(lambda m: values[m.group(1)], template)


def system_prompt(req: DeliberationRequest, agent: AgentSpec) -> str:
    if agent.prompt_template.strip():
        return render_template(agent.prompt_template, placeholder_values(req, agent))
    who = agent.role or "an agent"
    parts = [
        f"You are {who} (agent {agent.id}) taking part in a deliberation for role "
        f"{req.role or 'unspecified'} on task {req.task_id}.",
        "Study the task the user gives you and answer with your best, concrete proposal.",
    ]
    if req.task_type == "TASK_EXTRACTION":
        parts.append("Respond with a single JSON object and nothing else.")
    return " ".join(parts)


def user_prompt(req: DeliberationRequest) -> str:
    """The task description verbatim, then a blank line and "key: value" context lines
    (task_id, story_id, plan_id when set, then the metadata sorted by key)."""
    lines = []
    for key, value in (("task_id", req.task_id), ("story_id", req.story_id), ("plan_id", req.plan_id)):
        if value:
            lines.append(f"{key}: {value}")
    for key in sorted(req.metadata):
        lines.append(f"{key}: {req.metadata[key]}")
    if not lines:
        return req.task_description
    return req.task_description + "\n\n" + "\n".join(lines)
