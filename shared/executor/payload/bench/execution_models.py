"""Execution models on Ray (issue 11): one Ray job driver that measures, in one run and
interleaved on the same Ray head against the same OpenAI-compatible LLM endpoint,

  baseline       the original's model: per deliberation one actor per agent, get all, kill
                 (bench/baseline.py)
  actors-*       plain async actors: a standing pool of AsyncAgent actors (bench/standing.py)
  serve-*        Ray Serve: the same code as a deployment, called through a DeploymentHandle
  serve-auto-*   the Serve deployment with autoscaling_config (min..max replicas)

with two granularities for the standing models: `agent` (each agent is one call, a
deliberation's calls go to different processes) and `delib` (one call per deliberation,
its agents run concurrently inside one process with asyncio: the executor's shape).

For each row: one-agent deliberations one at a time (latency), a burst of N three-agent
deliberations from C concurrent callers (completed/s, latency per deliberation), the
resident memory and idle CPU of the standing processes, and the start-up time of the
standing application (deploy until the first request is answered). Figures are also
given as ratios against the baseline of the same round.

Interleaving, so that the drift of a shared machine affects every model alike: each round
starts every standing model, then runs the single-deliberation samples round-robin (one
sample per model in turn, order rotating), then the bursts one model after the other,
order rotating: each standing row bursts --burst-repeats times (about a second each),
around the baseline's one burst (minutes), and the round's figure is their median; then
it stops them.

Run as a Ray job from shared/executor/payload (the working_dir must hold bench/ and
ray_executor_payload/):

    python -u -m bench --llm-url http://127.0.0.1:18000

It prints progress to stderr, a table to stdout and, last, one line
`BENCH_MODELS_RESULT {json}` that the Go report (models_bench_test.go) reads.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib
import itertools
import json
import math
import os
import platform
import signal
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import ray

from ray_executor_payload import llm

from . import baseline
from .proc import probe
from .standing import AsyncAgent, serve_deployment

RESULT_MARKER = "BENCH_MODELS_RESULT"
CALL_TIMEOUT_SECONDS = 120.0
SERVE_CONTROLLER = ("SERVE_CONTROLLER_ACTOR", "serve")  # name, namespace (ray.serve constants)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- statistics ------------------------------------------------------------------------


def pct(values: Sequence[float], p: float) -> Optional[float]:
    """The nearest-rank p-quantile (p99 of fewer than 100 samples is the maximum)."""
    if not values:
        return None
    s = sorted(values)
    return s[max(0, math.ceil(p * len(s)) - 1)]


def latency_summary(seconds: Sequence[float]) -> Dict[str, Any]:
    ms = [x * 1000.0 for x in seconds]
    return {
        "n": len(ms),
        "p50_ms": pct(ms, 0.50),
        "p99_ms": pct(ms, 0.99),
        "mean_ms": sum(ms) / len(ms) if ms else None,
        "max_ms": max(ms) if ms else None,
    }


def machine_busy_seconds() -> Optional[float]:
    """CPU time the whole machine has spent busy since boot (all cores, /proc/stat): the
    measure that includes the short-lived agent actors of the baseline, and also whatever
    else runs on the machine."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def loadavg() -> Optional[float]:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


# --- the work --------------------------------------------------------------------------


class Calls:
    """Makes the chat calls of one deliberation: distinct text per deliberation, so each
    request is its own (a caching LLM server could not answer from memory)."""

    def __init__(self, llm_url: str, model: str) -> None:
        self.url = llm.chat_completions_url(llm_url)
        self.model = model
        self._seq = itertools.count(1)

    def deliberation(self, agents: int) -> List[llm.ChatCall]:
        n = next(self._seq)
        user = f"Deliberation {n}: pick a database for the audit log, with reasons."
        return [
            llm.ChatCall(
                url=self.url,
                model=self.model,
                system_prompt=f"You are agent {i + 1} of {agents}, an architect. Propose and justify.",
                user_prompt=user,
            )
            for i in range(agents)
        ]


Runner = Callable[[List[llm.ChatCall]], List[str]]


def check(out: Any, agents: int) -> None:
    if not isinstance(out, list) or len(out) != agents or not all(isinstance(x, str) and x for x in out):
        raise RuntimeError(f"unexpected result {str(out)[:120]!r}")


