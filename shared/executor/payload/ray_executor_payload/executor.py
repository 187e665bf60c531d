"""The standing executor (specs/records.md): `python -m ray_executor_payload.executor`.

A long-running Ray job driver (Supervisor) keeps EXECUTOR_MIN_REPLICAS..EXECUTOR_MAX_REPLICAS
plain async actors (Replica) alive, sized on the work consumer's backlog. Each replica runs
a Worker: it pulls deliberations from the JetStream work queue and runs each one's agents
concurrently with asyncio, writing the record by compare-and-set and publishing the events
and counters. The driver puts the `executor` heartbeat key, and exits (after draining its
replicas) when `executor.deploy` names another submission (the roll) or on SIGTERM, with
status 0; and with status 3 (EXIT_NATS_LOST) when it could not reach NATS for
EXECUTOR_NATS_LOST_EXIT_SECONDS (default 600), so that an executor whose NATS is gone ends
and the deployer submits a new one once NATS is back, or could not reach it within
START_NATS_SECONDS (90) of its start. Bad settings exit 2 at start.

Worker is plain asyncio and needs no Ray: the tests run it in process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import re
import signal
import ssl
import sys
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Dict, List, Mapping, Optional, Set

from . import allm, llm, nats_events, records, telemetry
from .agents import AgentJob, failed_agent, grace_seconds, log, plan_jobs, setup_logging
from .request import DeliberationRequest, RequestError, parse_request, valid_traceparent
from .result import AgentResult, summarize

RECORDS_BUCKET_ENV = "NATS_RECORDS_BUCKET"
WORK_STREAM_ENV = "NATS_WORK_STREAM"
COUNTERS_STREAM_ENV = "NATS_COUNTERS_STREAM"
EVENTS_STREAM_ENV = "NATS_EVENTS_STREAM"
RETENTION_ENV = "RETENTION_SECONDS"
CONCURRENCY_ENV = "EXECUTOR_REPLICA_CONCURRENCY"
MAX_DELIVERIES_ENV = "EXECUTOR_MAX_DELIVERIES"
MIN_REPLICAS_ENV = "EXECUTOR_MIN_REPLICAS"
MAX_REPLICAS_ENV = "EXECUTOR_MAX_REPLICAS"
NUM_CPUS_ENV = "EXECUTOR_REPLICA_NUM_CPUS"
VERSION_ENV = "EXECUTOR_VERSION"
SUBMISSION_ID_ENV = "EXECUTOR_SUBMISSION_ID"
SCALE_DOWN_DELAY_ENV = "EXECUTOR_SCALE_DOWN_DELAY_SECONDS"
NATS_LOST_EXIT_ENV = "EXECUTOR_NATS_LOST_EXIT_SECONDS"
LOG_LEVEL_ENV = "EXECUTOR_LOG_LEVEL"
LOCAL_RAY_ENV = "RAY_EXECUTOR_LOCAL_RAY"
LOCAL_RAY_TEMP_DIR_ENV = "RAY_EXECUTOR_LOCAL_RAY_TEMP_DIR"

IN_PROGRESS_SECONDS = 10.0  # AckWait is 30 s
FETCH_TIMEOUT_SECONDS = 1.0
TICK_SECONDS = 2.0
HEARTBEAT_SECONDS = 5.0
PUBLISH_TIMEOUT_SECONDS = 5.0
NATS_LOST_EXIT_SECONDS = 600.0
# A driver that cannot reach NATS at start (a PAYLOAD_NATS_URL or credential the Ray pods
# cannot use) exits after this long, with the last connection error in its log. It is below
# the deployers' StartupGrace (3 min, shared/executor/deployer.go), so the job ends FAILED
# with its reason in Ray's job message rather than being stopped as stuck.
START_NATS_SECONDS = 90.0
# Once NATS is lost, the replicas' drain is bounded: what they still run could not be
# recorded anyway, and its work messages come back after AckWait.
NATS_LOST_DRAIN_SECONDS = 30.0

EXIT_BAD_SETTINGS = 2
EXIT_NATS_LOST = 3

_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,200}$")

# EXECUTOR_LOG_LEVEL's values. At info (the default) the logs grow with events (replicas
# added or lost, rolls, NATS trouble, retried LLM calls), not with load: Ray keeps a job's
# driver log, replicas' lines included, in one file it never rotates, so a line per
# deliberation would fill the head's disk at scale. debug adds a line as each deliberation
# starts and ends (its record, events and trace say as much).
LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}


class SettingsError(ValueError):
    pass


@dataclass(frozen=True)
class Settings:
    nats: nats_events.NatsSettings
    names: records.Names
    concurrency: int = 64
    max_deliveries: int = 3
    min_replicas: int = 1
    max_replicas: int = 4
    replica_num_cpus: float = 0.0
    version: str = ""
    submission_id: str = ""
    scale_down_delay: float = 30.0
    nats_lost_exit_seconds: float = NATS_LOST_EXIT_SECONDS
    start_nats_seconds: float = START_NATS_SECONDS
    in_progress_seconds: float = IN_PROGRESS_SECONDS
    fetch_timeout: float = FETCH_TIMEOUT_SECONDS
    tick_seconds: float = TICK_SECONDS
    telemetry: telemetry.Config = telemetry.Config()  # off
    log_level: int = logging.INFO


def settings_from_env(environ: Mapping[str, str]) -> Settings:
    """The executor's settings, validated; SettingsError names every problem at once."""
    problems: List[str] = []
    nats = nats_events.settings_from_env(environ)
    if nats is None:
        problems.append(f"{nats_events.URL_ENV} is required (the NATS server(s) of the records and the queue)")
        nats = nats_events.NatsSettings(servers=())

    def name(env: str, default: str) -> str:
        v = environ.get(env, "").strip() or default
        if not _NAME_RE.match(v):
            problems.append(f"{env} must be letters, digits, '-' or '_', got {v[:100]!r}")
        return v

    def number(env: str, default: float, minimum: float, integer: bool = True) -> Any:
        raw = environ.get(env, "").strip()
        if not raw:
            return default
        try:
            v = int(raw) if integer else float(raw)
        except ValueError:
            problems.append(f"{env} must be {'an integer' if integer else 'a number'}, got {raw[:50]!r}")
            return default
        if not math.isfinite(v) or v < minimum:
            problems.append(f"{env} must be >= {minimum:g}, got {raw[:50]!r}")
            return default
        return v

    level_name = environ.get(LOG_LEVEL_ENV, "").strip().lower() or "info"
    if level_name not in LOG_LEVELS:
        problems.append(f"{LOG_LEVEL_ENV} must be one of {', '.join(LOG_LEVELS)}, got {level_name[:50]!r}")
    events_stream = environ.get(EVENTS_STREAM_ENV, "").strip() or nats.events_stream
    names = records.Names(
        bucket=name(RECORDS_BUCKET_ENV, records.DEFAULT_RECORDS_BUCKET),
        work_stream=name(WORK_STREAM_ENV, records.DEFAULT_WORK_STREAM),
        counters_stream=name(COUNTERS_STREAM_ENV, records.DEFAULT_COUNTERS_STREAM),
        events_stream=name(EVENTS_STREAM_ENV, events_stream),
        retention_seconds=number(RETENTION_ENV, records.DEFAULT_RETENTION_SECONDS, 1),
    )
    nats = replace(nats, events_stream=names.events_stream)
    s = Settings(
        nats=nats, names=names,
        concurrency=number(CONCURRENCY_ENV, 64, 1),
        max_deliveries=number(MAX_DELIVERIES_ENV, 3, 1),
        min_replicas=number(MIN_REPLICAS_ENV, 1, 1),
        max_replicas=number(MAX_REPLICAS_ENV, 4, 1),
        replica_num_cpus=number(NUM_CPUS_ENV, 0.0, 0, integer=False),
        version=environ.get(VERSION_ENV, "").strip(),
        submission_id=environ.get(SUBMISSION_ID_ENV, "").strip(),
        scale_down_delay=number(SCALE_DOWN_DELAY_ENV, 30.0, 0, integer=False),
        nats_lost_exit_seconds=number(NATS_LOST_EXIT_ENV, NATS_LOST_EXIT_SECONDS, 1, integer=False),
        telemetry=telemetry.config_from_env(environ),
        log_level=LOG_LEVELS.get(level_name, logging.INFO),
    )
    if s.min_replicas > s.max_replicas:
        problems.append(f"{MIN_REPLICAS_ENV} ({s.min_replicas}) must not exceed {MAX_REPLICAS_ENV} ({s.max_replicas})")
    if nats.tls_ca_file and not os.path.isfile(nats.tls_ca_file):
        problems.append(f"{nats_events.TLS_CA_FILE_ENV} names no file: {nats.tls_ca_file[:200]!r}")
    if bool(nats.user) != bool(nats.password):
        problems.append(f"{nats_events.USER_ENV} and {nats_events.PASSWORD_ENV} go together: one is set, the other is not")
    if nats.user and (nats.token or nats.creds_file):
        problems.append(f"{nats_events.USER_ENV} excludes {nats_events.TOKEN_ENV} and {nats_events.CREDS_FILE_ENV}: "
                        "set one way to authenticate")
    if nats.creds_file and not os.path.isfile(nats.creds_file):
        problems.append(f"{nats_events.CREDS_FILE_ENV} names no file: {nats.creds_file[:200]!r}")
    if problems:
        raise SettingsError("invalid executor settings: " + "; ".join(problems))
    return s


