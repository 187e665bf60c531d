"""A real NATS server with JetStream for the tests, and synchronous helpers around nats-py.

The server is the project's own nats-local (shared/events/cmd/nats-local, built by
`make test` into bin/nats-local), or whatever binary NATS_SERVER_BIN names; it is started
as `<bin> -addr 127.0.0.1:<port> -store <dir>`. The two streams are created here with
nats-py, the way the gateway provisions them (specs/nats.md).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.abspath(os.path.join(TESTS_DIR, "..", "..", "..", ".."))
DEFAULT_BINARY = os.path.join(REPO_ROOT, "bin", "nats-local")
BINARY_ENV = "NATS_SERVER_BIN"

EVENTS_STREAM = "RAY_EXECUTOR_EVENTS"
RESPONSES_STREAM = "AGENT_RESPONSES"
STREAMS = {EVENTS_STREAM: "ray_executor.deliberation.>", RESPONSES_STREAM: "agent.response.>"}
DUPLICATE_WINDOW_SECONDS = 2 * 3600
MAX_AGE_SECONDS = 7 * 24 * 3600


def binary_path() -> str:
    return os.environ.get(BINARY_ENV, "").strip() or DEFAULT_BINARY


def missing_binary_message(path: str) -> str:
    return (
        f"no NATS server binary at {path}: `make test` builds it (go build -o bin/nats-local "
        f"./shared/events/cmd/nats-local); or set {BINARY_ENV} to a nats-local binary"
    )


def stop_process(proc: "subprocess.Popen[Any]", grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after grace seconds; returns once the process has ended."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def closed_port() -> int:
    """A port nothing listens on (connections are refused)."""
    return free_port()


@dataclass
class Stored:
    stream: str
    seq: int
    subject: str
    headers: Dict[str, str]
    data: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.data)

    @property
    def msg_id(self) -> str:
        return self.headers.get("Nats-Msg-Id", "")


def terminal_event(deliberation_id: str, kind: str = "cancelled", task_id: str = "task-42", num_agents: int = 1) -> bytes:
    """A terminal lifecycle event as the Go side stores it (events.TerminalEvent): for
    "cancelled", what execute publishes on CancelDeliberation."""
    data: Dict[str, Any] = {"deliberation_id": deliberation_id, "task_id": task_id, "status": kind, "num_agents": num_agents}
    if kind == "cancelled":
        data["reason"] = "cancelled by request"
    event = {
        "specversion": "1.0", "id": f"{deliberation_id}.terminal", "source": "ray-executor/execute",
        "type": f"fleet.ray_executor.v1.deliberation.{kind}", "subject": deliberation_id,
        "time": "2026-01-02T03:04:05.678Z", "datacontenttype": "application/json", "data": data,
    }
    return json.dumps(event).encode()


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


USERS_CONF = os.path.join(REPO_ROOT, "knative", "nats", "ray-executor-users.conf")


class NatsServer:
    """With `config` (a NATS configuration file, e.g. USERS_CONF) and `user` = (name, password),
    the server applies the file, `env` fills its $VARIABLES, and `url` connects as that user
    while `address` carries no credentials."""

    def __init__(self, binary: str, store_dir: str, config: str = "", env: Optional[Dict[str, str]] = None,
                 user: Optional[Tuple[str, str]] = None):
        self.binary = binary
        self.store_dir = store_dir
        self.config = config
        self.env = env or {}
        self.user = user
        self.proc: Optional[subprocess.Popen] = None
        self.url = ""
        self.address = ""
        self.log_path = os.path.join(store_dir, "server.log")

    def start(self, port: int = 0) -> "NatsServer":
        """Starts the server on `port` (a free one when 0), with its streams."""
        last = ""
        for _ in range(1 if port else 5):  # a free port may be taken between probe and bind
            port = port or free_port()
            log = open(self.log_path, "ab")
            args = [self.binary, "-addr", f"127.0.0.1:{port}", "-store", os.path.join(self.store_dir, "js")]
            if self.config:
                args += ["-config", self.config]
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env={**os.environ, **self.env})
            log.close()
            deadline = time.time() + 20
            while time.time() < deadline and self.proc.poll() is None:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                        s.settimeout(2)
                        if s.recv(4).startswith(b"INFO"):
                            self.address = f"nats://127.0.0.1:{port}"
                            creds = f"{self.user[0]}:{self.user[1]}@" if self.user else ""
                            self.url = f"nats://{creds}127.0.0.1:{port}"
                            self.provision()
                            return self
                except OSError:
                    time.sleep(0.05)
            last = self.tail()
            self.stop()
            port = 0
        raise RuntimeError(f"NATS server {self.binary} did not start:\n{last}")

    def tail(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-3000:].decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None:
            return
        stop_process(self.proc)
        self.proc = None

    # --- nats-py helpers, synchronous ------------------------------------------------

    async def _connect(self) -> Any:
        import nats

        return await nats.connect(self.url, connect_timeout=5, allow_reconnect=False)

    def provision(self) -> None:
        """Creates the two streams as the gateway does (specs/nats.md)."""
        from nats.js.api import RetentionPolicy, StorageType, StreamConfig

        async def go() -> None:
            nc = await self._connect()
            try:
                js = nc.jetstream(timeout=5)
                for name, subject in STREAMS.items():
                    await js.add_stream(StreamConfig(
                        name=name, subjects=[subject], retention=RetentionPolicy.LIMITS,
                        storage=StorageType.FILE, max_age=MAX_AGE_SECONDS,
                        duplicate_window=DUPLICATE_WINDOW_SECONDS,
                    ))
            finally:
                await nc.close()

        _run(go())

    def stream_config(self, stream: str) -> Any:
        async def go() -> Any:
            nc = await self._connect()
            try:
                return (await nc.jetstream(timeout=5).stream_info(stream)).config
            finally:
                await nc.close()

        return _run(go())

    def publish(self, subject: str, data: bytes, msg_id: str, content_type: str = "application/cloudevents+json") -> None:
        """Stores one message on JetStream (as the Go side does), waiting for the ack."""

        async def go() -> None:
            nc = await self._connect()
            try:
                headers = {"Nats-Msg-Id": msg_id, "Content-Type": content_type}
                await nc.jetstream(timeout=5).publish(subject, data, headers=headers)
            finally:
                await nc.close()

        _run(go())

    def store_terminal(self, deliberation_id: str, kind: str = "cancelled", num_agents: int = 1) -> None:
        """Stores deliberation_id's terminal event of `kind`, as the Go side would."""
        self.publish(f"ray_executor.deliberation.{deliberation_id}.{kind}",
                     terminal_event(deliberation_id, kind, num_agents=num_agents), f"{deliberation_id}.terminal")

    def messages(self, stream: str) -> List[Stored]:
        """Every message of the stream, in stream order."""
        from nats.js.errors import NotFoundError

        async def go() -> List[Stored]:
            nc = await self._connect()
            try:
                js = nc.jetstream(timeout=5)
                state = (await js.stream_info(stream)).state
                out: List[Stored] = []
                if not state.messages:  # an empty stream's first_seq is 0, which get_msg refuses
                    return out
                for seq in range(state.first_seq, state.last_seq + 1):
                    try:
                        m = await js.get_msg(stream, seq)
                    except NotFoundError:
                        continue
                    out.append(Stored(stream, m.seq, m.subject, dict(m.headers or {}), m.data or b""))
                return out
            finally:
                await nc.close()

        return _run(go())

    def lifecycle(self, deliberation_id: str) -> List[Stored]:
        """The stored lifecycle events of one deliberation, in stream order."""
        prefix = f"ray_executor.deliberation.{deliberation_id}."
        return [m for m in self.messages(EVENTS_STREAM) if m.subject.startswith(prefix)]

    def responses(self, deliberation_id: str) -> List[Stored]:
        """The stored compatible agent responses of one deliberation, in stream order."""
        return [m for m in self.messages(RESPONSES_STREAM) if m.json.get("correlation_id") == deliberation_id]


