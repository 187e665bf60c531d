"""Deliberation records, the work queue and the counters (specs/records.md).

The record JSON and its state machine mirror shared/domain/record.go: records are plain
dicts (unknown fields survive a read-modify-write), and every transition is a pure function
that returns a new dict or raises TerminalError when the record has already ended.

Below them, async helpers over nats-py: the records KV bucket (get, create, compare-and-set
transitions that re-read and re-decide on a revision conflict), the active.<id> index, the
outcome counters, the terminal lifecycle event, and provisioning of every resource the
executor needs ("create if missing": an existing resource is never changed).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Dict, Optional, Tuple

from .result import iso_utc

log = logging.getLogger("ray_executor_payload")

RECORD_VERSION = 1

PENDING = "pending"
RUNNING = "running"
COMPLETED = "completed"
FAILED = "failed"
CANCELLED = "cancelled"
STATES = (PENDING, RUNNING, COMPLETED, FAILED, CANCELLED)
TERMINAL_STATES = (COMPLETED, FAILED, CANCELLED)

EXECUTOR_LOST = "executor_lost"
ALL_AGENTS_FAILED = "all_agents_failed"
DEADLINE_EXCEEDED = "deadline_exceeded"
INVALID_REQUEST = "invalid_request"
CANCELLED_BY_REQUEST = "cancelled by request"

# Default resource names (specs/records.md); each has a setting.
DEFAULT_RECORDS_BUCKET = "RAY_EXECUTOR_DELIBERATIONS"
DEFAULT_WORK_STREAM = "RAY_EXECUTOR_WORK"
DEFAULT_COUNTERS_STREAM = "RAY_EXECUTOR_COUNTERS"
DEFAULT_EVENTS_STREAM = "RAY_EXECUTOR_EVENTS"
WORK_CONSUMER = "executor"
WORK_SUBJECT_PREFIX = "ray_executor.work."
COUNT_SUBJECT_PREFIX = "ray_executor.count."
CANCEL_SUBJECT_PREFIX = "ray_executor.control.cancel."
EVENTS_SUBJECTS = "ray_executor.deliberation.>"
DEFAULT_RETENTION_SECONDS = 7 * 24 * 3600
DUPLICATE_WINDOW_SECONDS = 2 * 3600
KV_DUPLICATE_WINDOW_SECONDS = 120  # what nats.go's CreateKeyValue sets
ACK_WAIT_SECONDS = 30.0
MAX_ACK_PENDING = 10000

EXECUTOR_KEY = "executor"
DEPLOY_KEY = "executor.deploy"

TERMINAL_SOURCE = "ray-executor/executor"
TYPE_PREFIX = "fleet.ray_executor.v1.deliberation."

# JetStream error codes.
_STREAM_NOT_FOUND = 10059
_CONSUMER_NOT_FOUND = 10014
_NO_MESSAGE_FOUND = 10037
_WRONG_LAST_SEQUENCE = (10071, 10164)

CAS_ATTEMPTS = 20


class TerminalError(Exception):
    """A transition out of a terminal state: the deliberation ended already."""

    def __init__(self, what: str, record: Dict[str, Any]):
        super().__init__(f"{what} {record.get('id', '')}: it is {record.get('state', '')}: deliberation already ended")
        self.record = record


class RecordError(ValueError):
    """A stored record that cannot be read (bad JSON, wrong version, unknown state)."""


# --- time ----------------------------------------------------------------------------------


def format_time(epoch: float) -> str:
    """RFC 3339 in UTC with up to nanoseconds, trailing zeros dropped (Go's RFC3339Nano)."""
    seconds = math.floor(epoch)
    micros = int(round((epoch - seconds) * 1_000_000))
    if micros >= 1_000_000:
        seconds, micros = seconds + 1, 0
    base = datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    frac = f"{micros:06d}".rstrip("0")
    return f"{base}.{frac}Z" if frac else base + "Z"


def parse_time(text: str) -> Optional[float]:
    """Epoch seconds of a record time; None for an empty or malformed one. Digits beyond
    microseconds are dropped."""
    if not text:
        return None
    s = text.strip()
    if s.endswith("Z") or s.endswith("z"):
        s = s[:-1] + "+00:00"
    if "." in s:
        head, _, rest = s.partition(".")
        digits = ""
        while rest and rest[0].isdigit():
            digits, rest = digits + rest[0], rest[1:]
        s = f"{head}.{(digits + '000000')[:6]}{rest}"
    try:
        dt = datetime.fromisoformat(s)
    except ValueError:
        return None
    if dt.tzinfo is None:
        return None
    return dt.timestamp()


# --- the record and its state machine ------------------------------------------------------


def is_terminal(record: Dict[str, Any]) -> bool:
    return record.get("state") in TERMINAL_STATES


def check(record: Any, key: str) -> Dict[str, Any]:
    """The record when it is readable, else RecordError naming what is wrong."""
    if not isinstance(record, dict):
        raise RecordError(f"record {key}: not a JSON object")
    if record.get("v") != RECORD_VERSION:
        raise RecordError(f"record {key}: version {record.get('v')!r}, want {RECORD_VERSION}")
    if not record.get("id"):
        raise RecordError(f"record {key}: no id")
    if record.get("state") not in STATES:
        raise RecordError(f"record {key}: unknown state {record.get('state')!r}")
    return record


def decode(raw: bytes, key: str) -> Dict[str, Any]:
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise RecordError(f"record {key}: not JSON: {exc}") from None
    return check(data, key)


def encode(record: Dict[str, Any]) -> bytes:
    return json.dumps(record, ensure_ascii=True, separators=(",", ":"), allow_nan=False).encode("ascii")


def new_record(deliberation_id: str, *, task_id: str = "", kind: str = "deliberation", role: str = "",
               num_agents: int = 1, timeout_seconds: int = 60, now: Optional[float] = None,
               grace_seconds: float = 30.0, **extra: Any) -> Dict[str, Any]:
    """A pending record as execute creates it (domain.NewRecord); for tests and tools."""
    now = time.time() if now is None else now
    rec: Dict[str, Any] = {
        "v": RECORD_VERSION, "id": deliberation_id, "state": PENDING, "kind": kind, "task_id": task_id,
        "role": role, "story_id": "", "plan_id": "", "task_type": "", "num_agents": num_agents, "owner": "",
        "request_sha256": "", "traceparent": "", "timeout_seconds": timeout_seconds,
        "created_at": format_time(now), "started_at": "", "ended_at": "",
        "deadline": format_time(now + timeout_seconds + grace_seconds),
        "attempts": 0, "executor": "", "cancel_requested": False,
        "outcome": None, "error": "", "error_type": "", "reason": "",
    }
    rec.update(extra)
    return rec


def _refuse_terminal(record: Dict[str, Any], what: str) -> Dict[str, Any]:
    if is_terminal(record):
        raise TerminalError(what, record)
    return copy.deepcopy(record)


def start(record: Dict[str, Any], attempt: int, executor: str, now: float) -> Dict[str, Any]:
    """pending|running -> running: pulled (again) by an executor; started_at on the first start."""
    r = _refuse_terminal(record, "start")
    r["state"], r["attempts"], r["executor"] = RUNNING, attempt, executor
    if not r.get("started_at"):
        r["started_at"] = format_time(now)
    return r


def finish(record: Dict[str, Any], outcome: Dict[str, Any], now: float) -> Dict[str, Any]:
    """Its agents ended: completed when at least one completed, else failed."""
    r = _refuse_terminal(record, "finish")
    r["outcome"] = outcome
    r["state"] = COMPLETED if outcome.get("status") == COMPLETED else FAILED
    if r["state"] == FAILED and not r.get("error"):
        r["error"], r["error_type"] = outcome.get("error", ""), ALL_AGENTS_FAILED
        if not r["error"]:
            r["error"] = "no agent completed"
    r["ended_at"] = format_time(now)
    return r


def fail(record: Dict[str, Any], error_type: str, message: str, now: float) -> Dict[str, Any]:
    """Ends the deliberation without a result (executor_lost, deadline_exceeded, ...)."""
    r = _refuse_terminal(record, "fail")
    r["state"], r["error_type"], r["error"], r["ended_at"] = FAILED, error_type, message, format_time(now)
    return r


def fail_lost(record: Dict[str, Any], deliveries: int, max_deliveries: int, now: float) -> Dict[str, Any]:
    """Delivered more often than EXECUTOR_MAX_DELIVERIES: the executors running it were lost."""
    return fail(record, EXECUTOR_LOST,
                f"delivered {deliveries} times, more than the {max_deliveries} allowed: "
                "the executor running it was lost each time", now)


def cancel(record: Dict[str, Any], reason: str, now: float) -> Tuple[Dict[str, Any], bool]:
    """A caller's cancel (execute's Cancel): a pending record ends cancelled at once, a running
    one is marked cancel_requested. The bool says whether it ended."""
    r = _refuse_terminal(record, "cancel")
    r["reason"] = reason
    if r["state"] == PENDING:
        r["state"], r["ended_at"] = CANCELLED, format_time(now)
        return r, True
    r["cancel_requested"] = True
    return r, False


def cancelled(record: Dict[str, Any], now: float) -> Dict[str, Any]:
    """The executor ending a deliberation whose cancel was requested."""
    r = _refuse_terminal(record, "cancel")
    r["state"], r["ended_at"] = CANCELLED, format_time(now)
    if not r.get("reason"):
        r["reason"] = CANCELLED_BY_REQUEST
    return r


def active_entry(record: Dict[str, Any]) -> Dict[str, Any]:
    """The active.<id> index entry of a record that has not ended."""
    return {k: record.get(k, d) for k, d in (
        ("id", ""), ("task_id", ""), ("kind", ""), ("role", ""), ("state", ""), ("num_agents", 0),
        ("created_at", ""), ("started_at", ""), ("owner", ""))}


def duration_ms(record: Dict[str, Any]) -> int:
    """How long a finished deliberation ran (0 when it never started)."""
    s, e = parse_time(record.get("started_at", "")), parse_time(record.get("ended_at", ""))
    if s is None or e is None or e < s:
        return 0
    return int(round((e - s) * 1000))


def terminal_event(record: Dict[str, Any], now: Optional[float] = None) -> Tuple[str, str, bytes]:
    """(subject, Nats-Msg-Id, body) of the record's terminal lifecycle event: the CloudEvent
    the Go side builds (events.TerminalEvent) from the record."""
    state = record["state"]
    did = record["id"]
    outcome = record.get("outcome") if isinstance(record.get("outcome"), dict) else None
    data: Dict[str, Any] = {"deliberation_id": did, "task_id": record.get("task_id", ""), "status": state}
    if record.get("num_agents"):
        data["num_agents"] = record["num_agents"]
    data["completed_agents"] = outcome.get("completed_agents", 0) if outcome else 0
    data["failed_agents"] = outcome.get("failed_agents", 0) if outcome else 0
    if outcome and outcome.get("duration_ms"):
        data["duration_ms"] = outcome["duration_ms"]
    if state == CANCELLED:
        reason = record.get("reason") or CANCELLED_BY_REQUEST
        data["reason"] = reason
    elif state == FAILED:
        if record.get("error"):
            data["error"] = record["error"]
        if record.get("error_type"):
            data["error_type"] = record["error_type"]
    msg_id = f"{did}.terminal"
    event: Dict[str, Any] = {
        "specversion": "1.0", "id": msg_id, "source": TERMINAL_SOURCE, "type": TYPE_PREFIX + state,
        "subject": did, "time": iso_utc(time.time() if now is None else now),
        "datacontenttype": "application/json",
    }
    if record.get("traceparent"):
        event["traceparent"] = record["traceparent"]
    event["data"] = data
    return f"ray_executor.deliberation.{did}.{state}", msg_id, encode(event)


# --- NATS ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Names:
    bucket: str = DEFAULT_RECORDS_BUCKET
    work_stream: str = DEFAULT_WORK_STREAM
    counters_stream: str = DEFAULT_COUNTERS_STREAM
    events_stream: str = DEFAULT_EVENTS_STREAM
    retention_seconds: float = DEFAULT_RETENTION_SECONDS


def record_key(deliberation_id: str) -> str:
    return f"d.{deliberation_id}"


def owner_counter(name: str, owner: str) -> str:
    """The owner's own counter of `name` (Go: records.OwnerCounter): name-by-<the first 8
    bytes of the owner's SHA-256 in hex>, one subject token whatever the name holds."""
    return f"{name}-by-{hashlib.sha256(owner.encode('utf-8')).hexdigest()[:16]}"


def active_key(deliberation_id: str) -> str:
    return f"active.{deliberation_id}"


def _err_code(exc: BaseException) -> Optional[int]:
    return getattr(exc, "err_code", None)


async def provision(js: Any, names: Names, ack_wait: float = ACK_WAIT_SECONDS) -> None:
    """Creates whatever of the records bucket, work stream and consumer, counters stream and
    events stream is missing, with the config of specs/records.md. Existing resources are
    left as they are. Creating is idempotent: a concurrent creator with the same config wins
    harmlessly."""
    from nats.js.api import AckPolicy, ConsumerConfig, DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
    from nats.js.errors import BadRequestError, NotFoundError

    async def missing_stream(name: str) -> bool:
        try:
            await js.stream_info(name)
            return False
        except NotFoundError:
            return True

    async def create_stream(cfg: Any) -> None:
        try:
            await js.add_stream(cfg)
            log.info("provisioned stream %s", cfg.name)
        except BadRequestError as exc:  # created meanwhile by someone else
            if await missing_stream(cfg.name):
                raise
            log.info("stream %s was created concurrently: %s", cfg.name, exc)

    retention = float(names.retention_seconds)
    kv_stream = f"KV_{names.bucket}"
    if await missing_stream(kv_stream):
        # As nats.go's CreateKeyValue builds it, so a Go creator finds the same config.
        await create_stream(StreamConfig(
            name=kv_stream, subjects=[f"$KV.{names.bucket}.>"], retention=RetentionPolicy.LIMITS,
            max_msgs_per_subject=1, max_msgs=-1, max_consumers=-1, max_age=retention,
            storage=StorageType.FILE, num_replicas=1, allow_rollup_hdrs=True, deny_delete=True,
            duplicate_window=min(KV_DUPLICATE_WINDOW_SECONDS, retention), allow_direct=True,
            discard=DiscardPolicy.NEW,
        ))
    if await missing_stream(names.work_stream):
        await create_stream(StreamConfig(
            name=names.work_stream, subjects=[WORK_SUBJECT_PREFIX + "*"], retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE, duplicate_window=min(DUPLICATE_WINDOW_SECONDS, retention), max_age=retention,
        ))
    try:
        await js.consumer_info(names.work_stream, WORK_CONSUMER)
    except NotFoundError:
        try:
            await js.add_consumer(names.work_stream, ConsumerConfig(
                durable_name=WORK_CONSUMER, ack_policy=AckPolicy.EXPLICIT, ack_wait=ack_wait,
                max_deliver=-1, max_ack_pending=MAX_ACK_PENDING,
            ))
            log.info("provisioned consumer %s on %s", WORK_CONSUMER, names.work_stream)
        except BadRequestError:
            await js.consumer_info(names.work_stream, WORK_CONSUMER)  # created meanwhile
    if await missing_stream(names.counters_stream):
        cfg = StreamConfig(
            name=names.counters_stream, subjects=[COUNT_SUBJECT_PREFIX + "*"], retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE, duplicate_window=DUPLICATE_WINDOW_SECONDS,
        )
        cfg.allow_msg_counter = True  # ADR-49 counters (nats-server >= 2.12)
        await create_stream(cfg)
    if await missing_stream(names.events_stream):
        await create_stream(StreamConfig(
            name=names.events_stream, subjects=[EVENTS_SUBJECTS], retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE, max_age=retention, duplicate_window=min(DUPLICATE_WINDOW_SECONDS, retention),
        ))


class Store:
    """The records bucket, the counters and the terminal events over one JetStream context."""

    def __init__(self, js: Any, kv: Any, names: Names, timeout: float = 5.0):
        self.js = js
        self.kv = kv
        self.names = names
        self.timeout = timeout

    @classmethod
    async def open(cls, js: Any, names: Names) -> "Store":
        return cls(js, await js.key_value(names.bucket), names)

    async def get(self, deliberation_id: str) -> Optional[Tuple[Dict[str, Any], int]]:
        """(record, revision), or None when there is no record."""
        from nats.js.errors import KeyNotFoundError

        key = record_key(deliberation_id)
        try:
            entry = await self.kv.get(key)
        except KeyNotFoundError:
            return None
        return decode(entry.value or b"", key), entry.revision

    async def create(self, record: Dict[str, Any]) -> int:
        """Creates d.<id>; raises nats' KeyWrongLastSequenceError when it exists."""
        return await self.kv.create(record_key(record["id"]), encode(check(record, record_key(record["id"]))))

    async def update(self, record: Dict[str, Any], revision: int) -> int:
        return await self.kv.update(record_key(record["id"]), encode(record), last=revision)

    async def transition(
        self, deliberation_id: str, decide: Callable[[Dict[str, Any]], Optional[Dict[str, Any]]],
    ) -> Tuple[Optional[Dict[str, Any]], bool]:
        """Reads the record, asks decide for its next value and writes it at the revision
        read; on a revision conflict reads again and decides again. Returns (record, written):
        (None, False) when there is no record; (the stored record, False) when decide
        returned None or raised TerminalError (the record had ended)."""
        from nats.js.errors import KeyWrongLastSequenceError

        for _ in range(CAS_ATTEMPTS):
            got = await self.get(deliberation_id)
            if got is None:
                return None, False
            current, revision = got
            try:
                nxt = decide(current)
            except TerminalError:
                return current, False
            if nxt is None:
                return current, False
            try:
                await self.update(nxt, revision)
            except KeyWrongLastSequenceError:
                continue
            return nxt, True
        raise RuntimeError(f"record {deliberation_id}: still changing after {CAS_ATTEMPTS} compare-and-set attempts")

    async def put_active(self, record: Dict[str, Any]) -> None:
        await self.kv.put(active_key(record["id"]), encode(active_entry(record)))

    async def delete_active(self, deliberation_id: str) -> None:
        """Purges the entry's subject rather than writing a KV delete marker, as the Go side
        does: the index then holds only active deliberations, which the Go side reads in one
        batch of at most 1,024."""
        bucket = self.names.bucket
        await self.js.purge_stream(f"KV_{bucket}", subject=f"$KV.{bucket}.{active_key(deliberation_id)}")

    async def get_json(self, key: str) -> Optional[Tuple[Any, int]]:
        from nats.js.errors import KeyNotFoundError

        try:
            entry = await self.kv.get(key)
        except KeyNotFoundError:
            return None
        try:
            return json.loads(entry.value or b""), entry.revision
        except ValueError:
            return None, entry.revision

    async def put_json(self, key: str, value: Any) -> int:
        return await self.kv.put(key, encode(value))

    async def count(self, name: str, msg_id: str, incr: int = 1, owner: str = "") -> None:
        """Adds incr to the counter ray_executor.count.<name> and, for a deliberation with an
        owner, to the owner's own (owner_counter); Nats-Msg-Id makes each once."""
        await self.js.publish(COUNT_SUBJECT_PREFIX + name, b"", timeout=self.timeout,
                              headers={"Nats-Incr": str(int(incr)), "Nats-Msg-Id": msg_id})
        if owner:
            await self.js.publish(COUNT_SUBJECT_PREFIX + owner_counter(name, owner), b"", timeout=self.timeout,
                                  headers={"Nats-Incr": str(int(incr)), "Nats-Msg-Id": msg_id + ".owner"})

    async def counter_value(self, name: str) -> int:
        """The counter's current value (0 when it was never added to)."""
        from nats.js.errors import NotFoundError

        try:
            m = await self.js.get_last_msg(self.names.counters_stream, COUNT_SUBJECT_PREFIX + name)
        except NotFoundError:
            return 0
        try:
            return int(json.loads(m.data or b"{}").get("val", "0"))
        except (ValueError, AttributeError):
            return 0

    async def terminal_stored(self, record: Dict[str, Any]) -> bool:
        """Whether a terminal event of the record's deliberation is on the events stream."""
        from nats.js.errors import NotFoundError

        for state in TERMINAL_STATES:
            try:
                await self.js.get_last_msg(self.names.events_stream,
                                           f"ray_executor.deliberation.{record['id']}.{state}")
                return True
            except NotFoundError as exc:
                if _err_code(exc) not in (None, _NO_MESSAGE_FOUND):
                    raise
        return False

    async def after_terminal(self, record: Dict[str, Any], rerun: bool = False) -> None:
        """The idempotent steps after a terminal transition (specs/records.md): the terminal
        event, the outcome counter(s), then deleting active.<id>. Raises when a step fails
        (the caller then leaves the work message unacked, so they run again). rerun: a
        record found terminal, whose event may already be stored past the duplicate window."""
        if not is_terminal(record):
            raise ValueError(f"record {record.get('id')} is not terminal")
        did = record["id"]
        if not (rerun and await self.terminal_stored(record)):
            subject, msg_id, body = terminal_event(record)
            await self.js.publish(subject, body, timeout=self.timeout,
                                  headers={"Nats-Msg-Id": msg_id, "Content-Type": "application/cloudevents+json"})
        owner = record.get("owner") or ""
        await self.count(record["state"], f"{did}.count", owner=owner)
        if record["state"] in (COMPLETED, FAILED):
            await self.count("duration_ms", f"{did}.duration", duration_ms(record), owner=owner)
        await self.delete_active(did)

