// Package telemetry sets up OpenTelemetry for a binary: traces and metrics exported over
// OTLP when an endpoint is configured (the standard OTEL_* variables), and metrics served
// as Prometheus text on the process's admin port (METRICS_PORT) either way.
//
// It installs the global TracerProvider, MeterProvider and the W3C trace-context
// propagator, so every package instruments itself with otel.Tracer / otel.Meter and needs
// no wiring. Without an endpoint no span is recorded and nothing is sent anywhere.
package telemetry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetricgrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetrichttp"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/exemplar"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"knative.dev/pkg/changeset"

	"github.com/fleet-ai/ray-executor/shared/config"
)

// Config is what the OTEL_* variables and METRICS_PORT say.
type Config struct {
	// ServiceName (OTEL_SERVICE_NAME; default the binary's, e.g. ray-executor-execute).
	ServiceName string
	// TracesEndpoint and MetricsEndpoint are the OTLP URLs (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
	// OTEL_EXPORTER_OTLP_METRICS_ENDPOINT, else OTEL_EXPORTER_OTLP_ENDPOINT with the
	// signal's path). Empty: that signal is not exported.
	TracesEndpoint, MetricsEndpoint string
	// Protocol (OTEL_EXPORTER_OTLP_PROTOCOL): "http/protobuf" (the default) or "grpc".
	Protocol string
	// Headers (OTEL_EXPORTER_OTLP_HEADERS, a secret: it may carry a collector's API key;
	// also from OTEL_EXPORTER_OTLP_HEADERS_FILE), sent with every export.
	Headers map[string]string
	// ExportInterval (OTEL_METRIC_EXPORT_INTERVAL, milliseconds; default 60000).
	ExportInterval time.Duration
	// MetricsPort (METRICS_PORT) serves GET /metrics as Prometheus text; 0 turns it off.
	MetricsPort int
	// ExemplarFilter (OTEL_METRICS_EXEMPLAR_FILTER): which measurements keep an exemplar (a
	// sampled trace's ids beside a metric point). always_off here by default, not the SDK's
	// trace_based: an exemplar costs every measurement made inside a sampled span (six per
	// traced request on the gRPC -> status chain), the Prometheus text of the metrics port
	// cannot carry them, and nothing of ours reads them (BENCHMARKS.md "Tracing and metrics
	// on the chain"). trace_based or always_on to export them over OTLP.
	ExemplarFilter string
	// Disabled (OTEL_SDK_DISABLED=true) turns everything off.
	Disabled bool
}