async def connect(settings: nats_events.NatsSettings, name: str,
                  errors: Optional[Callable[[str], None]] = None) -> Any:
    """A long-lived NATS connection that reconnects by itself. errors, when given, is
    told each connection error too (the supervisor keeps the last one for its exit)."""
    import nats

    async def on_error(exc: Exception) -> None:
        described = nats_events._describe(exc)
        log.warning("nats: %s", described)
        if errors is not None:
            errors(described)

    kwargs: Dict[str, Any] = {
        "servers": list(settings.servers), "name": name, "connect_timeout": 5,
        "allow_reconnect": True, "max_reconnect_attempts": -1, "reconnect_time_wait": 1,
        "error_cb": on_error,
    }
    if settings.token:
        kwargs["token"] = settings.token
    if settings.user:
        kwargs["user"], kwargs["password"] = settings.user, settings.password
    if settings.creds_file:
        kwargs["user_credentials"] = settings.creds_file
    if settings.tls_ca_file:
        kwargs["tls"] = ssl.create_default_context(cafile=settings.tls_ca_file)
    return await nats.connect(**kwargs)


def ray_init_kwargs(environ: Mapping[str, str]) -> Dict[str, Any]:
    """ray.init arguments: none inside a Ray job (ray.init finds the cluster from the
    RAY_ADDRESS the job supervisor sets); for development and tests, RAY_EXECUTOR_LOCAL_RAY=
    <num_cpus> starts a private local Ray instead (no dashboard, temp dir from
    RAY_EXECUTOR_LOCAL_RAY_TEMP_DIR when set), which never touches another cluster."""
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


