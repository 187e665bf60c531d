package natsbus

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/fleet-ai/ray-executor/shared/domain"
	"github.com/fleet-ai/ray-executor/shared/events"
	"github.com/fleet-ai/ray-executor/shared/natslocal"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// local starts an embedded JetStream server and a provisioned bus on it.
func local(t *testing.T) (*natslocal.Server, *Bus) {
	t.Helper()
	srv, err := natslocal.Start("127.0.0.1:0", filepath.Join(t.TempDir(), "nats"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	b, err := Connect(Config{URL: srv.URL(), Provision: true}, "test", quiet)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for !b.Connected() {
		time.Sleep(10 * time.Millisecond)
	}
	if err := b.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	return srv, b
}

var meta = domain.JobMeta{DeliberationID: "delib-t1", TaskID: "t1", NumAgents: 2}

func publishAll(t *testing.T, b *Bus, evs ...func() (events.Event, error)) {
	t.Helper()
	for _, build := range evs {
		ev, err := build()
		if err != nil {
			t.Fatal(err)
		}
		if err := b.Publish(context.Background(), ev); err != nil {
			t.Fatal(err)
		}
	}
}

func TestPublishIsDeduplicatedAndReadBack(t *testing.T) {
	_, b := local(t)
	sub := func() (events.Event, error) { return events.SubmittedEvent(events.SourceExecute, meta) }
	done := func() (events.Event, error) {
		return events.TerminalEvent(events.SourcePayload, meta, domain.StatusCompleted, &domain.Outcome{CompletedAgents: 2}, "", "")
	}
	cancelled := func() (events.Event, error) {
		return events.TerminalEvent(events.SourceExecute, meta, domain.StatusCancelled, nil, "by request", "cancelled")
	}
	publishAll(t, b, sub, sub, done, cancelled, done)
	got, err := b.Stored(context.Background(), meta.DeliberationID)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Kind() != events.Submitted || got[1].Kind() != events.Completed {
		t.Fatalf("got %d events %v, want submitted then completed: retries and a second terminal kind de-duplicated", len(got), got)
	}
	if evs, err := b.Stored(context.Background(), "delib-other"); err != nil || len(evs) != 0 {
		t.Errorf("got %v %v for a deliberation with no events, want none", evs, err)
	}
}

func TestWatchReplaysThenFollowsToTheEnd(t *testing.T) {
	_, b := local(t)
	publishAll(t, b, func() (events.Event, error) { return events.SubmittedEvent(events.SourceExecute, meta) })
	got := make(chan events.Kind, 10)
	errc := make(chan error, 1)
	go func() {
		errc <- b.Watch(context.Background(), meta.DeliberationID, func(s Stored) bool {
			got <- s.Kind()
			return s.Kind().Terminal()
		})
	}()
	if k := <-got; k != events.Submitted {
		t.Fatalf("got %s first, want the stored submitted", k)
	}
	time.Sleep(1500 * time.Millisecond) // past one empty fetch
	publishAll(t, b,
		func() (events.Event, error) { return events.StartedEvent(events.SourcePayload, meta) },
		func() (events.Event, error) {
			return events.AgentEvent(events.SourcePayload, meta, 0, domain.AgentResult{AgentID: "a", Status: "completed"})
		},
		func() (events.Event, error) {
			return events.TerminalEvent(events.SourcePayload, meta, domain.StatusCompleted, nil, "", "")
		})
	for _, want := range []events.Kind{events.Started, events.AgentCompleted, events.Completed} {
		select {
		case k := <-got:
			if k != want {
				t.Fatalf("got %s, want %s", k, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("no %s event within 10s", want)
		}
	}
	if err := <-errc; err != nil {
		t.Errorf("watch ended with %v, want nil after the terminal event", err)
	}
}

func TestDownNATSFailsFastAndRecovers(t *testing.T) {
	srv, b := local(t)
	addr := srv.Addr().String()
	store := srv.JetStreamConfig().StoreDir
	srv.Stop()
	for deadline := time.Now().Add(5 * time.Second); b.Connected(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("bus never noticed NATS went away")
		}
	}
	start := time.Now()
	ev, _ := events.SubmittedEvent(events.SourceExecute, meta)
	if err := b.Publish(context.Background(), ev); !errors.Is(err, domain.ErrUnavailable) || time.Since(start) > time.Second {
		t.Fatalf("got %v after %v with NATS down, want ErrUnavailable at once", err, time.Since(start))
	}
	again, err := natslocal.Start(addr, store)
	if err != nil {
		t.Fatal(err)
	}
	defer again.Stop()
	for deadline := time.Now().Add(10 * time.Second); !b.Connected(); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("bus never reconnected")
		}
	}
	if err := b.Publish(context.Background(), ev); err != nil {
		t.Fatalf("publish after NATS came back: %v", err)
	}
}
