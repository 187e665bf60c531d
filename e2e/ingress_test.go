//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	pb "github.com/fleet-ai/ray-executor/shared/gen/fleet/ray_executor/v1"
	"github.com/fleet-ai/ray-executor/shared/llmstub"
	"github.com/fleet-ai/ray-executor/shared/testenv"
)

// startIngress runs the ingress binary in front of the given functions.
func startIngress(t *testing.T, execute, status, list string, env ...string) (pb.RayExecutorServiceClient, string) {
	t.Helper()
	client, addr, _ := startIngressProc(t, execute, status, list, env...)
	return client, addr
}

// startIngressProc is startIngress, also giving the ingress's process.
func startIngressProc(t *testing.T, execute, status, list string, env ...string) (pb.RayExecutorServiceClient, string, *proc) {
	t.Helper()
	port := testenv.FreePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	cmd := exec.Command(filepath.Join(binDir, "ingress"))
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), fmt.Sprintf("PORT=%d", port), "HOST=127.0.0.1",
		"EXECUTE_URL=" + execute, "STATUS_URL=" + status, "LIST_URL=" + list,
		"HEALTH_CACHE_TTL=100ms", "LOG_LEVEL=warn", "NATS_URL=" + natsURL}
	cmd.Env = append(cmd.Env, env...)
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
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	client := pb.NewRayExecutorServiceClient(conn)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := client.GetDeliberationStatus(ctx, &pb.GetDeliberationStatusRequest{DeliberationId: "delib-probe"})
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ingress at %s never answered: %v\n%s", addr, err, p.out.String())
		}
	}
	return client, addr, p
}

func waitGRPC(t *testing.T, c pb.RayExecutorServiceClient, id string) *pb.GetDeliberationStatusResponse {
	t.Helper()
	for deadline := time.Now().Add(3 * time.Minute); time.Now().Before(deadline); time.Sleep(250 * time.Millisecond) {
		st, err := c.GetDeliberationStatus(context.Background(), &pb.GetDeliberationStatusRequest{DeliberationId: id})
		if err != nil {
			t.Fatalf("GetDeliberationStatus: %v", err)
		}
		switch st.GetStatus() {
		case "completed", "failed", "cancelled":
			return st
		}
	}
	t.Fatalf("deliberation %s did not finish", id)
	return nil
}

// A Go client built from the proto runs every RPC through ingress -> function -> Ray.
func TestIngressRunsEveryRPCEndToEnd(t *testing.T) {
	t.Parallel()
	s := shared(t)
	client, _ := startIngress(t, s.execute.url, s.status.url, s.list.url)
	stub, url := llm(t)
	for _, m := range []string{"m1", "m2", "m3"} {
		stub.Script(m, llmstub.Behavior{Delay: 3 * time.Second})
	}
	stub.Script("hang", llmstub.Behavior{Delay: 2 * time.Minute})
	ctx := context.Background()

	// Three agents, idempotent through the idempotency-key metadata entry.
	req := request(uniqueTask(t), url, "m1", "m2", "m3")
	keyed := metadata.AppendToOutgoingContext(ctx, "idempotency-key", "ingress-"+req.TaskId)
	resp, err := client.ExecuteDeliberation(keyed, req)
	if err != nil {
		t.Fatalf("ExecuteDeliberation: %v", err)
	}
	again, err := client.ExecuteDeliberation(keyed, req)
	if err != nil || again.GetDeliberationId() != resp.GetDeliberationId() || !again.GetDuplicate() {
		t.Fatalf("got %v %v for the same idempotency key, want the same deliberation marked duplicate", again, err)
	}
	if resp.GetTaskId() != req.TaskId || resp.GetStatus() != "submitted" {
		t.Errorf("got %v, want task_id echoed and status submitted", resp)
	}
	id := resp.GetDeliberationId()

	// GetActiveJobs while it runs.
	found := false
	for deadline := time.Now().Add(90 * time.Second); !found && time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		jobs, err := client.GetActiveJobs(ctx, &pb.GetActiveJobsRequest{})
		if err != nil {
			t.Fatalf("GetActiveJobs: %v", err)
		}
		for _, j := range jobs.GetJobs() {
			found = found || j.GetJobId() == id
		}
	}
	if !found {
		t.Fatalf("deliberation %s never listed by GetActiveJobs", id)
	}

	// A long one to cancel, and a backlog review, meanwhile.
	long, err := client.ExecuteDeliberation(ctx, request(uniqueTask(t), url, "hang"))
	if err != nil {
		t.Fatal(err)
	}
	review, err := client.ExecuteBacklogReviewDeliberation(ctx, &pb.ExecuteBacklogReviewDeliberationRequest{
		TaskId: "ceremony-c9:story-s9:role-qa", TaskDescription: "Review story s9", Role: "qa",
		Constraints: &pb.BacklogReviewTaskConstraints{StoryId: "s9", Metadata: map[string]string{"task_type": "BACKLOG_REVIEW_ROLE"}},
		Agents:      []*pb.Agent{{Id: "qa-1", Role: "qa", Model: "m-review"}},
		VllmUrl:     url, VllmModel: "m-review",
	})
	if err != nil {
		t.Fatalf("ExecuteBacklogReviewDeliberation: %v", err)
	}

	st := waitGRPC(t, client, id)
	if st.GetStatus() != "completed" || len(st.GetAgentResults()) != 3 || st.GetResult().GetMetadata()["total_agents"] != "3" {
		t.Fatalf("got %v, want completed with 3 agent results", st)
	}
	if rs := waitGRPC(t, client, review.GetDeliberationId()); rs.GetStatus() != "completed" {
		t.Errorf("backlog review got %q (%s), want completed", rs.GetStatus(), rs.GetErrorMessage())
	}
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if len(stub.Calls()) >= 5 { // three agents, the review, and the long one has started its call
			break
		}
	}
	c, err := client.CancelDeliberation(ctx, &pb.CancelDeliberationRequest{DeliberationId: long.GetDeliberationId()})
	if err != nil || c.GetStatus() != "cancelled" {
		t.Fatalf("CancelDeliberation: got %v %v, want cancelled", c, err)
	}
	if ls := waitGRPC(t, client, long.GetDeliberationId()); ls.GetStatus() != "cancelled" {
		t.Errorf("got %q after cancel, want cancelled", ls.GetStatus())
	}

	// The counters follow the record (its writer counts after writing it, specs/records.md):
	// a read right after the cancel may come before the count.
	var gs *pb.GetStatusResponse
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if gs, err = client.GetStatus(ctx, &pb.GetStatusRequest{IncludeStats: true}); err != nil {
			t.Fatalf("GetStatus: %v", err)
		}
		if gs.GetStats().GetCancelledDeliberations() >= 1 || time.Now().After(deadline) {
			break
		}
	}
	if gs.GetStatus() != "healthy" || gs.GetStats().GetTotalDeliberations() < 3 || gs.GetStats().GetCompletedDeliberations() < 2 ||
		gs.GetStats().GetCancelledDeliberations() < 1 {
		t.Errorf("got %v, want healthy with at least 3 deliberations, 2 completed, 1 cancelled", gs)
	}

	// Errors through the ingress, by gRPC code.
	if _, err := client.ExecuteDeliberation(ctx, &pb.ExecuteDeliberationRequest{TaskId: "t"}); status.Code(err) != codes.InvalidArgument ||
		!strings.Contains(status.Convert(err).Message(), "task_description") {
		t.Errorf("got %v for an invalid request, want InvalidArgument naming task_description", err)
	}
	if _, err := client.CancelDeliberation(ctx, &pb.CancelDeliberationRequest{DeliberationId: "delib-nope"}); status.Code(err) != codes.NotFound {
		t.Errorf("got %v cancelling an unknown deliberation, want NotFound", err)
	}
	nf, err := client.GetDeliberationStatus(ctx, &pb.GetDeliberationStatusRequest{DeliberationId: "delib-nope"})
	if err != nil || nf.GetStatus() != "not_found" {
		t.Errorf("got %v %v, want OK with the compatible not_found status", nf, err)
	}
	other := request(req.TaskId, url, "m9")
	if _, err := client.ExecuteDeliberation(keyed, other); status.Code(err) != codes.AlreadyExists {
		t.Errorf("got %v reusing a key for another request, want AlreadyExists", err)
	}
	short, cancel := context.WithTimeout(ctx, time.Millisecond)
	defer cancel()
	time.Sleep(2 * time.Millisecond)
	if _, err := client.GetActiveJobs(short, &pb.GetActiveJobsRequest{}); status.Code(err) != codes.DeadlineExceeded {
		t.Errorf("got %v past the caller's deadline, want DeadlineExceeded", err)
	}
}

