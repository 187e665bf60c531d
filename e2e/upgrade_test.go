//go:build e2e

package e2e

import (
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fleet-ai/ray-executor/shared/executor/payload"
	"github.com/fleet-ai/ray-executor/shared/natsbus"

	"github.com/fleet-ai/ray-executor/shared/domain"
	"github.com/fleet-ai/ray-executor/shared/executor"
	"github.com/fleet-ai/ray-executor/shared/llmstub"
	"github.com/fleet-ai/ray-executor/shared/natslocal"
	"github.com/fleet-ai/ray-executor/shared/ray"
	"github.com/fleet-ai/ray-executor/shared/records"
	"github.com/fleet-ai/ray-executor/shared/rpcevents"
)

// A new payload version rolls the executor while deliberations run: the new executor
// starts, the old one stops pulling, finishes what it holds and exits; every deliberation
// ends exactly once, the ones in flight on the old executor, and the ones submitted after
// the roll on the new one. The new version is deployed the way a new function revision
// does it (a Deployer of another version over the same store and Ray head); execute's own
// and list's deployers, of the old version, defer to the newer one instead of rolling back.
func TestPayloadUpgradeWhileWorkIsInFlight(t *testing.T) {
	srv, err := natslocal.Start("127.0.0.1:0", filepath.Join(t.TempDir(), "nats"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	s := privateSystem(t, srv.URL(), "LOG_LEVEL=warn")
	old := s.waitExecutorLive(t, 4*time.Minute)

	stub, url := llm(t)
	stub.Script("slow", llmstub.Behavior{Delay: 4 * time.Second})
	var inFlight []string
	for i := 0; i < 4; i++ {
		resp, err := s.submit(t, request(uniqueTask(t), url, "slow", "slow"), rpcevents.CallOptions{})
		if err != nil {
			t.Fatal(err)
		}
		inFlight = append(inFlight, resp.GetDeliberationId())
	}
	for deadline := time.Now().Add(60 * time.Second); len(stub.Calls()) < 8; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the old executor made %d of 8 LLM calls", len(stub.Calls()))
		}
	}

	// The new version: same code, another version name, so the executor it runs reports it.
	const newVersion = "0000upgrade01"
	client := rayClient(t)
	name, zip := payload.Package()
	ev := natsbus.Config{URL: srv.URL(), EventsStream: natsbus.DefaultEventsStream}
	settings := executor.Settings{MinReplicas: 1, MaxReplicas: 2, ReplicaConcurrency: 64, MaxDeliveries: 3, NATSURL: srv.URL()}
	dep := &executor.Deployer{Store: s.store, Jobs: client, WorkingDirs: ray.NewPackager(client, name, zip, time.Minute),
		Version: newVersion, Env: settings.Env(ev, s.store.Config()), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// The deploy key was written by execute's first deploy: past RollHold only in a test
	// that waits 2 min, so rewrite its time as an old revision's deploy would look.
	d, rev, err := s.store.Deploy(ctx)
	if err != nil {
		t.Fatal(err)
	}
	d.At = domain.FormatTime(time.Now().Add(-executor.RollHold - time.Second))
	if err := s.store.SetDeploy(ctx, d, rev); err != nil {
		t.Fatal(err)
	}
	if st, err := dep.Ensure(ctx); err != nil || st != executor.StateDeployed {
		t.Fatalf("deploying the new version: %v %v", st, err)
	}
	newDep, _, err := s.store.Deploy(ctx)
	if err != nil || newDep.Version != newVersion {
		t.Fatalf("deploy key after the roll: %+v %v", newDep, err)
	}

	// The new executor beats; the old one's job ends (it drained and exited 0).
	var hb records.Heartbeat
	for deadline := time.Now().Add(3 * time.Minute); ; time.Sleep(250 * time.Millisecond) {
		var ok bool
		hb, ok, err = s.store.Heartbeat(ctx)
		if err == nil && ok && hb.Version == newVersion && hb.Fresh(time.Now()) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no heartbeat of the new version (last %+v, %v)", hb, err)
		}
	}
	// Submitted after the roll: runs on the new executor.
	after, err := s.submit(t, request(uniqueTask(t), url, "quick"), rpcevents.CallOptions{})
	if err != nil {
		t.Fatal(err)
	}

	for _, id := range inFlight {
		if st := s.waitDone(t, s.status.url, id); st.GetStatus() != "completed" {
			t.Errorf("in flight at the roll: %s ended %s (%s), want completed", id, st.GetStatus(), st.GetErrorMessage())
		}
		rec := s.record(t, id)
		if !strings.HasPrefix(rec.Executor, old.SubmissionID) || rec.Attempts != 1 {
			t.Errorf("%s ran on %q after %d deliveries, want once, on the old executor %s", id, rec.Executor, rec.Attempts, old.SubmissionID)
		}
		if stored, err := s.bus.Stored(ctx, id); err != nil || terminalCount(stored) != 1 {
			t.Errorf("%s: %d terminal events (%v), want exactly 1", id, terminalCount(stored), err)
		}
	}
	if st := s.waitDone(t, s.status.url, after.GetDeliberationId()); st.GetStatus() != "completed" {
		t.Errorf("submitted after the roll: %s, want completed", st.GetStatus())
	}
	if rec := s.record(t, after.GetDeliberationId()); !strings.HasPrefix(rec.Executor, newDep.SubmissionID) {
		t.Errorf("submitted after the roll ran on %q, want the new executor %s", rec.Executor, newDep.SubmissionID)
	}
	// The old executor's job drained and ended by itself: nobody stopped it.
	for deadline := time.Now().Add(90 * time.Second); ; time.Sleep(500 * time.Millisecond) {
		j, err := client.Job(ctx, old.SubmissionID)
		if err == nil && j.Status.Terminal() {
			if j.Status != ray.StatusSucceeded {
				t.Errorf("the old executor ended %s (%s), want SUCCEEDED after draining", j.Status, j.Message)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the old executor %s still runs after the roll: %+v %v", old.SubmissionID, j.Status, err)
		}
	}
	// execute's and list's deployers, of the old version, defer to the newer one: with its
	// deploy made to look older than RollHold (as after two minutes of a rollout), they
	// still do not roll it back, as they did once per RollHold before the deployers' claims.
	d, rev, err = s.store.Deploy(ctx)
	if err != nil || d.SubmissionID != newDep.SubmissionID {
		t.Fatalf("deploy key %+v %v, want the new version's", d, err)
	}
	d.At = domain.FormatTime(time.Now().Add(-executor.RollHold - time.Second))
	if err := s.store.SetDeploy(ctx, d, rev); err != nil {
		t.Fatal(err)
	}
	time.Sleep(12 * time.Second) // execute checks every 2 s, list every 5 s
	if d, _, err := s.store.Deploy(ctx); err != nil || d.SubmissionID != newDep.SubmissionID {
		t.Errorf("deploy key %+v %v, want the new version's to stand: the old version's functions must defer to it", d, err)
	}
	if hb, ok, err := s.store.Heartbeat(ctx); err != nil || !ok || hb.SubmissionID != newDep.SubmissionID {
		t.Errorf("heartbeat %+v %v %v, want the new executor's", hb, ok, err)
	}
}

func terminalCount(stored []natsbus.Stored) int {
	n := 0
	for _, e := range stored {
		if e.Kind().Terminal() {
			n++
		}
	}
	return n
}