# --- the models ------------------------------------------------------------------------


class Baseline:
    """Nothing standing: every deliberation starts its own agent actors."""

    key = "baseline"

    def start(self, first: List[llm.ChatCall]) -> Dict[str, Any]:
        return {}

    def runner(self, mode: str) -> Runner:
        return baseline.run_deliberation

    def processes(self) -> List[Tuple[str, Any]]:
        return []

    def stop(self) -> None:
        pass

    @staticmethod
    def agent_footprint(call: llm.ChatCall) -> Dict[str, Any]:
        """What one agent actor costs while it lives: created, answered once, probed."""
        t0 = time.perf_counter()
        a = baseline.Agent.remote()
        try:
            ray.get(a.respond.remote(call), timeout=CALL_TIMEOUT_SECONDS)
            created_and_answered = time.perf_counter() - t0
            rss, _, _ = ray.get(a.__ray_call__.remote(probe()), timeout=30)
            return {"agent_actor_rss_mib": rss, "agent_actor_first_answer_s": created_and_answered}
        finally:
            ray.kill(a)


class ActorPool:
    """A standing pool of async actors, round-robin from the caller."""

    key = "actors"

    def __init__(self, size: int) -> None:
        self.size = size
        self.actors: List[Any] = []
        self._rr = itertools.count()

    def _next(self) -> Any:
        return self.actors[next(self._rr) % len(self.actors)]

    def start(self, first: List[llm.ChatCall]) -> Dict[str, Any]:
        t0 = time.perf_counter()
        self.actors = [AsyncAgent.remote() for _ in range(self.size)]
        check(ray.get(self.actors[0].deliberation.remote(first), timeout=CALL_TIMEOUT_SECONDS), len(first))
        t_first = time.perf_counter() - t0
        ray.get([a.__ray_ready__.remote() for a in self.actors], timeout=CALL_TIMEOUT_SECONDS)
        return {"startup_s": t_first, "all_ready_s": time.perf_counter() - t0}

    def runner(self, mode: str) -> Runner:
        if mode == "agent":
            return lambda calls: ray.get([self._next().agent.remote(c) for c in calls], timeout=CALL_TIMEOUT_SECONDS)
        return lambda calls: ray.get(self._next().deliberation.remote(calls), timeout=CALL_TIMEOUT_SECONDS)

    def processes(self) -> List[Tuple[str, Any]]:
        return [("actor", a) for a in self.actors]

    def stop(self) -> None:
        for a in self.actors:
            ray.kill(a)
        self.actors = []


class ServeRuntime:
    """Serve's controller on the cluster. Started (without HTTP proxy) when none runs, and
    then shut down by us; a controller that was already there is someone else's and is
    never shut down (only our applications are deleted)."""

    def __init__(self) -> None:
        self.owned = False
        self.preexisting = False

    @staticmethod
    def controller() -> Optional[Any]:
        try:
            return ray.get_actor(*SERVE_CONTROLLER)
        except ValueError:
            return None

    def ensure(self) -> float:
        """Seconds spent starting the controller (0 when one runs)."""
        from ray import serve

        if self.controller() is not None:
            if not self.owned:
                self.preexisting = True
            return 0.0
        t0 = time.perf_counter()
        # No HTTP proxy: callers use handles, and port 8000 is the LLM stand-in's in make run.
        serve.start(http_options={"location": "NoServer"})
        self.owned = True
        return time.perf_counter() - t0

    def shutdown(self) -> None:
        if self.owned:
            from ray import serve

            serve.shutdown()
            self.owned = False