def _event(kind: str, level: int = logging.INFO, **fields: Any) -> None:
    """One JSON log line (never prompts, never secrets)."""
    if log.isEnabledFor(level):
        log.log(level, "%s", json.dumps({"event": kind, **fields}, separators=(",", ":"), default=str))


# --- the worker ----------------------------------------------------------------------------


class Worker:
    """Pulls deliberations from the work consumer and runs them (specs/records.md)."""

    def __init__(self, settings: Settings, replica: str = "worker"):
        self.settings = settings
        self.replica = replica
        self.nc: Any = None
        self.js: Any = None
        self.store: Optional[records.Store] = None
        self._sub: Any = None
        self._cancel_sub: Any = None
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()
        self._loop_task: Optional[asyncio.Task[None]] = None
        self._inflight: Set[asyncio.Task[None]] = set()
        self._holding: Set[str] = set()  # deliberation ids of the messages being handled
        self._running: Dict[str, asyncio.Task[Any]] = {}  # deliberation id -> its agents' task
        self._cancel: Set[str] = set()
        self._runs: Dict[str, telemetry.Run] = {}  # deliberation id -> its span
        self.tel: telemetry.Telemetry = telemetry.OFF
        self.handled = 0

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    async def start(self) -> None:
        if self.nc is not None:
            return
        if self.tel is telemetry.OFF:
            self.tel = telemetry.setup(self.settings.telemetry)
        try:
            self.nc = await connect(self.settings.nats, f"ray-executor-{self.replica}")
            self.js = self.nc.jetstream(timeout=PUBLISH_TIMEOUT_SECONDS)
            self.store = await records.Store.open(self.js, self.settings.names)
            self._sub = await self.js.pull_subscribe_bind(records.WORK_CONSUMER, stream=self.settings.names.work_stream)
            self._cancel_sub = await self.nc.subscribe(records.CANCEL_SUBJECT_PREFIX + "*", cb=self._on_cancel)
        except BaseException:
            # NATS went away half way (a JetStream request timed out): drop the half-made
            # connection so that the next start() begins afresh (ReplicaBody.run retries).
            nc, self.nc = self.nc, None
            if nc is not None:
                try:
                    await nc.close()
                except Exception as exc:  # noqa: BLE001
                    log.warning("nats close: %s", nats_events._describe(exc))
            raise
        self._loop_task = asyncio.create_task(self._pull_loop())
        _event("replica_started", replica=self.replica, nats=self.settings.nats.display)

    async def run(self) -> None:
        """start(), then wait until the worker has drained."""
        await self.start()
        await self._stopped.wait()

    async def drain(self) -> None:
        """Stops fetching, finishes what it holds, closes NATS."""
        if self._stopped.is_set():
            return
        self._stopping.set()
        if self._loop_task is not None:
            await asyncio.gather(self._loop_task, return_exceptions=True)
        while self._inflight:
            await asyncio.gather(*list(self._inflight), return_exceptions=True)
        await self._close()
        _event("replica_drained", replica=self.replica, handled=self.handled)

    async def abort(self) -> None:
        """Dies without acking anything it holds (tests: a replica lost mid-deliberation)."""
        self._stopping.set()
        tasks = list(self._inflight) + ([self._loop_task] if self._loop_task else [])
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._close()

    async def _close(self) -> None:
        if self.nc is not None:
            try:
                await self.nc.close()
            except Exception as exc:  # noqa: BLE001
                log.warning("nats close: %s", nats_events._describe(exc))
        await allm.close_session()
        tel, self.tel = self.tel, telemetry.OFF
        try:  # exports what is left (a short run sees its spans), bounded: a collector that is down must not hold the drain
            await asyncio.wait_for(asyncio.to_thread(tel.shutdown), self.settings.telemetry.shutdown_seconds)
        except asyncio.TimeoutError:
            log.warning("telemetry: the last export did not finish in time; spans or metrics may be lost")
        self._stopped.set()

    async def _pull_loop(self) -> None:
        import nats.errors

        while not self._stopping.is_set():
            free = self.settings.concurrency - len(self._inflight)
            if free <= 0:
                await asyncio.wait(set(self._inflight), timeout=self.settings.fetch_timeout,
                                   return_when=asyncio.FIRST_COMPLETED)
                continue
            try:
                msgs = await self._sub.fetch(free, timeout=self.settings.fetch_timeout)
            except (nats.errors.TimeoutError, asyncio.TimeoutError):
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - connection trouble: try again shortly
                log.warning("replica %s: fetch failed: %s", self.replica, nats_events._describe(exc))
                await asyncio.sleep(1.0)
                continue
            for m in msgs:
                t = asyncio.create_task(self._handle(m))
                self._inflight.add(t)
                t.add_done_callback(self._inflight.discard)

    # --- cancel ---------------------------------------------------------------------------

    async def _on_cancel(self, msg: Any) -> None:
        did = msg.subject[len(records.CANCEL_SUBJECT_PREFIX):]
        if did not in self._holding or self.store is None:
            return
        try:
            got = await self.store.get(did)
        except Exception as exc:  # noqa: BLE001 - the hint is lost; the heartbeat re-checks
            log.warning("deliberation %s: cancel signal: cannot read its record: %s", did, nats_events._describe(exc))
            return
        if got is not None and (got[0].get("cancel_requested") or records.is_terminal(got[0])):
            self._stop_agents(did)

    def _stop_agents(self, did: str) -> None:
        self._cancel.add(did)  # agents not started yet are cancelled as they start
        task = self._running.get(did)
        if task is not None and not task.done():
            task.cancel()

    # --- one message ------------------------------------------------------------------------

    async def _handle(self, msg: Any) -> None:
        did = msg.subject[len(records.WORK_SUBJECT_PREFIX):]
        self._holding.add(did)
        try:
            acked = await self._process(did, msg)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - unacked: it comes back after AckWait
            log.exception("deliberation %s: not finished, left for redelivery: %s", did, nats_events._describe(exc))
            return
        finally:
            self._holding.discard(did)
            self._running.pop(did, None)
            self._cancel.discard(did)
        if acked:
            self.handled += 1

    async def _ack(self, msg: Any) -> bool:
        await msg.ack_sync(timeout=PUBLISH_TIMEOUT_SECONDS)
        return True

    async def _end(self, msg: Any, record: Dict[str, Any], rerun: bool) -> bool:
        assert self.store is not None
        await self.store.after_terminal(record, rerun=rerun)
        _event("deliberation_ended", logging.DEBUG, id=record["id"], state=record["state"], error_type=record.get("error_type", ""),
               replica=self.replica, rerun=rerun)
        run = self._runs.get(str(record.get("id", "")))
        if run is not None:
            run.ended(record, rerun)
            self.tel.deliberation_ended(run, rerun)
        return await self._ack(msg)

    async def _write_end(self, msg: Any, did: str, decide: Any) -> bool:
        """CAS to a terminal state; when the record had ended already (someone else ended it)
        publish nothing of our own and run the steps for the stored end."""
        assert self.store is not None
        rec, written = await self.store.transition(did, decide)
        if rec is None:
            _event("record_missing", id=did, replica=self.replica)
            return await self._ack(msg)
        return await self._end(msg, rec, rerun=not written)

    async def _process(self, did: str, msg: Any) -> bool:
        assert self.store is not None
        if not nats_events.valid_subject_token(did):
            log.warning("work message on %s: not a deliberation id; dropped", msg.subject[:200])
            return await self._ack(msg)
        try:
            got = await self.store.get(did)
        except records.RecordError as exc:
            # Nothing can decide on a record that does not decode (the reconciler reports it
            # too); redelivering its work every AckWait forever would only repeat this, so
            # the message is dropped, loudly, and the other work goes on.
            log.error("deliberation %s: its record is unreadable (%s); its work message is dropped", did, exc)
            _event("record_unreadable", id=did, replica=self.replica)
            return await self._ack(msg)
        if got is None:
            _event("record_missing", id=did, replica=self.replica)
            return await self._ack(msg)
        rec, _ = got
        # The deliberation's span joins the caller's trace: the work message's traceparent
        # (the submitter's publish; Go's propagator writes it as "Traceparent"), else the one
        # the record kept.
        parent = next((v for k, v in (msg.headers or {}).items() if k.lower() == "traceparent"), "")
        if not valid_traceparent(parent):
            parent = rec.get("traceparent", "") if valid_traceparent(rec.get("traceparent", "")) else ""
        with self.tel.deliberation(did, str(rec.get("task_id", "")), str(rec.get("owner", "")), parent) as run:
            self._runs[did] = run
            try:
                return await self._run(did, msg, rec, run)
            finally:
                self._runs.pop(did, None)

    async def _run(self, did: str, msg: Any, rec: Dict[str, Any], run: telemetry.Run) -> bool:
        """_process for a deliberation whose record was read."""
        assert self.store is not None
        s = self.settings
        if records.is_terminal(rec):
            return await self._end(msg, rec, rerun=True)
        now = time.time()
        if rec.get("cancel_requested"):
            return await self._write_end(msg, did, lambda r: records.cancelled(r, time.time()))
        deliveries = int(msg.metadata.num_delivered or 1)
        run.attempt(deliveries)
        if deliveries > s.max_deliveries:
            return await self._write_end(
                msg, did, lambda r: records.fail_lost(r, deliveries, s.max_deliveries, time.time()))
        try:
            req = parse_request(msg.data.decode("utf-8", errors="replace"))
            if req.deliberation_id != did:
                raise RequestError(f"deliberation_id {req.deliberation_id[:100]!r} is not the message's {did!r}")
        except RequestError as exc:
            message = llm.snippet(f"invalid request: {exc}", 1000)
            return await self._write_end(msg, did, lambda r: records.fail(r, records.INVALID_REQUEST, message, time.time()))
        record_deadline = records.parse_time(rec.get("deadline", ""))
        if record_deadline is not None and record_deadline <= now:
            return await self._write_end(msg, did, lambda r: records.fail(
                r, records.DEADLINE_EXCEEDED, "its deadline passed before an executor could start it", time.time()))

        started, written = await self.store.transition(
            did, lambda r: None if r.get("cancel_requested") else records.start(r, deliveries, self.replica, time.time()))
        if started is None:
            return await self._ack(msg)
        if not written:  # ended, or cancel requested meanwhile: decide again from the top
            if records.is_terminal(started):
                return await self._end(msg, started, rerun=True)
            return await self._write_end(msg, did, lambda r: records.cancelled(r, time.time()))
        await self.store.put_active(started)
        _event("deliberation_started", logging.DEBUG, id=did, attempt=deliveries, agents=len(req.agents), replica=self.replica)
        await self._publish(nats_events.lifecycle_event(req, nats_events.STARTED, nats_events.started_data(req)))

        t0 = time.time()
        deadline = t0 + req.timeout_seconds
        if record_deadline is not None:
            deadline = min(deadline, record_deadline)
        agents_task = asyncio.create_task(self._run_agents(req, deadline))
        self._running[did] = agents_task
        if did in self._cancel:
            agents_task.cancel()
        watch = asyncio.create_task(self._watch(did, msg, agents_task))
        try:
            await asyncio.wait({agents_task})
        finally:
            watch.cancel()
            if not agents_task.done():  # we are being cancelled ourselves (abort)
                agents_task.cancel()
        if agents_task.cancelled():
            _event("deliberation_cancelled", logging.DEBUG, id=did, replica=self.replica)
            return await self._write_end(msg, did, lambda r: records.cancelled(r, time.time()))
        results = agents_task.result()
        result = summarize(req.deliberation_id, req.task_id, results, t0, time.time())
        outcome = result.to_dict()
        return await self._write_end(msg, did, lambda r: records.finish(r, outcome, time.time()))

    async def _watch(self, did: str, msg: Any, agents: "asyncio.Task[Any]") -> None:
        """While the agents run: tell JetStream the message is in progress, and re-read the
        record (a lost cancel signal, or someone else ended it)."""
        assert self.store is not None
        while not agents.done():
            await asyncio.sleep(self.settings.in_progress_seconds)
            try:
                await msg.in_progress()
                got = await self.store.get(did)
                if got is not None and (got[0].get("cancel_requested") or records.is_terminal(got[0])):
                    self._stop_agents(did)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001
                log.warning("deliberation %s: progress check failed: %s", did, nats_events._describe(exc))

    async def _run_agents(self, req: DeliberationRequest, deadline: float) -> List[AgentResult]:
        jobs = plan_jobs(req, deadline)
        give_up = deadline + grace_seconds(req.timeout_seconds)

        async def one(index: int, job: AgentJob) -> AgentResult:
            t = time.time()
            with self.tel.agent(job.agent_id, job.role, job.model) as span:
                try:
                    res = await asyncio.wait_for(allm.run_agent(job, req.deliberation_id, self.tel), max(0.0, give_up - t))
                except asyncio.TimeoutError:
                    res = failed_agent(job, llm.TIMEOUT,
                                       f"no result by the deadline (timeout_seconds={req.timeout_seconds} plus grace)",
                                       t, time.time())
                self.tel.agent_result(span, res.status, res.error_type, res.attempts)
            for m in nats_events.agent_messages(req, index, res):
                await self._publish(m)
            return res

        return list(await asyncio.gather(*(one(i, j) for i, j in enumerate(jobs))))

    async def _publish(self, m: nats_events.Message) -> None:
        """Best effort: lifecycle and compatible events other than the terminal one."""
        try:
            await self.js.publish(m.subject, m.body, timeout=PUBLISH_TIMEOUT_SECONDS, headers=m.headers())
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the reconciler publishes missing events
            log.warning("could not publish %s (Nats-Msg-Id %s): %s", m.subject, m.msg_id, nats_events._describe(exc))