// Read reads the configuration; service is the default service name.
func Read(r *config.Reader, service string) Config {
	base := strings.TrimRight(r.String("OTEL_EXPORTER_OTLP_ENDPOINT", ""), "/")
	c := Config{
		ServiceName:     r.String("OTEL_SERVICE_NAME", service),
		TracesEndpoint:  r.String("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", ""),
		MetricsEndpoint: r.String("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", ""),
		Protocol:        r.String("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
		ExportInterval:  time.Duration(r.Int("OTEL_METRIC_EXPORT_INTERVAL", 60000)) * time.Millisecond,
		MetricsPort:     r.Int("METRICS_PORT", 0),
		ExemplarFilter:  r.String("OTEL_METRICS_EXEMPLAR_FILTER", "always_off"),
		Disabled:        r.Bool("OTEL_SDK_DISABLED", false),
	}
	if base != "" {
		if c.TracesEndpoint == "" {
			c.TracesEndpoint = signalURL(base, c.Protocol, "/v1/traces")
		}
		if c.MetricsEndpoint == "" {
			c.MetricsEndpoint = signalURL(base, c.Protocol, "/v1/metrics")
		}
	}
	headers, err := parseHeaders(r.Secret("OTEL_EXPORTER_OTLP_HEADERS"))
	if err != nil {
		r.Fail("OTEL_EXPORTER_OTLP_HEADERS: %v", err) // never the value: it may hold a key
	}
	c.Headers = headers
	if c.Protocol != "http/protobuf" && c.Protocol != "grpc" {
		r.Fail("OTEL_EXPORTER_OTLP_PROTOCOL=%q: this build exports over http/protobuf or grpc", c.Protocol)
	}
	if _, ok := exemplarFilters[c.ExemplarFilter]; !ok {
		r.Fail("OTEL_METRICS_EXEMPLAR_FILTER=%q: want always_off, trace_based or always_on", c.ExemplarFilter)
	}
	if c.ExportInterval < 100*time.Millisecond {
		r.Fail("OTEL_METRIC_EXPORT_INTERVAL must be at least 100 (milliseconds)")
	}
	if c.MetricsPort < 0 || c.MetricsPort > 65535 {
		r.Fail("METRICS_PORT must be a port number, or 0 for none")
	}
	for name, u := range map[string]string{"traces": c.TracesEndpoint, "metrics": c.MetricsEndpoint} {
		if u != "" && !strings.HasPrefix(u, "http://") && !strings.HasPrefix(u, "https://") {
			r.Fail("the OTLP %s endpoint %q must be an http:// or https:// URL", name, u)
		}
	}
	return c
}

// exemplarFilters are OTEL_METRICS_EXEMPLAR_FILTER's values.
var exemplarFilters = map[string]exemplar.Filter{
	"always_off": exemplar.AlwaysOffFilter, "trace_based": exemplar.TraceBasedFilter, "always_on": exemplar.AlwaysOnFilter,
}

// exemplarOption is the meter provider's exemplar filter: always_off unless cfg names another.
func exemplarOption(cfg Config) sdkmetric.Option {
	filter, ok := exemplarFilters[cfg.ExemplarFilter]
	if !ok {
		filter = exemplar.AlwaysOffFilter
	}
	return sdkmetric.WithExemplarFilter(filter)
}

// signalURL is the endpoint of one signal under the base OTEL_EXPORTER_OTLP_ENDPOINT: the
// spec appends /v1/<signal> for HTTP; gRPC takes the base as it is.
func signalURL(base, protocol, path string) string {
	if protocol == "grpc" {
		return base
	}
	return base + path
}

// parseHeaders reads "k1=v1,k2=v2" (values percent-decoded is not needed for API keys).
func parseHeaders(s string) (map[string]string, error) {
	out := map[string]string{}
	for i, kv := range strings.Split(s, ",") {
		if strings.TrimSpace(kv) == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		if !ok || strings.TrimSpace(k) == "" {
			return nil, fmt.Errorf("entry %d is not key=value", i+1)
		}
		out[strings.TrimSpace(k)] = strings.TrimSpace(v)
	}
	return out, nil
}

// Telemetry is a binary's running setup.
type Telemetry struct {
	cfg      Config
	logger   *slog.Logger
	tracer   *sdktrace.TracerProvider // nil without a traces endpoint
	meter    *sdkmetric.MeterProvider
	registry *prometheus.Registry
	server   *http.Server
}

// Setup installs the global providers and the propagator, and starts the metrics port.
func Setup(ctx context.Context, cfg Config, logger *slog.Logger) (*Telemetry, error) {
	otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}))
	t := &Telemetry{cfg: cfg, logger: logger, registry: prometheus.NewRegistry()}
	if cfg.Disabled {
		otel.SetTracerProvider(noop.NewTracerProvider())
		return t, nil
	}
	res, err := resource.Merge(resource.Default(), resource.NewSchemaless(
		attribute.String("service.name", cfg.ServiceName), attribute.String("service.version", changeset.Get())))
	if err != nil {
		res = resource.Default()
	}
	// service_name on every series, so that one dashboard tells the binaries apart whatever
	// the scrape configuration names its jobs.
	prom, err := otelprom.New(otelprom.WithRegisterer(t.registry), otelprom.WithoutScopeInfo(),
		otelprom.WithResourceAsConstantLabels(attribute.NewAllowKeysFilter("service.name")))
	if err != nil {
		return nil, fmt.Errorf("telemetry: prometheus exporter: %w", err)
	}
	mopts := []sdkmetric.Option{sdkmetric.WithResource(res), sdkmetric.WithReader(prom), exemplarOption(cfg)}
	if cfg.MetricsEndpoint != "" {
		exp, err := metricExporter(ctx, cfg)
		if err != nil {
			return nil, err
		}
		mopts = append(mopts, sdkmetric.WithReader(sdkmetric.NewPeriodicReader(exp, sdkmetric.WithInterval(cfg.ExportInterval))))
	}
	t.meter = sdkmetric.NewMeterProvider(mopts...)
	otel.SetMeterProvider(t.meter)
	if cfg.TracesEndpoint != "" {
		exp, err := traceExporter(ctx, cfg)
		if err != nil {
			return nil, err
		}
		t.tracer = sdktrace.NewTracerProvider(sdktrace.WithResource(res), sdktrace.WithBatcher(exp))
		otel.SetTracerProvider(t.tracer)
	} else {
		otel.SetTracerProvider(noop.NewTracerProvider())
	}
	otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) {
		logger.Warn("telemetry: export failed", "error", err.Error())
	}))
	if cfg.MetricsPort > 0 {
		if err := t.serveMetrics(); err != nil {
			return nil, err
		}
	}
	logger.Info("telemetry", "service", cfg.ServiceName, "traces", cfg.TracesEndpoint != "",
		"metrics_otlp", cfg.MetricsEndpoint != "", "metrics_port", cfg.MetricsPort)
	return t, nil
}

