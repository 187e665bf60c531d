//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	pb "github.com/fleet-ai/ray-executor/shared/gen/fleet/ray_executor/v1"
	"github.com/fleet-ai/ray-executor/shared/llmstub"
	"github.com/fleet-ai/ray-executor/shared/testenv"
)

// startGuardedIngress runs the ingress binary in front of the shared functions with env
// (its access control) and waits until it accepts connections: it cannot be asked anything
// without the credentials each test holds.
func startGuardedIngress(t *testing.T, env ...string) (string, *proc) {
	t.Helper()
	return startGuardedIngressFor(t, shared(t), natsURL, env...)
}

// startGuardedIngressFor is startGuardedIngress in front of system s, whose NATS is nats.
func startGuardedIngressFor(t *testing.T, s *system, nats string, env ...string) (string, *proc) {
	t.Helper()
	port := testenv.FreePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	cmd := exec.Command(filepath.Join(binDir, "ingress"))
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), fmt.Sprintf("PORT=%d", port), "HOST=127.0.0.1",
		"EXECUTE_URL=" + s.execute.url, "STATUS_URL=" + s.status.url, "LIST_URL=" + s.list.url,
		"HEALTH_CACHE_TTL=100ms", "LOG_LEVEL=info", "NATS_URL=" + nats}, env...)
	p := &proc{name: "ingress", url: addr, cmd: cmd, out: &syncBuffer{}}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.stop(15)
		if t.Failed() {
			t.Logf("ingress output:\n%s", p.out.String())
		}
	})
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ingress at %s never listened:\n%s", addr, p.out.String())
		}
	}
	return addr, p
}

func dialIngress(t *testing.T, addr string, creds credentials.TransportCredentials) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func bearer(token string) context.Context {
	return metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+token)
}