class ServeApp:
    """One Serve application of the AgentDeployment, fixed replicas or autoscaled."""

    def __init__(self, key: str, runtime: ServeRuntime, app: str, num_replicas: Optional[int] = None,
                 autoscaling: Optional[Dict[str, Any]] = None) -> None:
        self.key = key
        self.runtime = runtime
        self.app = app
        self.num_replicas = num_replicas
        self.autoscaling = autoscaling
        self.handle: Any = None

    def start(self, first: List[llm.ChatCall]) -> Dict[str, Any]:
        from ray import serve

        t0 = time.perf_counter()
        controller_s = self.runtime.ensure()
        opts: Dict[str, Any] = {"name": "AgentDeployment"}
        if self.autoscaling:
            opts["autoscaling_config"] = self.autoscaling
        else:
            opts["num_replicas"] = self.num_replicas
        self.handle = serve.run(serve_deployment().options(**opts).bind(), name=self.app, route_prefix=None)
        deployed_s = time.perf_counter() - t0
        check(self.handle.deliberation.remote(first).result(timeout_s=CALL_TIMEOUT_SECONDS), len(first))
        return {
            "startup_s": time.perf_counter() - t0,
            "controller_start_s": controller_s,
            "deployed_s": deployed_s,
            "controller_preexisting": self.runtime.preexisting,
        }

    def runner(self, mode: str) -> Runner:
        if mode == "agent":
            def run(calls: List[llm.ChatCall]) -> List[str]:
                responses = [self.handle.agent.remote(c) for c in calls]
                return [r.result(timeout_s=CALL_TIMEOUT_SECONDS) for r in responses]
            return run
        return lambda calls: self.handle.deliberation.remote(calls).result(timeout_s=CALL_TIMEOUT_SECONDS)

    def replica_names(self) -> List[str]:
        prefix = f"SERVE_REPLICA::{self.app}#"
        return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                      if a.get("namespace") == SERVE_CONTROLLER[1] and a["name"].startswith(prefix))

    def replica_states(self) -> Dict[str, int]:
        from ray import serve

        app = serve.status().applications.get(self.app)
        if app is None:
            return {}
        dep = app.deployments.get("AgentDeployment")
        return {str(getattr(k, "value", k)): v for k, v in (dep.replica_states if dep else {}).items()}

    def processes(self) -> List[Tuple[str, Any]]:
        procs = []
        for name in self.replica_names():
            try:
                procs.append(("replica", ray.get_actor(name, namespace=SERVE_CONTROLLER[1])))
            except ValueError:
                pass  # stopped since listed
        return procs

    def stop(self) -> None:
        if self.handle is not None:
            from ray import serve

            serve.delete(self.app)
            self.handle = None


def probe_all(procs: List[Tuple[str, Any]]) -> List[Dict[str, Any]]:
    out = []
    refs = [(role, h.__ray_call__.remote(probe())) for role, h in procs]
    for role, ref in refs:
        try:
            rss, cpu, pid = ray.get(ref, timeout=30)
            out.append({"role": role, "rss_mib": rss, "cpu_s": cpu, "pid": pid})
        except Exception as exc:  # noqa: BLE001 - a process that cannot answer is reported
            out.append({"role": role, "error": f"{type(exc).__name__}: {exc}"[:200]})
    return out


def idle_footprint(procs: List[Tuple[str, Any]], idle_seconds: float) -> Dict[str, Any]:
    """RSS of every standing process and the CPU they use while nobody calls them."""
    before = probe_all(procs)
    time.sleep(idle_seconds)
    after = probe_all(procs)
    ok = [(b, a) for b, a in zip(before, after) if "rss_mib" in b and "rss_mib" in a]
    roles: Dict[str, List[float]] = {}
    for _, a in ok:
        roles.setdefault(a["role"], []).append(a["rss_mib"])
    return {
        "processes": len(procs),
        "rss_total_mib": sum(a["rss_mib"] for _, a in ok),
        "rss_by_role_mib": {r: [round(x, 1) for x in v] for r, v in roles.items()},
        "idle_cpu_pct": 100.0 * sum(a["cpu_s"] - b["cpu_s"] for b, a in ok) / idle_seconds if ok else None,
        "errors": [p["error"] for p in before + after if "error" in p][:3],
    }


# --- the measurements ------------------------------------------------------------------


def rotate(seq: Sequence[Any], k: int) -> List[Any]:
    k %= len(seq)
    return list(seq[k:]) + list(seq[:k])


def cpu_of(procs: List[Tuple[str, Any]]) -> float:
    return sum(p.get("cpu_s", 0.0) for p in probe_all(procs))


