//go:build e2e && exclusive

package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fleet-ai/ray-executor/shared/domain"
	"github.com/fleet-ai/ray-executor/shared/events"
	pb "github.com/fleet-ai/ray-executor/shared/gen/fleet/ray_executor/v1"
	"github.com/fleet-ai/ray-executor/shared/llmstub"
	"github.com/fleet-ai/ray-executor/shared/natslocal"
	"github.com/fleet-ai/ray-executor/shared/rpcevents"
)

// TestQueuedCancelNeverRunsTheDeliberation: an executor of one replica that runs one
// deliberation at a time (EXECUTOR_REPLICA_CONCURRENCY=1, EXECUTOR_MAX_REPLICAS=1) holds A,
// whose agent hangs, so B waits in the work queue. B is cancelled while it waits: it ends
// cancelled at once, with exactly one terminal event (cancelled) and no started event. When
// A is cancelled in turn, the executor pulls B's message, finds the record ended, and drops
// it: B never calls the LLM, never starts, and the queue is empty afterwards.
func TestQueuedCancelNeverRunsTheDeliberation(t *testing.T) {
	srv, err := natslocal.Start("127.0.0.1:0", filepath.Join(t.TempDir(), "nats"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	s := privateSystem(t, srv.URL(), "EXECUTOR_REPLICA_CONCURRENCY=1", "EXECUTOR_MAX_REPLICAS=1", "LOG_LEVEL=warn")
	s.waitExecutorLive(t, 4*time.Minute)
	stub, llmURL := llm(t)
	stub.Script("hang", llmstub.Behavior{Delay: 3 * time.Minute})
	run := uniqueTask(t)
	cancel := func(id string) *pb.CancelDeliberationResponse {
		t.Helper()
		var resp pb.CancelDeliberationResponse
		if err := s.client.Call(context.Background(), s.execute.url, rpcevents.TypeCancelDeliberation,
			&pb.CancelDeliberationRequest{DeliberationId: id}, rpcevents.CallOptions{}, &resp); err != nil {
			t.Fatalf("CancelDeliberation %s: %v", id, err)
		}
		return &resp
	}

	a, err := s.submit(t, request(run+"-a", llmURL, "hang"), rpcevents.CallOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(90 * time.Second); len(stub.Calls()) == 0; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("deliberation A never called the LLM (record %+v)", s.record(t, a.GetDeliberationId()))
		}
	}
	b, err := s.submit(t, request(run+"-b", llmURL, "model-b"), rpcevents.CallOptions{})
	if err != nil {
		t.Fatal(err)
	}
	bid := b.GetDeliberationId()
	time.Sleep(3 * time.Second) // time for a replica with room to pull it: it has none
	if rec := s.record(t, bid); rec.State != domain.StatusPending {
		t.Fatalf("B is %s while the only replica runs A, want pending (queued)", rec.State)
	}
	q, err := s.store.Queue(context.Background())
	if err != nil || q.Waiting < 1 {
		t.Fatalf("work queue: %+v %v, want B waiting", q, err)
	}

	began := time.Now()
	if c := cancel(bid); c.GetStatus() != "cancelled" || !strings.Contains(c.GetMessage(), "before it started") {
		t.Errorf("cancelling queued B: got %v, want cancelled before it started", c)
	}
	if rec := s.record(t, bid); rec.State != domain.StatusCancelled || rec.StartedAt != "" || rec.Attempts != 0 {
		t.Errorf("B's record after cancel (%s): %+v, want cancelled, never started", time.Since(began), rec)
	}
	if c := cancel(a.GetDeliberationId()); c.GetStatus() != "cancelled" {
		t.Errorf("cancelling running A: got %v, want cancelled", c)
	}
	if st := s.waitDone(t, s.status.url, a.GetDeliberationId()); st.GetStatus() != "cancelled" {
		t.Errorf("A: got %q, want cancelled", st.GetStatus())
	}

	// The executor, free again, pulls B's message and drops it: the queue empties.
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(500 * time.Millisecond) {
		q, err = s.store.Queue(context.Background())
		if err == nil && q.Waiting == 0 && q.InFlight == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("work queue still holds %+v (%v) a minute after B was cancelled", q, err)
		}
	}
	time.Sleep(2 * time.Second) // an event published by a run of B, were there one, is stored by now
	evs := stored(t, s.bus, bid, hasTerminal)
	if got := fmt.Sprint(countKinds(evs)); terminals(evs) != 1 || countKinds(evs)[events.Cancelled] != 1 || countKinds(evs)[events.Started] != 0 {
		t.Errorf("B's events: %s (%s), want submitted and cancelled only", kinds(evs), got)
	}
	for _, c := range stub.Calls() {
		if c.Model == "model-b" {
			t.Errorf("B called the LLM (%s) although cancelled while queued", c.Model)
		}
	}
	if rec := s.record(t, bid); rec.State != domain.StatusCancelled || rec.Attempts != 0 {
		t.Errorf("B's record at the end: %+v, want cancelled with no attempt", rec)
	}
}
