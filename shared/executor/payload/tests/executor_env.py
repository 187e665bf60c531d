"""Helpers of the executor tests: fresh records/work/counters resources on the test NATS
server, submitting deliberations as execute does, and reading back what the executor did."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import replace
from typing import Any, Dict, List, Optional

from helpers import request_dict
from ray_executor_payload import nats_events, records
from ray_executor_payload.executor import Settings, Worker

NAMES = records.Names()


def new_id() -> str:
    return f"delib-{uuid.uuid4().hex[:16]}"


def settings_for(url: str, **overrides: Any) -> Settings:
    s = Settings(nats=nats_events.NatsSettings(servers=(url,)), names=NAMES, concurrency=8, max_deliveries=3,
                 in_progress_seconds=0.5, fetch_timeout=0.3, tick_seconds=0.2, scale_down_delay=0.0)
    return replace(s, **overrides)


class Env:
    """One connection to the test server, with the executor's resources freshly made."""

    def __init__(self, url: str):
        self.url = url
        self.nc: Any = None
        self.js: Any = None
        self.store: Optional[records.Store] = None

    async def __aenter__(self) -> "Env":
        import nats

        self.nc = await nats.connect(self.url, connect_timeout=5)
        self.js = self.nc.jetstream(timeout=5)
        self.store = await records.Store.open(self.js, NAMES)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.nc.close()

    @staticmethod
    async def reset(url: str, ack_wait: float = records.ACK_WAIT_SECONDS) -> None:
        """Deletes and re-provisions the work stream, its consumer, the counters stream and
        the records bucket (their subjects are fixed, so tests cannot each have their own)."""
        import nats
        from nats.js.errors import NotFoundError

        nc = await nats.connect(url, connect_timeout=5)
        try:
            js = nc.jetstream(timeout=5)
            for stream in (NAMES.work_stream, NAMES.counters_stream, f"KV_{NAMES.bucket}"):
                try:
                    await js.delete_stream(stream)
                except NotFoundError:
                    pass
            await records.provision(js, NAMES, ack_wait=ack_wait)
        finally:
            await nc.close()

    async def submit(self, data: Dict[str, Any], msg_id: str = "", record: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        """As execute accepts a deliberation: the record, active.<id>, then the work message."""
        assert self.store is not None
        did = data["deliberation_id"]
        rec = record or records.new_record(did, task_id=data["task_id"], role=data.get("role", ""),
                                           num_agents=len(data["agents"]), timeout_seconds=data["timeout_seconds"])
        await self.store.create(rec)
        if not records.is_terminal(rec):
            await self.store.put_active(rec)
        await self.publish_work(data, msg_id or did)
        return rec

    async def publish_work(self, data: Dict[str, Any], msg_id: str) -> None:
        await self.js.publish(records.WORK_SUBJECT_PREFIX + data["deliberation_id"], json.dumps(data).encode(),
                              headers={"Nats-Msg-Id": msg_id})

    async def record(self, did: str) -> Dict[str, Any]:
        assert self.store is not None
        got = await self.store.get(did)
        assert got is not None
        return got[0]

    async def wait_state(self, did: str, states: Any, timeout: float = 20.0) -> Dict[str, Any]:
        end = time.monotonic() + timeout
        while True:
            rec = await self.record(did)
            if rec["state"] in states:
                return rec
            if time.monotonic() > end:
                raise AssertionError(f"{did} still {rec['state']} after {timeout}s: {rec}")
            await asyncio.sleep(0.05)

    async def active(self, did: str) -> Any:
        assert self.store is not None
        return await self.store.get_json(records.active_key(did))

    async def index_subjects(self) -> int:
        """The active index's subjects in the bucket's stream: entries and any delete markers."""
        assert self.store is not None
        bucket = self.store.names.bucket
        info = await self.store.js.stream_info(f"KV_{bucket}", subjects_filter=f"$KV.{bucket}.active.*")
        return len(info.state.subjects or {})

    async def work_messages(self) -> int:
        return (await self.js.stream_info(NAMES.work_stream)).state.messages

    async def counter(self, name: str) -> int:
        assert self.store is not None
        return await self.store.counter_value(name)

    async def events(self, did: str) -> List[Any]:
        """The stored lifecycle events of did: (subject kind, Nats-Msg-Id, data)."""
        from nats.js.errors import NotFoundError

        info = await self.js.stream_info(NAMES.events_stream)
        out = []
        if not info.state.messages:
            return out
        prefix = f"ray_executor.deliberation.{did}."
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            try:
                m = await self.js.get_msg(NAMES.events_stream, seq)
            except NotFoundError:
                continue
            if m.subject.startswith(prefix):
                out.append((m.subject[len(prefix):], (m.headers or {}).get("Nats-Msg-Id"), json.loads(m.data)["data"]))
        return out


def worker(url: str, name: str = "w1", **overrides: Any) -> Worker:
    return Worker(settings_for(url, **overrides), name)


def delib(stub_url: str, agents: List[Dict[str, Any]], **overrides: Any) -> Dict[str, Any]:
    overrides.setdefault("deliberation_id", new_id())
    return request_dict(stub_url, agents, **overrides)
