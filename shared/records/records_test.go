package records_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/fleet-ai/ray-executor/shared/domain"
	"github.com/fleet-ai/ray-executor/shared/events"
	"github.com/fleet-ai/ray-executor/shared/natsbus"
	"github.com/fleet-ai/ray-executor/shared/natslocal"
	"github.com/fleet-ai/ray-executor/shared/records"
	"github.com/fleet-ai/ray-executor/shared/testenv"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// newStore is a provisioned store on a fresh embedded NATS server.
func newStore(t *testing.T) (*records.Store, *natsbus.Bus) {
	t.Helper()
	bus := testenv.NATS(t)
	s := records.New(bus.Conn(), bus.JetStream(), records.Config{})
	if err := s.Provision(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	return s, bus
}

func bucket(t *testing.T, bus *natsbus.Bus) jetstream.KeyValue {
	t.Helper()
	kv, err := bus.JetStream().KeyValue(ctxT(t), records.DefaultBucket)
	if err != nil {
		t.Fatal(err)
	}
	return kv
}

func record(id string) domain.Record {
	r := domain.Request{Kind: domain.KindDeliberation, TaskID: "task-" + id, Role: "dev",
		Constraints: domain.Constraints{TimeoutSeconds: 60}, Agents: []domain.Agent{{ID: "a1"}, {ID: "a2"}}}
	return domain.NewRecord(id, r, "h-"+id, "", "", time.Now())
}

func TestProvisionMakesTheResourcesOfTheSpec(t *testing.T) {
	s, bus := newStore(t)
	ctx := ctxT(t)
	// Idempotent: a second provisioning (another function starting) changes nothing.
	if err := s.Provision(ctx); err != nil {
		t.Fatalf("second Provision: %v", err)
	}
	js := bus.JetStream()
	st, err := js.Stream(ctx, records.DefaultWorkStream)
	if err != nil {
		t.Fatal(err)
	}
	wc := st.CachedInfo().Config
	if wc.Retention != jetstream.WorkQueuePolicy || wc.Storage != jetstream.FileStorage || wc.Duplicates != 2*time.Hour ||
		wc.MaxAge != 7*24*time.Hour || len(wc.Subjects) != 1 || wc.Subjects[0] != "ray_executor.work.*" {
		t.Errorf("work stream config: %+v", wc)
	}
	c, err := js.Consumer(ctx, records.DefaultWorkStream, records.WorkConsumer)
	if err != nil {
		t.Fatal(err)
	}
	cc := c.CachedInfo().Config
	if cc.Durable != "executor" || cc.AckPolicy != jetstream.AckExplicitPolicy || cc.AckWait != 30*time.Second ||
		cc.MaxDeliver != -1 || cc.MaxAckPending != 10000 {
		t.Errorf("work consumer config: %+v", cc)
	}
	cs, err := js.Stream(ctx, records.DefaultCountersStream)
	if err != nil {
		t.Fatal(err)
	}
	if cfg := cs.CachedInfo().Config; !cfg.AllowMsgCounter || cfg.Duplicates != 2*time.Hour || cfg.Subjects[0] != "ray_executor.count.*" {
		t.Errorf("counters stream config: %+v", cfg)
	}
	kv := bucket(t, bus)
	ks, err := kv.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if ks.History() != 1 || ks.TTL() != 7*24*time.Hour {
		t.Errorf("bucket: history %d, TTL %v", ks.History(), ks.TTL())
	}
}

// The shortest RETENTION the configuration admits (1h) is shorter than the queue's
// duplicate window (2h), which NATS refuses on a stream with that MaxAge.
func TestProvisionWithTheShortestRetention(t *testing.T) {
	bus := testenv.NATS(t)
	s := records.New(bus.Conn(), bus.JetStream(), records.Config{Retention: time.Hour})
	if err := s.Provision(ctxT(t)); err != nil {
		t.Fatalf("RETENTION=1h: %v", err)
	}
	st, err := bus.JetStream().Stream(ctxT(t), records.DefaultWorkStream)
	if err != nil {
		t.Fatal(err)
	}
	if cfg := st.CachedInfo().Config; cfg.MaxAge != time.Hour || cfg.Duplicates > cfg.MaxAge || cfg.Duplicates <= 0 {
		t.Errorf("got MaxAge %v, duplicates %v", cfg.MaxAge, cfg.Duplicates)
	}
}

func TestCreateGet(t *testing.T) {
	s, bus := newStore(t)
	ctx := ctxT(t)
	rec := record("d1")
	if err := s.Create(ctx, rec); err != nil {
		t.Fatal(err)
	}
	got, rev, err := s.Get(ctx, "d1")
	if err != nil {
		t.Fatal(err)
	}
	if rev == 0 || got.ID != "d1" || got.State != domain.StatusPending || got.RequestSHA256 != "h-d1" || got.CreatedAt != rec.CreatedAt {
		t.Errorf("got %+v at revision %d", got, rev)
	}
	// A second create of the same id is how execute finds a duplicate; it changes nothing.
	other := rec
	other.RequestSHA256 = "other"
	if err := s.Create(ctx, other); !errors.Is(err, domain.ErrAlreadyExists) {
		t.Fatalf("duplicate create: got %v, want ErrAlreadyExists", err)
	}
	if again, rev2, _ := s.Get(ctx, "d1"); again.RequestSHA256 != "h-d1" || rev2 != rev {
		t.Errorf("the duplicate create changed the record: %+v rev %d", again, rev2)
	}
	if _, _, err := s.Get(ctx, "nope"); !errors.Is(err, domain.ErrNotFound) {
		t.Errorf("missing: got %v, want ErrNotFound", err)
	}
	// The record is stored under d.<id> as the JSON of specs/records.md.
	e, err := bucket(t, bus).Get(ctx, "d.d1")
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(e.Value(), &m); err != nil || m["state"] != "pending" || m["v"] != 1.0 {
		t.Errorf("stored %s", e.Value())
	}
}

func TestGetSpreadsReadsOverConnections(t *testing.T) {
	s, bus := newStore(t)
	ctx := ctxT(t)
	if err := s.Create(ctx, record("d1")); err != nil {
		t.Fatal(err)
	}
	var readers []*records.Store
	var conns []*nats.Conn
	for range 2 {
		nc, js, err := bus.Dial()
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, nc)
		readers = append(readers, records.New(nc, js, records.Config{}))
	}
	s.SpreadReads(readers...)
	for range 9 {
		if got, _, err := s.Get(ctx, "d1"); err != nil || got.ID != "d1" {
			t.Fatalf("got %+v, %v", got, err)
		}
	}
	for i, nc := range conns {
		if n := nc.Stats().InMsgs; n < 3 {
			t.Errorf("reader %d received %d replies for 9 reads over 3 connections, want at least 3", i, n)
		}
	}
	// A reader whose connection is gone is passed over: every read still answers.
	conns[0].Close()
	for range 6 {
		if _, _, err := s.Get(ctx, "d1"); err != nil {
			t.Fatalf("with a reader closed: %v", err)
		}
	}
}

