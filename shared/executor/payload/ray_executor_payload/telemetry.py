"""The executor's traces and metrics (issue 14): OpenTelemetry, exported over OTLP.

Off unless an OTLP endpoint is set (the standard variables: OTEL_EXPORTER_OTLP_ENDPOINT, or
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT / _METRICS_ENDPOINT per signal; OTEL_EXPORTER_OTLP_PROTOCOL
http/protobuf, the default, or grpc; OTEL_SERVICE_NAME, default ray-executor-executor;
OTEL_BSP_SCHEDULE_DELAY, OTEL_METRIC_EXPORT_INTERVAL and OTEL_EXPORTER_OTLP_TIMEOUT in
milliseconds; OTEL_SDK_DISABLED).
Each process that runs deliberations (a Replica actor, or the driver with in-process
workers) sets up its own providers from the environment it inherits; nothing is global, so
a test may run several. When the opentelemetry packages are missing on the Ray cluster the
executor logs a warning and runs as without an endpoint: the LLM request then carries the
deliberation's traceparent as it came.

Spans (never a prompt, a reply, an error text or a key in an attribute):
  deliberation (CONSUMER; parent: the work message's traceparent header, else the record's,
    else the request's): deliberation.id, task.id, caller, deliberation.attempt,
    deliberation.outcome, deliberation.error_type, deliberation.rerun
  agent (a child of deliberation): agent.id, agent.role, gen_ai.request.model, agent.status,
    error.type, agent.attempts
  llm.chat (CLIENT, a child of agent, one per HTTP attempt; the request's traceparent header
    is this span's context): gen_ai.request.model, llm.attempt, http.request.method,
    http.response.status_code, server.address, server.port, error.type
Metrics (labels bounded: no ids; a model label beyond the first MAX_MODELS distinct ones of a
process is "other"):
  rex.executor.llm.duration (histogram, s; model, outcome ok|error): each HTTP attempt
  rex.executor.llm.errors (counter; model, error_type): each failed attempt
  rex.executor.deliberation.duration (histogram, s; outcome completed|failed|cancelled):
    each deliberation this process ended
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, Iterator, Mapping, Optional

from .agents import log

DEFAULT_SERVICE_NAME = "ray-executor-executor"
SCOPE = "ray_executor_payload"
HTTP_PROTOBUF = "http/protobuf"
GRPC = "grpc"
MAX_MODELS = 32
OTHER_MODEL = "other"
# Seconds, for LLM calls (milliseconds to minutes) and deliberations.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
DEFAULT_BSP_SCHEDULE_DELAY_MS = 5000
DEFAULT_METRIC_EXPORT_INTERVAL_MS = 60000
DEFAULT_EXPORT_TIMEOUT_MS = 10000


@dataclass(frozen=True)
class Config:
    """What the OTEL_* variables say; the default is off."""

    traces_endpoint: str = ""
    metrics_endpoint: str = ""
    protocol: str = HTTP_PROTOBUF
    service_name: str = DEFAULT_SERVICE_NAME
    schedule_delay_ms: int = DEFAULT_BSP_SCHEDULE_DELAY_MS
    export_interval_ms: int = DEFAULT_METRIC_EXPORT_INTERVAL_MS
    export_timeout_ms: int = DEFAULT_EXPORT_TIMEOUT_MS  # each export, retries included

    @property
    def enabled(self) -> bool:
        return bool(self.traces_endpoint or self.metrics_endpoint)

    @property
    def shutdown_seconds(self) -> float:
        """The most the last exports at shutdown take (spans, then metrics)."""
        return 2 * self.export_timeout_ms / 1000 + 2


def _millis(environ: Mapping[str, str], name: str, default: int, minimum: int) -> int:
    raw = str(environ.get(name, "") or "").strip()
    if not raw:
        return default
    try:
        v = float(raw)
    except ValueError:
        log.warning("telemetry: %s=%r is not a number of milliseconds; using %d", name, raw[:50], default)
        return default
    if not math.isfinite(v) or v < minimum:
        log.warning("telemetry: %s=%r is below %d; using %d", name, raw[:50], minimum, default)
        return default
    return int(v)


def config_from_env(environ: Mapping[str, str]) -> Config:
    """The telemetry settings; never fails (bad values are logged and replaced by the
    defaults, an unknown protocol turns telemetry off): tracing must not stop deliberations."""
    if str(environ.get("OTEL_SDK_DISABLED", "") or "").strip().lower() == "true":
        return Config()
    protocol = str(environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "") or "").strip() or HTTP_PROTOBUF
    base = str(environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "") or "").strip().rstrip("/")

    def endpoint(signal: str) -> str:
        own = str(environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT", "") or "").strip()
        if own:
            return own
        if not base:
            return ""
        return base if protocol == GRPC else f"{base}/v1/{signal}"

    cfg = Config(
        traces_endpoint=endpoint("traces"),
        metrics_endpoint=endpoint("metrics"),
        protocol=protocol,
        service_name=str(environ.get("OTEL_SERVICE_NAME", "") or "").strip() or DEFAULT_SERVICE_NAME,
        schedule_delay_ms=_millis(environ, "OTEL_BSP_SCHEDULE_DELAY", DEFAULT_BSP_SCHEDULE_DELAY_MS, 1),
        export_interval_ms=_millis(environ, "OTEL_METRIC_EXPORT_INTERVAL", DEFAULT_METRIC_EXPORT_INTERVAL_MS, 100),
        export_timeout_ms=_millis(environ, "OTEL_EXPORTER_OTLP_TIMEOUT", DEFAULT_EXPORT_TIMEOUT_MS, 100),
    )
    if cfg.enabled and protocol not in (HTTP_PROTOBUF, GRPC):
        log.warning("telemetry: OTEL_EXPORTER_OTLP_PROTOCOL=%r is not supported (http/protobuf or grpc): "
                    "spans and metrics are off", protocol[:50])
        return Config()
    for url in (cfg.traces_endpoint, cfg.metrics_endpoint):
        if url and not url.startswith(("http://", "https://")):
            log.warning("telemetry: the OTLP endpoint %r is not an http(s) URL: spans and metrics are off", url[:200])
            return Config()
    return cfg


# --- what the executor calls ----------------------------------------------------------------


class BoundedLabel:
    """A label whose values callers choose (the model), bounded: the first `limit` distinct
    values (cut to 100 characters) are kept by name, the rest are "other"."""

    def __init__(self, limit: int):
        self.limit = limit
        self._seen: Dict[str, None] = {}
        self._lock = threading.Lock()

    def __call__(self, value: str) -> str:
        value = value[:100] or "default"
        with self._lock:
            if value in self._seen:
                return value
            if len(self._seen) < self.limit:
                self._seen[value] = None
                return value
        return OTHER_MODEL


class Attempt:
    """One LLM HTTP attempt: traceparent is what the request carries ("" when no span is
    recorded: the caller's is sent as it came); status and error_type are filled in."""

    def __init__(self, traceparent: str = ""):
        self.traceparent = traceparent
        self.status = 0
        self.error_type = ""


class Run:
    """One deliberation's span: ended() names its outcome."""

    def __init__(self, span: Any = None):
        self.span = span
        self.started = time.monotonic()
        self.outcome = ""

    def attempt(self, n: int) -> None:
        if self.span is not None:
            self.span.set_attribute("deliberation.attempt", n)

    def ended(self, record: Mapping[str, Any], rerun: bool) -> None:
        self.outcome = str(record.get("state", "") or "")
        if self.span is not None:
            self.span.set_attribute("deliberation.outcome", self.outcome)
            self.span.set_attribute("deliberation.rerun", rerun)
            if record.get("error_type"):
                self.span.set_attribute("deliberation.error_type", str(record["error_type"]))


class Telemetry:
    """Off: every method does nothing, and the LLM request carries the caller's
    traceparent. Setup returns an _OTel when an endpoint is set and the SDK is there."""

    enabled = False

    @contextlib.contextmanager
    def deliberation(self, deliberation_id: str, task_id: str, caller: str, traceparent: str) -> Iterator[Run]:
        yield Run()

    def deliberation_ended(self, run: Run, rerun: bool) -> None:
        pass

    @contextlib.contextmanager
    def agent(self, agent_id: str, role: str, model: str) -> Iterator[Any]:
        yield None

    def agent_result(self, span: Any, status: str, error_type: str, attempts: int) -> None:
        pass

    @contextlib.contextmanager
    def llm_attempt(self, model: str, attempt: int, host: str, port: Optional[int]) -> Iterator[Attempt]:
        yield Attempt()

    def shutdown(self) -> None:
        pass


OFF = Telemetry()


class _OTel(Telemetry):
    enabled = True

    def __init__(self, cfg: Config):
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.trace import SpanKind, Status, StatusCode
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._kind, self._status, self._code = SpanKind, Status, StatusCode
        self._propagator = TraceContextTextMapPropagator()
        resource = Resource.create({"service.name": cfg.service_name})
        self._tp: Any = None
        self._mp: Any = None
        self._flush_ms = cfg.export_timeout_ms
        self._model_label = BoundedLabel(MAX_MODELS)
        try:
            if cfg.traces_endpoint:
                from opentelemetry.sdk.trace import TracerProvider
                from opentelemetry.sdk.trace.export import BatchSpanProcessor

                self._tp = TracerProvider(resource=resource, shutdown_on_exit=False)
                self._tp.add_span_processor(BatchSpanProcessor(_span_exporter(cfg), schedule_delay_millis=cfg.schedule_delay_ms))
                self._tracer = self._tp.get_tracer(SCOPE)
            if cfg.metrics_endpoint:
                from opentelemetry.sdk.metrics import MeterProvider
                from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

                reader = PeriodicExportingMetricReader(_metric_exporter(cfg), export_interval_millis=cfg.export_interval_ms)
                self._mp = MeterProvider(resource=resource, metric_readers=[reader], shutdown_on_exit=False)
                meter = self._mp.get_meter(SCOPE)
                self._llm_duration = meter.create_histogram(
                    "rex.executor.llm.duration", unit="s", description="Each agent LLM HTTP attempt, by model and outcome",
                    explicit_bucket_boundaries_advisory=DURATION_BUCKETS)
                self._llm_errors = meter.create_counter(
                    "rex.executor.llm.errors", unit="{error}", description="Failed agent LLM HTTP attempts, by model and error type")
                self._delib_duration = meter.create_histogram(
                    "rex.executor.deliberation.duration", unit="s",
                    description="Deliberations this executor ended, from pulling the work to the terminal record, by outcome",
                    explicit_bucket_boundaries_advisory=DURATION_BUCKETS)
        except BaseException:
            self.shutdown()
            raise

    # -- spans --

    @contextlib.contextmanager
    def _span(self, name: str, status_on_exception: bool = True, **kwargs: Any) -> Iterator[Any]:
        """A span made current; an exception that passes through marks it failed with the
        exception's type only (its text may quote an upstream), unless the caller sets the
        status itself."""
        with self._tracer.start_as_current_span(name, record_exception=False, set_status_on_exception=False,
                                                **kwargs) as span:
            try:
                yield span
            except Exception as exc:
                if status_on_exception:
                    span.set_status(self._status(self._code.ERROR, type(exc).__name__))
                raise

    @contextlib.contextmanager
    def deliberation(self, deliberation_id: str, task_id: str, caller: str, traceparent: str) -> Iterator[Run]:
        if self._tp is None:
            yield Run()
            return
        parent = self._propagator.extract({"traceparent": traceparent}) if traceparent else None
        attrs = {"deliberation.id": deliberation_id, "task.id": task_id, "caller": caller}
        with self._span("deliberation", context=parent, kind=self._kind.CONSUMER, attributes=attrs) as span:
            yield Run(span)

    def deliberation_ended(self, run: Run, rerun: bool) -> None:
        if self._mp is not None and run.outcome and not rerun:
            self._delib_duration.record(time.monotonic() - run.started, {"outcome": run.outcome})

    @contextlib.contextmanager
    def agent(self, agent_id: str, role: str, model: str) -> Iterator[Any]:
        if self._tp is None:
            yield None
            return
        attrs = {"agent.id": agent_id, "agent.role": role, "gen_ai.request.model": model}
        with self._span("agent", attributes=attrs) as span:
            yield span

    def agent_result(self, span: Any, status: str, error_type: str, attempts: int) -> None:
        if span is None:
            return
        span.set_attribute("agent.status", status)
        span.set_attribute("agent.attempts", attempts)
        if error_type:
            span.set_attribute("error.type", error_type)
            span.set_status(self._status(self._code.ERROR, error_type))

    @contextlib.contextmanager
    def llm_attempt(self, model: str, attempt: int, host: str, port: Optional[int]) -> Iterator[Attempt]:
        started = time.monotonic()
        a = Attempt()
        try:
            if self._tp is None:
                yield a
                return
            attrs: Dict[str, Any] = {"gen_ai.request.model": model, "llm.attempt": attempt,
                                     "http.request.method": "POST", "server.address": host}
            if port is not None:
                attrs["server.port"] = port
            with self._span("llm.chat", status_on_exception=False, kind=self._kind.CLIENT, attributes=attrs) as span:
                if span.get_span_context().is_valid:
                    carrier: Dict[str, str] = {}
                    self._propagator.inject(carrier)
                    a.traceparent = carrier.get("traceparent", "")
                try:
                    yield a
                finally:
                    if a.status:
                        span.set_attribute("http.response.status_code", a.status)
                    if a.error_type:
                        span.set_attribute("error.type", a.error_type)
                        span.set_status(self._status(self._code.ERROR, a.error_type))
        finally:
            if self._mp is not None:
                m = self._model_label(model)
                self._llm_duration.record(time.monotonic() - started, {"model": m, "outcome": "error" if a.error_type else "ok"})
                if a.error_type:
                    self._llm_errors.add(1, {"model": m, "error_type": a.error_type})

    def shutdown(self) -> None:
        """Exports what is left (spans, then the metrics' last collection) and stops."""
        for provider in (self._tp, self._mp):
            if provider is None:
                continue
            try:
                provider.force_flush(self._flush_ms)
                provider.shutdown()
            except Exception as exc:  # noqa: BLE001 - exiting anyway
                log.warning("telemetry: flush at shutdown failed: %s", type(exc).__name__)
        self._tp = self._mp = None


def _span_exporter(cfg: Config) -> Any:
    if cfg.protocol == GRPC:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GRPCSpanExporter

        return GRPCSpanExporter(endpoint=cfg.traces_endpoint, timeout=cfg.export_timeout_ms / 1000)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(endpoint=cfg.traces_endpoint, timeout=cfg.export_timeout_ms / 1000)


def _metric_exporter(cfg: Config) -> Any:
    if cfg.protocol == GRPC:
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GRPCMetricExporter

        return GRPCMetricExporter(endpoint=cfg.metrics_endpoint, timeout=cfg.export_timeout_ms / 1000)
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

    return OTLPMetricExporter(endpoint=cfg.metrics_endpoint, timeout=cfg.export_timeout_ms / 1000)


def setup(cfg: Config) -> Telemetry:
    """This process's telemetry for cfg: OFF without an endpoint, and OFF with a warning
    when the opentelemetry packages are missing or refuse the settings (never an error)."""
    if not cfg.enabled:
        return OFF
    try:
        t = _OTel(cfg)
    except ImportError as exc:
        log.warning("telemetry: an OTLP endpoint is set but the OpenTelemetry SDK or its %s exporter is not installed "
                    "on this node (%s): spans and metrics are off; the LLM requests carry the caller's traceparent",
                    cfg.protocol, exc.name or "import failed")
        return OFF
    except Exception as exc:  # noqa: BLE001 - tracing never stops the executor
        log.warning("telemetry: cannot set up OpenTelemetry (%s): spans and metrics are off", type(exc).__name__)
        return OFF
    log.info("telemetry: service %s exports%s%s over %s", cfg.service_name,
             " spans" if cfg.traces_endpoint else "", " metrics" if cfg.metrics_endpoint else "", cfg.protocol)
    return t
