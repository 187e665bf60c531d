package telemetry

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/fleet-ai/ray-executor/shared/config"
)

func read(env map[string]string) (Config, error) {
	r := config.NewReader(func(k string) string { return env[k] })
	c := Read(r, "ray-executor-test")
	return c, r.Err()
}

func TestRead(t *testing.T) {
	c, err := read(nil)
	if err != nil || c.TracesEndpoint != "" || c.MetricsEndpoint != "" || c.MetricsPort != 0 || c.ServiceName != "ray-executor-test" ||
		c.ExemplarFilter != "always_off" {
		t.Fatalf("nothing set: got %+v, %v; want no export and no port", c, err)
	}
	c, err = read(map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/", "OTEL_SERVICE_NAME": "mine",
		"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://other:4318/v1/metrics", "OTEL_EXPORTER_OTLP_HEADERS": "api-key=k1, x=y"})
	if err != nil || c.TracesEndpoint != "http://collector:4318/v1/traces" || c.MetricsEndpoint != "http://other:4318/v1/metrics" ||
		c.ServiceName != "mine" || c.Headers["api-key"] != "k1" || c.Headers["x"] != "y" {
		t.Errorf("http/protobuf: got %+v, %v", c, err)
	}
	c, err = read(map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
	if err != nil || c.TracesEndpoint != "http://collector:4317" {
		t.Errorf("grpc takes the base as it is: got %+v, %v", c, err)
	}
	_, err = read(map[string]string{"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json", "OTEL_METRIC_EXPORT_INTERVAL": "10",
		"METRICS_PORT": "70000", "OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318",
		"OTEL_EXPORTER_OTLP_HEADERS": "secret-key-0123456789", "OTEL_METRICS_EXEMPLAR_FILTER": "sometimes"})
	for _, want := range []string{"OTEL_EXPORTER_OTLP_PROTOCOL", `OTEL_METRICS_EXEMPLAR_FILTER="sometimes"`, "OTEL_METRIC_EXPORT_INTERVAL", "METRICS_PORT", "must be an http:// or https:// URL",
		"OTEL_EXPORTER_OTLP_HEADERS: entry 1 is not key=value"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("got %v, want it to name %q", err, want)
		}
	}
	if err != nil && strings.Contains(err.Error(), "secret-key-0123456789") {
		t.Errorf("a configuration error shows the headers' value: %v", err)
	}
}

// A measurement made inside a sampled span keeps no exemplar unless
// OTEL_METRICS_EXEMPLAR_FILTER asks for them.
func TestExemplarsOffUnlessAsked(t *testing.T) {
	tp := sdktrace.NewTracerProvider()
	ctx, span := tp.Tracer("t").Start(context.Background(), "sampled")
	defer span.End()
	for filter, want := range map[string]bool{"": false, "always_off": false, "trace_based": true} {
		rdr := sdkmetric.NewManualReader()
		h, err := sdkmetric.NewMeterProvider(sdkmetric.WithReader(rdr), exemplarOption(Config{ExemplarFilter: filter})).Meter("t").Float64Histogram("h")
		if err != nil {
			t.Fatal(err)
		}
		h.Record(ctx, 0.5)
		var rm metricdata.ResourceMetrics
		if err := rdr.Collect(context.Background(), &rm); err != nil {
			t.Fatal(err)
		}
		points := rm.ScopeMetrics[0].Metrics[0].Data.(metricdata.Histogram[float64]).DataPoints
		if got := len(points[0].Exemplars) > 0; got != want || points[0].Count != 1 {
			t.Errorf("filter %q: exemplar kept %v, want %v (count %d)", filter, got, want, points[0].Count)
		}
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// The metrics port serves what the process records, as Prometheus text.
func TestMetricsPort(t *testing.T) {
	port := freePort(t)
	tel, err := Setup(context.Background(), Config{ServiceName: "ray-executor-test", MetricsPort: port}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tel.Shutdown(context.Background()) })
	c, err := otel.Meter("test").Int64Counter("rex.test.things", metric.WithDescription("things"))
	if err != nil {
		t.Fatal(err)
	}
	c.Add(context.Background(), 3)
	resp, err := http.Get("http://" + tel.MetricsAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || !strings.Contains(string(body), `rex_test_things_total{service_name="ray-executor-test"} 3`) {
		t.Errorf("got %d:\n%s", resp.StatusCode, body)
	}
	if resp, err := http.Post("http://"+tel.MetricsAddr()+"/metrics", "text/plain", nil); err != nil || resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST /metrics: %v %v, want 405", resp, err)
	}
}

// spans records the spans of the global provider during a test.
func spans(t *testing.T) *tracetest.SpanRecorder {
	t.Helper()
	rec := tracetest.NewSpanRecorder()
	prev := otel.GetTracerProvider()
	otel.SetTracerProvider(sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec)))
	t.Cleanup(func() { otel.SetTracerProvider(prev) })
	_, _ = Setup(context.Background(), Config{Disabled: true}, slog.New(slog.DiscardHandler)) // the propagator
	otel.SetTracerProvider(sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec)))
	return rec
}

