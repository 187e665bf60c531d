//go:build e2e && exclusive

package e2e

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/fleet-ai/ray-executor/shared/domain"
	"github.com/fleet-ai/ray-executor/shared/llmstub"
	"github.com/fleet-ai/ray-executor/shared/ray"
	"github.com/fleet-ai/ray-executor/shared/records"
)

// TestDeadlinesHoldThroughClusterLoss (issue 16): the Ray cluster goes away under running
// and queued deliberations, and every one of them still ends by its deadline (acceptance +
// timeout + domain.DeadlineGrace) plus one reconcile period, with exactly one terminal
// event, because the gateway keeps deadlines with NATS alone. Once Ray is back, no expired
// deliberation calls the LLM, and the one whose deadline is far off runs.
//
//   - "head stopped": `ray stop` on the only node (every Ray process, the executor's too).
//     Strict: the running deliberation ends failed deadline_exceeded saying it started, the
//     queued ones saying they never started, and GetStatus reports the executor gone.
//   - "raylet killed": the node's raylet dies (SIGKILL), as when a node is lost. The
//     executor's processes may outlive it and finish some work themselves, so any single
//     terminal end counts; a failure must still be deadline_exceeded or the executor's own
//     ending at the deadline.
//
// Both restart the head afterwards (no GCS fault tolerance: a fresh head), as an operator
// would, and wait for a new executor on it.
func TestDeadlinesHoldThroughClusterLoss(t *testing.T) {
	s := shared(t)
	stub, llmURL := llm(t)
	t.Cleanup(func() { rayHead(t, "up") }) // whatever happens, leave a head for the next test

	for _, tc := range []struct {
		name   string
		strict bool
		lose   func(t *testing.T)
	}{
		{"head stopped", true, func(t *testing.T) { rayHead(t, "stop") }},
		{"raylet killed", false, func(t *testing.T) {
			if out, err := exec.Command("pkill", "-KILL", "-x", "raylet").CombinedOutput(); err != nil {
				t.Fatalf("pkill raylet: %v %s", err, out)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s.waitExecutorOnHead(t, 4*time.Minute)
			run := uniqueTask(t)
			hang, short, long := run+"-hang", run+"-short", run+"-long"
			stub.Script(hang, llmstub.Behavior{Delay: 60 * time.Second})
			submit := func(model string, timeout int32) domain.Record { return s.submitWithTimeout(t, llmURL, model, timeout) }
			running := submit(hang, 10)
			for until := time.Now().Add(time.Minute); !called(stub, hang); time.Sleep(100 * time.Millisecond) {
				if time.Now().After(until) {
					t.Fatal("the running deliberation never called the LLM")
				}
			}
			tc.lose(t)
			lost := time.Now()
			queued := []domain.Record{submit(short, 5), submit(short, 5)}
			far := submit(long, 300)

			sawGone := ""
			for _, r := range append([]domain.Record{running}, queued...) {
				deadline := domain.ParseTime(r.Deadline)
				var got domain.Record
				for until := deadline.Add(30 * time.Second); ; time.Sleep(500 * time.Millisecond) {
					if c := s.component(t, "executor"); c.GetStatus() != "healthy" && sawGone == "" {
						sawGone = c.GetStatus() + ": " + c.GetMessage()
					}
					if got = s.record(t, r.ID); got.Terminal() || time.Now().After(until) {
						break
					}
				}
				if !got.Terminal() {
					t.Fatalf("%s: still %s 30 s past its deadline %s", r.ID, got.State, r.Deadline)
				}
				// The reconciler runs every 5 s; 2 s more for a loaded machine.
				if ended := domain.ParseTime(got.EndedAt); ended.After(deadline.Add(7 * time.Second)) {
					t.Errorf("%s ended %s, more than a reconcile period (5 s) and 2 s after its deadline %s", r.ID, got.EndedAt, r.Deadline)
				}
				evs := stored(t, s.bus, r.ID, hasTerminal)
				if n := terminals(evs); n != 1 {
					t.Errorf("%s: %d terminal events (%s), want exactly 1", r.ID, n, kinds(evs))
				}
				want := "never started"
				if r.ID == running.ID {
					want = "started (attempt"
				}
				switch {
				case tc.strict && (got.State != domain.StatusFailed || got.ErrorType != domain.ErrorTypeDeadlineExceeded ||
					!strings.Contains(got.Error, want)):
					t.Errorf("%s: got %s %s %q, want failed deadline_exceeded saying %q", r.ID, got.State, got.ErrorType, got.Error, want)
				case !tc.strict && got.State == domain.StatusFailed && got.ErrorType != domain.ErrorTypeDeadlineExceeded &&
					domain.ParseTime(got.EndedAt).Before(domain.ParseTime(got.CreatedAt).Add(time.Duration(r.TimeoutSeconds)*time.Second)):
					t.Errorf("%s: failed %s %q before its timeout; only a deadline may end it here", r.ID, got.ErrorType, got.Error)
				}
				t.Logf("%s (timeout %d s) ended %s %s %q, %s after the loss", r.ID, r.TimeoutSeconds, got.State, got.ErrorType,
					got.Error, domain.ParseTime(got.EndedAt).Sub(lost).Round(100*time.Millisecond))
			}
			if tc.strict && sawGone == "" {
				t.Error("GetStatus's executor component stayed healthy with the head stopped and work waiting")
			}
			t.Logf("GetStatus's executor component meanwhile: %q", sawGone)

			rayHead(t, "stop")
			rayHead(t, "up")
			back := time.Now()
			hb := s.waitExecutorOnHead(t, 4*time.Minute)
			t.Logf("a new executor (%s) runs %s after the head came back", hb.SubmissionID, time.Since(back).Round(time.Second))
			if st := s.waitDone(t, s.status.url, far.ID); st.GetStatus() != "completed" {
				t.Errorf("the deliberation with 300 s: got %s (%s), want completed", st.GetStatus(), st.GetErrorMessage())
			}
			for _, c := range stub.Calls() {
				if c.Received.After(back) && (c.Model == short || c.Model == hang) {
					t.Errorf("an expired deliberation called the LLM (%s) after Ray came back", c.Model)
				}
			}
		})
	}
}

func called(stub *llmstub.Server, model string) bool {
	for _, c := range stub.Calls() {
		if c.Model == model {
			return true
		}
	}
	return false
}

// waitExecutorOnHead waits for a fresh executor heartbeat whose job the Ray head runs now
// (after a restart, the old generation's heartbeat may still be fresh for a while).
func (s *system) waitExecutorOnHead(t *testing.T, within time.Duration) records.Heartbeat {
	t.Helper()
	ctx := context.Background()
	for until := time.Now().Add(within); ; time.Sleep(500 * time.Millisecond) {
		hb, ok, err := s.store.Heartbeat(ctx)
		if err == nil && ok && hb.Fresh(time.Now()) {
			if j, err := s.ray.Job(ctx, hb.SubmissionID); err == nil && !j.Status.Terminal() && j.Status == ray.StatusRunning {
				return hb
			}
		}
		if time.Now().After(until) {
			t.Fatalf("no executor running on the head within %s (heartbeat %+v, %v)", within, hb, err)
		}
	}
}