// Bearer tokens through the real ingress, functions and Ray: each credential gets its code,
// a right one a real round trip; health stays open, reflection does not; limits count per
// caller.
func TestAuthIngressTokens(t *testing.T) {
	t.Parallel()
	const (
		writer = "orchestrator-5f0c1e2d3b4a69788796a5b4c3d2e1f0"
		reader = "dashboard-0a1b2c3d4e5f60718293a4b5c6d7e8f9"
		batch  = "batch-job-99aa88bb77cc66dd55ee44ff33001122"
		ops    = "operator-77aa88bb99cc00dd11ee22ff33445566"
	)
	tokens := filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(tokens, []byte("# e2e callers\norchestrator "+writer+"\ndashboard "+reader+" read\nbatch "+batch+" write\nops "+ops+" admin\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	addr, ingress := startGuardedIngress(t, "AUTH_TOKENS_FILE="+tokens, "CALLER_SUBMIT_RATE=0.01", "CALLER_SUBMIT_BURST=1")
	conn := dialIngress(t, addr, insecure.NewCredentials())
	client := pb.NewRayExecutorServiceClient(conn)
	stub, url := llm(t)
	stub.Script("m1", llmstub.Behavior{})
	req := request(uniqueTask(t), url, "m1")

	cases := []struct {
		name string
		ctx  context.Context
		code codes.Code
	}{
		{"no token", context.Background(), codes.Unauthenticated},
		{"wrong token", bearer("orchestrator-00000000000000000000000000000000"), codes.Unauthenticated},
		{"not a bearer token", metadata.AppendToOutgoingContext(context.Background(), "authorization", "Basic "+writer), codes.Unauthenticated},
	}
	for _, tc := range cases {
		_, err := client.GetDeliberationStatus(tc.ctx, &pb.GetDeliberationStatusRequest{DeliberationId: "delib-nope"})
		if status.Code(err) != tc.code || strings.Contains(status.Convert(err).Message(), "0000000000") {
			t.Errorf("%s: got %v, want %s without the token echoed", tc.name, err, tc.code)
		}
		if _, err := client.ExecuteDeliberation(tc.ctx, req); status.Code(err) != tc.code {
			t.Errorf("%s, ExecuteDeliberation: got %v, want %s", tc.name, err, tc.code)
		}
	}
	for name, call := range map[string]func() error{
		"ExecuteDeliberation": func() error { _, err := client.ExecuteDeliberation(bearer(reader), req); return err },
		"CancelDeliberation": func() error {
			_, err := client.CancelDeliberation(bearer(reader), &pb.CancelDeliberationRequest{DeliberationId: "delib-nope"})
			return err
		},
	} {
		if err := call(); status.Code(err) != codes.PermissionDenied || !strings.Contains(status.Convert(err).Message(), `"dashboard" has read access only`) {
			t.Errorf("read token, %s: got %v, want PermissionDenied naming the caller", name, err)
		}
	}

	// The right tokens: a real deliberation submitted by the writer, followed by it. It is
	// the writer's: the others see it as an unknown id, the admin sees it.
	resp, err := client.ExecuteDeliberation(bearer(writer), req)
	if err != nil {
		t.Fatalf("write token, ExecuteDeliberation: %v", err)
	}
	id := resp.GetDeliberationId()
	var st *pb.GetDeliberationStatusResponse
	for deadline := time.Now().Add(3 * time.Minute); ; time.Sleep(250 * time.Millisecond) {
		st, err = client.GetDeliberationStatus(bearer(writer), &pb.GetDeliberationStatusRequest{DeliberationId: id})
		if err != nil {
			t.Fatalf("write token, GetDeliberationStatus: %v", err)
		}
		if st.GetStatus() == "completed" || st.GetStatus() == "failed" || time.Now().After(deadline) {
			break
		}
	}
	if st.GetStatus() != "completed" {
		t.Errorf("got %q (%s), want the deliberation completed", st.GetStatus(), st.GetErrorMessage())
	}
	if _, err := client.GetActiveJobs(bearer(reader), &pb.GetActiveJobsRequest{}); err != nil {
		t.Errorf("read token, GetActiveJobs: %v", err)
	}
	for _, who := range []string{reader, batch} {
		if got, err := client.GetDeliberationStatus(bearer(who), &pb.GetDeliberationStatusRequest{DeliberationId: id}); err != nil || got.GetStatus() != "not_found" {
			t.Errorf("another caller's status of the writer's: got %v %v, want not_found", got.GetStatus(), err)
		}
	}
	if got, err := client.GetDeliberationStatus(bearer(ops), &pb.GetDeliberationStatusRequest{DeliberationId: id}); err != nil || got.GetStatus() != "completed" {
		t.Errorf("the admin's status of the writer's: got %v %v, want completed", got.GetStatus(), err)
	}
	unknownID := "delib-k" + strings.Repeat("0", 32)
	_, foreign := client.CancelDeliberation(bearer(batch), &pb.CancelDeliberationRequest{DeliberationId: id})
	_, unknown := client.CancelDeliberation(bearer(batch), &pb.CancelDeliberationRequest{DeliberationId: unknownID})
	if status.Code(foreign) != codes.NotFound || strings.ReplaceAll(status.Convert(foreign).Message(), id, "ID") !=
		strings.ReplaceAll(status.Convert(unknown).Message(), unknownID, "ID") {
		t.Errorf("another caller cancelling the writer's: got %v, an unknown id %v: want the same NotFound", foreign, unknown)
	}
	if w, err := client.WatchDeliberation(bearer(batch), &pb.WatchDeliberationRequest{DeliberationId: id}); err == nil {
		if _, err := w.Recv(); status.Code(err) != codes.NotFound {
			t.Errorf("another caller watching the writer's: got %v, want NotFound", err)
		}
	}

	// Submission rate per caller (1 at once, then 1 per 100 s): the writer has used its one,
	// the batch caller still has its own.
	if _, err := client.ExecuteDeliberation(bearer(writer), req); status.Code(err) != codes.ResourceExhausted ||
		!strings.Contains(status.Convert(err).Message(), `caller "orchestrator" is over the per-caller submission rate limit`) {
		t.Errorf("writer's second submission: got %v, want ResourceExhausted", err)
	}
	if _, err := client.ExecuteDeliberation(bearer(batch), &pb.ExecuteDeliberationRequest{TaskId: "t"}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("another caller's first submission: got %v, want it through to execute (InvalidArgument)", err)
	}

	// Of the three submissions of req (refused to the reader, the writer's, refused over the
	// rate) exactly one was accepted: one record for the task.
	if n := len(shared(t).recordsForTask(t, req.TaskId)); n != 1 {
		t.Errorf("got %d records for the task, want 1: refused calls must accept nothing", n)
	}

	// Health is open, to Go clients and grpc-health-probe alike; reflection is not.
	if r, err := healthpb.NewHealthClient(conn).Check(context.Background(), &healthpb.HealthCheckRequest{}); err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health without a token: got %v %v, want SERVING", r, err)
	}
	if out, err := exec.Command(tool(t, "grpc-health-probe"), "-addr", addr).CombinedOutput(); err != nil || !strings.Contains(string(out), "SERVING") {
		t.Errorf("grpc-health-probe without a token: %v: %s, want SERVING", err, out)
	}
	grpcurl := tool(t, "grpcurl")
	out, err := exec.Command(grpcurl, "-plaintext", addr, "list").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "Unauthenticated") {
		t.Errorf("grpcurl list without a token: %v: %s, want refused as Unauthenticated", err, out)
	}
	out, err = exec.Command(grpcurl, "-plaintext", "-H", "authorization: Bearer "+reader, addr, "list").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "fleet.ray_executor.v1.RayExecutorService") {
		t.Errorf("grpcurl list with a token: %v: %s, want the service", err, out)
	}

	log := ingress.out.String()
	if !strings.Contains(log, `"msg":"access control on"`) || !strings.Contains(log, `"token_callers":4`) {
		t.Errorf("the ingress did not log that access control is on, with 4 callers:\n%s", log)
	}
	// The wrong token too, whole: the access log names deliberation ids, which may hold zeros.
	for _, tok := range []string{writer, reader, batch, ops, "orchestrator-00000000000000000000000000000000"} {
		if strings.Contains(log, tok) {
			t.Errorf("the ingress log shows a token")
		}
	}
}

