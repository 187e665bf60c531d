package ingress

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/proto"

	"github.com/fleet-ai/ray-executor/shared/domain"
	pb "github.com/fleet-ai/ray-executor/shared/gen/fleet/ray_executor/v1"
	"github.com/fleet-ai/ray-executor/shared/rpcevents"
	"github.com/fleet-ai/ray-executor/shared/serving"
)

// fakeCaller is a hand-written fake of the function transport.
type fakeCaller struct {
	CallFn func(ctx context.Context, url, ceType string, req proto.Message, opts rpcevents.CallOptions, resp proto.Message) error
}

func (f *fakeCaller) Call(ctx context.Context, url, ceType string, req proto.Message, opts rpcevents.CallOptions, resp proto.Message) error {
	return f.CallFn(ctx, url, ceType, req, opts, resp)
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// dial serves srv over bufconn (a real gRPC transport, in memory) and returns a client.
func dial(t *testing.T, srv *Server) (pb.RayExecutorServiceClient, healthpb.HealthClient) {
	t.Helper()
	if srv.Health == nil {
		srv.Health = &Health{HTTP: http.DefaultClient}
	}
	if srv.Logger == nil {
		srv.Logger = quiet
	}
	ln := bufconn.Listen(1 << 20)
	gs := NewGRPCServer(srv, Config{MaxMessageBytes: 1 << 20, Reflection: true})
	go func() { _ = gs.Serve(ln) }()
	t.Cleanup(gs.Stop)
	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return ln.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return pb.NewRayExecutorServiceClient(conn), healthpb.NewHealthClient(conn)
}

func TestErrorMapping(t *testing.T) {
	cases := []struct {
		name    string
		err     error
		code    codes.Code
		message string
	}{
		{"invalid", &rpcevents.StatusError{HTTPStatus: 400, Message: "invalid request: task_id is required"}, codes.InvalidArgument, "task_id is required"},
		{"invalid sentinel", fmt.Errorf("x: %w", domain.ErrInvalid), codes.InvalidArgument, "x"},
		{"not found", fmt.Errorf("cancel d1: %w", domain.ErrNotFound), codes.NotFound, "cancel d1"},
		{"conflict", fmt.Errorf("key reused: %w", domain.ErrConflict), codes.AlreadyExists, "key reused"},
		{"function unavailable", fmt.Errorf("http://execute unreachable: %w", domain.ErrUnavailable), codes.Unavailable, "unreachable"},
		{"Ray refuses gateway token", fmt.Errorf("ray: %w", domain.ErrUnauthenticated), codes.Unavailable, "ray"},
		{"function over a limit", fmt.Errorf("execute: too many at once: %w", domain.ErrResourceExhausted), codes.ResourceExhausted, "too many at once"},
		{"function 429", &rpcevents.StatusError{HTTPStatus: 429, Message: "over the limit"}, codes.ResourceExhausted, "over the limit"},
		{"permission denied", fmt.Errorf("not yours: %w", domain.ErrPermissionDenied), codes.PermissionDenied, "not yours"},
		{"deadline", fmt.Errorf("x: %w", domain.ErrDeadline), codes.DeadlineExceeded, "deadline"},
		{"context deadline", context.DeadlineExceeded, codes.DeadlineExceeded, "deadline"},
		{"cancelled", context.Canceled, codes.Canceled, "cancelled"},
		{"unrecognised", errors.New("secret detail: db password xyz"), codes.Internal, "internal error"},
		{"function 500", &rpcevents.StatusError{HTTPStatus: 500, Message: "internal error"}, codes.Internal, "internal error"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			client, _ := dial(t, &Server{Caller: &fakeCaller{CallFn: func(context.Context, string, string, proto.Message, rpcevents.CallOptions, proto.Message) error {
				return tc.err
			}}})
			_, err := client.CancelDeliberation(context.Background(), &pb.CancelDeliberationRequest{DeliberationId: "d1"})
			st := status.Convert(err)
			if st.Code() != tc.code || !strings.Contains(st.Message(), tc.message) {
				t.Errorf("got %s %q, want %s containing %q", st.Code(), st.Message(), tc.code, tc.message)
			}
			if tc.code == codes.Internal && strings.Contains(st.Message(), "secret") {
				t.Errorf("internal detail leaked: %q", st.Message())
			}
		})
	}
}

