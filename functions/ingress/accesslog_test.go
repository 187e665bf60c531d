package ingress

import (
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace/noop"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/fleet-ai/ray-executor/shared/domain"
	pb "github.com/fleet-ai/ray-executor/shared/gen/fleet/ray_executor/v1"
	"github.com/fleet-ai/ray-executor/shared/rpcevents"
	"github.com/fleet-ai/ray-executor/shared/testenv"
)

// accessLines are the access log's lines ("msg":"rpc") of a JSON log.
func accessLines(t *testing.T, out string) []map[string]any {
	t.Helper()
	var lines []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("not a JSON log line: %q", l)
		}
		if m["msg"] == "rpc" {
			lines = append(lines, m)
		}
	}
	return lines
}

// One line per RPC, with who, what, how it ended, how long, which deliberation and which
// trace; every refusal with its reason; never a token or a prompt.
func TestAccessLogLinePerRPC(t *testing.T) {
	var logs testenv.SyncBuffer
	caller := &fakeCaller{CallFn: func(_ context.Context, _ string, _ string, _ proto.Message, _ rpcevents.CallOptions, resp proto.Message) error {
		if r, ok := resp.(*pb.ExecuteDeliberationResponse); ok {
			r.DeliberationId = "delib-from-the-function"
		}
		return nil
	}}
	srv := &Server{Caller: caller, Logger: slog.New(slog.NewJSONHandler(&logs, nil))}
	addr := guarded(t, Config{Auth: AuthConfig{Tokens: mustTokens(t, testTokens), OpenHealth: true}}, srv)
	conn := connect(t, addr, nil)
	client := pb.NewRayExecutorServiceClient(conn)
	const tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

	if _, err := client.ExecuteDeliberation(context.Background(), &pb.ExecuteDeliberationRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("no token: %v", err)
	}
	ctx := metadata.AppendToOutgoingContext(withToken(writerToken), "traceparent", tp)
	if _, err := client.GetDeliberationStatus(ctx, &pb.GetDeliberationStatusRequest{DeliberationId: "delib-asked-for"}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.ExecuteDeliberation(withToken(writerToken), &pb.ExecuteDeliberationRequest{TaskDescription: "SECRET-PROMPT"}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.CancelDeliberation(withToken(readerToken), &pb.CancelDeliberationRequest{DeliberationId: "delib-x"}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("reader cancelling: %v", err)
	}
	if _, err := healthpb.NewHealthClient(conn).Check(context.Background(), &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatal(err)
	}

	out := logs.String()
	for _, secret := range []string{writerToken, readerToken, "SECRET-PROMPT"} {
		if strings.Contains(out, secret) {
			t.Errorf("the log holds %q:\n%s", secret, out)
		}
	}
	lines := accessLines(t, out)
	want := []struct{ method, caller, code, id, trace, reason string }{
		{"/fleet.ray_executor.v1.RayExecutorService/ExecuteDeliberation", "anonymous", "Unauthenticated", "", "", "bearer token is required"},
		{"/fleet.ray_executor.v1.RayExecutorService/GetDeliberationStatus", "writer", "OK", "delib-asked-for", "4bf92f3577b34da6a3ce929d0e0e4736", ""},
		{"/fleet.ray_executor.v1.RayExecutorService/ExecuteDeliberation", "writer", "OK", "delib-from-the-function", "", ""},
		{"/fleet.ray_executor.v1.RayExecutorService/CancelDeliberation", "reader", "PermissionDenied", "", "", "read access only"},
	}
	if len(lines) != len(want) {
		t.Fatalf("got %d access lines, want %d (health checks at debug level only):\n%s", len(lines), len(want), out)
	}
	str := func(m map[string]any, k string) string { s, _ := m[k].(string); return s }
	for i, w := range want {
		l := lines[i]
		if str(l, "method") != w.method || str(l, "caller") != w.caller || str(l, "code") != w.code ||
			str(l, "deliberation_id") != w.id || str(l, "trace_id") != w.trace || !strings.Contains(str(l, "reason"), w.reason) ||
			(w.reason == "") != (str(l, "reason") == "") {
			t.Errorf("line %d: got %v, want %+v", i, l, w)
		}
		if _, ok := l["duration_ms"].(float64); !ok || str(l, "peer") != "127.0.0.1" {
			t.Errorf("line %d: no duration or peer: %v", i, l)
		}
	}
	if lines[0]["level"] != "WARN" || lines[1]["level"] != "INFO" {
		t.Errorf("levels: refusal %v, success %v; want WARN and INFO", lines[0]["level"], lines[1]["level"])
	}
}

// A flood of calls without a credential is logged at a bounded rate, the next line saying
// how many were left out.
func TestAccessLogBoundsRefusalFloods(t *testing.T) {
	var logs testenv.SyncBuffer
	srv := &Server{Logger: slog.New(slog.NewJSONHandler(&logs, nil))}
	addr := guarded(t, Config{Auth: AuthConfig{Tokens: mustTokens(t, testTokens)}}, srv)
	client := pb.NewRayExecutorServiceClient(connect(t, addr, nil))
	const flood = 400
	for range flood {
		if _, err := client.GetActiveJobs(context.Background(), &pb.GetActiveJobsRequest{}); status.Code(err) != codes.Unauthenticated {
			t.Fatalf("got %v", err)
		}
	}
	lines := accessLines(t, logs.String())
	if len(lines) < tapRefusalsBurst || len(lines) >= flood/2 {
		t.Fatalf("%d refusals gave %d lines, want about %d (the burst) and far fewer than the refusals", flood, len(lines), tapRefusalsBurst)
	}
	// The bucket refills: a refusal a moment later is logged with the count of those left out.
	a := NewAccessLog(slog.New(slog.NewJSONHandler(&logs, nil)))
	for range tapRefusalsBurst + 10 {
		a.Refused(context.Background(), "/m", status.Error(codes.Unauthenticated, "no"))
	}
	a.tapLimit.SetBurst(tapRefusalsBurst) // tokens back now, not in a second: the test never sleeps
	a.tapLimit.SetLimit(1e9)
	a.Refused(context.Background(), "/m", status.Error(codes.Unauthenticated, "no"))
	all := accessLines(t, logs.String())
	if last := all[len(all)-1]; last["refusals_not_logged"] != float64(10) {
		t.Errorf("the line after the flood: %v, want refusals_not_logged 10", last)
	}
}

// Each RPC but a health check is a server span joined to the caller's traceparent, with the
// method, the canonical status code, and an error status for the codes that mean the server
// failed; the span's context is what the call carries on to the function.
func TestAccessLogServerSpans(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	prevProp := otel.GetTextMapPropagator()
	otel.SetTracerProvider(sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec)))
	otel.SetTextMapPropagator(propagation.TraceContext{})
	// Back to no SDK (the global provider, once set, cannot be unset): the other tests'
	// calls make no spans.
	t.Cleanup(func() { otel.SetTracerProvider(noop.NewTracerProvider()); otel.SetTextMapPropagator(prevProp) })

	var carried []string
	caller := &fakeCaller{CallFn: func(_ context.Context, _ string, ceType string, _ proto.Message, opts rpcevents.CallOptions, _ proto.Message) error {
		carried = append(carried, opts.Traceparent)
		if ceType == rpcevents.TypeCancelDeliberation {
			return domain.ErrUnavailable
		}
		return nil
	}}
	srv := &Server{Caller: caller, Logger: slog.New(slog.DiscardHandler)}
	addr := guarded(t, Config{Auth: AuthConfig{Tokens: mustTokens(t, testTokens), OpenHealth: true}}, srv)
	conn := connect(t, addr, nil)
	client := pb.NewRayExecutorServiceClient(conn)
	const trace, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	ctx := metadata.AppendToOutgoingContext(withToken(writerToken), "traceparent", "00-"+trace+"-"+parent+"-01")
	if _, err := client.GetDeliberationStatus(ctx, &pb.GetDeliberationStatusRequest{DeliberationId: "delib-1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.CancelDeliberation(withToken(writerToken), &pb.CancelDeliberationRequest{DeliberationId: "delib-2"}); status.Code(err) != codes.Unavailable {
		t.Fatalf("cancel: %v, want Unavailable", err)
	}
	if _, err := healthpb.NewHealthClient(conn).Check(context.Background(), &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatal(err)
	}
	ended := rec.Ended()
	if len(ended) != 2 {
		t.Fatalf("%d spans, want 2 (none for the health check)", len(ended))
	}
	attr := func(i int, k string) string {
		for _, kv := range ended[i].Attributes() {
			if string(kv.Key) == k {
				return kv.Value.String()
			}
		}
		return ""
	}
	status0, status1 := ended[0], ended[1]
	if status0.Name() != "fleet.ray_executor.v1.RayExecutorService/GetDeliberationStatus" || status0.SpanKind().String() != "server" ||
		status0.SpanContext().TraceID().String() != trace || status0.Parent().SpanID().String() != parent ||
		attr(0, "rpc.response.status_code") != "OK" || attr(0, "deliberation.id") != "delib-1" || status0.Status().Code.String() == "Error" {
		t.Errorf("status span: %s %v parent %v attrs %v status %v", status0.Name(), status0.SpanContext(), status0.Parent(), status0.Attributes(), status0.Status())
	}
	if status1.Parent().IsValid() || attr(1, "rpc.response.status_code") != "UNAVAILABLE" || status1.Status().Code.String() != "Error" {
		t.Errorf("cancel span: parent %v attrs %v status %v, want a new trace, UNAVAILABLE, an error", status1.Parent(), status1.Attributes(), status1.Status())
	}
	if len(carried) != 2 || carried[0] != "00-"+trace+"-"+status0.SpanContext().SpanID().String()+"-01" ||
		carried[1] != "00-"+status1.SpanContext().TraceID().String()+"-"+status1.SpanContext().SpanID().String()+"-01" {
		t.Errorf("traceparents carried on: %q, want the server spans'", carried)
	}
}
