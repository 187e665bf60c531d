package testenv

import (
	"context"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetrichttp"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// The sink receives what the OpenTelemetry Go SDK's own OTLP exporters send over HTTP and
// gRPC, and gives back each span (IDs, parent, kind, status, attributes, service.name) and
// each metric point (a counter's value, a histogram's count and sum).
func TestOTLPSinkReceivesSpansAndMetrics(t *testing.T) {
	sink := StartOTLPSink(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// Spans over OTLP/HTTP: a server span with a client child.
	httpExp, err := otlptracehttp.New(ctx, otlptracehttp.WithEndpointURL(sink.HTTPEndpoint()+"/v1/traces"))
	if err != nil {
		t.Fatal(err)
	}
	res := resource.NewSchemaless(attribute.String("service.name", "sink-test-http"))
	tpHTTP := sdktrace.NewTracerProvider(sdktrace.WithSyncer(httpExp), sdktrace.WithResource(res))
	tr := tpHTTP.Tracer("testenv")
	pctx, parent := tr.Start(ctx, "parent", trace.WithSpanKind(trace.SpanKindServer),
		trace.WithAttributes(attribute.String("deliberation.id", "d-1"), attribute.Int("attempt", 2), attribute.Bool("ok", true)))
	_, child := tr.Start(pctx, "child", trace.WithSpanKind(trace.SpanKindClient))
	child.SetStatus(codes.Error, "upstream said no")
	child.End()
	parent.End()
	if err := tpHTTP.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}

	// A span over OTLP/gRPC.
	grpcExp, err := otlptracegrpc.New(ctx, otlptracegrpc.WithEndpointURL(sink.GRPCEndpoint()))
	if err != nil {
		t.Fatal(err)
	}
	tpGRPC := sdktrace.NewTracerProvider(sdktrace.WithSyncer(grpcExp),
		sdktrace.WithResource(resource.NewSchemaless(attribute.String("service.name", "sink-test-grpc"))))
	_, viaGRPC := tpGRPC.Tracer("testenv").Start(ctx, "over-grpc")
	viaGRPC.End()
	if err := tpGRPC.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}

	spans := sink.WaitSpans(t, func(s []Span) bool { return len(s) >= 3 }, 10*time.Second)
	byName := map[string]Span{}
	for _, s := range spans {
		byName[s.Name] = s
	}
	p, c, g := byName["parent"], byName["child"], byName["over-grpc"]
	if p.TraceID != parent.SpanContext().TraceID().String() || p.SpanID != parent.SpanContext().SpanID().String() || p.ParentSpanID != "" {
		t.Errorf("parent span: %+v, want trace %s span %s and no parent", p, parent.SpanContext().TraceID(), parent.SpanContext().SpanID())
	}
	if c.TraceID != p.TraceID || c.ParentSpanID != p.SpanID || c.SpanID != child.SpanContext().SpanID().String() {
		t.Errorf("child span %+v is not the parent's child (%s/%s)", c, p.TraceID, p.SpanID)
	}
	if p.Kind != "Server" || c.Kind != "Client" || c.StatusCode != "Error" || c.StatusMessage != "upstream said no" || p.StatusCode != "Unset" {
		t.Errorf("kinds/status: parent %s %s, child %s %s %q", p.Kind, p.StatusCode, c.Kind, c.StatusCode, c.StatusMessage)
	}
	if p.ServiceName != "sink-test-http" || g.ServiceName != "sink-test-grpc" || p.Scope != "testenv" {
		t.Errorf("service names %q %q, scope %q", p.ServiceName, g.ServiceName, p.Scope)
	}
	if p.Attributes["deliberation.id"] != "d-1" || p.Attributes["attempt"] != "2" || p.Attributes["ok"] != "true" {
		t.Errorf("parent attributes %v", p.Attributes)
	}
	if p.StartUnixNano == 0 || p.EndUnixNano < p.StartUnixNano {
		t.Errorf("parent times %d..%d", p.StartUnixNano, p.EndUnixNano)
	}
	if got := sink.SpansOfTrace(p.TraceID); len(got) != 2 {
		t.Errorf("SpansOfTrace(%s) = %d spans, want 2", p.TraceID, len(got))
	}

	// Metrics over OTLP/HTTP: a counter and a histogram.
	mexp, err := otlpmetrichttp.New(ctx, otlpmetrichttp.WithEndpointURL(sink.HTTPEndpoint()+"/v1/metrics"))
	if err != nil {
		t.Fatal(err)
	}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewPeriodicReader(mexp)),
		sdkmetric.WithResource(resource.NewSchemaless(attribute.String("service.name", "sink-test-metrics"))))
	meter := mp.Meter("testenv")
	counter, err := meter.Int64Counter("test.errors")
	if err != nil {
		t.Fatal(err)
	}
	hist, err := meter.Float64Histogram("test.latency", metric.WithUnit("s"))
	if err != nil {
		t.Fatal(err)
	}
	counter.Add(ctx, 3, metric.WithAttributes(attribute.String("error_type", "timeout")))
	hist.Record(ctx, 0.25, metric.WithAttributes(attribute.String("model", "m")))
	hist.Record(ctx, 0.75, metric.WithAttributes(attribute.String("model", "m")))
	if err := mp.Shutdown(ctx); err != nil { // Shutdown exports what was recorded
		t.Fatal(err)
	}
	points := sink.WaitMetrics(t, func(m []MetricPoint) bool { return len(m) >= 2 }, 10*time.Second)
	var sawCounter, sawHist bool
	for _, pt := range points {
		switch pt.Name {
		case "test.errors":
			sawCounter = true
			if pt.Type != "Sum" || !pt.Monotonic || pt.Value == nil || *pt.Value != 3 || pt.Attributes["error_type"] != "timeout" || pt.ServiceName != "sink-test-metrics" {
				t.Errorf("counter point %+v", pt)
			}
		case "test.latency":
			sawHist = true
			if pt.Type != "Histogram" || pt.Count == nil || *pt.Count != 2 || pt.Sum == nil || *pt.Sum != 1 || pt.Unit != "s" || pt.Attributes["model"] != "m" || len(pt.BucketCounts) == 0 {
				t.Errorf("histogram point %+v", pt)
			}
		}
	}
	if !sawCounter || !sawHist {
		t.Errorf("metric points %+v: want test.errors and test.latency", points)
	}
}