func TestGetRefusesABadRecordAlone(t *testing.T) {
	s, bus := newStore(t)
	ctx := ctxT(t)
	kv := bucket(t, bus)
	for key, body := range map[string]string{"d.junk": "{not json", "d.v2": `{"v":2,"id":"v2","state":"pending"}`} {
		if _, err := kv.Put(ctx, key, []byte(body)); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range []string{"junk", "v2"} {
		if _, _, err := s.Get(ctx, id); !errors.Is(err, domain.ErrUnavailable) {
			t.Errorf("%s: got %v, want ErrUnavailable", id, err)
		}
	}
	if err := s.Create(ctx, record("fine")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Get(ctx, "fine"); err != nil {
		t.Errorf("a good record next to bad ones: %v", err)
	}
}

func TestUpdateIsCompareAndSet(t *testing.T) {
	s, _ := newStore(t)
	ctx := ctxT(t)
	if err := s.Create(ctx, record("d1")); err != nil {
		t.Fatal(err)
	}
	const n = 50
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := s.Update(ctx, "d1", func(r domain.Record) (domain.Record, error) {
				r.Attempts++
				return r, nil
			})
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("update: %v", err)
		}
	}
	got, _, err := s.Get(ctx, "d1")
	if err != nil {
		t.Fatal(err)
	}
	if got.Attempts != n {
		t.Errorf("got attempts %d after %d concurrent increments: updates were lost", got.Attempts, n)
	}

	// A change that refuses (a terminal record) writes nothing and returns the record read.
	done, err := s.Update(ctx, "d1", func(r domain.Record) (domain.Record, error) {
		next, _, err := r.Cancel("r", time.Now())
		return next, err
	})
	if err != nil || done.State != domain.StatusCancelled {
		t.Fatalf("cancel: %v %v", done.State, err)
	}
	_, rev, _ := s.Get(ctx, "d1")
	back, err := s.Update(ctx, "d1", func(r domain.Record) (domain.Record, error) {
		return r.Start(9, "x", time.Now())
	})
	if !errors.Is(err, domain.ErrTerminal) || back.State != domain.StatusCancelled {
		t.Errorf("start out of cancelled: got %v %v, want ErrTerminal and the cancelled record", back.State, err)
	}
	if _, rev2, _ := s.Get(ctx, "d1"); rev2 != rev {
		t.Errorf("a refused change wrote: revision %d -> %d", rev, rev2)
	}
	if _, err := s.Update(ctx, "nope", func(r domain.Record) (domain.Record, error) { return r, nil }); !errors.Is(err, domain.ErrNotFound) {
		t.Errorf("update of a missing record: got %v, want ErrNotFound", err)
	}
}

