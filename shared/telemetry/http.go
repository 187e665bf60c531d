package telemetry

import (
	"context"
	"net/http"
	"strconv"
	"sync"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// DurationBuckets are the histogram bounds (seconds) of the request-duration metrics: the
// OpenTelemetry semantic conventions' for HTTP and RPC server durations.
var DurationBuckets = []float64{0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10}

// DurationHistogram is the request-duration histogram named name (seconds, DurationBuckets)
// of the global meter provider: call it after Setup.
func DurationHistogram(name, description string) metric.Float64Histogram {
	h, err := otel.Meter("github.com/fleet-ai/ray-executor/shared/telemetry").Float64Histogram(name,
		metric.WithUnit("s"), metric.WithDescription(description), metric.WithExplicitBucketBoundaries(DurationBuckets...))
	if err != nil {
		otel.Handle(err)
	}
	return h
}

// HTTPHandler wraps h so that each request is a server span named name, joined to the
// trace its traceparent header names, and its duration is recorded in
// http.server.request.duration by http.request.method and http.response.status_code (the
// semantic conventions' names; a method outside HTTP's own is "_OTHER"). Probes never reach
// it (shared/serving answers them first). Wrap after Setup.
// A binary-mode CloudEvent without a W3C traceparent header continues the trace its
// CloudEvents distributed-tracing extension (ce-traceparent) names.
//
// It is not otelhttp's handler: that computes a dozen attributes and three histograms per
// request, for which the chain paid in throughput (BENCHMARKS.md "Tracing and metrics on
// the chain"); this records what the dashboard and the traces use and no more.
func HTTPHandler(h http.Handler, name string) http.Handler {
	duration := DurationHistogram("http.server.request.duration", "duration of the requests a function served")
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		if r.Header.Get("traceparent") == "" {
			if tp := r.Header.Get("ce-traceparent"); tp != "" {
				r.Header.Set("traceparent", tp)
			}
		}
		method := httpMethod(r.Method)
		ctx, span := StartServer(r.Context(), name, propagation.HeaderCarrier(r.Header), attribute.String("http.request.method", method))
		sw := &statusWriter{ResponseWriter: w}
		defer func() {
			code := sw.code
			if code == 0 {
				code = http.StatusOK
			}
			if span.IsRecording() {
				span.SetAttributes(attribute.Int("http.response.status_code", code))
				if code >= 500 {
					span.SetStatus(codes.Error, strconv.Itoa(code))
				}
				span.End()
			}
			duration.Record(ctx, time.Since(start).Seconds(), metric.WithAttributeSet(httpSets.get(method, code)))
		}()
		h.ServeHTTP(sw, r.WithContext(ctx))
	})
}

// httpMethod bounds the method label to HTTP's own methods.
func httpMethod(m string) string {
	switch m {
	case http.MethodGet, http.MethodPost, http.MethodPut, http.MethodDelete, http.MethodHead,
		http.MethodOptions, http.MethodPatch, http.MethodConnect, http.MethodTrace:
		return m
	}
	return "_OTHER"
}

// statusWriter remembers the status code written.
type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the connection's writer (Flush, deadlines).
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// AttributeSets caches the attribute set of each (name, code) pair a duration metric is
// recorded with, so that a request does not build and sort one; both are bounded by their
// callers (methods, status codes), and past MaxAttributeSets pairs the name is "_OTHER".
type AttributeSets struct {
	NameKey, CodeKey attribute.Key
	m                sync.Map // attrKey → attribute.Set
	n                int
	mu               sync.Mutex
}

// MaxAttributeSets bounds the pairs an AttributeSets keeps.
const MaxAttributeSets = 512

type attrKey struct {
	name string
	code any
}

var httpSets = &AttributeSets{NameKey: "http.request.method", CodeKey: "http.response.status_code"}

func (s *AttributeSets) get(name string, code int) attribute.Set {
	return s.set(attrKey{name, code}, func(name string) attribute.Set {
		return attribute.NewSet(s.NameKey.String(name), s.CodeKey.Int(code))
	})
}

// GetString is the set of name with a string code (a gRPC status, for example).
func (s *AttributeSets) GetString(name, code string) attribute.Set {
	return s.set(attrKey{name, code}, func(name string) attribute.Set {
		return attribute.NewSet(s.NameKey.String(name), s.CodeKey.String(code))
	})
}

func (s *AttributeSets) set(k attrKey, build func(name string) attribute.Set) attribute.Set {
	if v, ok := s.m.Load(k); ok {
		return v.(attribute.Set)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.n >= MaxAttributeSets {
		return build("_OTHER")
	}
	v, loaded := s.m.LoadOrStore(k, build(k.name))
	if !loaded {
		s.n++
	}
	return v.(attribute.Set)
}

// HTTPTransport wraps rt so that each request is a client span whose context goes out in
// the traceparent header. It records no metrics: otelhttp's client histograms
// (http.client.request.duration, .body.size) would repeat, without the call's name, what
// the caller records itself (the Ray client: rex.ray.request.duration by call and outcome).
func HTTPTransport(rt http.RoundTripper) http.RoundTripper {
	if rt == nil {
		rt = http.DefaultTransport
	}
	return otelhttp.NewTransport(rt, otelhttp.WithMeterProvider(metricnoop.NewMeterProvider()))
}

// StartServer starts a server span named name joined to the trace carrier names (the
// incoming request's headers or metadata).
func StartServer(ctx context.Context, name string, carrier propagation.TextMapCarrier, attrs ...attribute.KeyValue) (context.Context, trace.Span) {
	ctx = otel.GetTextMapPropagator().Extract(ctx, carrier)
	return tracer().Start(ctx, name, trace.WithSpanKind(trace.SpanKindServer), trace.WithAttributes(attrs...))
}
