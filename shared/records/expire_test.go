package records_test

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/fleet-ai/ray-executor/shared/domain"
	"github.com/fleet-ai/ray-executor/shared/events"
	"github.com/fleet-ai/ray-executor/shared/natsbus"
	"github.com/fleet-ai/ray-executor/shared/natslocal"
	"github.com/fleet-ai/ray-executor/shared/records"
)

// Eight deciders (status replicas, the reconciler) find the same expired deliberation at
// once: exactly one ends it, one terminal event is stored, its queued work message is
// withdrawn, and every decider gets the same ended record back.
func TestEndExpiredDecidesOnce(t *testing.T) {
	s, bus := newStore(t)
	ctx := ctxT(t)
	rec := record("d1") // timeout 60 s: deadline = created + 60 s + DeadlineGrace
	if err := s.Create(ctx, rec); err != nil {
		t.Fatal(err)
	}
	_ = s.PutActive(ctx, rec.Active())
	if err := s.Enqueue(ctx, "d1", []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	if err := s.Enqueue(ctx, "other", []byte(`{}`)); err != nil {
		t.Fatal(err)
	}

	early := domain.ParseTime(rec.Deadline).Add(-time.Second)
	if got, ended, err := records.EndExpired(ctx, s, bus, rec, early, events.SourceStatus, quiet); ended || err != nil || got.State != domain.StatusPending {
		t.Fatalf("before the deadline: got %s ended=%v err=%v, want it left pending", got.State, ended, err)
	}

	late := domain.ParseTime(rec.Deadline).Add(time.Millisecond)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var winners int
	var got []domain.Record
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, ended, err := records.EndExpired(ctx, s, bus, rec, late, events.SourceStatus, quiet)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				t.Errorf("EndExpired: %v", err)
			}
			if ended {
				winners++
			}
			got = append(got, r)
		}()
	}
	wg.Wait()
	if winners != 1 {
		t.Fatalf("got %d deciders ending it, want 1", winners)
	}
	for _, r := range got {
		if r.State != domain.StatusFailed || r.ErrorType != domain.ErrorTypeDeadlineExceeded || !strings.Contains(r.Error, "never started") {
			t.Errorf("a decider got %s %s %q, want failed deadline_exceeded, never started", r.State, r.ErrorType, r.Error)
		}
	}
	stored, err := bus.Stored(ctx, "d1")
	if err != nil {
		t.Fatal(err)
	}
	if len(stored) != 1 || stored[0].Kind() != events.Failed {
		t.Fatalf("got events %+v, want one failed", stored)
	}
	if n := streamMsgs(t, bus, records.DefaultWorkStream); n != 1 {
		t.Errorf("the work queue holds %d messages, want 1 (the other deliberation's): d1's withdrawn", n)
	}
	if ids := activeIDs(t, s); len(ids) != 0 {
		t.Errorf("active entries left: %v", ids)
	}
	c, _ := s.Counters(ctx)
	if c[records.CountFailed] != 1 {
		t.Errorf("got counters %v, want failed 1", c)
	}
	if _, ended, err := records.EndExpired(ctx, s, bus, got[0], late.Add(time.Hour), events.SourceStatus, quiet); ended || err != nil {
		t.Errorf("an ended record again: ended=%v err=%v, want nothing done", ended, err)
	}
}

// A running deliberation past its deadline ends "started but did not finish", and the
// executor running it gets the cancel signal so its agents stop.
func TestEndExpiredCancelsARunningOne(t *testing.T) {
	s, bus := newStore(t)
	ctx := ctxT(t)
	rec := record("d2")
	_ = s.Create(ctx, rec)
	rec, err := s.Update(ctx, "d2", func(r domain.Record) (domain.Record, error) { return r.Start(2, "replica-1", time.Now()) })
	if err != nil {
		t.Fatal(err)
	}
	signals := make(chan *nats.Msg, 4)
	sub, err := bus.Conn().ChanSubscribe(records.CancelSubjectPrefix+"d2", signals)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	_ = bus.Conn().Flush()

	got, ended, err := records.EndExpired(ctx, s, bus, rec, domain.ParseTime(rec.Deadline).Add(time.Second), events.SourceReconciler, quiet)
	if err != nil || !ended || got.ErrorType != domain.ErrorTypeDeadlineExceeded || !strings.Contains(got.Error, "started (attempt 2)") {
		t.Fatalf("got %+v ended=%v err=%v, want failed deadline_exceeded naming attempt 2", got, ended, err)
	}
	select {
	case <-signals:
	case <-time.After(5 * time.Second):
		t.Fatal("no cancel signal for the running deliberation")
	}
	if r, _, _ := s.Get(context.Background(), "d2"); r.State != domain.StatusFailed {
		t.Errorf("stored record is %s, want failed", r.State)
	}
}

// A function is ready only once the records resources exist: a request before that could
// only be refused for a missing bucket (it failed CI's first submit through funcframework).
func TestProvisionIsTheFunctionsReadiness(t *testing.T) {
	srv, err := natslocal.Start("127.0.0.1:0", filepath.Join(t.TempDir(), "nats"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	bus, err := natsbus.Connect(natsbus.Config{URL: srv.URL(), Provision: true}, "test", quiet)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(bus.Close)
	s := records.New(bus.Conn(), bus.JetStream(), records.Config{})
	ready := records.Provision(context.Background(), bus, s, quiet)
	var rerr error
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if rerr = ready(context.Background()); rerr == nil {
			break
		}
		if !errors.Is(rerr, domain.ErrUnavailable) {
			t.Fatalf("not ready yet: got %v, want ErrUnavailable", rerr)
		}
	}
	if rerr != nil {
		t.Fatalf("never ready: %v", rerr)
	}
	if _, _, err := s.Get(context.Background(), "delib-unknown"); !errors.Is(err, domain.ErrNotFound) {
		t.Errorf("once ready, reading an unknown id: got %v, want ErrNotFound (the bucket exists)", err)
	}
	srv.Stop()
	for deadline := time.Now().Add(10 * time.Second); bus.Connected() && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
	}
	if err := ready(context.Background()); err == nil {
		t.Error("ready with NATS gone, want an error")
	}
}
