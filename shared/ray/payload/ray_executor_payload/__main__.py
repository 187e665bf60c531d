"""Entrypoint of a deliberation job: python -u -m ray_executor_payload.

Reads the request from the request module RAY_EXECUTOR_REQUEST_MODULE names (its package is
in the job's runtime_env.py_modules; request.py), runs one Ray task per agent, prints exactly
one result line (RAY_EXECUTOR_RESULT {json}) on stdout and exits with
  0  at least one agent completed, or the deliberation was cancelled before it started,
  1  every agent failed (or Ray was unavailable, or an internal error),
  2  the request is missing or invalid.

Ray starts a PENDING job's driver even after the job was stopped. So before anything else
(Ray, events, agents), when NATS is configured, the payload looks up whether its
deliberation's terminal event is already stored (execute stores the cancelled event before
it asks Ray to stop a pending job). If one is, it runs no agent, publishes nothing, prints a
"cancelled" result and exits 0. When NATS cannot answer (bounded: 5 s), it runs: a
deliberation is not lost to a NATS outage.

Inside a Ray job, ray.init() finds the cluster from the RAY_ADDRESS the job supervisor
sets. For development and tests, RAY_EXECUTOR_LOCAL_RAY=<num_cpus> starts a private local
Ray instead (no dashboard, token auth off unless RAY_AUTH_MODE says otherwise, temp dir
from RAY_EXECUTOR_LOCAL_RAY_TEMP_DIR when set); it never touches another cluster.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Dict, List, Mapping, MutableMapping, Optional

from . import llm, nats_events
from .events import EventsGuard, make_events
from .request import DeliberationRequest, RequestError, load_request
from .result import COMPLETED, AgentResult, ResultPrinter, cancelled, failure, summarize
from .runner import failed_agent, log, plan_jobs, run_deliberation, setup_logging

LOCAL_RAY_ENV = "RAY_EXECUTOR_LOCAL_RAY"
LOCAL_RAY_TEMP_DIR_ENV = "RAY_EXECUTOR_LOCAL_RAY_TEMP_DIR"

EXIT_COMPLETED = 0
EXIT_FAILED = 1
EXIT_BAD_REQUEST = 2


def ray_init_kwargs(environ: Mapping[str, str]) -> Dict[str, Any]:
    """ray.init arguments: none inside a Ray job (the address comes from the environment),
    a private local instance when RAY_EXECUTOR_LOCAL_RAY is set."""
    local = environ.get(LOCAL_RAY_ENV, "").strip()
    if not local:
        return {}
    try:
        num_cpus = int(local)
    except ValueError:
        raise ValueError(f"{LOCAL_RAY_ENV} must be a number of CPUs, got {local!r}") from None
    kwargs: Dict[str, Any] = {"address": "local", "num_cpus": num_cpus, "include_dashboard": False}
    temp_dir = environ.get(LOCAL_RAY_TEMP_DIR_ENV, "").strip()
    if temp_dir:
        kwargs["_temp_dir"] = temp_dir
    return kwargs


def init_ray(environ: MutableMapping[str, str]) -> None:
    import ray

    kwargs = ray_init_kwargs(environ)
    if kwargs:
        # A throwaway cluster: don't let Ray write a token to ~/.ray/auth_token, which
        # other clients on this machine would then pick up.
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        log.info("starting a private local Ray (num_cpus=%s)", kwargs["num_cpus"])
    ray.init(**kwargs)


def shutdown_ray() -> None:
    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    except Exception as exc:  # noqa: BLE001 - the result is already out
        log.warning("ray.shutdown failed: %s", exc)


def _all_failed(req: DeliberationRequest, started: float, error_type: str, error: str) -> List[AgentResult]:
    now = time.time()
    try:
        jobs = plan_jobs(req, started + req.timeout_seconds)
    except Exception:  # noqa: BLE001
        return []
    return [failed_agent(job, error_type, error, started, now) for job in jobs]


def ended_before_start(environ: Mapping[str, str], req: DeliberationRequest) -> Optional[str]:
    """The kind of the deliberation's terminal event if one is already stored (cancelled:
    it was cancelled while it waited for its reservation), else None. None too when NATS is
    not configured or cannot answer (logged): the run then goes on."""
    settings = nats_events.settings_from_env(environ)
    if settings is None:
        return None
    try:
        return nats_events.stored_terminal(settings, req.deliberation_id)
    except Exception as exc:  # noqa: BLE001 - LookupFailed, or a bug: the run goes on either way
        why = str(exc) if isinstance(exc, nats_events.LookupFailed) else f"{type(exc).__name__}: {exc}"
        log.warning(
            "deliberation %s: cannot tell whether it was cancelled before it started (%s); running it",
            req.deliberation_id, why,
        )
        return None


def _run(environ: MutableMapping[str, str], printer: ResultPrinter, started: float, ids: List[str]) -> int:
    try:
        req = load_request(environ)
    except RequestError as exc:
        ids[:] = [exc.deliberation_id, exc.task_id]
        error = f"invalid request: {exc}"
        print(f"ray_executor_payload: {error}", file=sys.stderr, flush=True)
        printer.print(failure(exc.deliberation_id, exc.task_id, error, started, time.time()))
        return EXIT_BAD_REQUEST
    ids[:] = [req.deliberation_id, req.task_id]
    for warning in req.warnings:
        log.warning("%s", warning)
    log.info(
        "deliberation %s (%s) task %s: %d agent(s) [%s], timeout %ds, max_retries %d",
        req.deliberation_id, req.kind, req.task_id, len(req.agents),
        ", ".join(a.id for a in req.agents), req.timeout_seconds, req.max_retries,
    )
    ended = ended_before_start(environ, req)
    if ended is not None:
        error = "cancelled before it started"
        if ended != nats_events.TERMINAL_CANCELLED:
            error = f"not started: its end ({ended}) is already stored"
        log.info("deliberation %s: its %s event is already stored; no agent runs", req.deliberation_id, ended)
        printer.print(cancelled(req.deliberation_id, req.task_id, len(req.agents), error, started, time.time()))
        return EXIT_COMPLETED
    events = EventsGuard(make_events(environ))
    events.on_started(req)
    try:
        try:
            init_ray(environ)
        except Exception as exc:  # noqa: BLE001
            error = llm.snippet(f"Ray unavailable: {type(exc).__name__}: {exc}", 300)
            log.error("%s", error)
            result = failure(
                req.deliberation_id, req.task_id, error, started, time.time(),
                _all_failed(req, started, llm.INTERNAL, error),
            )
        else:
            try:
                agents = run_deliberation(req, started, events)
                result = summarize(req.deliberation_id, req.task_id, agents, started, time.time())
            except Exception as exc:  # noqa: BLE001
                log.exception("deliberation %s: internal error", req.deliberation_id)
                error = llm.snippet(f"internal error: {type(exc).__name__}: {exc}", 300)
                result = failure(
                    req.deliberation_id, req.task_id, error, started, time.time(),
                    _all_failed(req, started, llm.INTERNAL, error),
                )
        printer.print(result)
        log.info(
            "deliberation %s: %s, %d/%d agent(s) completed in %dms",
            req.deliberation_id, result.status, result.completed_agents, len(result.agents), result.duration_ms,
        )
        events.on_finished(req, result)
        return EXIT_COMPLETED if result.status == COMPLETED else EXIT_FAILED
    finally:
        events.close()
        shutdown_ray()


def main(environ: Optional[MutableMapping[str, str]] = None, printer: Optional[ResultPrinter] = None) -> int:
    """Runs the payload and returns its exit code. Whatever happens, exactly one result
    line is printed."""
    setup_logging()
    environ = os.environ if environ is None else environ
    printer = printer or ResultPrinter()
    started = time.time()
    ids = ["", ""]
    try:
        return _run(environ, printer, started, ids)
    except BaseException as exc:
        # SystemExit too: Ray turns the SIGTERM of `ray job stop` into sys.exit.
        what = "internal error" if isinstance(exc, Exception) else "interrupted"
        if not printer.printed:
            printer.print(failure(ids[0], ids[1], f"{what}: {type(exc).__name__}: {exc}", started, time.time()))
        if isinstance(exc, Exception):
            log.exception("internal error")
            return EXIT_FAILED
        raise


if __name__ == "__main__":
    sys.exit(main())
