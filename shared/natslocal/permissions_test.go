package natslocal_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/fleet-ai/ray-executor/shared/domain"
	"github.com/fleet-ai/ray-executor/shared/events"
	"github.com/fleet-ai/ray-executor/shared/natsbus"
	"github.com/fleet-ai/ray-executor/shared/natslocal"
	"github.com/fleet-ai/ray-executor/shared/records"
)

// The users of knative/nats/ray-executor-users.conf, on a real NATS server: the functions'
// user provisions and writes everything a deliberation needs; the reader's follows lifecycle
// events but can forge neither a terminal event nor a record, nor read the work queue (where
// prompts are).
func TestLeastPrivilegeUsers(t *testing.T) {
	t.Setenv("RAY_EXECUTOR_FUNCTIONS_NATS_PASSWORD", "functions-password-0123456789")
	t.Setenv("RAY_EXECUTOR_READER_NATS_PASSWORD", "reader-password-0123456789")
	// The executor's user is exercised by the payload's test_executor_ray.py, with the real executor.
	t.Setenv("RAY_EXECUTOR_EXECUTOR_NATS_PASSWORD", "executor-password-0123456789")
	srv, err := natslocal.StartConfig("127.0.0.1:0", t.TempDir(), filepath.Join("..", "..", "knative", "nats", "ray-executor-users.conf"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// The functions: everything of an accepted deliberation, and reading its events back.
	bus, err := natsbus.Connect(natsbus.Config{URL: srv.URL(), User: "ray-executor-functions",
		Password: "functions-password-0123456789", Provision: true}, "functions", slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(bus.Close)
	for !bus.Connected() && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
	}
	store := records.New(bus.Conn(), bus.JetStream(), records.Config{})
	if err := bus.Provision(ctx); err != nil {
		t.Fatalf("functions: provision streams: %v", err)
	}
	if err := store.Provision(ctx); err != nil {
		t.Fatalf("functions: provision records: %v", err)
	}
	id := domain.DeliberationIDForKey("perm")
	rec := domain.NewRecord(id, domain.Request{Kind: domain.KindDeliberation, TaskID: "t", Agents: make([]domain.Agent, 1),
		Constraints: domain.Constraints{TimeoutSeconds: 60}}, "h", "alice", "", time.Now())
	steps := map[string]func() error{
		"create a record": func() error { return store.Create(ctx, rec) },
		"index it":        func() error { return store.PutActive(ctx, rec.Active()) },
		"queue its work":  func() error { return store.Enqueue(ctx, id, []byte(`{}`)) },
		"count it":        func() error { return store.Count(ctx, records.CountSubmitted, id+".submitted", 1) },
		"read its record": func() error { _, _, err := store.Get(ctx, id); return err },
		"read the queue":  func() error { _, err := store.Queue(ctx); return err },
		"read the counts": func() error { _, err := store.Counters(ctx); return err },
		"list the active": func() error {
			got, _, err := store.Active(ctx)
			if err == nil && len(got) != 1 {
				err = fmt.Errorf("got %d active entries, want 1", len(got))
			}
			return err
		},
		"unindex it":      func() error { return store.DeleteActive(ctx, id) },
		"signal a cancel": func() error { return store.RequestCancel(id) },
		"publish an event": func() error {
			ev, _ := events.SubmittedEvent(events.SourceExecute, rec.Meta())
			return bus.Publish(ctx, ev)
		},
	}
	for _, name := range []string{"create a record", "index it", "queue its work", "count it", "read its record", "read the queue",
		"read the counts", "list the active", "unindex it", "signal a cancel", "publish an event"} {
		if err := steps[name](); err != nil {
			t.Errorf("functions: %s: %v", name, err)
		}
	}
	if evs, err := bus.Stored(ctx, id); err != nil || len(evs) != 1 {
		t.Errorf("functions: read the events back: %d, %v", len(evs), err)
	}

	// The reader.
	nc, err := nats.Connect(srv.URL(), nats.UserInfo("ray-executor-reader", "reader-password-0123456789"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	short := func() (context.Context, context.CancelFunc) { return context.WithTimeout(ctx, 2*time.Second) }
	c, cancelC := short()
	cons, err := js.OrderedConsumer(c, natsbus.DefaultEventsStream, jetstream.OrderedConsumerConfig{FilterSubjects: []string{events.SubjectFilter(id)}})
	if err != nil {
		t.Fatalf("reader: follow the events: %v", err)
	}
	msg, err := cons.Next(jetstream.FetchMaxWait(2 * time.Second))
	cancelC()
	if err != nil || msg.Subject() != events.Subject(id, events.Submitted) {
		t.Errorf("reader: the submitted event: %v %v", msg, err)
	}
	forged, _ := json.Marshal(map[string]string{"deliberation_id": id, "status": "cancelled"})
	c, cancelC = short()
	if _, err := js.Publish(c, events.Subject(id, events.Cancelled), forged); err == nil {
		t.Error("reader: forged a terminal event")
	}
	cancelC()
	c, cancelC = short()
	if _, err := nc.RequestWithContext(c, "$KV."+records.DefaultBucket+".d."+id, []byte(`{"state":"cancelled"}`)); err == nil {
		t.Error("reader: wrote a record")
	}
	cancelC()
	c, cancelC = short()
	if _, err := js.OrderedConsumer(c, records.DefaultWorkStream, jetstream.OrderedConsumerConfig{}); err == nil {
		t.Error("reader: read the work queue, where prompts are")
	}
	cancelC()
	if r, _, err := store.Get(ctx, id); err != nil || r.State != domain.StatusPending {
		t.Errorf("the record after the reader's attempts: %+v %v", r, err)
	}
}