// indexSubjects counts the active index's subjects in the bucket's stream: entries and
// any delete markers.
func indexSubjects(t *testing.T, bus *natsbus.Bus) int {
	t.Helper()
	st, err := bus.JetStream().Stream(ctxT(t), "KV_"+records.DefaultBucket)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctxT(t), jetstream.WithSubjectFilter("$KV."+records.DefaultBucket+".active.*"))
	if err != nil {
		t.Fatal(err)
	}
	return len(info.State.Subjects)
}

func activeIDs(t *testing.T, s *records.Store) []string {
	t.Helper()
	entries, bad, err := s.Active(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(bad) != 0 {
		t.Errorf("bad entries %v", bad)
	}
	ids := []string{}
	for _, e := range entries {
		ids = append(ids, e.ID)
	}
	sort.Strings(ids)
	return ids
}

func TestActiveIndex(t *testing.T) {
	s, bus := newStore(t)
	ctx := ctxT(t)
	if got := activeIDs(t, s); len(got) != 0 {
		t.Fatalf("empty index: got %v", got)
	}
	for _, id := range []string{"a", "b", "c"} {
		if err := s.PutActive(ctx, record(id).Active()); err != nil {
			t.Fatal(err)
		}
	}
	// A re-put (the executor starting it) replaces the entry.
	run, _ := record("a").Start(1, "x", time.Now())
	if err := s.PutActive(ctx, run.Active()); err != nil {
		t.Fatal(err)
	}
	// Records themselves are not in the index.
	if err := s.Create(ctx, record("z")); err != nil {
		t.Fatal(err)
	}
	entries, _, err := s.Active(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 3 {
		t.Fatalf("got %d entries, want 3: %+v", len(entries), entries)
	}
	for _, e := range entries {
		wantState := domain.StatusPending
		if e.ID == "a" {
			wantState = domain.StatusRunning
		}
		if e.State != wantState || e.TaskID != "task-"+e.ID || e.NumAgents != 2 {
			t.Errorf("entry %+v", e)
		}
	}
	if err := s.DeleteActive(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteActive(ctx, "b"); err != nil {
		t.Errorf("deleting twice: %v", err)
	}
	if err := s.DeleteActive(ctx, "never"); err != nil {
		t.Errorf("deleting an absent entry: %v", err)
	}
	if got := fmt.Sprint(activeIDs(t, s)); got != "[a c]" {
		t.Errorf("after deleting b: got %s, want [a c]", got)
	}
	if err := s.PurgeDeletes(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(activeIDs(t, s)); got != "[a c]" {
		t.Errorf("after purging the delete markers: got %s, want [a c]", got)
	}
	// Only delete markers left: the listing still ends, empty.
	_ = s.DeleteActive(ctx, "a")
	_ = s.DeleteActive(ctx, "c")
	if got := activeIDs(t, s); len(got) != 0 {
		t.Errorf("all deleted: got %v", got)
	}
	if err := s.PurgeDeletes(ctx, time.Hour); err != nil {
		t.Fatal(err)
	}
	if got := activeIDs(t, s); len(got) != 0 {
		t.Errorf("all deleted, markers kept: got %v", got)
	}
	// DeleteActive leaves nothing behind: no delete marker counts against the batch read.
	if n := indexSubjects(t, bus); n != 0 {
		t.Errorf("all deleted: %d subjects left in the index, want 0", n)
	}
	// A KV delete marker (what versions before 2026-12-03 wrote to unindex) is not an entry;
	// PurgeDeletes removes it once it is old enough, and never an entry written after it.
	_ = s.PutActive(ctx, record("old").Active())
	_ = s.PutActive(ctx, record("back").Active())
	for _, k := range []string{"active.old", "active.back"} {
		if err := bucket(t, bus).Delete(ctx, k); err != nil {
			t.Fatal(err)
		}
	}
	_ = s.PutActive(ctx, record("back").Active())
	if got := fmt.Sprint(activeIDs(t, s)); got != "[back]" {
		t.Errorf("after KV deletes: got %s, want [back]", got)
	}
	if err := s.PurgeDeletes(ctx, time.Hour); err != nil {
		t.Fatal(err)
	}
	if n := indexSubjects(t, bus); n != 2 {
		t.Errorf("a young marker purged: %d subjects in the index, want 2", n)
	}
	if err := s.PurgeDeletes(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if n := indexSubjects(t, bus); n != 1 {
		t.Errorf("after purging markers: %d subjects in the index, want 1 (back)", n)
	}
	if got := fmt.Sprint(activeIDs(t, s)); got != "[back]" {
		t.Errorf("after purging markers: got %s, want [back]", got)
	}
	if _, _, err := s.Get(ctx, "z"); err != nil {
		t.Errorf("a record is not the index's to purge: %v", err)
	}
	_ = s.DeleteActive(ctx, "back")
	// An entry that does not decode is reported and left out; the others are listed.
	_ = s.PutActive(ctx, record("e").Active())
	if _, err := bucket(t, bus).Put(ctx, "active.bad", []byte("{oops")); err != nil {
		t.Fatal(err)
	}
	entries, bad, err := s.Active(ctx)
	if err != nil || len(entries) != 1 || entries[0].ID != "e" || fmt.Sprint(bad) != "[active.bad]" {
		t.Errorf("got %+v, bad %v, %v; want e listed and active.bad reported", entries, bad, err)
	}
}

func streamMsgs(t *testing.T, bus *natsbus.Bus, name string) uint64 {
	t.Helper()
	st, err := bus.JetStream().Stream(ctxT(t), name)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

func TestEnqueueAndQueue(t *testing.T) {
	s, bus := newStore(t)
	ctx := ctxT(t)
	q, err := s.Queue(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if q.Waiting != 0 || q.InFlight != 0 || !q.Oldest.IsZero() {
		t.Errorf("empty queue: %+v", q)
	}
	before := time.Now()
	for range 3 {
		if err := s.Enqueue(ctx, "d1", []byte(`{"version":1}`)); err != nil {
			t.Fatal(err)
		}
	}
	if n := streamMsgs(t, bus, records.DefaultWorkStream); n != 1 {
		t.Fatalf("got %d work messages after enqueuing d1 three times, want 1", n)
	}
	time.Sleep(20 * time.Millisecond)
	if err := s.Enqueue(ctx, "d2", []byte(`{"version":1}`)); err != nil {
		t.Fatal(err)
	}
	q, err = s.Queue(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if q.Waiting != 2 || q.InFlight != 0 || q.Oldest.Before(before.Add(-time.Second)) || q.Oldest.After(time.Now()) {
		t.Errorf("got %+v, want 2 waiting, the oldest d1's", q)
	}
	// The message is what the executor pulls: subject, id and body.
	c, err := bus.JetStream().Consumer(ctx, records.DefaultWorkStream, records.WorkConsumer)
	if err != nil {
		t.Fatal(err)
	}
	batch, err := c.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var m jetstream.Msg
	for msg := range batch.Messages() {
		m = msg
	}
	if m == nil || m.Subject() != "ray_executor.work.d1" || m.Headers().Get("Nats-Msg-Id") != "d1" || string(m.Data()) != `{"version":1}` {
		t.Fatalf("pulled %v", m)
	}
	q, _ = s.Queue(ctx)
	if q.Waiting != 1 || q.InFlight != 1 {
		t.Errorf("one pulled: got %+v, want 1 waiting, 1 in flight", q)
	}
	// Acked and gone (DoubleAck waits for the server's word; a plain Ack may still be on
	// its way when the stream is counted), a later copy with the same id is still dropped
	// (the duplicate window).
	if err := m.DoubleAck(ctx); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); streamMsgs(t, bus, records.DefaultWorkStream) != 1; {
		if time.Now().After(deadline) {
			t.Fatal("the acked message is still in the work queue after 5 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := s.Enqueue(ctx, "d1", []byte(`{"version":1}`)); err != nil {
		t.Fatal(err)
	}
	if n := streamMsgs(t, bus, records.DefaultWorkStream); n != 1 {
		t.Errorf("got %d work messages, want d2's alone", n)
	}
}

func TestCounters(t *testing.T) {
	s, _ := newStore(t)
	ctx := ctxT(t)
	c, err := s.Counters(ctx)
	if err != nil || len(c) != 0 {
		t.Fatalf("no counts yet: got %v, %v", c, err)
	}
	for _, id := range []string{"d1", "d2", "d3", "d1", "d2"} { // d1 and d2 counted again: dropped
		if err := s.Count(ctx, records.CountSubmitted, id+".submitted", 1); err != nil {
			t.Fatal(err)
		}
	}
	_ = s.Count(ctx, records.CountCompleted, "d1.count", 1)
	_ = s.Count(ctx, records.CountDurationMS, "d1.duration", 1500)
	_ = s.Count(ctx, records.CountDurationMS, "d1.duration", 1500)
	_ = s.Count(ctx, records.CountDurationMS, "d2.duration", 500)
	_ = s.Count(ctx, records.CountCancelled, "d3.count", 1)
	c, err = s.Counters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]int64{"submitted": 3, "completed": 1, "duration_ms": 2000, "cancelled": 1}
	if fmt.Sprint(c) != fmt.Sprint(want) {
		t.Errorf("got %v, want %v", c, want)
	}
}

// An owner's counter is one subject token named from its SHA-256; the payload
// (records.owner_counter) names it the same way: both tests hold this vector.
func TestOwnerCounter(t *testing.T) {
	if got := records.OwnerCounter("completed", "alice"); got != "completed-by-2bd806c97f0e00af" {
		t.Errorf("got %q", got)
	}
	if a, b := records.OwnerCounter("completed", "a.b"), records.OwnerCounter("completed", "a>b"); strings.ContainsAny(a+b, ".*> ") || a == b {
		t.Errorf("got %q and %q: want distinct single subject tokens", a, b)
	}
}

func TestWaitTerminal(t *testing.T) {
	s, _ := newStore(t)
	ctx := ctxT(t)
	_ = s.Create(ctx, record("d1"))
	go func() {
		time.Sleep(100 * time.Millisecond)
		_, _ = s.Update(ctx, "d1", func(r domain.Record) (domain.Record, error) { return r.Start(1, "x", time.Now()) })
		time.Sleep(100 * time.Millisecond)
		_, _ = s.Update(ctx, "d1", func(r domain.Record) (domain.Record, error) { return r.Cancelled(time.Now()) })
	}()
	got, err := s.WaitTerminal(ctx, "d1")
	if err != nil || got.State != domain.StatusCancelled {
		t.Fatalf("got %v, %v, want cancelled", got.State, err)
	}
	// Already terminal: answered from the current value.
	wctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if got, err := s.WaitTerminal(wctx, "d1"); err != nil || got.State != domain.StatusCancelled {
		t.Errorf("already ended: got %v, %v", got.State, err)
	}
	// Never ends: the context's error, and the last record read.
	_ = s.Create(ctx, record("d2"))
	sctx, cancel2 := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel2()
	got, err = s.WaitTerminal(sctx, "d2")
	if !errors.Is(err, context.DeadlineExceeded) || got.State != domain.StatusPending {
		t.Errorf("never ends: got %v, %v, want the pending record and DeadlineExceeded", got.State, err)
	}
}

func TestDeployIsCompareAndSet(t *testing.T) {
	s, _ := newStore(t)
	ctx := ctxT(t)
	d, rev, err := s.Deploy(ctx)
	if err != nil || rev != 0 || !reflect.DeepEqual(d, records.Deploy{}) {
		t.Fatalf("no deploy key: got %+v rev %d, %v", d, rev, err)
	}
	first := records.Deploy{Version: "v1", SubmissionID: "s1", Generation: 1, At: domain.FormatTime(time.Now())}
	if err := s.SetDeploy(ctx, first, 0); err != nil {
		t.Fatal(err)
	}
	if err := s.SetDeploy(ctx, records.Deploy{Version: "v1", Generation: 1}, 0); !errors.Is(err, domain.ErrAlreadyExists) {
		t.Errorf("second create: got %v, want ErrAlreadyExists", err)
	}
	d, rev, err = s.Deploy(ctx)
	if err != nil || !reflect.DeepEqual(d, first) || rev == 0 {
		t.Fatalf("got %+v rev %d, %v", d, rev, err)
	}
	second := first
	second.Generation, second.SubmissionID, second.Failures, second.Previous, second.Retired = 2, "s2", 1, "s1", []string{"s0"}
	if err := s.SetDeploy(ctx, second, rev); err != nil {
		t.Fatal(err)
	}
	if err := s.SetDeploy(ctx, first, rev); !errors.Is(err, domain.ErrAlreadyExists) {
		t.Errorf("update at a stale revision: got %v, want ErrAlreadyExists", err)
	}
	if d, _, _ := s.Deploy(ctx); !reflect.DeepEqual(d, second) {
		t.Errorf("got %+v, want generation 2", d)
	}
}

func TestClaimIsCompareAndSetUnderItsVersionsKey(t *testing.T) {
	s, bus := newStore(t)
	ctx := ctxT(t)
	if k := records.ClaimKey("94f915415becdd00"); k != "executor.deployers.94f915415becdd00" {
		t.Errorf("a digest's claim key: %s", k)
	}
	odd := "v 1.0/rc*" // not a key's characters: hashed
	if k := records.ClaimKey(odd); !regexp.MustCompile(`^executor\.deployers\.[0-9a-f]{32}$`).MatchString(k) {
		t.Errorf("an odd version's claim key: %s", k)
	}
	c, rev, err := s.Claim(ctx, odd)
	if err != nil || rev != 0 || c != (records.Claim{}) {
		t.Fatalf("no claim: got %+v rev %d, %v", c, rev, err)
	}
	now := domain.FormatTime(time.Now())
	first := records.Claim{Version: odd, FirstSeen: now, Seen: now}
	if err := s.SetClaim(ctx, first, 0); err != nil {
		t.Fatal(err)
	}
	if err := s.SetClaim(ctx, first, 0); !errors.Is(err, domain.ErrAlreadyExists) {
		t.Errorf("second create: got %v, want ErrAlreadyExists", err)
	}
	c, rev, err = s.Claim(ctx, odd)
	if err != nil || c != first || rev == 0 {
		t.Fatalf("got %+v rev %d, %v", c, rev, err)
	}
	// Another version's claim under the key (or a value that is not one) reads as none,
	// with the revision that replaces it.
	kv, err := bus.JetStream().KeyValue(ctx, records.DefaultBucket)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []string{`{"version":"other","first_seen":"` + now + `"}`, `not json`} {
		put, err := kv.Put(ctx, records.ClaimKey(odd), []byte(v))
		if err != nil {
			t.Fatal(err)
		}
		if c, rev, err := s.Claim(ctx, odd); err != nil || c != (records.Claim{}) || rev != put {
			t.Errorf("claim key holding %s: got %+v rev %d (want %d), %v", v, c, rev, put, err)
		}
		if err := s.SetClaim(ctx, first, put); err != nil {
			t.Errorf("replacing %s: %v", v, err)
		}
	}
}

func TestHeartbeat(t *testing.T) {
	s, bus := newStore(t)
	ctx := ctxT(t)
	if _, ok, err := s.Heartbeat(ctx); ok || err != nil {
		t.Fatalf("no heartbeat: got ok=%v, %v", ok, err)
	}
	now := time.Now()
	body := fmt.Sprintf(`{"version":"v1","submission_id":"s1","replicas":2,"in_flight":5,"max_replicas":4,"updated_at":%q}`,
		domain.FormatTime(now))
	if _, err := bucket(t, bus).Put(ctx, records.KeyExecutor, []byte(body)); err != nil {
		t.Fatal(err)
	}
	h, ok, err := s.Heartbeat(ctx)
	if err != nil || !ok || h.Version != "v1" || h.SubmissionID != "s1" || h.Replicas != 2 || h.InFlight != 5 || h.MaxReplicas != 4 {
		t.Fatalf("got %+v ok=%v, %v", h, ok, err)
	}
	if !h.Fresh(now.Add(19*time.Second)) || h.Fresh(now.Add(20*time.Second)) {
		t.Error("a heartbeat is fresh for 20 s and stale after")
	}
	if (records.Heartbeat{}).Fresh(now) || (records.Heartbeat{UpdatedAt: "junk"}).Fresh(now) {
		t.Error("a heartbeat without a time is never fresh")
	}
}

func TestSubmissionID(t *testing.T) {
	re := regexp.MustCompile(`^ray-executor-0123456789ab-7-[0-9a-f]{8}$`)
	a, b := records.SubmissionID("0123456789ABCDEF", 7), records.SubmissionID("0123456789abcdef", 7)
	if !re.MatchString(a) || !re.MatchString(b) || a == b {
		t.Errorf("got %q and %q, want ray-executor-<version[:12]>-<generation>-<8 random hex>, different", a, b)
	}
	if got := records.SubmissionID("v1", 1); !regexp.MustCompile(`^ray-executor-v1-1-[0-9a-f]{8}$`).MatchString(got) {
		t.Errorf("short version: got %q", got)
	}
}

func TestAfterTerminal(t *testing.T) {
	s, bus := newStore(t)
	ctx := ctxT(t)
	rec := record("d1")
	_ = s.Create(ctx, rec)
	_ = s.PutActive(ctx, rec.Active())
	started := time.Now()
	run, _ := rec.Start(1, "x", started)
	done, err := run.Finish(domain.Outcome{Status: "completed", CompletedAgents: 2, NumAgents: 2}, started.Add(1500*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	// Not terminal: nothing happens.
	records.AfterTerminal(ctx, s, bus, run, events.SourceExecute, quiet)
	if got := activeIDs(t, s); fmt.Sprint(got) != "[d1]" {
		t.Fatalf("AfterTerminal of a running record touched the index: %v", got)
	}
	for range 2 { // any writer may run the steps again
		records.AfterTerminal(ctx, s, bus, done, events.SourceExecute, quiet)
	}
	stored, err := bus.Stored(ctx, "d1")
	if err != nil {
		t.Fatal(err)
	}
	if len(stored) != 1 || stored[0].Kind() != events.Completed || stored[0].ID != "d1.terminal" {
		t.Fatalf("got %d events %+v, want one completed d1.terminal", len(stored), stored)
	}
	c, err := s.Counters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if c[records.CountCompleted] != 1 || c[records.CountDurationMS] != 1500 {
		t.Errorf("got counters %v, want completed 1 and duration_ms 1500", c)
	}
	if got := activeIDs(t, s); len(got) != 0 {
		t.Errorf("active entry left: %v", got)
	}

	// A cancelled one counts as cancelled, with no duration, and its event carries the reason.
	rec2 := record("d2")
	_ = s.PutActive(ctx, rec2.Active())
	x, _, _ := rec2.Cancel("cancelled by request", time.Now())
	records.AfterTerminal(ctx, s, bus, x, events.SourceExecute, quiet)
	stored, _ = bus.Stored(ctx, "d2")
	if len(stored) != 1 || stored[0].Kind() != events.Cancelled {
		t.Fatalf("got %+v, want one cancelled event", stored)
	}
	var data events.TerminalData
	_ = json.Unmarshal(stored[0].Data, &data)
	if data.Reason != "cancelled by request" || data.Status != "cancelled" {
		t.Errorf("got data %+v", data)
	}
	c, _ = s.Counters(ctx)
	if c[records.CountCancelled] != 1 || c[records.CountDurationMS] != 1500 {
		t.Errorf("got counters %v", c)
	}
	if got := activeIDs(t, s); len(got) != 0 {
		t.Errorf("active entry left: %v", got)
	}
}

// With NATS down every call fails fast with ErrUnavailable, never waiting for it.
func TestNATSDownIsUnavailableAtOnce(t *testing.T) {
	srv, err := natslocal.Start("127.0.0.1:0", filepath.Join(t.TempDir(), "nats"))
	if err != nil {
		t.Fatal(err)
	}
	bus, err := natsbus.Connect(natsbus.Config{URL: srv.URL()}, "test", quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer bus.Close()
	s := records.New(bus.Conn(), bus.JetStream(), records.Config{})
	for deadline := time.Now().Add(10 * time.Second); !bus.Connected() && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	ctx := ctxT(t)
	if err := s.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Create(ctx, record("d1")); err != nil {
		t.Fatal(err)
	}
	srv.Stop()
	for deadline := time.Now().Add(10 * time.Second); bus.Conn().Status() == nats.CONNECTED && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	start := time.Now()
	calls := map[string]error{
		"create":    s.Create(ctx, record("d2")),
		"enqueue":   s.Enqueue(ctx, "d2", nil),
		"provision": s.Provision(ctx),
	}
	_, _, calls["get"] = s.Get(ctx, "d1")
	_, calls["update"] = s.Update(ctx, "d1", func(r domain.Record) (domain.Record, error) { return r, nil })
	_, _, calls["active"] = s.Active(ctx)
	_, calls["counters"] = s.Counters(ctx)
	_, calls["queue"] = s.Queue(ctx)
	_, _, calls["heartbeat"] = s.Heartbeat(ctx)
	_, _, calls["deploy"] = s.Deploy(ctx)
	for name, err := range calls {
		if !errors.Is(err, domain.ErrUnavailable) {
			t.Errorf("%s with NATS down: got %v, want ErrUnavailable", name, err)
		}
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("the calls took %v with NATS down, want a fast failure", d)
	}
}

// A deliberation that is active the whole time a listing runs is in the listing, however
// the index changes meanwhile: the executor re-puts entries as it starts them, intake adds
// new ones and ends remove others. Up to 1,024 entries the index is read in one batch; past
// that, by a watcher whose misses (the client counts added and removed entries toward its
// initial values, so a rewritten one can be left out) are read by key.
func TestActiveListsEveryEntryWhileTheIndexChanges(t *testing.T) {
	for _, tc := range []struct {
		name          string
		stable, reads int
	}{{"batch", 100, 300}, {"watched", 1100, 40}} {
		t.Run(tc.name, func(t *testing.T) {
			s, _ := newStore(t)
			ctx := ctxT(t)
			id := func(i int) string { return fmt.Sprintf("s%04d", i) }
			for i := range tc.stable {
				if err := s.PutActive(ctx, record(id(i)).Active()); err != nil {
					t.Fatal(err)
				}
			}
			stop := make(chan struct{})
			churned := make(chan error, 1)
			go func() {
				defer close(churned)
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					// Any entry, wherever the reader is: a rewrite behind it is harmless.
					run, _ := record(id(rand.IntN(tc.stable))).Start(1, "x", time.Now())
					err := s.PutActive(ctx, run.Active())
					if err == nil {
						err = s.PutActive(ctx, record(fmt.Sprintf("c%d", i)).Active())
					}
					if err == nil && i > 0 {
						err = s.DeleteActive(ctx, fmt.Sprintf("c%d", i-1))
					}
					if err != nil {
						churned <- err
						return
					}
				}
			}()
			defer func() {
				close(stop)
				if err := <-churned; err != nil {
					t.Errorf("churn: %v", err)
				}
			}()
			for read := range tc.reads {
				entries, bad, err := s.Active(ctx)
				if err != nil || len(bad) > 0 {
					t.Fatalf("read %d: %v, bad %v", read, err, bad)
				}
				seen := map[string]int{}
				for _, e := range entries {
					seen[e.ID]++
				}
				for i := range tc.stable {
					if seen[id(i)] != 1 {
						t.Fatalf("read %d: %s listed %d times, want once (%d entries)", read, id(i), seen[id(i)], len(entries))
					}
				}
				if n := len(entries) - tc.stable; n > 2 {
					t.Fatalf("read %d: %d churned entries listed, want at most 2", read, n)
				}
			}
		})
	}
}

// A read the deadline cuts short is an error, never a shorter list: the batch's iterator
// ends quietly on its context, so Active checks that the last message had nothing after it.
func TestActiveOutOfTimeIsAnErrorNotAShortList(t *testing.T) {
	s, _ := newStore(t)
	ctx := ctxT(t)
	for i := range 50 {
		if err := s.PutActive(ctx, record(fmt.Sprintf("e%02d", i)).Active()); err != nil {
			t.Fatal(err)
		}
	}
	if got := activeIDs(t, s); len(got) != 50 {
		t.Fatalf("got %d entries, want 50", len(got))
	}
	late, cancel := context.WithDeadline(ctx, time.Now().Add(-time.Second))
	defer cancel()
	got, _, err := s.Active(late)
	if !errors.Is(err, domain.ErrDeadline) && !errors.Is(err, domain.ErrUnavailable) {
		t.Fatalf("got %d entries and %v, want a deadline or unavailable error", len(got), err)
	}
}