def burst(run: Runner, calls: Calls, deliberations: int, callers: int, agents: int,
          procs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    """`deliberations` deliberations of `agents` agents, from `callers` concurrent callers
    (threads calling back to back). Also the CPU it cost: in this driver plus the model's
    standing processes, and on the whole machine."""
    latencies: List[float] = []
    errors: List[str] = []
    lock = threading.Lock()

    def one(_: int) -> None:
        work = calls.deliberation(agents)
        t0 = time.perf_counter()
        try:
            check(run(work), agents)
        except Exception as exc:  # noqa: BLE001 - counted and reported
            with lock:
                errors.append(f"{type(exc).__name__}: {exc}"[:200])
            return
        dt = time.perf_counter() - t0
        with lock:
            latencies.append(dt)

    load_before = loadavg()
    procs_cpu0 = cpu_of(procs)
    driver_cpu0 = os.times()
    machine0 = machine_busy_seconds()
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=callers) as pool:
        list(pool.map(one, range(deliberations)))
    wall = time.perf_counter() - t0
    machine1 = machine_busy_seconds()
    driver_cpu1 = os.times()
    procs_cpu = cpu_of(procs) - procs_cpu0
    driver_cpu = (driver_cpu1.user + driver_cpu1.system) - (driver_cpu0.user + driver_cpu0.system)
    done = max(1, len(latencies))
    out = latency_summary(latencies)
    out.update({
        "driver_cpu_ms_per_delib": 1000.0 * driver_cpu / done,
        "standing_cpu_ms_per_delib": 1000.0 * procs_cpu / done,
        "machine_cpu_ms_per_delib": 1000.0 * (machine1 - machine0) / done if machine0 is not None and machine1 is not None else None,
    })
    out.update({
        "deliberations": deliberations,
        "completed": len(latencies),
        "failed": len(errors),
        "errors": errors[:3],
        "seconds": wall,
        "completed_per_s": len(latencies) / wall if wall > 0 else None,
        "loadavg_before": load_before,
        "loadavg_after": loadavg(),
    })
    return out


def combine(bursts: List[Dict[str, Any]]) -> Dict[str, Any]:
    """One round's figure of a row from its repeated bursts: the medians, every failure,
    and each burst's completed/s."""
    out: Dict[str, Any] = {k: median([b[k] for b in bursts]) for k in (
        "completed_per_s", "p50_ms", "p99_ms", "seconds", "driver_cpu_ms_per_delib",
        "standing_cpu_ms_per_delib", "machine_cpu_ms_per_delib")}
    out.update({
        "bursts": len(bursts),
        "completed_per_s_each": [round(b["completed_per_s"], 2) for b in bursts],
        "completed": sum(b["completed"] for b in bursts),
        "failed": sum(b["failed"] for b in bursts),
        "errors": [e for b in bursts for e in b["errors"]][:3],
        "loadavg": [b["loadavg_before"] for b in bursts] + [bursts[-1]["loadavg_after"]],
    })
    return out