# --- the Ray actor -------------------------------------------------------------------------


class ReplicaBody:
    """The body of a Replica actor: one Worker, its settings from the actor's environment
    (the job's runtime_env env_vars)."""

    def __init__(self, name: str, overrides: Optional[Dict[str, Any]] = None):
        setup_logging()
        settings = settings_from_env(os.environ)
        if overrides:
            settings = replace(settings, **overrides)
        log.setLevel(settings.log_level)
        self.name = name
        self.worker = Worker(settings, name)
        self._run: Optional[asyncio.Task[None]] = None

    async def run(self) -> str:
        """Runs until drained. Calling it again after the actor restarted, or after the
        worker's start failed (NATS went away while it started), starts afresh."""
        if self._run is None or (self._run.done() and not self._run.cancelled() and self._run.exception() is not None
                                 and self.worker.nc is None):
            self._run = asyncio.create_task(self.worker.run())
        await asyncio.shield(self._run)
        return self.name

    async def drain(self) -> int:
        await self.worker.drain()
        return self.worker.handled

    async def stats(self) -> Dict[str, Any]:
        return {"name": self.name, "in_flight": self.worker.in_flight, "handled": self.worker.handled,
                "pid": os.getpid()}


def replica_class(num_cpus: float) -> Any:
    """The Replica actor class: a plain async actor, restarted by Ray when it dies."""
    import ray

    return ray.remote(ReplicaBody).options(num_cpus=num_cpus, max_restarts=-1, max_task_retries=0, max_concurrency=1000)


