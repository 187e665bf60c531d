"""The two standing execution models: warm processes that run agents as asyncio coroutines.

- PLAIN ASYNC ACTORS: a pool of AsyncAgent actors (num_cpus=0, max_concurrency high)
  created once; the caller picks an actor and calls it.
- RAY SERVE: the same class as a Serve deployment (num_cpus=0, max_ongoing_requests high)
  called through a DeploymentHandle, which picks the replica; optionally autoscaled.

Both run the same agent code (AgentWorker): the request body and the parsing are the
payload's (ray_executor_payload.llm), the HTTP client is aiohttp (a dependency of
ray[default], so nothing new to install), one keep-alive session per process. Each offers
two granularities: `agent` (one agent's call; a deliberation is several such calls spread
over the processes) and `deliberation` (all of a deliberation's agents in one process,
concurrently with asyncio.gather: the shape of the executor of DESIGN.md decision 4, where
a replica pulls a whole deliberation from the work queue).

ray.serve is imported only by serve_deployment, so the actor model runs without
ray[serve] installed.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import List, Optional, Sequence

import aiohttp
import ray

from ray_executor_payload import llm

CALL_TIMEOUT_SECONDS = 60.0
MAX_CONCURRENCY = 1000


class AgentWorker:
    """One process's agent runner: an aiohttp session made on first use, in the event loop
    that will use it."""

    def __init__(self) -> None:
        self._session: Optional[aiohttp.ClientSession] = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0),  # no cap: the LLM server queues
                timeout=aiohttp.ClientTimeout(total=CALL_TIMEOUT_SECONDS),
            )
        return self._session

    async def agent(self, call: llm.ChatCall) -> str:
        """One agent's chat completion; returns the proposal, raises on any failure."""
        async with self._client().post(
            call.url,
            data=json.dumps(llm.request_body(call)).encode("utf-8"),
            headers=llm.request_headers(call, os.environ.get(llm.API_KEY_ENV, "")),
            allow_redirects=False,
        ) as resp:
            raw = await resp.read()
            if resp.status != 200:
                raise llm.LLMError(llm.HTTP_ERROR, f"HTTP {resp.status}: {llm.snippet(raw.decode('utf-8', 'replace'))}")
        return llm.parse_completion(json.loads(raw)).proposal

    async def deliberation(self, calls: Sequence[llm.ChatCall]) -> List[str]:
        """Every agent of one deliberation at once, in this process."""
        return list(await asyncio.gather(*(self.agent(c) for c in calls)))


@ray.remote(num_cpus=0, max_concurrency=MAX_CONCURRENCY)
class AsyncAgent:
    """A standing async actor (the plain-actor model)."""

    def __init__(self) -> None:
        self._worker = AgentWorker()

    async def agent(self, call: llm.ChatCall) -> str:
        return await self._worker.agent(call)

    async def deliberation(self, calls: Sequence[llm.ChatCall]) -> List[str]:
        return await self._worker.deliberation(calls)


def serve_deployment(max_ongoing_requests: int = MAX_CONCURRENCY):
    """The Serve model's deployment class (imports ray.serve, i.e. needs ray[serve])."""
    from ray import serve

    @serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=max_ongoing_requests)
    class AgentDeployment:
        def __init__(self) -> None:
            self._worker = AgentWorker()

        async def agent(self, call: llm.ChatCall) -> str:
            return await self._worker.agent(call)

        async def deliberation(self, calls: Sequence[llm.ChatCall]) -> List[str]:
            return await self._worker.deliberation(calls)

    return AgentDeployment
