"""Probe: the recommended executor shape on Ray Serve, end to end, once.

Serve's autoscaler counts requests that pass through a handle or its proxy. The executor
of DESIGN decision 4 receives none: its replicas PULL deliberations from a JetStream work
queue. This probe checks that Serve can still do the three jobs the issue gives Ray:

  scale    each replica reports the queue's backlog (record_autoscaling_stats: the
           consumer's pending + unacknowledged messages) and a custom policy asks for
           ceil(backlog / --backlog-per-replica) replicas between min and max;
  restart  Serve replaces replicas (not exercised here; the health check is Serve's);
  drain    on scale-down the replica's async __del__ stops pulling, finishes what it holds
           and acks it, so no deliberation is run twice (redelivered) or lost. The load
           steps down to a rate one replica can take (--tail-rate) so that replicas are
           stopped while they hold work.

The agents' LLM latency is simulated (--agent-delay-ms before the real call to the
stand-in) so that a replica's concurrency limit is reached and a backlog builds.

    python -u -m bench.serve_pull --nats-url nats://127.0.0.1:4222 --llm-url http://127.0.0.1:18000

Prints a timeline of replicas and backlog and one line `SERVE_PULL_RESULT {json}`.
Needs ray[serve] and nats-py (both in .venv after `make bench-models`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import time
from typing import Any, Dict, List, Optional

import nats
import ray
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy
from ray import serve

from ray_executor_payload import llm

from .standing import AgentWorker

RESULT_MARKER = "SERVE_PULL_RESULT"
DURABLE = "executor"


def log(msg: str) -> None:
    print(f"[serve_pull {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class BacklogPolicy:
    """A custom Serve autoscaling policy: replicas for the queue's backlog, within bounds.
    A class so that Serve hands it policy_kwargs; Serve pickles its module by value for
    the controller."""

    def __init__(self, backlog_per_replica: float) -> None:
        self.backlog_per_replica = backlog_per_replica

    def __call__(self, ctx: Any) -> Any:
        reported = (ctx.aggregated_metrics or {}).get("backlog", {})
        backlog = max(reported.values(), default=0.0)  # every replica sees the same queue
        desired = math.ceil(backlog / self.backlog_per_replica) if backlog > 0 else 0
        return max(ctx.capacity_adjusted_min_replicas, min(ctx.capacity_adjusted_max_replicas, desired)), {}


@serve.deployment(ray_actor_options={"num_cpus": 0}, graceful_shutdown_timeout_s=60)
class Executor:
    """A replica: pulls deliberations, runs their agents with asyncio, acks when done."""

    async def __init__(self, nats_url: str, stream: str, done_subject: str, llm_url: str,
                       concurrency: int, agent_delay_s: float) -> None:
        self.stream, self.done_subject = stream, done_subject
        self.url = llm.chat_completions_url(llm_url)
        self.concurrency, self.delay = concurrency, agent_delay_s
        self.nc = await nats.connect(nats_url)
        self.js = self.nc.jetstream()
        self.sub = await self.js.pull_subscribe_bind(durable=DURABLE, stream=stream)
        self.worker = AgentWorker()
        self.replica = serve.get_replica_context().replica_id.unique_id
        self.inflight = 0
        self.tasks: set = set()
        self.stopping = False
        self.puller = asyncio.get_running_loop().create_task(self._pull())

    async def _pull(self) -> None:
        while not self.stopping:
            free = self.concurrency - self.inflight
            if free <= 0:
                await asyncio.sleep(0.01)
                continue
            try:
                msgs = await self.sub.fetch(free, timeout=1)
            except nats.errors.TimeoutError:
                continue
            for m in msgs:
                self.inflight += 1
                t = asyncio.get_running_loop().create_task(self._run(m))
                self.tasks.add(t)
                t.add_done_callback(self.tasks.discard)

    async def _run(self, msg: Any) -> None:
        try:
            d = json.loads(msg.data)
            calls = [llm.ChatCall(url=self.url, model="serve-pull", system_prompt=f"agent {i}",
                                  user_prompt=f"Deliberation {d['id']}") for i in range(d["agents"])]

            async def agent(c: llm.ChatCall) -> str:
                await asyncio.sleep(self.delay)  # the LLM's generation time, simulated
                return await self.worker.agent(c)

            await asyncio.gather(*(agent(c) for c in calls))
            await msg.ack_sync()
            await self.nc.publish(self.done_subject, json.dumps(
                {"id": d["id"], "replica": self.replica, "redelivered": msg.metadata.num_delivered > 1}).encode())
        finally:
            self.inflight -= 1

    async def record_autoscaling_stats(self) -> Dict[str, float]:
        info = await self.js.consumer_info(self.stream, DURABLE)
        return {"backlog": float(info.num_pending + info.num_ack_pending), "inflight": float(self.inflight)}

    async def __del__(self) -> None:
        """Serve's graceful stop: pull no more, finish and ack what this replica holds."""
        self.stopping = True
        await self.puller
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=50)
        await self.nc.drain()

    async def ping(self) -> str:
        return self.replica


