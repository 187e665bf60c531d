package records_test

import (
	"errors"
	"io"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/fleet-ai/ray-executor/shared/domain"
	"github.com/fleet-ai/ray-executor/shared/events"
	"github.com/fleet-ai/ray-executor/shared/natsbus"
	"github.com/fleet-ai/ray-executor/shared/natslocal"
	"github.com/fleet-ai/ray-executor/shared/records"
)

// Finished records and their events expire after the retention, and the work queue holds
// only unacknowledged work: what the store keeps does not grow with history. The retention
// here is 2 s (operators are held to at least 1h by RETENTION's check); the mechanism is the
// same: the bucket's and the events stream's MaxAge.
func TestRetentionExpiresFinishedRecordsAndEvents(t *testing.T) {
	const retention = 2 * time.Second
	srv, err := natslocal.Start("127.0.0.1:0", filepath.Join(t.TempDir(), "nats"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	bus, err := natsbus.Connect(natsbus.Config{URL: srv.URL(), Provision: true, Retention: retention}, "retention test",
		slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(bus.Close)
	ctx := ctxT(t)
	for !bus.Connected() {
		time.Sleep(10 * time.Millisecond)
	}
	if err := bus.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	s := records.New(bus.Conn(), bus.JetStream(), records.Config{Retention: retention})
	if err := s.Provision(ctx); err != nil {
		t.Fatal(err)
	}

	rec := record("delib-retention")
	if err := s.Create(ctx, rec); err != nil {
		t.Fatal(err)
	}
	if err := s.Enqueue(ctx, rec.ID, []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	ended, err := s.Update(ctx, rec.ID, func(r domain.Record) (domain.Record, error) {
		return r.Fail(domain.ErrorTypeExecutorLost, "test", time.Now())
	})
	if err != nil {
		t.Fatal(err)
	}
	records.AfterTerminal(ctx, s, bus, ended, events.SourceExecute, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if stored, err := bus.Stored(ctx, rec.ID); err != nil || len(stored) != 1 {
		t.Fatalf("before the retention: got %d events (%v), want the terminal one", len(stored), err)
	}
	if _, _, err := s.Get(ctx, rec.ID); err != nil {
		t.Fatalf("before the retention: %v", err)
	}

	deadline := time.Now().Add(retention + 10*time.Second)
	for {
		_, _, gerr := s.Get(ctx, rec.ID)
		stored, serr := bus.Stored(ctx, rec.ID)
		q, qerr := s.Queue(ctx)
		if errors.Is(gerr, domain.ErrNotFound) && serr == nil && len(stored) == 0 && qerr == nil && q.Waiting == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: record %v, events %d (%v), queue %+v (%v): want all gone", retention, gerr, len(stored), serr, q, qerr)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// The records bucket's MaxAge applies to the executor's keys too: the deploy key, written
// only at a deploy, would expire under an executor that runs longer than the retention.
// Rewritten as it is (executor.Deployer's keepDeployKey), it stays; a claim no one
// refreshes goes. The retention here is 2 s.
func TestRetentionExpiresExecutorKeysUnlessRewritten(t *testing.T) {
	const retention = 2 * time.Second
	srv, err := natslocal.Start("127.0.0.1:0", filepath.Join(t.TempDir(), "nats"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	bus, err := natsbus.Connect(natsbus.Config{URL: srv.URL()}, "retention test", slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(bus.Close)
	ctx := ctxT(t)
	for !bus.Connected() {
		time.Sleep(10 * time.Millisecond)
	}
	s := records.New(bus.Conn(), bus.JetStream(), records.Config{Retention: retention})
	if err := s.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	now := domain.FormatTime(time.Now())
	dep := records.Deploy{Version: "v1", SubmissionID: "ray-executor-v1-1-00000000", Generation: 1, At: now}
	if err := s.SetDeploy(ctx, dep, 0); err != nil {
		t.Fatal(err)
	}
	if err := s.SetClaim(ctx, records.Claim{Version: "v1", FirstSeen: now, Seen: now}, 0); err != nil {
		t.Fatal(err)
	}
	for end := time.Now().Add(2 * retention); time.Now().Before(end); time.Sleep(retention / 4) {
		got, rev, err := s.Deploy(ctx)
		if err != nil || rev == 0 || got.SubmissionID != dep.SubmissionID {
			t.Fatalf("the deploy key, rewritten every %s: %+v rev %d, %v", retention/4, got, rev, err)
		}
		if err := s.SetDeploy(ctx, got, rev); err != nil {
			t.Fatal(err)
		}
	}
	if c, rev, err := s.Claim(ctx, "v1"); err != nil || rev != 0 || c.Version != "" {
		t.Errorf("the claim, never rewritten, after twice the retention: %+v rev %d, %v; want it expired", c, rev, err)
	}
}