class Listener:
    """A core NATS subscriber on its own thread: records (subject, Nats-Msg-Id) of every
    message on the given subjects, in arrival order (one publisher's order)."""

    def __init__(self, url: str, subjects: Sequence[str]):
        self.received: List[tuple] = []
        self._url = url
        self._subjects = list(subjects)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: Optional[asyncio.Event] = None
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._thread.start()
        if not self._ready.wait(10) or self._error:
            raise RuntimeError(f"listener did not start: {self._error}")

    def _main(self) -> None:
        self._loop.run_until_complete(self._go())
        self._loop.close()

    async def _go(self) -> None:
        import nats

        async def quiet(exc: Exception) -> None:
            pass

        try:
            nc = await nats.connect(self._url, connect_timeout=5, error_cb=quiet)
            self._stop = asyncio.Event()

            async def on_msg(msg: Any) -> None:
                self.received.append((msg.subject, (msg.headers or {}).get("Nats-Msg-Id", "")))

            for s in self._subjects:
                await nc.subscribe(s, cb=on_msg)
            await nc.flush()
        except BaseException as exc:  # noqa: BLE001
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        await self._stop.wait()
        await nc.flush()
        await nc.drain()

    def stop(self, settle: float = 0.3) -> List[tuple]:
        time.sleep(settle)  # let in-flight deliveries arrive
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        return self.received
