"""A tiny OpenAI-compatible chat completions server for the tests.

It records every request (path, headers, decoded JSON body) and answers according to a
behaviour chosen per model name. It also counts requests in flight and remembers the
maximum, which is how the integration tests prove the agents ran in parallel.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, List, Optional


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: Dict[str, str] = field(default_factory=dict)


@dataclass
class Recorded:
    path: str
    headers: Dict[str, str]
    body: Any  # the decoded JSON body (None when it was not JSON)
    raw: bytes

    @property
    def model(self) -> str:
        return self.body.get("model", "") if isinstance(self.body, dict) else ""

    @property
    def messages(self) -> List[Dict[str, str]]:
        return self.body["messages"]


# A behaviour gets the stub, the 1-based number of this request for its model and the
# decoded body, and returns a Reply. It may block (sleep, wait for company).
Behaviour = Callable[["StubLLM", int, Any], Reply]


def completion_json(content: Optional[str], message_extra: Optional[Dict[str, Any]] = None, usage: Optional[Dict[str, Any]] = None) -> bytes:
    message: Dict[str, Any] = {"role": "assistant", "content": content}
    message.update(message_extra or {})
    data: Dict[str, Any] = {
        "id": "chatcmpl-stub",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
    }
    data["usage"] = usage if usage is not None else {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
    return json.dumps(data).encode()


def ok(content: str = "a fine proposal", **kwargs: Any) -> Behaviour:
    def behave(stub: "StubLLM", n: int, body: Any) -> Reply:
        return Reply(200, completion_json(content, **kwargs))

    return behave


def status(code: int, body: bytes = b'{"error": {"message": "stub refused"}}', headers: Optional[Dict[str, str]] = None) -> Behaviour:
    def behave(stub: "StubLLM", n: int, body_: Any) -> Reply:
        return Reply(code, body, dict(headers or {}))

    return behave


def fail_then(times: int, code: int = 500, then: Optional[Behaviour] = None) -> Behaviour:
    """Fails the first `times` requests with `code`, then behaves like `then` (ok)."""
    then = then or ok()

    def behave(stub: "StubLLM", n: int, body: Any) -> Reply:
        if n <= times:
            return Reply(code, b'{"error": {"message": "temporary failure %d"}}' % n)
        return then(stub, n, body)

    return behave


def sleep(seconds: float, then: Optional[Behaviour] = None) -> Behaviour:
    then = then or ok()

    def behave(stub: "StubLLM", n: int, body: Any) -> Reply:
        stub.closing.wait(seconds)
        return then(stub, n, body)

    return behave


def gather(count: int, hold: float = 1.5, limit: float = 45.0, then: Optional[Behaviour] = None) -> Behaviour:
    """Holds each request at least `hold` seconds and until `count` requests have been in
    flight together (or `limit` seconds passed). Requests that run in parallel all meet, so the
    maximum in flight reaches `count`; requests run one after the other never do."""
    then = then or ok()

    def behave(stub: "StubLLM", n: int, body: Any) -> Reply:
        stub.closing.wait(hold)
        with stub.cond:
            stub.cond.wait_for(lambda: stub.max_inflight >= count or stub.closing.is_set(), timeout=limit)
        return then(stub, n, body)

    return behave


class StubLLM:
    def __init__(self) -> None:
        self.behaviours: Dict[str, Behaviour] = {}
        self.default: Behaviour = ok()
        self.requests: List[Recorded] = []
        self.counts: Dict[str, int] = {}
        self.inflight = 0
        self.max_inflight = 0
        self.cond = threading.Condition()
        self.closing = threading.Event()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = None
                rec = Recorded(self.path, {k.lower(): v for k, v in self.headers.items()}, body, raw)
                with stub.cond:
                    stub.requests.append(rec)
                    n = stub.counts[rec.model] = stub.counts.get(rec.model, 0) + 1
                    stub.inflight += 1
                    stub.max_inflight = max(stub.max_inflight, stub.inflight)
                    stub.cond.notify_all()
                    behaviour = stub.behaviours.get(rec.model, stub.default)
                try:
                    reply = behaviour(stub, n, body)
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(reply.body)))
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(reply.body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout); that is what some tests want
                finally:
                    with stub.cond:
                        stub.inflight -= 1
                        stub.cond.notify_all()

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def set(self, model: str, behaviour: Behaviour) -> "StubLLM":
        self.behaviours[model] = behaviour
        return self

    def requests_for(self, model: str) -> List[Recorded]:
        with self.cond:
            return [r for r in self.requests if r.model == model]

    def close(self) -> None:
        self.closing.set()
        with self.cond:
            self.cond.notify_all()
        self.server.shutdown()
        self.server.server_close()
