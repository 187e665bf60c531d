"""Request builders shared by the tests."""

import copy
import json
from typing import Any, Dict, List, Optional

from ray_executor_payload.request import DeliberationRequest, parse_request

# Everything a shell or a format string could misread, plus newlines and non-ASCII text.
NASTY_DESCRIPTION = (
    "Fix it: $(touch /tmp/pwned) `rm -rf /` ; echo $HOME && exit 1 | cat > /dev/null\n"
    "Quotes ' \" \\ and braces {role} {0} {{x}} %s %(name)s ${VAR}\r\n"
    "\ttabs, unicode: h\u00e9llo \u65e5\u672c\u8a9e \U0001F680, line sep\u2028para\u2029, nul-ish \u0001 end\n"
)


def agent(agent_id: str, model: str = "", role: str = "dev", template: str = "", url: str = "") -> Dict[str, Any]:
    return {"id": agent_id, "role": role, "model": model, "prompt_template": template, "vllm_url": url}


def request_dict(vllm_url: str = "http://127.0.0.1:9", agents: Optional[List[Dict[str, Any]]] = None, **overrides: Any) -> Dict[str, Any]:
    data: Dict[str, Any] = {
        "version": 1,
        "deliberation_id": "delib-1",
        "kind": "deliberation",
        "task_id": "task-42",
        "task_description": "Design the cache layer.",
        "role": "ARCHITECT",
        "story_id": "story-7",
        "plan_id": "plan-3",
        "timeout_seconds": 30,
        "max_retries": 2,
        "metadata": {"priority": "high", "area": "storage"},
        "vllm_url": vllm_url,
        "vllm_model": "default-model",
        "agents": agents if agents is not None else [agent("a1", "m-ok")],
    }
    data.update(copy.deepcopy(overrides))
    return data


def request(vllm_url: str = "http://127.0.0.1:9", agents: Optional[List[Dict[str, Any]]] = None, **overrides: Any) -> DeliberationRequest:
    return parse_request(json.dumps(request_dict(vllm_url, agents, **overrides)))
