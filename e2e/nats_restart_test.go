//go:build e2e

package e2e

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/fleet-ai/ray-executor/shared/domain"
	pb "github.com/fleet-ai/ray-executor/shared/gen/fleet/ray_executor/v1"
	"github.com/fleet-ai/ray-executor/shared/llmstub"
	"github.com/fleet-ai/ray-executor/shared/natslocal"
	"github.com/fleet-ai/ray-executor/shared/rpcevents"
	"github.com/fleet-ai/ray-executor/shared/testenv"
)

// NATS restarted during a burst, on the same store (a NATS pod restarted on its volume):
// callers submit 16 two-agent deliberations while the server goes away for 3 s and comes
// back. A submission refused meanwhile (UNAVAILABLE) is retried with its key, as the
// original's callers retry. Every deliberation accepted ends once: one terminal event, the
// record completed; events are stored once each. Deliberations the executor held while NATS
// was gone are finished by it after reconnecting or redelivered after AckWait, so an agent
// may run twice (the log says how often); the record and the events never say so twice.
// The system has a NATS server of its own (and so an executor of its own on the head).
func TestNATSRestartedDuringABurst(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	store := filepath.Join(dir, "nats")
	srv, err := natslocal.Start(addr, store)
	if err != nil {
		t.Fatal(err)
	}
	var srvMu sync.Mutex
	t.Cleanup(func() {
		srvMu.Lock()
		defer srvMu.Unlock()
		srv.Stop()
	})
	s := privateSystem(t, "nats://"+addr, "LOG_LEVEL=warn")
	s.waitExecutorLive(t, 4*time.Minute)

	stub, llmURL := llm(t)
	stub.Script("slow", llmstub.Behavior{Delay: 1500 * time.Millisecond})
	task := uniqueTask(t)
	const n = 16
	ids := make([]string, n)
	refused := make([]int, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			time.Sleep(time.Duration(i) * 150 * time.Millisecond) // the burst spans the outage
			req := request(fmt.Sprintf("%s-%d", task, i), llmURL, "slow", "slow")
			opts := rpcevents.CallOptions{IdempotencyKey: fmt.Sprintf("restart-%s-%d", task, i)}
			for deadline := time.Now().Add(90 * time.Second); ; time.Sleep(200 * time.Millisecond) {
				var resp pb.ExecuteDeliberationResponse
				err := s.client.Call(context.Background(), s.execute.url, rpcevents.TypeExecuteDeliberation, req, opts, &resp)
				if err == nil {
					ids[i] = resp.GetDeliberationId()
					return
				}
				if !errors.Is(err, domain.ErrUnavailable) || time.Now().After(deadline) {
					errs[i] = err
					return
				}
				refused[i]++
			}
		}()
	}
	time.Sleep(800 * time.Millisecond)
	srvMu.Lock()
	srv.Stop()
	srvMu.Unlock()
	time.Sleep(3 * time.Second)
	srvMu.Lock()
	srv, err = natslocal.Start(addr, store)
	srvMu.Unlock()
	if err != nil {
		t.Fatalf("restart NATS on %s: %v", addr, err)
	}
	wg.Wait()

	var retried, attempts int
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("submission %d: %v (only UNAVAILABLE may be refused, and only while NATS is away)", i, errs[i])
		}
		if refused[i] > 0 {
			retried++
		}
	}
	s.waitReconnected(t, ids[n-1], 15*time.Second)
	for i, id := range ids {
		if st := s.waitDone(t, s.status.url, id); st.GetStatus() != "completed" {
			t.Errorf("deliberation %d (%s): got %q (%s), want completed", i, id, st.GetStatus(), st.GetErrorMessage())
			continue
		}
		evs := stored(t, s.bus, id, hasTerminal)
		terminals, seen := 0, map[string]bool{}
		for _, e := range evs {
			if e.Kind().Terminal() {
				terminals++
			}
			if seen[e.ID] {
				t.Errorf("%s: event %s stored twice", id, e.ID)
			}
			seen[e.ID] = true
		}
		if terminals != 1 {
			t.Errorf("%s: got %d terminal events (%s), want 1", id, terminals, kinds(evs))
		}
		rec := s.record(t, id)
		if rec.State != domain.StatusCompleted || rec.Outcome == nil || rec.Outcome.CompletedAgents != 2 {
			t.Errorf("%s: record %s with outcome %+v, want completed by both agents", id, rec.State, rec.Outcome)
		}
		attempts += rec.Attempts
	}
	calls := len(stub.Calls())
	if calls < 2*n {
		t.Errorf("the LLM stand-in got %d calls, want at least %d (2 agents x %d)", calls, 2*n, n)
	}
	t.Logf("NATS restarted during a burst of %d: %d submissions refused and retried, %d delivery attempts in all, "+
		"%d LLM calls for %d agents (a repeat is an agent run again after NATS came back)", n, retried, attempts, calls, 2*n)
}