// A function that is down is UNAVAILABLE for its RPCs, and the health service says so.
func TestIngressWithAFunctionDown(t *testing.T) {
	t.Parallel()
	s := shared(t)
	list := start(t, "list", "LOG_LEVEL=warn")
	client, addr := startIngress(t, s.execute.url, s.status.url, list.url)
	probe := tool(t, "grpc-health-probe")
	grpcurl := tool(t, "grpcurl")

	out, err := exec.Command(probe, "-addr", addr).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "SERVING") {
		t.Fatalf("grpc-health-probe: %v: %s, want SERVING", err, out)
	}
	out, err = exec.Command(grpcurl, "-plaintext", addr, "list").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "fleet.ray_executor.v1.RayExecutorService") || !strings.Contains(string(out), "grpc.health.v1.Health") {
		t.Fatalf("grpcurl list: %v: %s, want the service and health by reflection", err, out)
	}
	out, err = exec.Command(grpcurl, "-plaintext", "-d", `{"deliberation_id":"delib-from-grpcurl"}`, addr,
		"fleet.ray_executor.v1.RayExecutorService/GetDeliberationStatus").CombinedOutput()
	if err != nil || !strings.Contains(string(out), `"status": "not_found"`) {
		t.Fatalf("grpcurl call: %v: %s, want status not_found", err, out)
	}
	out, err = exec.Command(grpcurl, "-plaintext", "-d", `{"include_stats": true}`, addr,
		"fleet.ray_executor.v1.RayExecutorService/GetStatus").CombinedOutput()
	if err != nil || !strings.Contains(string(out), `"status": "healthy"`) {
		t.Fatalf("grpcurl GetStatus: %v: %s, want healthy", err, out)
	}

	list.stop(9)
	time.Sleep(300 * time.Millisecond) // past the health cache
	out, err = exec.Command(probe, "-addr", addr).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "NOT_SERVING") {
		t.Errorf("grpc-health-probe with list down: %v: %s, want NOT_SERVING and a failing exit", err, out)
	}
	if _, err := client.GetActiveJobs(context.Background(), &pb.GetActiveJobsRequest{}); status.Code(err) != codes.Unavailable {
		t.Errorf("got %v with list down, want Unavailable", err)
	}
	gs, err := client.GetStatus(context.Background(), &pb.GetStatusRequest{})
	if err != nil || gs.GetStatus() != "degraded" {
		t.Errorf("got %v %v with list down, want degraded", gs, err)
	}
}

// tool finds a binary the Makefile installs into ./bin.
func tool(t *testing.T, name string) string {
	t.Helper()
	path, err := filepath.Abs(filepath.Join("..", "bin", name))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("%s is missing (%v): `make test` installs it with `make tools`", name, err)
	}
	return path
}