def autoscale_observation(app: ServeApp, calls: Calls, callers: int, agents: int,
                          load_seconds: float, idle_seconds: float) -> Dict[str, Any]:
    """Steady load from `callers` callers for load_seconds, then idle: when does Serve add
    replicas, how many, and when does it give them back."""
    t0 = time.perf_counter()
    stop_load = threading.Event()
    stop_sampling = threading.Event()
    timeline: List[Tuple[float, int, int]] = []  # (t, running, starting)
    done_at: List[float] = []
    lock = threading.Lock()
    errors: List[str] = []

    def sampler() -> None:
        while not stop_sampling.is_set():
            try:
                st = app.replica_states()
                timeline.append((round(time.perf_counter() - t0, 2), st.get("RUNNING", 0),
                                 st.get("STARTING", 0) + st.get("PENDING_MIGRATION", 0)))
            except Exception as exc:  # noqa: BLE001 - a sample missed is not fatal
                errors.append(f"status: {exc}"[:200])
            stop_sampling.wait(0.5)

    run = app.runner("delib")

    def caller() -> None:
        while not stop_load.is_set():
            try:
                check(run(calls.deliberation(agents)), agents)
                with lock:
                    done_at.append(time.perf_counter() - t0)
            except Exception as exc:  # noqa: BLE001
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}"[:200])

    s = threading.Thread(target=sampler, daemon=True)
    s.start()
    threads = [threading.Thread(target=caller, daemon=True) for _ in range(callers)]
    for t in threads:
        t.start()
    time.sleep(load_seconds)
    stop_load.set()
    for t in threads:
        t.join(timeout=CALL_TIMEOUT_SECONDS)
    load_end = time.perf_counter() - t0
    deadline = time.perf_counter() + idle_seconds
    while time.perf_counter() < deadline:
        if timeline and timeline[-1][0] > load_end + 1 and timeline[-1][1] <= 1 and timeline[-1][2] == 0:
            break
        time.sleep(0.5)
    stop_sampling.set()
    s.join(timeout=10)

    def first(pred: Callable[[Tuple[float, int, int]], bool], after: float = 0.0) -> Optional[float]:
        return next((t for t in timeline if t[0] >= after and pred(t)), (None,))[0]

    peak = max((r for _, r, _ in timeline), default=0)
    per_window = []
    w = 5.0
    for k in range(int(math.ceil(load_seconds / w))):
        n = sum(1 for x in done_at if k * w <= x < (k + 1) * w)
        per_window.append(round(n / w, 1))
    changes = []
    for t in timeline:
        if not changes or changes[-1][1:] != t[1:]:
            changes.append(t)
    return {
        "load_seconds": load_seconds,
        "callers": callers,
        "completed": len(done_at),
        "completed_per_s_by_5s": per_window,
        "peak_running_replicas": peak,
        "first_scale_up_s": first(lambda t: t[1] + t[2] >= 2),
        "first_second_replica_running_s": first(lambda t: t[1] >= 2),
        "peak_reached_s": first(lambda t: t[1] >= peak) if peak else None,
        "load_ended_s": round(load_end, 2),
        "back_to_one_s_after_load": (lambda x: round(x - load_end, 2) if x is not None else None)(
            first(lambda t: t[1] <= 1 and t[2] == 0, after=load_end)),
        "replica_changes": [list(c) for c in changes],
        "errors": errors[:3],
    }


def ratios(rows: Dict[str, Dict[str, Any]], key: str) -> Dict[str, Any]:
    b = rows["baseline"]
    r = rows[key]
    out: Dict[str, Any] = {}
    if b["single"]["p50_ms"] and r["single"]["p50_ms"]:
        out["single_p50_speedup"] = b["single"]["p50_ms"] / r["single"]["p50_ms"]
    if b["burst"]["completed_per_s"] and r["burst"]["completed_per_s"] is not None:
        out["burst_throughput_ratio"] = r["burst"]["completed_per_s"] / b["burst"]["completed_per_s"]
    return out


def median(xs: Sequence[float]) -> Optional[float]:
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    m = len(xs) // 2
    return xs[m] if len(xs) % 2 else (xs[m - 1] + xs[m]) / 2


# --- the run ---------------------------------------------------------------------------


