"""BASELINE: the original service's execution model, kept runnable so every benchmark of a
new executor can measure it on the same Ray head in the same run.

The original was a long-lived Ray driver that, per deliberation, started one Ray actor per
agent (`@ray.remote class Agent`, Ray's default resources), called each actor's method
(which made the OpenAI-compatible HTTP call), waited for all of them and killed the
actors. Each actor is a fresh worker process (Ray never reuses an actor's process), so a
deliberation pays one Python process start per agent.

The HTTP call is the payload's own (ray_executor_payload.llm.post_chat: http.client, one
connection per call), so the baseline and the payload speak to the LLM alike.
"""

from __future__ import annotations

import time
from typing import List, Sequence

import ray

from ray_executor_payload import llm

CALL_TIMEOUT_SECONDS = 60.0


@ray.remote
class Agent:
    """One agent of one deliberation; created for it and killed after it."""

    def respond(self, call: llm.ChatCall) -> str:
        return llm.post_chat(call, time.time() + CALL_TIMEOUT_SECONDS).proposal


def run_deliberation(calls: Sequence[llm.ChatCall], timeout: float = 2 * CALL_TIMEOUT_SECONDS) -> List[str]:
    """The original's deliberation: one actor per agent, all called at once, every answer
    awaited, every actor killed (also when one failed). Returns the agents' proposals in
    order; raises what ray.get raises."""
    agents = [Agent.remote() for _ in calls]
    try:
        return ray.get([a.respond.remote(c) for a, c in zip(agents, calls)], timeout=timeout)
    finally:
        for a in agents:
            ray.kill(a)
