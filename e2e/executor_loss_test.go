//go:build e2e && exclusive

package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"syscall"
	"testing"
	"time"

	"github.com/fleet-ai/ray-executor/shared/domain"
	"github.com/fleet-ai/ray-executor/shared/executor"
	pb "github.com/fleet-ai/ray-executor/shared/gen/fleet/ray_executor/v1"
	"github.com/fleet-ai/ray-executor/shared/llmstub"
	"github.com/fleet-ai/ray-executor/shared/records"
	"github.com/fleet-ai/ray-executor/shared/rpcevents"
	"github.com/fleet-ai/ray-executor/shared/testenv"
)

// reconcile runs one pass of the list function's reconciler (a PingSource tick).
func reconcile(t *testing.T, listURL string) {
	t.Helper()
	c := &rpcevents.Client{Source: "e2e-ping"}
	if err := c.Call(context.Background(), listURL, rpcevents.TypePing, &pb.GetActiveJobsRequest{}, rpcevents.CallOptions{}, &pb.GetActiveJobsResponse{}); err != nil {
		t.Fatalf("reconcile: %v", err)
	}
}

// exactlyOnce checks that deliberation id ended status with exactly one terminal event.
func (s *system) exactlyOnce(t *testing.T, id string, status domain.Status) domain.Record {
	t.Helper()
	st := s.waitDone(t, s.status.url, id)
	rec := s.record(t, id)
	if st.GetStatus() != string(status) || rec.State != status {
		t.Errorf("%s: status %q (%s), record %s, want %s", id, st.GetStatus(), st.GetErrorMessage(), rec.State, status)
	}
	evs := stored(t, s.bus, id, hasTerminal)
	if n := terminals(evs); n != 1 {
		t.Errorf("%s: %d terminal events (%s), want exactly 1", id, n, kinds(evs))
	}
	return rec
}

// The executor's Ray job stopped behind the system's back (`ray job stop`): the deployers
// (execute's, the list reconciler's) submit a new generation, the deliberation it was running
// is redelivered and completes, the ones queued meanwhile complete, each exactly once (one
// terminal event; the queued ones call the LLM once per agent). Stopped again soon after,
// the next generation waits its crash backoff and the first job is deleted from Ray.
func TestStoppedExecutorJobIsResubmitted(t *testing.T) {
	s := shared(t)
	stub, llmURL := llm(t)
	stub.Script("slow", llmstub.Behavior{Delay: 8 * time.Second})
	run := uniqueTask(t)
	ctx := context.Background()
	first, _, err := s.store.Deploy(ctx)
	if err != nil || first.SubmissionID == "" {
		t.Fatalf("deploy key: %+v %v", first, err)
	}

	running, err := s.submit(t, request(run+"-running", llmURL, "slow"), rpcevents.CallOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(90 * time.Second); len(stub.Calls()) == 0; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the deliberation never called the LLM")
		}
	}
	if _, err := s.ray.Stop(ctx, first.SubmissionID); err != nil {
		t.Fatalf("stop the executor job %s: %v", first.SubmissionID, err)
	}
	stopped := time.Now()
	waitJobEnded(t, s, first.SubmissionID)
	var queued []string
	for i := 0; i < 3; i++ {
		r, err := s.submit(t, request(fmt.Sprintf("%s-queued-%d", run, i), llmURL, "model-q"), rpcevents.CallOptions{})
		if err != nil {
			t.Fatalf("submission with the executor stopped: %v (execute must still accept)", err)
		}
		queued = append(queued, r.GetDeliberationId())
	}

	// A new generation runs: found by execute's check or the reconciler's tick, either when
	// the stopped job's heartbeat goes stale or, sooner, when the deployer checks the
	// heartbeat's job against Ray (executor.VerifyEvery). GetStatus meanwhile is logged:
	// how long it reads degraded depends on which came first (TestDeadlinesHoldWithNoExecutor
	// asserts the degraded report, with no executor at all).
	next, sawDegraded := s.waitReplaced(t, first)
	t.Logf("executor resubmitted: %s (generation %d) live %s after the stop; GetStatus meanwhile: %q",
		next.SubmissionID, next.Generation, time.Since(stopped).Round(time.Second), sawDegraded)
	if next.Generation != first.Generation+1 || next.Previous != first.SubmissionID {
		t.Errorf("got deploy %+v after generation %d, want the next one, naming %s as previous", next, first.Generation, first.SubmissionID)
	}

	for _, id := range queued {
		s.exactlyOnce(t, id, domain.StatusCompleted)
	}
	rec := s.exactlyOnce(t, running.GetDeliberationId(), domain.StatusCompleted)
	t.Logf("the deliberation running at the stop completed on attempt %d (executor %s)", rec.Attempts, rec.Executor)
	calls := map[string]int{}
	for _, c := range stub.Calls() {
		calls[c.Model]++
	}
	if calls["model-q"] != len(queued) {
		t.Errorf("the queued deliberations called the LLM %d times, want %d (once each)", calls["model-q"], len(queued))
	}

	// Stopped again minutes after it started: one more crash in a row. Its successor waits
	// executor.Backoff (measured from the end Ray reports), and the first job, now two
	// generations back, is deleted from Ray; the one just replaced stays for its log.
	if _, err := s.ray.Stop(ctx, next.SubmissionID); err != nil {
		t.Fatalf("stop the executor job %s: %v", next.SubmissionID, err)
	}
	ended := waitJobEnded(t, s, next.SubmissionID)
	third, _ := s.waitReplaced(t, next)
	at := domain.ParseTime(third.At)
	wait := executor.Backoff(third.Failures)
	t.Logf("stopped again: generation %d after %d crashes in a row, submitted %s after Ray's end of the last (backoff %s)",
		third.Generation, third.Failures, at.Sub(ended).Round(time.Millisecond), wait)
	if third.Failures != next.Failures+1 || third.Previous != next.SubmissionID || at.Before(ended.Add(wait-time.Second)) {
		t.Errorf("got deploy %+v after %+v ended at %s, want one more failure, submitted no sooner than %s after the end",
			third, next, ended.Format(time.RFC3339Nano), wait)
	}
	if _, err := s.ray.Job(ctx, first.SubmissionID); !errors.Is(err, domain.ErrNotFound) {
		t.Errorf("generation %d's job %s: got %v, want it deleted from Ray (not found)", first.Generation, first.SubmissionID, err)
	}
	if j, err := s.ray.Job(ctx, next.SubmissionID); err != nil || !j.Status.Terminal() {
		t.Errorf("generation %d's job %s: got %v %v, want it kept, ended", next.Generation, next.SubmissionID, j.Status, err)
	}
}