def serve_available() -> Optional[str]:
    """None when ray.serve imports, else why not."""
    try:
        importlib.import_module("ray.serve")
    except Exception as exc:  # noqa: BLE001 - missing fastapi/starlette/uvicorn...
        return f"{type(exc).__name__}: {exc}"[:200]
    return None


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--llm-url", required=True, help="base URL of the OpenAI-compatible server")
    p.add_argument("--model", default="bench-models", help="model name sent to the LLM")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--singles", type=int, default=20, help="one-agent deliberations per model per round")
    p.add_argument("--deliberations", type=int, default=200, help="deliberations in each burst")
    p.add_argument("--callers", type=int, default=16, help="concurrent callers in a burst")
    p.add_argument("--agents", type=int, default=3, help="agents per deliberation in a burst")
    p.add_argument("--burst-repeats", type=int, default=3,
                   help="bursts per standing row per round (the baseline's: one, in the middle)")
    p.add_argument("--settle-seconds", type=float, default=10.0,
                   help="pause after the baseline's burst (a tenth of it after each of its one-agent samples)")
    p.add_argument("--pool", type=int, default=2, help="plain async actors in the pool, and fixed Serve replicas")
    p.add_argument("--autoscale-min", type=int, default=1)
    p.add_argument("--autoscale-max", type=int, default=4)
    p.add_argument("--autoscale-target", type=float, default=4.0, help="target_ongoing_requests per replica")
    p.add_argument("--autoscale-load-seconds", type=float, default=30.0,
                   help="steady load for the autoscaling observation (0: skip it)")
    p.add_argument("--autoscale-idle-seconds", type=float, default=40.0)
    p.add_argument("--idle-seconds", type=float, default=5.0, help="idle window for memory and CPU at rest")
    p.add_argument("--serve", choices=["auto", "on", "off"], default="auto",
                   help="auto: measure Serve when ray[serve] is installed; on: fail without it")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # ray job stop: clean up first
    ray.init(log_to_driver=False)
    calls = Calls(args.llm_url, args.model)

    serve_missing = serve_available() if args.serve != "off" else "disabled (--serve off)"
    if serve_missing and args.serve == "on":
        log(f"ray.serve is not usable: {serve_missing}")
        return 2
    runtime = ServeRuntime()
    autoscaling = {
        "min_replicas": args.autoscale_min,
        "max_replicas": args.autoscale_max,
        "target_ongoing_requests": args.autoscale_target,
        "upscale_delay_s": 2.0,
        "downscale_delay_s": 10.0,
    }
    tag = f"{os.getpid()}"
    base = Baseline()
    pool = ActorPool(args.pool)
    standing: List[Any] = [pool]
    serve_fixed = serve_auto = None
    if not serve_missing:
        serve_fixed = ServeApp("serve", runtime, f"bench-models-fixed-{tag}", num_replicas=args.pool)
        serve_auto = ServeApp("serve-auto", runtime, f"bench-models-auto-{tag}", autoscaling=autoscaling)
        standing += [serve_fixed, serve_auto]
    # (row key, model, granularity)
    variants: List[Tuple[str, Any, str]] = [("baseline", base, "delib"), ("actors-agent", pool, "agent"),
                                            ("actors-delib", pool, "delib")]
    if serve_fixed and serve_auto:
        variants += [("serve-agent", serve_fixed, "agent"), ("serve-delib", serve_fixed, "delib"),
                     ("serve-auto-delib", serve_auto, "delib")]

    result: Dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "ray_version": ray.__version__,
        "python": platform.python_version(),
        "machine": {"node": platform.node(), "cpus": os.cpu_count(), "platform": platform.platform(),
                    "cluster_cpus": ray.cluster_resources().get("CPU")},
        "config": {k: v for k, v in vars(args).items()},
        "autoscaling_config": autoscaling if serve_auto else None,
        "serve": "measured" if not serve_missing else f"not measured: {serve_missing}",
        "rounds": [],
    }
    log(f"rows: {', '.join(v[0] for v in variants)}; {args.rounds} round(s)")
    agent_calls = 0
    try:
        for rnd in range(args.rounds):
            rr: Dict[str, Any] = {"round": rnd + 1, "startup": {}, "idle": {}, "idle_after_load": {},
                                  "single": {}, "burst": {}, "loadavg_start": loadavg()}
            for m in rotate(standing, rnd):
                log(f"round {rnd + 1}: starting {m.key}")
                first = calls.deliberation(1)
                rr["startup"][m.key] = m.start(first)
                agent_calls += 1
            rr["baseline_agent"] = Baseline.agent_footprint(calls.deliberation(1)[0])
            agent_calls += 1
            for m in standing:
                rr["idle"][m.key] = idle_footprint(m.processes(), args.idle_seconds)
            if serve_fixed:
                ctl = ServeRuntime.controller()
                rr["idle"]["serve-controller"] = idle_footprint([("controller", ctl)], args.idle_seconds) if ctl else None

            log(f"round {rnd + 1}: {args.singles} one-agent deliberations per row, interleaved")
            single: Dict[str, List[float]] = {v[0]: [] for v in variants}
            single_err: Dict[str, List[str]] = {v[0]: [] for v in variants}
            runners = {key: m.runner(mode) for key, m, mode in variants}
            models = {key: m for key, m, _ in variants}
            for i in range(args.singles):
                for key, _, _ in rotate(variants, rnd + i):
                    work = calls.deliberation(1)
                    t0 = time.perf_counter()
                    try:
                        check(runners[key](work), 1)
                        single[key].append(time.perf_counter() - t0)
                    except Exception as exc:  # noqa: BLE001
                        single_err[key].append(f"{type(exc).__name__}: {exc}"[:200])
                    agent_calls += 1
                    if key == "baseline":
                        time.sleep(args.settle_seconds / 10)  # its killed actor's teardown is its own cost
            for key in single:
                rr["single"][key] = latency_summary(single[key])
                rr["single"][key].update({"failed": len(single_err[key]), "errors": single_err[key][:3]})

            # The standing models' bursts last about a second, the baseline's minutes: they
            # repeat (burst_repeats, order rotating) around the baseline's one burst, so a
            # blip of the shared machine does not make a row's figure.
            bursts: Dict[str, List[Dict[str, Any]]] = {v[0]: [] for v in variants}
            for rep in range(args.burst_repeats):
                for key, _, _ in rotate(variants, rnd + rep):
                    if key == "baseline" and rep != args.burst_repeats // 2:
                        continue
                    log(f"round {rnd + 1}: burst of {args.deliberations} x {args.agents}-agent deliberations "
                        f"from {args.callers} callers: {key}")
                    b = burst(runners[key], calls, args.deliberations, args.callers, args.agents,
                              models[key].processes())
                    bursts[key].append(b)
                    if key == "baseline":
                        # Dozens of actor processes exiting, Ray starting spare workers:
                        # let that pass before the next row's burst.
                        time.sleep(args.settle_seconds)
                    agent_calls += args.deliberations * args.agents
                    log(f"  {b['completed']}/{args.deliberations} in {b['seconds']:.2f}s = {b['completed_per_s']:.2f}/s, "
                        f"p50 {b['p50_ms'] or 0:.0f} ms, failed {b['failed']}")
            rr["burst"] = {key: combine(bs) for key, bs in bursts.items()}

            for m in standing:
                rr["idle_after_load"][m.key] = idle_footprint(m.processes(), args.idle_seconds)
            if serve_auto:
                rr["serve_auto_replicas_after_burst"] = serve_auto.replica_states()
            for m in standing:
                m.stop()
            runtime.shutdown()  # only if we started it: each round's start-up is then cold
            rr["loadavg_end"] = loadavg()
            rr["ratios"] = {key: ratios({"baseline": {"single": rr["single"]["baseline"], "burst": rr["burst"]["baseline"]},
                                         key: {"single": rr["single"][key], "burst": rr["burst"][key]}}, key)
                            for key, _, _ in variants if key != "baseline"}
            result["rounds"].append(rr)

        if serve_auto and args.autoscale_load_seconds > 0:
            log(f"autoscaling: {args.autoscale_load_seconds:.0f}s of steady load from {args.callers} callers, "
                f"then up to {args.autoscale_idle_seconds:.0f}s idle")
            serve_auto.start(calls.deliberation(1))
            result["autoscale"] = autoscale_observation(serve_auto, calls, args.callers, args.agents,
                                                        args.autoscale_load_seconds, args.autoscale_idle_seconds)
            agent_calls += 1 + result["autoscale"]["completed"] * args.agents
            serve_auto.stop()
    finally:
        for m in standing:
            try:
                m.stop()
            except Exception as exc:  # noqa: BLE001 - best effort on the way out
                log(f"stopping {m.key}: {exc}")
        try:
            runtime.shutdown()
        except Exception as exc:  # noqa: BLE001
            log(f"serve shutdown: {exc}")

    result["summary"] = summarize(result, [v[0] for v in variants])
    result["agent_calls_at_least"] = agent_calls
    print(table(result))
    print(RESULT_MARKER + " " + json.dumps(result, separators=(",", ":")), flush=True)
    return 0


