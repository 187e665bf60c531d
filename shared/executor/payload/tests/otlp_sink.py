"""The tests' OTLP receiver: bin/otlp-sink (the OpenTelemetry Collector's own OTLP receiver,
built by `make otlp-sink`, which `make test` runs; shared/testenv/otlpsink), started on free
ports; what it received is read back from its JSON lines (one per span, one per metric data
point; the fields are shared/testenv/otlpsink.go's Span and MetricPoint)."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import threading
import time
from typing import Any, Callable, Dict, List, Optional

from nats_server import stop_process

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.abspath(os.path.join(TESTS_DIR, "..", "..", "..", ".."))


def binary_path() -> str:
    return os.environ.get("OTLP_SINK_BIN", "").strip() or os.path.join(REPO_ROOT, "bin", "otlp-sink")


def missing_binary_message(path: str) -> str:
    return f"the OTLP receiver {path} is not built: run `make otlp-sink` (make test does)"


class OTLPSink:
    def __init__(self, binary: str):
        self.dir = tempfile.mkdtemp(prefix="otlp-sink-")
        self.traces = os.path.join(self.dir, "spans.jsonl")
        self.metrics_file = os.path.join(self.dir, "metrics.jsonl")
        self.stderr = open(os.path.join(self.dir, "stderr.log"), "w+")
        self.proc = subprocess.Popen(
            [binary, "-grpc", "127.0.0.1:0", "-http", "127.0.0.1:0", "-traces", self.traces, "-metrics", self.metrics_file],
            stdout=subprocess.PIPE, stderr=self.stderr, text=True)
        line: List[str] = []
        reader = threading.Thread(target=lambda: line.append(self.proc.stdout.readline() if self.proc.stdout else ""), daemon=True)
        reader.start()
        reader.join(30)
        fields = dict(f.split("=", 1) for f in (line[0] if line else "").split() if "=" in f)
        if "grpc" not in fields or "http" not in fields:
            self.stop()
            raise RuntimeError(f"otlp-sink did not start (first line {line!r}): {self.errors()}")
        self.grpc_addr, self.http_addr = fields["grpc"], fields["http"]

    @property
    def http_endpoint(self) -> str:
        return "http://" + self.http_addr

    @property
    def grpc_endpoint(self) -> str:
        return "http://" + self.grpc_addr

    def errors(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read()[-4000:]

    @staticmethod
    def _read(path: str) -> List[Dict[str, Any]]:
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return []
        raw = raw[: raw.rfind(b"\n") + 1]  # a line still being written waits for the next read
        return [json.loads(line) for line in raw.splitlines() if line.strip()]

    def spans(self) -> List[Dict[str, Any]]:
        return self._read(self.traces)

    def metrics(self) -> List[Dict[str, Any]]:
        return self._read(self.metrics_file)

    def wait(self, read: Callable[[], List[Dict[str, Any]]], pred: Callable[[List[Dict[str, Any]]], bool],
             timeout: float = 15.0) -> List[Dict[str, Any]]:
        end = time.monotonic() + timeout
        while True:
            got = read()
            if pred(got):
                return got
            if time.monotonic() > end:
                raise AssertionError(f"the OTLP sink did not receive what was expected within {timeout}s; it has:\n"
                                     + "\n".join(json.dumps(g) for g in got)[-6000:])
            time.sleep(0.05)

    def stop(self) -> None:
        stop_process(self.proc)
        if self.proc.stdout:
            self.proc.stdout.close()
        self.stderr.close()


def start() -> Optional[OTLPSink]:
    binary = binary_path()
    if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
        return None
    return OTLPSink(binary)
