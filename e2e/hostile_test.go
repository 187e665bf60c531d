//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/fleet-ai/ray-executor/shared/domain"
	"github.com/fleet-ai/ray-executor/shared/events"
	pb "github.com/fleet-ai/ray-executor/shared/gen/fleet/ray_executor/v1"
	"github.com/fleet-ai/ray-executor/shared/llmstub"
	"github.com/fleet-ai/ray-executor/shared/natslocal"
	"github.com/fleet-ai/ray-executor/shared/rpcevents"
	"github.com/fleet-ai/ray-executor/shared/testenv"
)

// rawBytes sends pre-encoded bytes as a gRPC message, as no protobuf library would.
type rawBytes struct{}

func (rawBytes) Marshal(v any) ([]byte, error) { return v.([]byte), nil }
func (rawBytes) Unmarshal(data []byte, v any) error {
	*(v.(*[]byte)) = append([]byte(nil), data...)
	return nil
}
func (rawBytes) Name() string { return "proto" }

// The hostile suite (issue 12): the whole stack with access control on (tokens at the
// ingress, the internal credential at the functions), on a NATS server of its own, against
// callers that lie, flood, trickle, snoop and forge. Memory bounds are read from the
// processes' own accounting.
func TestHostileCallersAgainstTheStack(t *testing.T) {
	t.Parallel()
	const internal = "internal-hostile-0123456789abcdef"
	const (
		alice  = "alice-token-0123456789abcdef01"
		bob    = "bob-token-0123456789abcdef0123"
		viewer = "viewer-token-0123456789abcdef0"
		ops    = "ops-token-0123456789abcdef0123"
	)
	stub, llmURL := llm(t)
	stub.Script("m-slow", llmstub.Behavior{Delay: 6 * time.Second})
	stub.Script("m1", llmstub.Behavior{})
	srv, err := natslocal.Start(fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)), filepath.Join(t.TempDir(), "nats"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	// The allowlist names a path, so the path tricks below have something to trick.
	s := privateSystem(t, srv.URL(), "INTERNAL_TOKEN="+internal, "LOG_LEVEL=warn", "MAX_INFLIGHT=4",
		"LLM_ENDPOINT_ALLOWLIST="+llmURL+"/v1")
	tokens := filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(tokens, []byte("alice "+alice+"\nbob "+bob+"\nviewer "+viewer+" read\nops "+ops+" admin\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	addr, ingress := startGuardedIngressFor(t, s, srv.URL(), "AUTH_TOKENS_FILE="+tokens, "INTERNAL_TOKEN="+internal,
		"CALLER_MAX_INFLIGHT=4", "HEALTH_MAX_WATCHES=4", "CALLER_SUBMIT_BURST=1000", "CALLER_SUBMIT_RATE=1000",
		"MAX_CONNECTIONS_PER_PEER=16")
	conn := dialIngress(t, addr, insecure.NewCredentials())
	client := pb.NewRayExecutorServiceClient(conn)
	as := func(token string) context.Context { return bearer(token) }
	// waitEnd follows a deliberation through the ingress as caller token until it ends.
	waitEnd := func(t *testing.T, token, id string) string {
		t.Helper()
		for deadline := time.Now().Add(3 * time.Minute); ; time.Sleep(200 * time.Millisecond) {
			st, err := client.GetDeliberationStatus(as(token), &pb.GetDeliberationStatusRequest{DeliberationId: id})
			if err != nil {
				t.Fatalf("status of %s: %v", id, err)
			}
			if domain.Status(st.GetStatus()).Terminal() || time.Now().After(deadline) {
				return st.GetStatus()
			}
		}
	}
	req := func(model string) *pb.ExecuteDeliberationRequest {
		return request(uniqueTask(t), llmURL+"/v1", model)
	}

	t.Run("no token, wrong token, read role writing", func(t *testing.T) {
		for name, ctx := range map[string]context.Context{"no token": context.Background(), "wrong token": as("wrong-token-0123456789abcdef")} {
			_, err := client.ExecuteDeliberation(ctx, req("m1"))
			_, err2 := client.GetDeliberationStatus(ctx, &pb.GetDeliberationStatusRequest{DeliberationId: "delib-x"})
			_, err3 := client.GetActiveJobs(ctx, &pb.GetActiveJobsRequest{})
			for _, e := range []error{err, err2, err3} {
				if status.Code(e) != codes.Unauthenticated || strings.Contains(status.Convert(e).Message(), "0123456789") {
					t.Errorf("%s: got %v, want Unauthenticated without the token echoed", name, e)
				}
			}
		}
		if _, err := client.ExecuteDeliberation(as(viewer), req("m1")); status.Code(err) != codes.PermissionDenied {
			t.Errorf("read role submitting: got %v, want PermissionDenied", err)
		}
	})

	t.Run("foreign ids answer as unknown ones", func(t *testing.T) {
		resp, err := client.ExecuteDeliberation(as(alice), req("m1"))
		if err != nil {
			t.Fatal(err)
		}
		id := resp.GetDeliberationId()
		unknown := "delib-k" + strings.Repeat("0", 32)
		for _, who := range []string{bob, viewer} {
			st, err := client.GetDeliberationStatus(as(who), &pb.GetDeliberationStatusRequest{DeliberationId: id})
			if err != nil || st.GetStatus() != "not_found" {
				t.Errorf("another caller's status: %v %v, want not_found", st.GetStatus(), err)
			}
			jobs, _ := client.GetActiveJobs(as(who), &pb.GetActiveJobsRequest{})
			for _, j := range jobs.GetJobs() {
				if j.GetJobId() == id {
					t.Errorf("another caller's GetActiveJobs lists alice's %s", id)
				}
			}
		}
		_, foreign := client.CancelDeliberation(as(bob), &pb.CancelDeliberationRequest{DeliberationId: id})
		_, none := client.CancelDeliberation(as(bob), &pb.CancelDeliberationRequest{DeliberationId: unknown})
		if status.Code(foreign) != codes.NotFound ||
			strings.ReplaceAll(status.Convert(foreign).Message(), id, "X") != strings.ReplaceAll(status.Convert(none).Message(), unknown, "X") {
			t.Errorf("bob cancelling alice's: %v; an unknown id: %v; want the same", foreign, none)
		}
		// The same idempotency key from bob is bob's own deliberation, not alice's.
		shared := "shared-" + uniqueTask(t)
		same := req("m1")
		a, errA := client.ExecuteDeliberation(metadata.AppendToOutgoingContext(as(alice), "idempotency-key", shared), same)
		b, errB := client.ExecuteDeliberation(metadata.AppendToOutgoingContext(as(bob), "idempotency-key", shared), same)
		if errA != nil || errB != nil || a.GetDeliberationId() == b.GetDeliberationId() || b.GetDuplicate() {
			t.Errorf("one key, two callers: %v %v / %v %v, want two deliberations", a, errA, b, errB)
		}
		if st := waitEnd(t, alice, id); st != "completed" {
			t.Errorf("alice's: %s", st)
		}
		if st, err := client.GetDeliberationStatus(as(ops), &pb.GetDeliberationStatusRequest{DeliberationId: id}); err != nil || st.GetStatus() != "completed" {
			t.Errorf("the admin's view: %v %v, want completed", st.GetStatus(), err)
		}
		// Statistics are a caller's own: alice's count her completed one (the executor counts
		// just after writing the record, so wait a little), the viewer, who submitted nothing,
		// hears of nothing, and the admin of the whole system.
		var mine *pb.GetStatusResponse
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			gs, err := client.GetStatus(as(alice), &pb.GetStatusRequest{IncludeStats: true})
			if err != nil {
				t.Fatal(err)
			}
			if mine = gs; gs.GetStats().GetCompletedDeliberations() >= 1 || time.Now().After(deadline) {
				break
			}
		}
		if st := mine.GetStats(); st.GetCompletedDeliberations() < 1 || st.GetTotalDeliberations() < 2 || st.GetAverageExecutionTimeMs() <= 0 {
			t.Errorf("alice's statistics: %v, want her own completed one among her submissions", st)
		}
		theirs, err := client.GetStatus(as(viewer), &pb.GetStatusRequest{IncludeStats: true})
		if err != nil || theirs.GetStats().GetTotalDeliberations() != 0 || theirs.GetStats().GetCompletedDeliberations() != 0 {
			t.Errorf("the viewer's statistics: %v %v, want nothing of alice's and bob's", theirs.GetStats(), err)
		}
		all, err := client.GetStatus(as(ops), &pb.GetStatusRequest{IncludeStats: true})
		if err != nil || all.GetStats().GetTotalDeliberations() < mine.GetStats().GetTotalDeliberations()+1 {
			t.Errorf("the admin's statistics: %v %v, want the whole system's (bob's too)", all.GetStats(), err)
		}
	})

	t.Run("floods: oversize repeated fields, within memory", func(t *testing.T) {
		flood := make([]byte, 0, 4<<20)
		for len(flood)+2 <= 4<<20-16 {
			flood = append(flood, 0x2a, 0x00) // an empty agents entry
		}
		raw, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(8<<20)))
		if err != nil {
			t.Fatal(err)
		}
		defer raw.Close()
		for round := range 4 {
			ctx, want := as(alice), codes.InvalidArgument
			if round%2 == 1 {
				ctx, want = context.Background(), codes.Unauthenticated
			}
			var wg sync.WaitGroup
			for range 8 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					var out []byte
					err := raw.Invoke(ctx, pb.RayExecutorService_ExecuteDeliberation_FullMethodName, flood, &out, grpc.ForceCodec(rawBytes{}))
					if status.Code(err) != want {
						t.Errorf("round %d: got %v, want %s", round, err, want)
					}
				}()
			}
			wg.Wait()
		}
		if _, peak := testenv.ProcMemory(t, ingress.cmd.Process.Pid); peak > 64<<20 {
			t.Errorf("the ingress peaked at %d MiB resident, over 64 MiB", peak>>20)
		} else {
			t.Logf("ingress peak after 32 hostile 4 MiB messages: %d MiB", peak>>20)
		}
		// The same at a function, from a caller holding the internal credential.
		var body bytes.Buffer
		body.WriteString(`{"task_id":"flood","agents":[{}`)
		for body.Len() < 1<<20-8 {
			body.WriteString(`,{}`)
		}
		body.WriteString(`]}`)
		// Eight at once against MAX_INFLIGHT=4: each is refused as invalid without being
		// materialised, or, when four are already being checked, at once with 429; both are
		// refusals, and memory stays bounded either way.
		var wg sync.WaitGroup
		var invalid atomic.Int32
		for i := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				code, _, b := rawCall(t, s.execute.url, rpcevents.TypeExecuteDeliberation, body.String(), "Bearer "+internal)
				switch {
				case code == http.StatusBadRequest && strings.Contains(string(b), "of them in agents"):
					invalid.Add(1)
				case code == http.StatusTooManyRequests && strings.Contains(string(b), "retry shortly"):
				default:
					t.Errorf("flood %d at execute: %d %.200s", i, code, b)
				}
			}()
		}
		wg.Wait()
		if invalid.Load() == 0 {
			t.Error("no flood at execute was refused for its shape")
		}
		if _, peak := testenv.ProcMemory(t, s.execute.cmd.Process.Pid); peak > 64<<20 {
			t.Errorf("execute peaked at %d MiB resident, over 64 MiB", peak>>20)
		}
	})

	t.Run("slow bodies hold no slot", func(t *testing.T) {
		host := strings.TrimPrefix(s.status.url, "http://")
		for i := range 4 { // MAX_INFLIGHT=4 at the functions
			c, err := net.Dial("tcp", host)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			fmt.Fprintf(c, "POST / HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n"+
				"Authorization: Bearer %s\r\nCe-Specversion: 1.0\r\nCe-Type: %s\r\nCe-Source: slow\r\nCe-Id: slow-%d\r\n\r\n{",
				host, internal, rpcevents.TypeGetDeliberationStatus, i)
		}
		time.Sleep(200 * time.Millisecond)
		if _, err := client.GetDeliberationStatus(as(alice), &pb.GetDeliberationStatusRequest{DeliberationId: "delib-k" + strings.Repeat("1", 32)}); err != nil {
			t.Errorf("a status call beside 4 trickling bodies: %v, want it served", err)
		}
	})

	t.Run("many connections from one peer", func(t *testing.T) {
		// 16 idle connections from one address (127.0.0.9: loopback, another peer than the
		// suite's client), then a 17th cannot be served; the other peers still are.
		from := func(ctx context.Context, target string) (net.Conn, error) {
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.9")}}
			return d.DialContext(ctx, "tcp", target)
		}
		for range 16 {
			c, err := from(context.Background(), addr)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = c.Close() })
		}
		time.Sleep(200 * time.Millisecond) // accepted and counted
		cc, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithContextDialer(from))
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if _, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{}); err == nil {
			t.Error("a 17th connection from one peer was served (MAX_CONNECTIONS_PER_PEER=16)")
		}
		if _, err := healthpb.NewHealthClient(conn).Check(context.Background(), &healthpb.HealthCheckRequest{}); err != nil {
			t.Errorf("another peer meanwhile: %v", err)
		}
	})

	t.Run("many watches", func(t *testing.T) {
		hc := healthpb.NewHealthClient(conn)
		var cancels []context.CancelFunc
		defer func() {
			for _, c := range cancels {
				c()
			}
		}()
		open := func(i int) error {
			ctx, cancel := context.WithCancel(context.Background())
			cancels = append(cancels, cancel)
			w, err := hc.Watch(ctx, &healthpb.HealthCheckRequest{})
			if err == nil {
				_, err = w.Recv()
			}
			return err
		}
		for i := range 4 {
			if err := open(i); err != nil {
				t.Fatalf("health watch %d: %v", i, err)
			}
		}
		if err := open(4); status.Code(err) != codes.ResourceExhausted {
			t.Errorf("a 5th health watch: got %v, want ResourceExhausted", err)
		}
		// WatchDeliberation streams count against their caller (CALLER_MAX_INFLIGHT=4).
		slow, err := client.ExecuteDeliberation(as(bob), req("m-slow"))
		if err != nil {
			t.Fatal(err)
		}
		var watchErr error
		for i := range 5 {
			ctx, cancel := context.WithCancel(as(bob))
			cancels = append(cancels, cancel)
			w, err := client.WatchDeliberation(ctx, &pb.WatchDeliberationRequest{DeliberationId: slow.GetDeliberationId()})
			if err == nil {
				_, err = w.Recv()
			}
			if i == 4 {
				watchErr = err
			} else if err != nil {
				t.Fatalf("bob's watch %d: %v", i, err)
			}
		}
		if status.Code(watchErr) != codes.ResourceExhausted {
			t.Errorf("bob's 5th open watch: got %v, want ResourceExhausted", watchErr)
		}
	})

	t.Run("bad traceparent, allowlist path tricks", func(t *testing.T) {
		ctx := metadata.AppendToOutgoingContext(as(alice), "traceparent", "00-not-a-trace-"+strings.Repeat("f", 300)+"-01")
		resp, err := client.ExecuteDeliberation(ctx, req("m1"))
		if err != nil {
			t.Fatal(err)
		}
		if rec := s.record(t, resp.GetDeliberationId()); rec.Traceparent != "" {
			t.Errorf("the record kept the bad traceparent %q", rec.Traceparent)
		}
		for _, trick := range []string{"/v1/../admin", "/v1/%2e%2e/admin", "/v1%2f..%2fadmin", "/v1;x/chat"} {
			r := req("m1")
			r.VllmUrl = llmURL + trick
			if _, err := client.ExecuteDeliberation(as(alice), r); status.Code(err) != codes.InvalidArgument ||
				!strings.Contains(status.Convert(err).Message(), "not an allowed LLM endpoint") {
				t.Errorf("vllm_url %s: got %v, want InvalidArgument", trick, err)
			}
		}
	})

	t.Run("forged terminal event", func(t *testing.T) {
		resp, err := client.ExecuteDeliberation(as(alice), req("m-slow"))
		if err != nil {
			t.Fatal(err)
		}
		id := resp.GetDeliberationId()
		w, err := client.WatchDeliberation(as(alice), &pb.WatchDeliberationRequest{DeliberationId: id})
		if err != nil {
			t.Fatal(err)
		}
		// Mallory reaches NATS (this server has no users) and forges the end.
		nc, err := nats.Connect(srv.URL())
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		forged := fmt.Sprintf(`{"specversion":"1.0","id":"forged","source":"mallory","type":"%s","subject":"%s","time":"%s","datacontenttype":"application/json","data":{"deliberation_id":"%s","status":"cancelled"}}`,
			events.TypePrefix+string(events.Cancelled), id, time.Now().UTC().Format(time.RFC3339Nano), id)
		if err := nc.Publish(events.Subject(id, events.Cancelled), []byte(forged)); err != nil {
			t.Fatal(err)
		}
		var last string
		for {
			ev, err := w.Recv()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("watch: %v", err)
			}
			last = ev.GetEvent().GetKind() + " from " + ev.GetEvent().GetSource()
			if ev.GetEvent().GetSource() == "mallory" {
				t.Errorf("the watch passed on the forged event")
			}
		}
		if !strings.HasPrefix(last, "completed") {
			t.Errorf("the watch ended with %q, want the real completed", last)
		}
		if st := waitEnd(t, alice, id); st != string(domain.StatusCompleted) {
			t.Errorf("after the forgery: %s, want completed", st)
		}
	})

	if log := ingress.out.String(); strings.Contains(log, alice) || strings.Contains(log, internal) {
		t.Error("the ingress log shows a token")
	}
}