def summarize(result: Dict[str, Any], keys: List[str]) -> Dict[str, Any]:
    """Per row, over the rounds: medians of the per-round figures (and their range), and the
    median of the per-round ratios against the baseline."""
    rounds = result["rounds"]
    out: Dict[str, Any] = {}
    for key in keys:
        model = key.split("-agent")[0].split("-delib")[0]
        singles = [r["single"][key] for r in rounds]
        bursts = [r["burst"][key] for r in rounds]
        row: Dict[str, Any] = {
            "single_p50_ms": median([s["p50_ms"] for s in singles]),
            "single_p99_ms": median([s["p99_ms"] for s in singles]),
            "single_n": sum(s["n"] for s in singles),
            "burst_completed_per_s": median([b["completed_per_s"] for b in bursts]),
            "burst_completed_per_s_range": [min(x for b in bursts for x in b["completed_per_s_each"]),
                                            max(x for b in bursts for x in b["completed_per_s_each"])],
            "burst_p50_ms": median([b["p50_ms"] for b in bursts]),
            "burst_p99_ms": median([b["p99_ms"] for b in bursts]),
            "machine_cpu_ms_per_delib": median([b["machine_cpu_ms_per_delib"] for b in bursts]),
            "model_cpu_ms_per_delib": median([b["driver_cpu_ms_per_delib"] + b["standing_cpu_ms_per_delib"] for b in bursts]),
            "failed": sum(s["failed"] for s in singles) + sum(b["failed"] for b in bursts),
        }
        if key != "baseline":
            row["single_p50_speedup"] = median([r["ratios"][key].get("single_p50_speedup") for r in rounds])
            row["burst_throughput_ratio"] = median([r["ratios"][key].get("burst_throughput_ratio") for r in rounds])
            row["burst_throughput_ratio_range"] = [
                min(r["ratios"][key].get("burst_throughput_ratio") or 0 for r in rounds),
                max(r["ratios"][key].get("burst_throughput_ratio") or 0 for r in rounds)]
            row["startup_s"] = median([r["startup"][model]["startup_s"] for r in rounds])
            row["idle_rss_mib"] = median([r["idle"][model]["rss_total_mib"] for r in rounds])
            row["idle_after_load_rss_mib"] = median([r["idle_after_load"][model]["rss_total_mib"] for r in rounds])
            row["idle_cpu_pct"] = median([r["idle"][model]["idle_cpu_pct"] for r in rounds])
            row["processes"] = rounds[-1]["idle"][model]["processes"]
        else:
            row["agent_actor_rss_mib"] = median([r["baseline_agent"]["agent_actor_rss_mib"] for r in rounds])
            row["processes"] = 0
        out[key] = row
    ctl = [r["idle"].get("serve-controller") for r in rounds if r["idle"].get("serve-controller")]
    if ctl:
        out["serve-controller"] = {"idle_rss_mib": median([c["rss_total_mib"] for c in ctl]),
                                   "idle_cpu_pct": median([c["idle_cpu_pct"] for c in ctl]),
                                   "start_s": median([r["startup"]["serve"]["controller_start_s"] for r in rounds])}
    return out