func traceExporter(ctx context.Context, cfg Config) (sdktrace.SpanExporter, error) {
	if cfg.Protocol == "grpc" {
		return otlptracegrpc.New(ctx, otlptracegrpc.WithEndpointURL(cfg.TracesEndpoint), otlptracegrpc.WithHeaders(cfg.Headers))
	}
	return otlptracehttp.New(ctx, otlptracehttp.WithEndpointURL(cfg.TracesEndpoint), otlptracehttp.WithHeaders(cfg.Headers))
}

func metricExporter(ctx context.Context, cfg Config) (sdkmetric.Exporter, error) {
	if cfg.Protocol == "grpc" {
		return otlpmetricgrpc.New(ctx, otlpmetricgrpc.WithEndpointURL(cfg.MetricsEndpoint), otlpmetricgrpc.WithHeaders(cfg.Headers))
	}
	return otlpmetrichttp.New(ctx, otlpmetrichttp.WithEndpointURL(cfg.MetricsEndpoint), otlpmetrichttp.WithHeaders(cfg.Headers))
}

// MetricsHandler serves the metrics as Prometheus text.
func (t *Telemetry) MetricsHandler() http.Handler {
	return promhttp.HandlerFor(t.registry, promhttp.HandlerOpts{})
}

// MetricsAddr is where the metrics port listens ("" when it does not).
func (t *Telemetry) MetricsAddr() string {
	if t.server == nil {
		return ""
	}
	return t.server.Addr
}

func (t *Telemetry) serveMetrics() error {
	ln, err := net.Listen("tcp", net.JoinHostPort("", strconv.Itoa(t.cfg.MetricsPort)))
	if err != nil {
		return fmt.Errorf("telemetry: METRICS_PORT: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", t.MetricsHandler())
	t.server = &http.Server{Addr: ln.Addr().String(), Handler: mux, ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout: 10 * time.Second, WriteTimeout: 30 * time.Second, MaxHeaderBytes: 16 << 10}
	go func() {
		if err := t.server.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			t.logger.Error("telemetry: metrics port stopped", "error", err.Error())
		}
	}()
	return nil
}

// Shutdown flushes what is buffered (within ctx) and stops the metrics port.
func (t *Telemetry) Shutdown(ctx context.Context) {
	if t.server != nil {
		_ = t.server.Shutdown(ctx)
	}
	if t.tracer != nil {
		if err := t.tracer.Shutdown(ctx); err != nil {
			t.logger.Warn("telemetry: flushing spans", "error", err.Error())
		}
	}
	if t.meter != nil {
		if err := t.meter.Shutdown(ctx); err != nil {
			t.logger.Warn("telemetry: flushing metrics", "error", err.Error())
		}
	}
}

// tracer makes the spans this module starts itself (from the provider Setup installed).
func tracer() trace.Tracer { return otel.Tracer("github.com/fleet-ai/ray-executor") }

// Traceparent is the W3C traceparent of the span in ctx ("" when there is none): what a
// request event, a record and a work message carry on, so that the next hop's spans join
// this trace. Without an exporter the span in ctx is the caller's, passed through.
func Traceparent(ctx context.Context) string {
	sc := trace.SpanContextFromContext(ctx)
	if !sc.IsValid() {
		return ""
	}
	return "00-" + sc.TraceID().String() + "-" + sc.SpanID().String() + "-" + sc.TraceFlags().String()
}

// StartPublish starts a producer span named "publish <destination>" (a bounded name such
// as "ray_executor.work", never an id) and puts its context into the NATS message's
// headers; end records the publish's error, if any, and ends the span.
func StartPublish(ctx context.Context, destination string, header map[string][]string, attrs ...attribute.KeyValue) (end func(error)) {
	ctx, span := tracer().Start(ctx, "publish "+destination, trace.WithSpanKind(trace.SpanKindProducer),
		trace.WithAttributes(append(attrs, attribute.String("messaging.system", "nats"),
			attribute.String("messaging.destination.name", destination))...))
	otel.GetTextMapPropagator().Inject(ctx, propagation.HeaderCarrier(header))
	return func(err error) {
		if err != nil {
			span.RecordError(err)
			span.SetStatus(codes.Error, "publish failed")
		}
		span.End()
	}
}

// Annotate sets attributes on the span in ctx (the RPC's or request's server span): the
// deliberation id, task id, caller and outcome, never a request's text.
func Annotate(ctx context.Context, attrs ...attribute.KeyValue) {
	trace.SpanFromContext(ctx).SetAttributes(attrs...)
}
