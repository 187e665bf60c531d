"""The baseline alone, for the standing executor's report (e2e/executor_bench_test.go,
`make bench`): the original's execution model (bench/baseline.py: per deliberation one
actor per agent, get all, kill) measured as execution_models.py measures it, in a Ray job
driver on the same head as the executor under test.

    python -u -m bench.baseline_report --llm-url http://127.0.0.1:18000 --singles 20 \\
        --deliberations 30 --callers 16 --agents 3

One warm-up deliberation (not counted), then --singles one-agent deliberations one at a
time (a pause of --settle-seconds/10 after each: its killed actor's teardown is not
counted, as in execution_models.py), --settle-seconds, then a burst of --deliberations
deliberations of --agents agents from --callers concurrent callers. Prints progress to
stderr and, last, one line `BENCH_BASELINE_RESULT {json}`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

import ray

from . import baseline
from .execution_models import Calls, burst, check, latency_summary, loadavg, log, pct

RESULT_MARKER = "BENCH_BASELINE_RESULT"


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.baseline_report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--llm-url", required=True, help="OpenAI-compatible base URL (the LLM stand-in)")
    p.add_argument("--model", default="bench-baseline", help="model name sent to the LLM")
    p.add_argument("--singles", type=int, default=20, help="one-agent deliberations, one at a time")
    p.add_argument("--deliberations", type=int, default=30, help="deliberations in the burst")
    p.add_argument("--callers", type=int, default=16, help="concurrent callers in the burst")
    p.add_argument("--agents", type=int, default=3, help="agents per deliberation in the burst")
    p.add_argument("--settle-seconds", type=float, default=10.0,
                   help="pause before the burst (and a tenth of it after each single)")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ray.init(log_to_driver=False)
    calls = Calls(args.llm_url, args.model)
    result: Dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "ray_version": ray.__version__,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "cluster_cpus": ray.cluster_resources().get("CPU"),
        "config": dict(vars(args)),
        "loadavg_start": loadavg(),
    }
    check(baseline.run_deliberation(calls.deliberation(1)), 1)  # warm-up: the driver's first actor
    agent_calls = 1

    log(f"baseline: {args.singles} one-agent deliberations, one at a time")
    singles: List[float] = []
    errors: List[str] = []
    for _ in range(args.singles):
        work = calls.deliberation(1)
        t0 = time.perf_counter()
        try:
            check(baseline.run_deliberation(work), 1)
            singles.append(time.perf_counter() - t0)
        except Exception as exc:  # noqa: BLE001 - counted and reported
            errors.append(f"{type(exc).__name__}: {exc}"[:200])
        agent_calls += 1
        time.sleep(args.settle_seconds / 10)
    single = latency_summary(singles)
    single.update({"p90_ms": pct([x * 1000.0 for x in singles], 0.90), "failed": len(errors), "errors": errors[:3]})
    result["single"] = single
    log(f"  p50 {single['p50_ms'] or 0:.0f} ms, failed {len(errors)}")

    time.sleep(args.settle_seconds)
    log(f"baseline: burst of {args.deliberations} x {args.agents}-agent deliberations from {args.callers} callers")
    b = burst(baseline.run_deliberation, calls, args.deliberations, args.callers, args.agents, [])
    agent_calls += args.deliberations * args.agents
    result["burst"] = b
    log(f"  {b['completed']}/{args.deliberations} in {b['seconds']:.2f}s = {b['completed_per_s']:.3f}/s, "
        f"failed {b['failed']}")
    result["loadavg_end"] = loadavg()
    result["agent_calls_at_least"] = agent_calls
    print(RESULT_MARKER + " " + json.dumps(result, separators=(",", ":")), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