// Without tokens or client certificates the ingress lets everyone in, and says so at start.
func TestAuthIngressOffWarns(t *testing.T) {
	t.Parallel()
	addr, ingress := startGuardedIngress(t)
	client := pb.NewRayExecutorServiceClient(dialIngress(t, addr, insecure.NewCredentials()))
	if _, err := client.GetDeliberationStatus(context.Background(), &pb.GetDeliberationStatusRequest{DeliberationId: "delib-nope"}); err != nil {
		t.Errorf("without access control: got %v, want OK", err)
	}
	if n := strings.Count(ingress.out.String(), "access control is off: the ingress accepts calls from anyone"); n != 1 {
		t.Errorf("got the warning %d times, want once:\n%s", n, ingress.out.String())
	}
}

// Mutual TLS through the real ingress: a certificate from the configured CA with a listed
// name gets in; none, another CA's, or an unlisted name do not.
func TestAuthIngressMutualTLS(t *testing.T) {
	t.Parallel()
	ca, other := testenv.NewCA(t, "ingress-clients"), testenv.NewCA(t, "elsewhere")
	serverCert, serverKey := ca.Issue(t, "ingress", nil, true)
	aliceCert, aliceKey := ca.Issue(t, "alice", nil, false)
	malloryCert, malloryKey := ca.Issue(t, "mallory", nil, false)
	eveCert, eveKey := other.Issue(t, "alice", nil, false) // the right name, the wrong CA
	addr, _ := startGuardedIngress(t, "TLS_CERT_FILE="+serverCert, "TLS_KEY_FILE="+serverKey,
		"TLS_CLIENT_CA_FILE="+ca.CertFile, "TLS_CLIENT_NAMES=alice,planner")

	call := func(creds credentials.TransportCredentials) error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := pb.NewRayExecutorServiceClient(dialIngress(t, addr, creds)).
			GetActiveJobs(ctx, &pb.GetActiveJobsRequest{})
		return err
	}
	cases := []struct {
		name  string
		creds credentials.TransportCredentials
		code  codes.Code
	}{
		{"no client certificate", credentials.NewTLS(ca.ClientTLS(t, "", "")), codes.Unavailable},
		{"certificate of another CA", credentials.NewTLS(ca.ClientTLS(t, eveCert, eveKey)), codes.Unavailable},
		{"plaintext", insecure.NewCredentials(), codes.Unavailable},
		{"unlisted name", credentials.NewTLS(ca.ClientTLS(t, malloryCert, malloryKey)), codes.PermissionDenied},
		{"listed name", credentials.NewTLS(ca.ClientTLS(t, aliceCert, aliceKey)), codes.OK},
	}
	for _, tc := range cases {
		if err := call(tc.creds); status.Code(err) != tc.code {
			t.Errorf("%s: got %v, want %s", tc.name, err, tc.code)
		}
	}
	alice := pb.NewRayExecutorServiceClient(dialIngress(t, addr, credentials.NewTLS(ca.ClientTLS(t, aliceCert, aliceKey))))
	st, err := alice.GetDeliberationStatus(context.Background(), &pb.GetDeliberationStatusRequest{DeliberationId: "delib-nope"})
	if err != nil || st.GetStatus() != "not_found" {
		t.Errorf("alice, GetDeliberationStatus: got %v %v, want OK with not_found from the status function", st, err)
	}
	out, err := exec.Command(tool(t, "grpc-health-probe"), "-addr", addr, "-tls", "-tls-ca-cert", ca.CertFile,
		"-tls-client-cert", aliceCert, "-tls-client-key", aliceKey).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "SERVING") {
		t.Errorf("grpc-health-probe with alice's certificate: %v: %s, want SERVING", err, out)
	}
}
