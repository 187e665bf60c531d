//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fleet-ai/ray-executor/shared/domain"
	"github.com/fleet-ai/ray-executor/shared/executor"
	"github.com/fleet-ai/ray-executor/shared/executor/payload"
	"github.com/fleet-ai/ray-executor/shared/natsbus"
	"github.com/fleet-ai/ray-executor/shared/natslocal"
	"github.com/fleet-ai/ray-executor/shared/ray"
	"github.com/fleet-ai/ray-executor/shared/rpcevents"
	"github.com/fleet-ai/ray-executor/shared/testenv"
)

// Deadlines are the gateway's promise, kept with no executor at all (none deployed, as
// when the executor job was stopped or the Ray cluster is gone): deliberations accepted
// with timeout_seconds 5 end failed deadline_exceeded ("never started") by their deadline
// (acceptance + 5 s + DeadlineGrace) plus one reconcile period, each with exactly one
// terminal event: two ended by the list reconciler alone, one by the caller's status read.
// When an executor comes, none of the expired ones runs an agent (the LLM stand-in never
// sees their model), while one accepted with a long timeout, queued all along, runs.
func TestDeadlinesHoldWithNoExecutor(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	srv, err := natslocal.Start(fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)), filepath.Join(dir, "nats"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	s := privateSystem(t, srv.URL(), "EXECUTOR_DEPLOY=false", "LOG_LEVEL=warn")
	stub, llmURL := llm(t)

	submit := func(timeout int32, model string) domain.Record { return s.submitWithTimeout(t, llmURL, model, timeout) }
	var expiring []domain.Record
	for range 3 {
		expiring = append(expiring, submit(5, "m-expired"))
	}
	long := submit(300, "m-live")

	// The first two: nobody reads their status; the reconciler (every 5 s here) ends them.
	for _, r := range expiring[:2] {
		deadline := domain.ParseTime(r.Deadline)
		var got domain.Record
		for until := deadline.Add(30 * time.Second); ; time.Sleep(500 * time.Millisecond) {
			if got = s.record(t, r.ID); got.Terminal() || time.Now().After(until) {
				break
			}
		}
		if got.State != domain.StatusFailed || got.ErrorType != domain.ErrorTypeDeadlineExceeded {
			t.Fatalf("%s: got %s %s %q, want failed deadline_exceeded", r.ID, got.State, got.ErrorType, got.Error)
		}
		if ended := domain.ParseTime(got.EndedAt); ended.Before(deadline) || ended.After(deadline.Add(5*time.Second+2*time.Second)) {
			t.Errorf("%s ended at %s, want after its deadline %s and within one reconcile period (5 s) and 2 s of it", r.ID, ended, deadline)
		}
	}
	// The third: the caller's read ends it, if the reconciler has not already.
	third := expiring[2]
	time.Sleep(time.Until(domain.ParseTime(third.Deadline).Add(100 * time.Millisecond)))
	st := s.statusOf(t, s.status.url, third.ID)
	if st.GetStatus() != "failed" || st.GetErrorType() != domain.ErrorTypeDeadlineExceeded {
		t.Errorf("status read past the deadline: got %s %s %q, want failed deadline_exceeded", st.GetStatus(), st.GetErrorType(), st.GetErrorMessage())
	}
	for _, r := range expiring {
		evs := stored(t, s.bus, r.ID, hasTerminal)
		terminals := 0
		for _, e := range evs {
			if e.Kind().Terminal() {
				terminals++
			}
		}
		if terminals != 1 {
			t.Errorf("%s: got %d terminal events (%s), want 1", r.ID, terminals, kinds(evs))
		}
	}
	if q, err := s.store.Queue(context.Background()); err != nil || q.Waiting != 1 {
		t.Errorf("work queue: got %+v %v, want only the long one waiting (the expired ones withdrawn)", q, err)
	}

	// Visible: while work waits with no executor, GetStatus says so.
	if c := s.component(t, "executor"); c.GetStatus() != "degraded" || !strings.Contains(c.GetMessage(), "no executor runs") {
		t.Errorf("GetStatus's executor component with work waiting and no executor: got %s %q, want degraded saying no executor runs",
			c.GetStatus(), c.GetMessage())
	}

	// An executor comes (deployed here, as an operator's would be): the long one runs, the
	// expired ones never do.
	client := rayClient(t)
	name, zip := payload.Package()
	ev := natsbus.Config{URL: srv.URL(), EventsStream: natsbus.DefaultEventsStream}
	settings := executor.Settings{MinReplicas: 1, MaxReplicas: 1, ReplicaConcurrency: 8, MaxDeliveries: 3, NATSURL: srv.URL()}
	env := settings.Env(ev, s.store.Config())
	dep := &executor.Deployer{Store: s.store, Jobs: client, WorkingDirs: ray.NewPackager(client, name, zip, time.Minute),
		Version: executor.Version(env, 0), Env: env, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if st, err := dep.Ensure(ctx); err != nil || st != executor.StateDeployed {
		t.Fatalf("deploying the executor: %v %v", st, err)
	}
	if st := s.waitDone(t, s.status.url, long.ID); st.GetStatus() != "completed" {
		t.Fatalf("the long one: got %s (%s), want completed", st.GetStatus(), st.GetErrorMessage())
	}
	for _, c := range stub.Calls() {
		if c.Model == "m-expired" {
			t.Errorf("an expired deliberation ran an agent (the LLM got a call for %s)", c.Model)
		}
	}
}

// submitWithTimeout submits a one-agent deliberation of model with timeout_seconds timeout
// and returns its record as accepted.
func (s *system) submitWithTimeout(t *testing.T, llmURL, model string, timeout int32) domain.Record {
	t.Helper()
	req := request(uniqueTask(t), llmURL, model)
	req.Constraints.TimeoutSeconds = timeout
	resp, err := s.submit(t, req, rpcevents.CallOptions{})
	if err != nil || resp.GetStatus() != "submitted" {
		t.Fatalf("submit: %v %v", resp, err)
	}
	return s.record(t, resp.GetDeliberationId())
}