// A request continues the trace of its traceparent header, else of its CloudEvent's
// ce-traceparent; Traceparent is the server span's; a publish carries its own span on.
func TestHTTPHandlerJoinsTheCallersTrace(t *testing.T) {
	rec := spans(t)
	var inside string
	var header http.Header = http.Header{}
	h := HTTPHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		inside = Traceparent(r.Context())
		StartPublish(r.Context(), "ray_executor.work", header)(nil)
	}), "execute")
	srv := httptest.NewServer(h)
	defer srv.Close()
	const trace = "4bf92f3577b34da6a3ce929d0e0e4736"
	for _, name := range []string{"traceparent", "ce-traceparent"} {
		before := len(rec.Ended())
		req, _ := http.NewRequest(http.MethodPost, srv.URL, nil)
		req.Header.Set(name, "00-"+trace+"-00f067aa0ba902b7-01")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		var ended []sdktrace.ReadOnlySpan
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
			if ended = rec.Ended(); len(ended) >= before+2 || time.Now().After(deadline) {
				break
			}
		}
		if len(ended) < before+2 {
			t.Fatalf("%s: %d spans ended, want the server's and the publish's", name, len(ended))
		}
		server, publish := ended[len(ended)-1], ended[len(ended)-2]
		if server.SpanContext().TraceID().String() != trace || server.Parent().SpanID().String() != "00f067aa0ba902b7" {
			t.Errorf("%s: the server span is %v with parent %v, want it in trace %s", name, server.SpanContext(), server.Parent(), trace)
		}
		if inside != "00-"+trace+"-"+server.SpanContext().SpanID().String()+"-01" {
			t.Errorf("%s: Traceparent inside the request %q, want the server span's", name, inside)
		}
		if publish.Name() != "publish ray_executor.work" || publish.Parent().SpanID() != server.SpanContext().SpanID() ||
			header.Get("traceparent") != "00-"+trace+"-"+publish.SpanContext().SpanID().String()+"-01" {
			t.Errorf("%s: publish span %s (parent %v), header %q", name, publish.Name(), publish.Parent(), header.Get("traceparent"))
		}
	}
	if Traceparent(context.Background()) != "" {
		t.Error("a context without a span has a traceparent")
	}
}

// Each request is a server span with its method and status code (an error from 500 on),
// and its duration is counted by method (bounded: "_OTHER" for any other) and code.
func TestHTTPHandlerSpansAndDurations(t *testing.T) {
	port := freePort(t)
	tel, err := Setup(context.Background(), Config{ServiceName: "ray-executor-test", MetricsPort: port}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tel.Shutdown(context.Background()) })
	rec := tracetest.NewSpanRecorder()
	prev := otel.GetTracerProvider()
	otel.SetTracerProvider(sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec)))
	t.Cleanup(func() { otel.SetTracerProvider(prev) })

	h := HTTPHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/fail":
			http.Error(w, "down", http.StatusServiceUnavailable)
		case "/created":
			w.WriteHeader(http.StatusCreated)
			w.WriteHeader(http.StatusOK) // ignored by net/http, and here
		case "/nothing":
		}
	}), "status")
	srv := httptest.NewServer(h)
	defer srv.Close()
	for _, c := range []struct{ method, path string }{{"POST", "/fail"}, {"POST", "/created"}, {"BREW", "/created"}, {"GET", "/nothing"}} {
		req, _ := http.NewRequest(c.method, srv.URL+c.path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	want := []struct {
		method string
		code   int64
		failed bool
	}{{"POST", 503, true}, {"POST", 201, false}, {"_OTHER", 201, false}, {"GET", 200, false}}
	ended := rec.Ended()
	if len(ended) != len(want) {
		t.Fatalf("%d spans ended, want %d", len(ended), len(want))
	}
	for i, sp := range ended {
		attrs := map[string]any{}
		for _, kv := range sp.Attributes() {
			attrs[string(kv.Key)] = kv.Value.AsInterface()
		}
		if sp.Name() != "status" || sp.SpanKind().String() != "server" || attrs["http.request.method"] != want[i].method ||
			attrs["http.response.status_code"] != want[i].code || (sp.Status().Code.String() == "Error") != want[i].failed {
			t.Errorf("span %d: %s %s %v %v, want %+v", i, sp.Name(), sp.SpanKind(), attrs, sp.Status(), want[i])
		}
	}
	resp, err := http.Get("http://" + tel.MetricsAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, w := range []string{`http_request_method="POST",http_response_status_code="503"`, `http_request_method="POST",http_response_status_code="201"`,
		`http_request_method="_OTHER",http_response_status_code="201"`, `http_request_method="GET",http_response_status_code="200"`} {
		found := false
		for _, line := range strings.Split(string(body), "\n") {
			found = found || (strings.HasPrefix(line, "http_server_request_duration_seconds_count{") && strings.Contains(line, w) && strings.HasSuffix(line, " 1"))
		}
		if !found {
			t.Errorf("no count of 1 for %s in:\n%s", w, body)
		}
	}
}

// The attribute sets kept are bounded; past the bound the name is "_OTHER".
func TestAttributeSetsBounded(t *testing.T) {
	s := &AttributeSets{NameKey: "rpc.method", CodeKey: "rpc.response.status_code"}
	for i := 0; i < MaxAttributeSets+10; i++ {
		set := s.GetString(fmt.Sprintf("m%d", i), "OK")
		v, _ := set.Value("rpc.method")
		if want := fmt.Sprintf("m%d", i); i >= MaxAttributeSets {
			want = "_OTHER"
			if v.AsString() != want {
				t.Fatalf("set %d: method %q, want %q", i, v.AsString(), want)
			}
		} else if v.AsString() != want {
			t.Fatalf("set %d: method %q, want %q", i, v.AsString(), want)
		}
	}
	kept := s.GetString("m3", "OK")
	if v, _ := kept.Value("rpc.method"); v.AsString() != "m3" {
		t.Errorf("a kept set changed: %q", v.AsString())
	}
}