// waitJobEnded waits until Ray reports job id ended and returns when it did.
func waitJobEnded(t *testing.T, s *system, id string) time.Time {
	t.Helper()
	stopped := time.Now()
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(200 * time.Millisecond) {
		j, err := s.ray.Job(context.Background(), id)
		if err == nil && j.Status.Terminal() {
			t.Logf("executor job %s %s after %s", id, j.Status, time.Since(stopped).Round(time.Millisecond))
			if j.EndTime.IsZero() {
				t.Errorf("Ray reports no end time for the ended job %s (the deployer's backoff counts from it)", id)
			}
			return j.EndTime
		}
		if time.Now().After(deadline) {
			t.Fatalf("executor job %s still %s a minute after stop (%v)", id, j.Status, err)
		}
	}
}

// waitReplaced runs the reconciler until an executor other than old's beats for the
// submission the deploy key names, and returns that key and the first degraded executor
// report GetStatus gave meanwhile ("" if none).
func (s *system) waitReplaced(t *testing.T, old records.Deploy) (records.Deploy, string) {
	t.Helper()
	ctx := context.Background()
	sawDegraded := ""
	for deadline := time.Now().Add(3 * time.Minute); ; time.Sleep(500 * time.Millisecond) {
		if c := s.component(t, "executor"); c.GetStatus() == "degraded" && sawDegraded == "" {
			sawDegraded = c.GetMessage()
		}
		reconcile(t, s.list.url)
		next, _, err := s.store.Deploy(ctx)
		if hb, ok, _ := s.store.Heartbeat(ctx); err == nil && ok && hb.Fresh(time.Now()) && hb.SubmissionID == next.SubmissionID &&
			next.SubmissionID != old.SubmissionID {
			return next, sawDegraded
		}
		if time.Now().After(deadline) {
			t.Fatalf("no new executor 3 minutes after %s stopped; deploy key %+v", old.SubmissionID, next)
		}
	}
}