func TestRoutesMetadataAndDeadline(t *testing.T) {
	type seen struct {
		url, ceType string
		opts        rpcevents.CallOptions
		deadline    time.Duration
	}
	var got []seen
	caller := &fakeCaller{CallFn: func(ctx context.Context, url, ceType string, _ proto.Message, opts rpcevents.CallOptions, _ proto.Message) error {
		dl, _ := ctx.Deadline()
		got = append(got, seen{url, ceType, opts, time.Until(dl)})
		return nil
	}}
	client, _ := dial(t, &Server{Caller: caller, Routes: Routes{Execute: "http://e", Status: "http://s", List: "http://l"}, DefaultTimeout: time.Minute})
	ctx := metadata.AppendToOutgoingContext(context.Background(),
		"idempotency-key", "key-1", "traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
	short, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	calls := []func() error{
		func() error {
			_, err := client.ExecuteDeliberation(short, &pb.ExecuteDeliberationRequest{})
			return err
		},
		func() error {
			_, err := client.ExecuteBacklogReviewDeliberation(ctx, &pb.ExecuteBacklogReviewDeliberationRequest{})
			return err
		},
		func() error { _, err := client.CancelDeliberation(ctx, &pb.CancelDeliberationRequest{}); return err },
		func() error {
			_, err := client.GetDeliberationStatus(ctx, &pb.GetDeliberationStatusRequest{})
			return err
		},
		func() error { _, err := client.GetActiveJobs(ctx, &pb.GetActiveJobsRequest{}); return err },
	}
	for _, c := range calls {
		if err := c(); err != nil {
			t.Fatal(err)
		}
	}
	want := []struct{ url, ceType string }{
		{"http://e", rpcevents.TypeExecuteDeliberation},
		{"http://e", rpcevents.TypeExecuteBacklogReviewDeliberation},
		{"http://e", rpcevents.TypeCancelDeliberation},
		{"http://s", rpcevents.TypeGetDeliberationStatus},
		{"http://l", rpcevents.TypeGetActiveJobs},
	}
	for i, w := range want {
		if got[i].url != w.url || got[i].ceType != w.ceType {
			t.Errorf("call %d: got %s %s, want %s %s", i, got[i].url, got[i].ceType, w.url, w.ceType)
		}
		if got[i].opts.IdempotencyKey != "key-1" || !strings.HasPrefix(got[i].opts.Traceparent, "00-0af765") {
			t.Errorf("call %d: got options %+v, want the caller's idempotency key and traceparent", i, got[i].opts)
		}
	}
	if d := got[0].deadline; d > 3*time.Second || d < 2*time.Second {
		t.Errorf("got downstream deadline in %v, want the caller's 3s", d)
	}
	if d := got[1].deadline; d > time.Minute || d < 50*time.Second {
		t.Errorf("got downstream deadline in %v without a caller deadline, want the 1m default", d)
	}
	// A traceparent that is not a valid W3C value is dropped, not passed on.
	got = nil
	bad := metadata.AppendToOutgoingContext(context.Background(), "traceparent", "00-not-a-trace-01")
	if _, err := client.GetActiveJobs(bad, &pb.GetActiveJobsRequest{}); err != nil || len(got) != 1 || got[0].opts.Traceparent != "" {
		t.Errorf("a bad traceparent: got %+v %v, want it dropped", got, err)
	}
}

// readyz answers like a function's readiness probe.
func readyz(code int, body string) *httptest.Server {
	return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/readyz" {
			http.NotFound(w, r)
			return
		}
		w.WriteHeader(code)
		_, _ = io.WriteString(w, body)
	}))
}