def fmt(x: Optional[float], spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


def table(result: Dict[str, Any]) -> str:
    s = result["summary"]
    lines = [
        "| row | single p50 | single p99 | speed-up | burst completed/s | x baseline | burst p50 | burst p99 "
        "| start-up | idle RSS (procs) | idle CPU | failed |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, r in s.items():
        if key == "serve-controller":
            continue
        lines.append(
            f"| {key} | {fmt(r['single_p50_ms'])} ms | {fmt(r['single_p99_ms'])} ms | "
            f"{fmt(r.get('single_p50_speedup'), '.1f') + 'x' if r.get('single_p50_speedup') else '1x'} | "
            f"{fmt(r['burst_completed_per_s'], '.2f')} | "
            f"{fmt(r.get('burst_throughput_ratio'), '.1f') + 'x' if r.get('burst_throughput_ratio') else '1x'} | "
            f"{fmt(r['burst_p50_ms'], '.0f')} ms | {fmt(r['burst_p99_ms'], '.0f')} ms | "
            f"{fmt(r.get('startup_s'), '.2f') + ' s' if 'startup_s' in r else '-'} | "
            f"{fmt(r.get('idle_rss_mib', r.get('agent_actor_rss_mib')), '.0f')} MiB ({r['processes']}) | "
            f"{fmt(r.get('idle_cpu_pct'), '.1f') + '%' if r.get('idle_cpu_pct') is not None else '-'} | {r['failed']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