async def run(args: argparse.Namespace) -> Dict[str, Any]:
    tag = str(os.getpid())
    stream, subject = f"BENCH_SERVE_PULL_{tag}", f"bench.serve_pull.{tag}.work"
    done_subject = f"bench.serve_pull.{tag}.done"
    app = f"bench-serve-pull-{tag}"
    nc = await nats.connect(args.nats_url)
    js = nc.jetstream()
    await js.add_stream(name=stream, subjects=[subject], retention=RetentionPolicy.WORK_QUEUE)
    await js.add_consumer(stream, ConsumerConfig(durable_name=DURABLE, ack_policy=AckPolicy.EXPLICIT,
                                                 ack_wait=120, max_ack_pending=100000))
    done: List[Dict[str, Any]] = []
    t0 = time.perf_counter()

    async def on_done(msg: Any) -> None:
        d = json.loads(msg.data)
        d["t"] = round(time.perf_counter() - t0, 2)
        done.append(d)

    await nc.subscribe(done_subject, cb=on_done)

    owned = False
    try:
        ray.get_actor("SERVE_CONTROLLER_ACTOR", namespace="serve")
    except ValueError:
        serve.start(http_options={"location": "NoServer"})
        owned = True
    timeline: List[List[Any]] = []
    try:
        autoscaling = {
            "min_replicas": args.min_replicas, "max_replicas": args.max_replicas,
            "upscale_delay_s": 2.0, "downscale_delay_s": 10.0,
            "policy": {"policy_function": BacklogPolicy,
                       "policy_kwargs": {"backlog_per_replica": args.backlog_per_replica}},
        }
        t_deploy = time.perf_counter()
        handle = serve.run(Executor.options(autoscaling_config=autoscaling).bind(
            args.nats_url, stream, done_subject, args.llm_url, args.concurrency, args.agent_delay_ms / 1000.0),
            name=app, route_prefix=None)
        await handle.ping.remote()
        deploy_s = time.perf_counter() - t_deploy
        log(f"deployed in {deploy_s:.1f}s; publishing {args.rate}/s for {args.seconds:.0f}s, "
            f"then {args.tail_rate}/s for {args.tail_seconds:.0f}s")

        async def sample() -> None:
            while True:
                st = serve.status().applications.get(app)
                reps = st.deployments["Executor"].replica_states if st else {}
                info = await js.consumer_info(stream, DURABLE)
                timeline.append([round(time.perf_counter() - t0, 1), reps.get("RUNNING", 0), reps.get("STARTING", 0),
                                 reps.get("STOPPING", 0), info.num_pending + info.num_ack_pending, len(done)])
                await asyncio.sleep(1.0)

        sampler = asyncio.get_running_loop().create_task(sample())
        published = 0
        t_pub = time.perf_counter()
        while time.perf_counter() - t_pub < args.seconds + args.tail_seconds:
            el = time.perf_counter() - t_pub
            target = int(min(el, args.seconds) * args.rate + max(0.0, el - args.seconds) * args.tail_rate)
            while published < target:
                published += 1
                await js.publish(subject, json.dumps({"id": published, "agents": args.agents}).encode(),
                                 headers={"Nats-Msg-Id": f"{tag}-{published}"})
            await asyncio.sleep(0.02)
        pub_end = time.perf_counter() - t0
        log(f"published {published}; waiting for them and for the scale-down")
        deadline = time.perf_counter() + args.wait_seconds
        while time.perf_counter() < deadline:
            if len(done) >= published and timeline and timeline[-1][1] <= args.min_replicas and not any(timeline[-1][2:4]):
                break
            await asyncio.sleep(1.0)
        sampler.cancel()
        ids = [d["id"] for d in done]
        per_replica: Dict[str, int] = {}
        for d in done:
            per_replica[d["replica"]] = per_replica.get(d["replica"], 0) + 1
        changes = [t for i, t in enumerate(timeline) if i == 0 or t[1:4] != timeline[i - 1][1:4]]
        return {
            "config": vars(args),
            "deploy_s": round(deploy_s, 2),
            "published": published,
            "published_until_s": round(pub_end, 1),
            "done": len(done),
            "distinct_done": len(set(ids)),
            "missing": published - len(set(ids)),
            "duplicates": len(ids) - len(set(ids)),
            "redelivered": sum(1 for d in done if d["redelivered"]),
            "last_done_s": max((d["t"] for d in done), default=None),
            "peak_running_replicas": max((t[1] for t in timeline), default=0),
            "peak_backlog": max((t[4] for t in timeline), default=0),
            "per_replica": per_replica,
            "timeline_changes [t, running, starting, stopping, backlog, done]": changes,
        }
    finally:
        try:
            serve.delete(app)
            if owned:
                serve.shutdown()
        finally:
            await js.delete_stream(stream)
            await nc.drain()


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.serve_pull", description=__doc__.split("\n\n")[0])
    p.add_argument("--nats-url", required=True)
    p.add_argument("--llm-url", required=True)
    p.add_argument("--rate", type=float, default=60.0, help="deliberations published per second")
    p.add_argument("--seconds", type=float, default=40.0, help="how long to publish")
    p.add_argument("--tail-rate", type=float, default=20.0,
                   help="then this rate, which one replica can take: the others are stopped while they hold work")
    p.add_argument("--tail-seconds", type=float, default=40.0)
    p.add_argument("--agents", type=int, default=3)
    p.add_argument("--agent-delay-ms", type=float, default=200.0, help="simulated LLM time per agent call")
    p.add_argument("--concurrency", type=int, default=8, help="deliberations a replica runs at once")
    p.add_argument("--backlog-per-replica", type=float, default=16.0)
    p.add_argument("--min-replicas", type=int, default=1)
    p.add_argument("--max-replicas", type=int, default=4)
    p.add_argument("--wait-seconds", type=float, default=120.0, help="after publishing: for completion and scale-down")
    args = p.parse_args(argv)
    ray.init(log_to_driver=False)
    res = asyncio.run(run(args))
    for k, v in res.items():
        if k != "config":
            log(f"{k}: {v}")
    print(RESULT_MARKER + " " + json.dumps(res, separators=(",", ":")), flush=True)
    return 0 if res["missing"] == 0 and res["duplicates"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