func TestGetStatusAndHealthTellTheTruth(t *testing.T) {
	up := readyz(200, "ready")
	defer up.Close()
	noNATS := readyz(503, "not ready: events: NATS is not connected (RECONNECTING): unavailable")
	defer noNATS.Close()
	down := httptest.NewServer(http.NotFoundHandler())
	down.Close() // nothing listens there any more

	healthy := []*pb.ComponentHealth{{Name: "ray", Status: Healthy, Message: "answers"},
		{Name: "executor", Status: Healthy, Message: "version v: 1 replicas, 0 running, 0 waiting"}}
	rayDown := []*pb.ComponentHealth{{Name: "ray", Status: Degraded, Message: "ray: connection refused"},
		{Name: "executor", Status: Degraded, Message: "no executor runs and work waits (3 waiting); it is being redeployed"}}
	cases := []struct {
		name                  string
		execute, status, list string
		listSays              []*pb.ComponentHealth
		want                  string
		wantServing           healthpb.HealthCheckResponse_ServingStatus
		wantComponent         string // a component that must not be healthy, with its reason
	}{
		{"all up", up.URL, up.URL, up.URL, healthy, Healthy, healthpb.HealthCheckResponse_SERVING, ""},
		{"list down", up.URL, up.URL, down.URL, healthy, Degraded, healthpb.HealthCheckResponse_NOT_SERVING, "list"},
		{"execute down", down.URL, up.URL, up.URL, healthy, Unhealthy, healthpb.HealthCheckResponse_NOT_SERVING, "execute"},
		{"NATS down", noNATS.URL, noNATS.URL, noNATS.URL, healthy, Unhealthy, healthpb.HealthCheckResponse_NOT_SERVING, "execute"},
		// Ray and the executor gone: deliberations are still accepted (they wait in the
		// queue), so the service is degraded, not unhealthy, and still serving.
		{"Ray and executor down", up.URL, up.URL, up.URL, rayDown, Degraded, healthpb.HealthCheckResponse_SERVING, "executor"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			stats := &fakeCaller{CallFn: func(_ context.Context, _ string, ceType string, _ proto.Message, _ rpcevents.CallOptions, resp proto.Message) error {
				if ceType != rpcevents.TypeGetStatus {
					return fmt.Errorf("unexpected %s", ceType)
				}
				proto.Merge(resp, &pb.GetStatusResponse{Stats: &pb.RayExecutorStats{TotalDeliberations: 7, CompletedDeliberations: 5},
					Components: tc.listSays})
				return nil
			}}
			h := &Health{HTTP: http.DefaultClient, Targets: []Target{{"execute", tc.execute}, {"status", tc.status}, {"list", tc.list}}}
			client, health := dial(t, &Server{Caller: stats, Health: h, Started: time.Now().Add(-time.Minute)})
			resp, err := client.GetStatus(context.Background(), &pb.GetStatusRequest{IncludeStats: true})
			if err != nil {
				t.Fatal(err)
			}
			if resp.GetStatus() != tc.want {
				t.Errorf("got %q, want %q (%v)", resp.GetStatus(), tc.want, resp.GetComponents())
			}
			if resp.GetUptimeSeconds() < 59 {
				t.Errorf("got uptime %d, want >= 59", resp.GetUptimeSeconds())
			}
			// Whatever Ray and the functions answer, the ingress reports its own build.
			if resp.GetVersion() == "" || resp.GetVersion() != serving.Commit() {
				t.Errorf("got version %q, want the build's commit %q", resp.GetVersion(), serving.Commit())
			}
			byName := map[string]*pb.ComponentHealth{}
			for _, c := range resp.GetComponents() {
				byName[c.GetName()] = c
			}
			for _, c := range tc.listSays { // the list function's report reaches the caller as it is
				if got := byName[c.GetName()]; got.GetStatus() != c.GetStatus() || got.GetMessage() != c.GetMessage() {
					t.Errorf("got %s %v, want %v", c.GetName(), got, c)
				}
			}
			if tc.wantComponent != "" {
				if c := byName[tc.wantComponent]; c.GetStatus() == Healthy || c.GetMessage() == "" {
					t.Errorf("got %s %v, want it not healthy, with the reason", tc.wantComponent, c)
				}
			}
			// No internal address reaches a caller: those go to the ingress's log.
			for _, c := range resp.GetComponents() {
				for _, u := range []string{tc.execute, tc.status, tc.list} {
					if strings.Contains(c.GetMessage(), strings.TrimPrefix(u, "http://")) {
						t.Errorf("component %s tells a caller an internal address: %q", c.GetName(), c.GetMessage())
					}
				}
			}
			if resp.GetStats().GetTotalDeliberations() != 7 {
				t.Errorf("got stats %v, want the list function's", resp.GetStats())
			}
			hr, err := health.Check(context.Background(), &healthpb.HealthCheckRequest{})
			if err != nil || hr.GetStatus() != tc.wantServing {
				t.Errorf("got health %v %v, want %v", hr.GetStatus(), err, tc.wantServing)
			}
		})
	}
}

func TestHealthUnknownServiceAndDrain(t *testing.T) {
	up := readyz(200, "ready")
	defer up.Close()
	h := &Health{HTTP: http.DefaultClient, Targets: []Target{{"execute", up.URL}}}
	_, health := dial(t, &Server{Caller: &fakeCaller{}, Health: h})
	if _, err := health.Check(context.Background(), &healthpb.HealthCheckRequest{Service: "nope"}); status.Code(err) != codes.NotFound {
		t.Errorf("got %v for an unknown service, want NotFound", err)
	}
	r, err := health.Check(context.Background(), &healthpb.HealthCheckRequest{Service: "fleet.ray_executor.v1.RayExecutorService"})
	if err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("got %v %v, want SERVING", r, err)
	}
	h.Drain()
	if r, _ := health.Check(context.Background(), &healthpb.HealthCheckRequest{}); r.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Errorf("got %v while draining, want NOT_SERVING", r.GetStatus())
	}
}