# --- the supervisor (the job driver) -------------------------------------------------------


@dataclass
class _Replica:
    name: str
    handle: Any
    run: Any = None  # the awaitable of handle.run()
    draining: bool = False


class RayReplicas:
    """Starts, runs, drains and kills Replica actors."""

    def __init__(self, settings: Settings):
        self.cls = replica_class(settings.replica_num_cpus)

    def create(self, name: str) -> Any:
        return self.cls.remote(name)

    def run(self, handle: Any) -> Any:
        return asyncio.ensure_future(handle.run.remote())

    async def drain(self, handle: Any) -> None:
        await handle.drain.remote()

    async def stats(self, handle: Any) -> Dict[str, Any]:
        return await handle.stats.remote()

    def kill(self, handle: Any) -> None:
        import ray

        ray.kill(handle, no_restart=True)


class LocalReplicas:
    """Replicas as in-process Workers: the supervisor's logic without Ray (tests, tools)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.created: List[Worker] = []

    def create(self, name: str) -> Any:
        w = Worker(self.settings, name)
        self.created.append(w)
        return w

    def run(self, handle: Any) -> Any:
        return asyncio.ensure_future(handle.run())

    async def drain(self, handle: Any) -> None:
        await handle.drain()

    async def stats(self, handle: Any) -> Dict[str, Any]:
        return {"in_flight": handle.in_flight}

    def kill(self, handle: Any) -> None:
        pass


def desired_replicas(backlog: int, concurrency: int, minimum: int, maximum: int) -> int:
    return max(minimum, min(maximum, math.ceil(backlog / max(1, concurrency))))


class Supervisor:
    """Keeps the replicas, scales them on the backlog, heartbeats, and rolls.

    When it cannot reach NATS for nats_lost_exit_seconds (no round of supervision
    succeeded, or it could not connect at start), it gives up: it drains the replicas,
    bounded by NATS_LOST_DRAIN_SECONDS, and run() returns with nats_lost set, so the
    driver exits non-zero and the deployer resubmits an executor once NATS is back,
    instead of this one running forever against a server that is gone."""

    def __init__(self, settings: Settings, replicas: Any):
        self.settings = settings
        self.replicas = replicas
        self.live: List[_Replica] = []
        self.draining: Set["asyncio.Task[None]"] = set()
        self.stop = asyncio.Event()
        self.exit_reason = ""
        self._next = 0
        self._below_since: Optional[float] = None
        self._last_heartbeat = 0.0
        self.nc: Any = None
        self.store: Optional[records.Store] = None
        self.nats_lost = False
        self._nats_ok_at = time.monotonic()  # the last round that reached NATS
        self._last_error = ""

    def _name(self) -> str:
        self._next += 1
        return f"{self.settings.submission_id or self.settings.version or 'executor'}/replica-{self._next}"

    def _add(self) -> None:
        name = self._name()
        handle = self.replicas.create(name)
        r = _Replica(name, handle)
        r.run = self.replicas.run(handle)
        self.live.append(r)
        _event("replica_added", replica=name, replicas=len(self.live))

    async def _retire(self, r: _Replica) -> None:
        try:
            await self.replicas.drain(r.handle)
        except Exception as exc:  # noqa: BLE001 - its work comes back after AckWait
            log.warning("replica %s: drain failed: %s", r.name, nats_events._describe(exc))
        try:
            self.replicas.kill(r.handle)
        except Exception as exc:  # noqa: BLE001
            log.warning("replica %s: kill failed: %s", r.name, nats_events._describe(exc))
        _event("replica_removed", replica=r.name)

    def _scale_down_one(self) -> None:
        r = self.live.pop()
        t = asyncio.create_task(self._retire(r))
        self.draining.add(t)
        t.add_done_callback(self.draining.discard)

    async def backlog(self) -> int:
        assert self.store is not None
        info = await self.store.js.consumer_info(self.settings.names.work_stream, records.WORK_CONSUMER)
        return int(info.num_pending or 0) + int(info.num_ack_pending or 0)

    async def start(self) -> None:
        self.nc = await connect(self.settings.nats, "ray-executor-driver", self._note_error)
        js = self.nc.jetstream(timeout=PUBLISH_TIMEOUT_SECONDS)
        await records.provision(js, self.settings.names)
        self.store = await records.Store.open(js, self.settings.names)
        for _ in range(self.settings.min_replicas):
            self._add()

    async def tick(self) -> None:
        """One supervision round."""
        s = self.settings
        assert self.store is not None
        # Replicas whose run() ended: Ray restarted a dead actor (run again) or it is gone.
        for r in list(self.live):
            if r.run is not None and r.run.done():
                exc = r.run.exception() if not r.run.cancelled() else None
                log.warning("replica %s: run ended (%s); running it again", r.name,
                            nats_events._describe(exc) if exc else "returned")
                r.run = self.replicas.run(r.handle)
        deploy = await self.store.get_json(records.DEPLOY_KEY)
        if deploy is not None and isinstance(deploy[0], dict) and self._superseded(deploy[0]):
            self.exit_reason = f"superseded by {deploy[0].get('submission_id') or deploy[0].get('version')}"
            _event("roll", reason=self.exit_reason)
            self.stop.set()
            return
        try:
            backlog = await self.backlog()
        except Exception as exc:  # noqa: BLE001
            log.warning("consumer info: %s", nats_events._describe(exc))
            backlog = -1
        if backlog >= 0:
            want = desired_replicas(backlog, s.concurrency, s.min_replicas, s.max_replicas)
            now = time.monotonic()
            if want > len(self.live):
                self._below_since = None
                while len(self.live) < want:
                    self._add()
            elif want < len(self.live):
                if self._below_since is None:
                    self._below_since = now
                if now - self._below_since >= s.scale_down_delay:
                    while len(self.live) > want:
                        self._scale_down_one()
                    self._below_since = None
            else:
                self._below_since = None
        if time.monotonic() - self._last_heartbeat >= HEARTBEAT_SECONDS:
            await self.heartbeat()

    def _superseded(self, deploy: Dict[str, Any]) -> bool:
        sid = str(deploy.get("submission_id") or "")
        if self.settings.submission_id and sid:
            return sid != self.settings.submission_id
        version = str(deploy.get("version") or "")
        return bool(self.settings.version and version and version != self.settings.version)

    async def heartbeat(self) -> None:
        """Writes the heartbeat. replicas counts only the replicas that answered: a driver
        that outlived its Ray cluster (a head stopped under it, a lost node) goes on beating
        for up to a minute, and must not be reported as an executor that runs work."""
        assert self.store is not None
        in_flight = answering = 0
        for r in self.live:
            try:
                st = await asyncio.wait_for(self.replicas.stats(r.handle), 1.0)
                in_flight += int(st.get("in_flight", 0))
                answering += 1
            except Exception:  # noqa: BLE001 - a starting, restarting or lost replica
                pass
        await self.store.put_json(records.EXECUTOR_KEY, {
            "version": self.settings.version, "submission_id": self.settings.submission_id,
            "replicas": answering, "in_flight": in_flight, "max_replicas": self.settings.max_replicas,
            "updated_at": records.format_time(time.time()),
        })
        self._last_heartbeat = time.monotonic()

    def _note_error(self, described: str) -> None:
        self._last_error = described

    async def run(self) -> str:
        """Supervises until stop is set (the roll, SIGTERM, NATS lost), then drains every
        replica."""
        lost_after = self.settings.nats_lost_exit_seconds
        start_within = min(lost_after, self.settings.start_nats_seconds)
        try:
            await asyncio.wait_for(self.start(), start_within)
        except asyncio.TimeoutError:
            self._give_up(start_within, at_start=True)
        else:
            self._nats_ok_at = time.monotonic()
        while not self.stop.is_set():
            try:
                await self.tick()
                self._nats_ok_at = time.monotonic()
            except Exception as exc:  # noqa: BLE001 - NATS trouble: next round
                self._last_error = nats_events._describe(exc)
                log.warning("supervisor tick: %s", self._last_error)
                lost_for = time.monotonic() - self._nats_ok_at
                if lost_for >= lost_after:
                    self._give_up(lost_for)
                    break
            try:
                await asyncio.wait_for(self.stop.wait(), self.settings.tick_seconds)
            except asyncio.TimeoutError:
                pass
        await self.shutdown(NATS_LOST_DRAIN_SECONDS if self.nats_lost else None)
        return self.exit_reason

    def _give_up(self, lost_for: float, at_start: bool = False) -> None:
        self.nats_lost = True
        self.exit_reason = f"NATS unreachable for {lost_for:.0f}s"
        if at_start:
            self.exit_reason += " at start"
            log.error(
                "NATS at %s not reachable within %.0fs of the executor's start (last error: %s): exiting with "
                "status %d. Check PAYLOAD_NATS_URL and the executor's NATS credentials as the Ray pods see them",
                self.settings.nats.display, lost_for, self._last_error or "none", EXIT_NATS_LOST,
            )
            _event("nats_lost", seconds=round(lost_for), nats=self.settings.nats.display, at_start=True)
            self.stop.set()
            return
        log.error(
            "NATS at %s unreachable for %.0fs (%s=%g; last error: %s): draining the replicas and exiting "
            "with status %d; the deployer resubmits the executor once NATS is back",
            self.settings.nats.display, lost_for, NATS_LOST_EXIT_ENV, self.settings.nats_lost_exit_seconds,
            self._last_error or "none", EXIT_NATS_LOST,
        )
        _event("nats_lost", seconds=round(lost_for), nats=self.settings.nats.display)
        self.stop.set()

    async def shutdown(self, drain_timeout: Optional[float] = None) -> None:
        """Drains every replica (waiting at most drain_timeout when given), then closes NATS."""
        while self.live:
            self._scale_down_one()
        if self.draining:
            pending = list(self.draining)
            _, still = await asyncio.wait(pending, timeout=drain_timeout)
            if still:
                log.warning("%d replica(s) still draining after %gs; exiting without them: the deliberations "
                            "they hold come back after AckWait", len(still), drain_timeout)
                for t in still:
                    t.cancel()
                await asyncio.gather(*still, return_exceptions=True)
        if self.nc is not None:
            try:
                await asyncio.wait_for(self.nc.close(), PUBLISH_TIMEOUT_SECONDS)
            except Exception as exc:  # noqa: BLE001 - exiting anyway
                log.warning("nats close: %s", nats_events._describe(exc))
        _event("executor_stopped", reason=self.exit_reason)


def main(environ: Optional[Mapping[str, str]] = None) -> int:
    setup_logging()
    environ = os.environ if environ is None else environ
    try:
        settings = settings_from_env(environ)
    except SettingsError as exc:
        print(f"ray_executor_payload.executor: {exc}", file=sys.stderr, flush=True)
        return EXIT_BAD_SETTINGS
    log.setLevel(settings.log_level)
    import ray

    kwargs = ray_init_kwargs(environ)
    if kwargs:
        # A throwaway cluster: don't let Ray write a token to ~/.ray/auth_token, which
        # other clients on this machine would then pick up.
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(**kwargs)

    sup: Optional[Supervisor] = None

    async def go() -> str:
        nonlocal sup
        sup = Supervisor(settings, RayReplicas(settings))
        loop = asyncio.get_running_loop()

        def on_signal(sig: signal.Signals) -> None:
            sup.exit_reason = sig.name
            sup.stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig)
        return await sup.run()

    _event("executor_starting", version=settings.version, submission_id=settings.submission_id,
           min_replicas=settings.min_replicas, max_replicas=settings.max_replicas, concurrency=settings.concurrency,
           nats=settings.nats.display)
    reason = asyncio.run(go())
    code = EXIT_NATS_LOST if sup is not None and sup.nats_lost else 0
    _event("executor_exit", reason=reason, status=code)
    return code


if __name__ == "__main__":
    sys.exit(main())