// rayActor is one row of the Ray state API's actor list.
type rayActor struct {
	ActorID   string `json:"actor_id"`
	ClassName string `json:"class_name"`
	State     string `json:"state"`
	JobID     string `json:"job_id"`
	PID       int    `json:"pid"`
}

// replicaActors lists the executor's Replica actors of Ray job jobID that are alive, from
// the dashboard's state API (GET /api/v0/actors; Ray 2.60's dashboard has no kill route).
func replicaActors(t *testing.T, jobID string) []rayActor {
	t.Helper()
	q := url.Values{"filter_keys": {"job_id"}, "filter_predicates": {"="}, "filter_values": {jobID}, "limit": {"1000"}}
	req, err := http.NewRequest(http.MethodGet, testenv.RayAddress(t)+"/api/v0/actors?"+q.Encode(), nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+testenv.RayToken(t))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct {
		Data struct {
			Result struct {
				Result []rayActor `json:"result"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("state API actors: %s %v", resp.Status, err)
	}
	var out []rayActor
	for _, a := range body.Data.Result.Result {
		if a.ClassName == "ReplicaBody" && a.State == "ALIVE" && a.PID > 0 {
			out = append(out, a)
		}
	}
	return out
}

// A Replica actor's process killed (SIGKILL) while it runs a deliberation: Ray restarts the
// actor, the supervisor runs it again, JetStream redelivers the unacknowledged work message
// after AckWait, and the deliberation completes exactly once: one terminal event, completed,
// on attempt 2. The agents' LLM calls were made twice (the lost attempt's and the rerun's).
func TestReplicaKilledMidDeliberationRunsOnce(t *testing.T) {
	s := shared(t)
	stub, llmURL := llm(t)
	stub.Script("slow-1", llmstub.Behavior{Delay: 6 * time.Second})
	stub.Script("slow-2", llmstub.Behavior{Delay: 6 * time.Second})
	ctx := context.Background()
	dep, _, err := s.store.Deploy(ctx)
	if err != nil {
		t.Fatal(err)
	}
	job, err := s.ray.Job(ctx, dep.SubmissionID)
	if err != nil || job.JobID == "" {
		t.Fatalf("executor job %s: %+v %v", dep.SubmissionID, job, err)
	}

	resp, err := s.submit(t, request(uniqueTask(t), llmURL, "slow-1", "slow-2"), rpcevents.CallOptions{})
	if err != nil {
		t.Fatal(err)
	}
	id := resp.GetDeliberationId()
	for deadline := time.Now().Add(90 * time.Second); len(stub.Calls()) < 2; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the deliberation never called the LLM")
		}
	}
	before := s.record(t, id)
	if before.State != domain.StatusRunning || before.Attempts != 1 {
		t.Fatalf("record before the kill: %+v, want running on attempt 1", before)
	}
	actors := replicaActors(t, job.JobID)
	if len(actors) == 0 {
		t.Fatalf("no live ReplicaBody actor of job %s (%s)", job.JobID, dep.SubmissionID)
	}
	for _, a := range actors { // every replica: whichever holds it dies
		if err := syscall.Kill(a.PID, syscall.SIGKILL); err != nil {
			t.Fatalf("kill replica %s (pid %d): %v", a.ActorID, a.PID, err)
		}
	}
	killed := time.Now()
	t.Logf("killed %d replica process(es) of %s while %s ran on %s", len(actors), dep.SubmissionID, id, before.Executor)

	rec := s.exactlyOnce(t, id, domain.StatusCompleted)
	t.Logf("completed %s after the kill, on attempt %d by %s", time.Since(killed).Round(time.Second), rec.Attempts, rec.Executor)
	if rec.Attempts != 2 {
		t.Errorf("got %d attempts, want 2 (the killed one and the redelivery)", rec.Attempts)
	}
	if rec.Outcome == nil || len(rec.Outcome.Agents) != 2 {
		t.Errorf("got outcome %+v, want both agents' results", rec.Outcome)
	}
	if n := len(stub.Calls()); n != 4 {
		t.Errorf("got %d LLM calls, want 4 (two agents, run twice)", n)
	}
	if hb := s.waitExecutorLive(t, time.Minute); hb.SubmissionID != dep.SubmissionID {
		t.Errorf("the executor job was replaced (%s, was %s): a replica's death must not take the job", hb.SubmissionID, dep.SubmissionID)
	}
}
