package execute

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/fleet-ai/ray-executor/shared/domain"
	"github.com/fleet-ai/ray-executor/shared/events"
	"github.com/fleet-ai/ray-executor/shared/executor"
	pb "github.com/fleet-ai/ray-executor/shared/gen/fleet/ray_executor/v1"
	"github.com/fleet-ai/ray-executor/shared/natsbus"
	"github.com/fleet-ai/ray-executor/shared/natslocal"
	"github.com/fleet-ai/ray-executor/shared/records"
	"github.com/fleet-ai/ray-executor/shared/rpcevents"
	"github.com/fleet-ai/ray-executor/shared/testenv"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func validRequest() domain.Request {
	return domain.Request{
		Kind: domain.KindDeliberation, TaskID: "t1", TaskDescription: "d", Role: "dev",
		Constraints: domain.Constraints{StoryID: "s1"},
		Agents:      []domain.Agent{{ID: "a1", Role: "dev", Model: "m"}},
		VLLMURL:     "http://127.0.0.1:8000", VLLMModel: "m",
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// world is a service on a real NATS server, and what the tests read behind its back.
type world struct {
	svc   *Service
	store *records.Store
	bus   *natsbus.Bus
	pokes atomic.Int32
}

func newWorld(t *testing.T) *world {
	t.Helper()
	return newWorldOn(t, testenv.NATS(t))
}

func newWorldOn(t *testing.T, bus *natsbus.Bus) *world {
	t.Helper()
	store := records.New(bus.Conn(), bus.JetStream(), records.Config{})
	if err := store.Provision(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	w := &world{store: store, bus: bus}
	w.svc = &Service{Store: store, Events: bus, CancelWait: 3 * time.Second, Poke: func() { w.pokes.Add(1) }}
	return w
}

func (w *world) workMessages(t *testing.T) []jetstream.RawStreamMsg {
	t.Helper()
	ctx := ctxT(t)
	st, err := w.bus.JetStream().Stream(ctx, records.DefaultWorkStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []jetstream.RawStreamMsg
	for seq := info.State.FirstSeq; info.State.Msgs > 0 && seq <= info.State.LastSeq; seq++ {
		m, err := st.GetMsg(ctx, seq)
		if err == nil {
			out = append(out, *m)
		}
	}
	return out
}

func (w *world) events(t *testing.T, id string) []natsbus.Stored {
	t.Helper()
	st, err := w.bus.Stored(ctxT(t), id)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func (w *world) counters(t *testing.T) map[string]int64 {
	t.Helper()
	c, err := w.store.Counters(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func (w *world) active(t *testing.T) map[string]domain.ActiveEntry {
	t.Helper()
	entries, _, err := w.store.Active(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]domain.ActiveEntry{}
	for _, e := range entries {
		out[e.ID] = e
	}
	return out
}

func TestExecuteAcceptsIntoNATS(t *testing.T) {
	w := newWorld(t)
	sub, err := w.svc.Execute(ctxT(t), validRequest(), "k1", "00-abc-def-01", domain.Caller{}, quiet)
	if err != nil {
		t.Fatal(err)
	}
	id := domain.DeliberationIDForKey("k1")
	if sub.DeliberationID != id || sub.Duplicate {
		t.Fatalf("got %+v, want %s, not a duplicate", sub, id)
	}
	normalized := validRequest()
	if err := domain.Normalize(&normalized, domain.Limits{}); err != nil {
		t.Fatal(err)
	}
	rec, _, err := w.store.Get(ctxT(t), id)
	if err != nil {
		t.Fatal(err)
	}
	if rec.State != domain.StatusPending || rec.TaskID != "t1" || rec.StoryID != "s1" || rec.NumAgents != 1 ||
		rec.RequestSHA256 != executor.RequestHash(normalized) || rec.Traceparent != "00-abc-def-01" ||
		rec.TimeoutSeconds != normalized.Constraints.TimeoutSeconds || rec.Deadline == "" {
		t.Errorf("got record %+v", rec)
	}
	if a, ok := w.active(t)[id]; !ok || a.State != domain.StatusPending || a.TaskID != "t1" {
		t.Errorf("got active index %v, want %s pending", w.active(t), id)
	}
	msgs := w.workMessages(t)
	want, _ := executor.WorkMessage(id, normalized, "00-abc-def-01")
	if len(msgs) != 1 || msgs[0].Subject != records.WorkSubjectPrefix+id || string(msgs[0].Data) != string(want) {
		t.Fatalf("got %d work messages (%v), want one on %s carrying the payload request", len(msgs), msgs, records.WorkSubjectPrefix+id)
	}
	if c := w.counters(t); c[records.CountSubmitted] != 1 {
		t.Errorf("got counters %v, want submitted 1", c)
	}
	evs := w.events(t, id)
	if len(evs) != 1 || evs[0].Kind() != events.Submitted || evs[0].Traceparent != "00-abc-def-01" {
		t.Errorf("got events %+v, want one submitted with the traceparent", evs)
	}
	if w.pokes.Load() != 1 {
		t.Errorf("got %d pokes of the deployer, want 1", w.pokes.Load())
	}
	// No key: a fresh id every time.
	a, _ := w.svc.Execute(ctxT(t), validRequest(), "", "", domain.Caller{}, quiet)
	b, _ := w.svc.Execute(ctxT(t), validRequest(), "", "", domain.Caller{}, quiet)
	if a.DeliberationID == b.DeliberationID || a.Duplicate || b.Duplicate || a.DeliberationID == "" {
		t.Errorf("without a key: got %+v and %+v, want two new deliberations", a, b)
	}
}

// Accepting is a NATS write: the service has no Ray port at all, so no Ray outage, latency
// or refusal can reach a caller of execute.
func TestExecuteHasNoRayPort(t *testing.T) {
	for _, typ := range []reflect.Type{reflect.TypeOf(Service{}), reflect.TypeOf((*Store)(nil)).Elem()} {
		check := func(tt reflect.Type, where string) {
			if strings.Contains(tt.PkgPath(), "/shared/ray") {
				t.Errorf("%s is of Ray's type %s", where, tt)
			}
			for _, m := range []string{"Submit", "Job", "Stop", "WorkingDir", "EnsurePackage"} {
				if _, ok := tt.MethodByName(m); ok && tt.Kind() == reflect.Interface {
					t.Errorf("%s (%s) has Ray's method %s", where, tt, m)
				}
			}
		}
		if typ.Kind() == reflect.Struct {
			for i := range typ.NumField() {
				f := typ.Field(i)
				check(f.Type, "Service."+f.Name)
			}
		} else {
			check(typ, "Store")
		}
	}
}

func httpCode(err error) int {
	code, _ := rpcevents.HTTPStatus(err)
	return code
}

func TestExecuteIdempotency(t *testing.T) {
	w := newWorld(t)
	ctx := ctxT(t)
	first, err := w.svc.Execute(ctx, validRequest(), "k", "", domain.Caller{}, quiet)
	if err != nil {
		t.Fatal(err)
	}
	again, err := w.svc.Execute(ctx, validRequest(), "k", "", domain.Caller{}, quiet)
	if err != nil || !again.Duplicate || again.DeliberationID != first.DeliberationID {
		t.Fatalf("same key, same request: got %+v, %v, want the same deliberation as a duplicate", again, err)
	}
	other := validRequest()
	other.TaskDescription = "something else"
	_, err = w.svc.Execute(ctx, other, "k", "", domain.Caller{}, quiet)
	if !errors.Is(err, domain.ErrConflict) || httpCode(err) != http.StatusConflict {
		t.Fatalf("same key, other request: got %v, want ErrConflict (409)", err)
	}
	// Normalization happens before the hash: a request that only spells defaults out is the same.
	spelled := validRequest()
	if err := domain.Normalize(&spelled, domain.Limits{}); err != nil {
		t.Fatal(err)
	}
	if sub, err := w.svc.Execute(ctx, spelled, "k", "", domain.Caller{}, quiet); err != nil || !sub.Duplicate {
		t.Errorf("the same request with its defaults spelled out: got %+v, %v", sub, err)
	}
	// A duplicate of a running or ended deliberation queues nothing again.
	if _, err := w.store.Update(ctx, first.DeliberationID, func(r domain.Record) (domain.Record, error) {
		return r.Start(1, "x", time.Now())
	}); err != nil {
		t.Fatal(err)
	}
	if sub, err := w.svc.Execute(ctx, validRequest(), "k", "", domain.Caller{}, quiet); err != nil || !sub.Duplicate {
		t.Errorf("duplicate of a running one: got %+v, %v", sub, err)
	}
	if a := w.active(t)[first.DeliberationID]; a.State != domain.StatusPending {
		// the executor re-puts the entry as running; execute must not have touched it
		t.Errorf("a duplicate of a running deliberation rewrote its index entry: %+v", a)
	}
	if n := len(w.workMessages(t)); n != 1 {
		t.Errorf("got %d work messages, want 1", n)
	}
	if c := w.counters(t); c[records.CountSubmitted] != 1 {
		t.Errorf("got counters %v, want submitted 1", c)
	}
	if evs := w.events(t, first.DeliberationID); len(evs) != 1 {
		t.Errorf("got %d events, want the one submitted", len(evs))
	}
}

func TestConcurrentExecuteWithOneKey(t *testing.T) {
	w := newWorld(t)
	const n = 100
	subs := make([]Submission, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			subs[i], errs[i] = w.svc.Execute(ctxT(t), validRequest(), "one-key", "", domain.Caller{}, quiet)
		}()
	}
	wg.Wait()
	id := domain.DeliberationIDForKey("one-key")
	fresh := 0
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("submit %d: %v", i, errs[i])
		}
		if subs[i].DeliberationID != id {
			t.Fatalf("submit %d: got id %s, want %s", i, subs[i].DeliberationID, id)
		}
		if !subs[i].Duplicate {
			fresh++
		}
	}
	if fresh != 1 {
		t.Errorf("got %d submits that were not duplicates, want exactly 1", fresh)
	}
	if n := len(w.workMessages(t)); n != 1 {
		t.Errorf("got %d work messages, want 1", n)
	}
	kv, err := w.bus.JetStream().KeyValue(ctxT(t), records.DefaultBucket)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := kv.ListKeys(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for k := range keys.Keys() {
		got = append(got, k)
	}
	if len(got) != 2 {
		t.Errorf("got keys %v, want one record and its active entry", got)
	}
	if c := w.counters(t); c[records.CountSubmitted] != 1 {
		t.Errorf("got counters %v, want submitted 1", c)
	}
	if evs := w.events(t, id); len(evs) != 1 {
		t.Errorf("got %d events, want one submitted", len(evs))
	}
}

// failingEnqueue is the real store whose first n queue appends fail as NATS failing there
// would (a fault the real server cannot be made to produce at that exact step).
type failingEnqueue struct {
	*records.Store
	n atomic.Int32
}

func (f *failingEnqueue) Enqueue(ctx context.Context, id string, body []byte) error {
	if f.n.Add(-1) >= 0 {
		return domain.ErrUnavailable
	}
	return f.Store.Enqueue(ctx, id, body)
}

// A submit that stopped after creating the record is completed by its retry: the retry is
// a duplicate of a pending record, so it queues the work again (the queue keeps one copy)
// and writes the counter and event the first never got to.
func TestRetryCompletesAnInterruptedSubmit(t *testing.T) {
	w := newWorld(t)
	fs := &failingEnqueue{Store: w.store}
	fs.n.Store(1)
	w.svc.Store = fs
	ctx := ctxT(t)
	_, err := w.svc.Execute(ctx, validRequest(), "k", "", domain.Caller{}, quiet)
	if !errors.Is(err, domain.ErrUnavailable) || httpCode(err) != http.StatusServiceUnavailable {
		t.Fatalf("got %v, want ErrUnavailable (503)", err)
	}
	id := domain.DeliberationIDForKey("k")
	if n := len(w.workMessages(t)); n != 0 {
		t.Fatalf("got %d work messages, want none yet", n)
	}
	for range 2 {
		sub, err := w.svc.Execute(ctx, validRequest(), "k", "", domain.Caller{}, quiet)
		if err != nil || !sub.Duplicate || sub.DeliberationID != id {
			t.Fatalf("retry: got %+v, %v", sub, err)
		}
	}
	if msgs := w.workMessages(t); len(msgs) != 1 || msgs[0].Subject != records.WorkSubjectPrefix+id {
		t.Errorf("got %d work messages, want one for %s", len(msgs), id)
	}
	if c := w.counters(t); c[records.CountSubmitted] != 1 {
		t.Errorf("got counters %v, want submitted 1", c)
	}
	if evs := w.events(t, id); len(evs) != 1 || evs[0].Kind() != events.Submitted {
		t.Errorf("got events %+v, want one submitted", evs)
	}
	if _, ok := w.active(t)[id]; !ok {
		t.Error("no active entry")
	}
}

func TestExecuteWithNATSDown(t *testing.T) {
	srv, err := natslocal.Start("127.0.0.1:0", filepath.Join(t.TempDir(), "nats"))
	if err != nil {
		t.Fatal(err)
	}
	bus, err := natsbus.Connect(natsbus.Config{URL: srv.URL()}, "test", quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer bus.Close()
	srv.Stop()
	for deadline := time.Now().Add(10 * time.Second); bus.Connected() && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	svc := &Service{Store: records.New(bus.Conn(), bus.JetStream(), records.Config{}), Events: bus}
	start := time.Now()
	_, err = svc.Execute(ctxT(t), validRequest(), "k", "", domain.Caller{}, quiet)
	if !errors.Is(err, domain.ErrUnavailable) || httpCode(err) != http.StatusServiceUnavailable {
		t.Errorf("execute: got %v, want ErrUnavailable (503)", err)
	}
	_, err = svc.Cancel(ctxT(t), domain.DeliberationIDForKey("k"), domain.Caller{}, quiet)
	if !errors.Is(err, domain.ErrUnavailable) {
		t.Errorf("cancel: got %v, want ErrUnavailable", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("took %v, want a fast failure", d)
	}
}

func TestInvalidRequestNeverReachesNATS(t *testing.T) {
	w := newWorld(t)
	srv := httptest.NewServer(NewHandler(w.svc, "test", 0, quiet))
	defer srv.Close()
	c := &rpcevents.Client{Source: "test"}
	var resp pb.ExecuteDeliberationResponse
	err := c.Call(ctxT(t), srv.URL, rpcevents.TypeExecuteDeliberation,
		&pb.ExecuteDeliberationRequest{TaskId: "t"}, rpcevents.CallOptions{IdempotencyKey: "k"}, &resp)
	var se *rpcevents.StatusError
	if !errors.As(err, &se) || se.HTTPStatus != http.StatusBadRequest {
		t.Fatalf("got %v, want 400", err)
	}
	for _, field := range []string{"task_description", "role", "vllm_url", "vllm_model", "agents", "constraints.story_id"} {
		if !strings.Contains(se.Message, field) {
			t.Errorf("got %q, want it to name %s", se.Message, field)
		}
	}
	if _, _, err := w.store.Get(ctxT(t), domain.DeliberationIDForKey(rpcevents.KeyFor("test", "", "k"))); !errors.Is(err, domain.ErrNotFound) {
		t.Errorf("an invalid request left a record: %v", err)
	}
	if n := len(w.workMessages(t)); n != 0 || w.pokes.Load() != 0 {
		t.Errorf("an invalid request queued %d messages and poked the deployer %d times", n, w.pokes.Load())
	}
	// A valid one through the handler: submitted, and the second time a duplicate.
	req := &pb.ExecuteDeliberationRequest{TaskId: "t1", TaskDescription: "d", Role: "dev", VllmUrl: "http://127.0.0.1:8000",
		VllmModel: "m", Constraints: &pb.TaskConstraints{StoryId: "s1"}, Agents: []*pb.Agent{{Id: "a1", Role: "dev", Model: "m"}}}
	for i, wantDup := range []bool{false, true} {
		if err := c.Call(ctxT(t), srv.URL, rpcevents.TypeExecuteDeliberation, req, rpcevents.CallOptions{IdempotencyKey: "k2"}, &resp); err != nil {
			t.Fatal(err)
		}
		if resp.GetDeliberationId() != domain.DeliberationIDForKey(rpcevents.KeyFor("test", "", "k2")) || resp.GetStatus() != "submitted" || resp.GetDuplicate() != wantDup {
			t.Errorf("call %d: got %v", i, &resp)
		}
	}
}

// Cancelling an id this system could never have minted (the original's, with ':') is
// NOT_FOUND without a read of NATS; an empty or oversize id is a malformed request.
func TestCancelRefusesWithoutTouchingNATS(t *testing.T) {
	svc := &Service{} // no store: a call to it would panic the test
	for _, id := range []string{"deliberation-ceremony-c1:story-s1:role-QA-1733000000", "a.b", "../x", "delib >"} {
		if _, err := svc.Cancel(context.Background(), id, domain.Caller{}, quiet); !errors.Is(err, domain.ErrNotFound) || httpCode(err) != http.StatusNotFound {
			t.Errorf("cancel %q: got %v, want ErrNotFound (404)", id, err)
		}
	}
	for _, id := range []string{"", strings.Repeat("x", domain.MaxLookupIDBytes+1)} {
		if _, err := svc.Cancel(context.Background(), id, domain.Caller{}, quiet); !errors.Is(err, domain.ErrInvalid) {
			t.Errorf("cancel an id of %d bytes: got %v, want ErrInvalid", len(id), err)
		}
	}
}

func TestCancelUnknown(t *testing.T) {
	w := newWorld(t)
	_, err := w.svc.Cancel(ctxT(t), domain.DeliberationIDForKey("never"), domain.Caller{}, quiet)
	if !errors.Is(err, domain.ErrNotFound) {
		t.Errorf("got %v, want ErrNotFound", err)
	}
}

func TestCancelPending(t *testing.T) {
	w := newWorld(t)
	ctx := ctxT(t)
	sub, err := w.svc.Execute(ctx, validRequest(), "k", "", domain.Caller{}, quiet)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	c, err := w.svc.Cancel(ctx, sub.DeliberationID, domain.Caller{}, quiet)
	if err != nil {
		t.Fatal(err)
	}
	if c.Status != domain.StatusCancelled || c.Message != "deliberation cancelled before it started" {
		t.Errorf("got %+v", c)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("cancelling a pending one took %v: it must not wait for an executor", d)
	}
	rec, _, _ := w.store.Get(ctx, sub.DeliberationID)
	if rec.State != domain.StatusCancelled || rec.EndedAt == "" || rec.Reason == "" {
		t.Errorf("got record %+v", rec)
	}
	evs := w.events(t, sub.DeliberationID)
	if len(evs) != 2 || evs[1].Kind() != events.Cancelled || evs[1].ID != sub.DeliberationID+".terminal" {
		t.Errorf("got events %+v, want submitted then cancelled", evs)
	}
	if _, ok := w.active(t)[sub.DeliberationID]; ok {
		t.Error("the active entry is still there")
	}
	if cn := w.counters(t); cn[records.CountCancelled] != 1 {
		t.Errorf("got counters %v", cn)
	}
	// Again: it has ended, nothing changes and its status is reported.
	c, err = w.svc.Cancel(ctx, sub.DeliberationID, domain.Caller{}, quiet)
	if err != nil || c.Status != domain.StatusCancelled || !strings.Contains(c.Message, "already finished") {
		t.Errorf("second cancel: got %+v, %v", c, err)
	}
	if n := len(w.events(t, sub.DeliberationID)); n != 2 {
		t.Errorf("got %d events after the second cancel, want 2", n)
	}
	// A duplicate submit of the cancelled deliberation does not revive it.
	if s, err := w.svc.Execute(ctx, validRequest(), "k", "", domain.Caller{}, quiet); err != nil || !s.Duplicate {
		t.Errorf("duplicate after cancel: %+v, %v", s, err)
	}
	if _, ok := w.active(t)[sub.DeliberationID]; ok {
		t.Error("a duplicate of a cancelled deliberation put it back in the active index")
	}
}

// running starts a deliberation as the executor would and listens for its cancel signal.
func running(t *testing.T, w *world, key string) (string, chan struct{}) {
	t.Helper()
	ctx := ctxT(t)
	sub, err := w.svc.Execute(ctx, validRequest(), key, "", domain.Caller{}, quiet)
	if err != nil {
		t.Fatal(err)
	}
	rec, err := w.store.Update(ctx, sub.DeliberationID, func(r domain.Record) (domain.Record, error) {
		return r.Start(1, "replica-1", time.Now())
	})
	if err != nil {
		t.Fatal(err)
	}
	_ = w.store.PutActive(ctx, rec.Active())
	signal := make(chan struct{}, 1)
	s, err := w.bus.Conn().Subscribe(records.CancelSubjectPrefix+sub.DeliberationID, func(*nats.Msg) { signal <- struct{}{} })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Unsubscribe() })
	_ = w.bus.Conn().Flush()
	return sub.DeliberationID, signal
}

func TestCancelRunning(t *testing.T) {
	w := newWorld(t)
	id, signal := running(t, w, "k")
	executorDone := make(chan error, 1)
	go func() { // the executor: on the signal, it stops its agents and records the end
		select {
		case <-signal:
		case <-time.After(10 * time.Second):
			executorDone <- errors.New("no cancel signal")
			return
		}
		ctx := context.Background()
		rec, _, err := w.store.Get(ctx, id)
		if err == nil && !rec.CancelRequested {
			err = errors.New("the signal came before cancel_requested was stored")
		}
		if err == nil {
			time.Sleep(200 * time.Millisecond)
			rec, err = w.store.Update(ctx, id, func(r domain.Record) (domain.Record, error) { return r.Cancelled(time.Now()) })
		}
		if err == nil {
			records.AfterTerminal(ctx, w.store, w.bus, rec, events.SourcePayload, quiet)
		}
		executorDone <- err
	}()
	start := time.Now()
	c, err := w.svc.Cancel(ctxT(t), id, domain.Caller{}, quiet)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-executorDone; err != nil {
		t.Fatal(err)
	}
	if c.Status != domain.StatusCancelled || c.Message != "deliberation cancelled; its agent calls were stopped" {
		t.Errorf("got %+v", c)
	}
	if d := time.Since(start); d < 200*time.Millisecond {
		t.Errorf("Cancel returned after %v, before the executor ended the deliberation", d)
	}
	rec, _, _ := w.store.Get(ctxT(t), id)
	if rec.State != domain.StatusCancelled || !rec.CancelRequested || rec.Reason != "cancelled by request" {
		t.Errorf("got record %+v", rec)
	}
	if _, ok := w.active(t)[id]; ok {
		t.Error("the active entry is still there")
	}
}

func TestCancelRunningThatTheExecutorDoesNotEnd(t *testing.T) {
	w := newWorld(t)
	w.svc.CancelWait = 300 * time.Millisecond
	id, signal := running(t, w, "k")
	start := time.Now()
	c, err := w.svc.Cancel(ctxT(t), id, domain.Caller{}, quiet)
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 300*time.Millisecond || d > 3*time.Second {
		t.Errorf("returned after %v, want after CancelWait (300ms)", d)
	}
	select {
	case <-signal:
	case <-time.After(5 * time.Second):
		t.Error("no cancel signal was published")
	}
	if c.Status != domain.StatusCancelled || !strings.HasPrefix(c.Message, "cancel requested") {
		t.Errorf("got %+v", c)
	}
	rec, _, _ := w.store.Get(ctxT(t), id)
	if rec.State != domain.StatusRunning || !rec.CancelRequested {
		t.Errorf("got record %+v, want running with cancel_requested", rec)
	}
	if n := len(w.events(t, id)); n != 1 {
		t.Errorf("got %d events, want no terminal one: the executor writes it", n)
	}
}

func TestCancelRunningThatCompletesFirst(t *testing.T) {
	w := newWorld(t)
	id, signal := running(t, w, "k")
	go func() {
		<-signal
		_, _ = w.store.Update(context.Background(), id, func(r domain.Record) (domain.Record, error) {
			return r.Finish(domain.Outcome{Status: "completed"}, time.Now())
		})
	}()
	c, err := w.svc.Cancel(ctxT(t), id, domain.Caller{}, quiet)
	if err != nil || c.Status != domain.StatusCompleted || !strings.Contains(c.Message, "finished before the cancel") {
		t.Errorf("got %+v, %v, want completed", c, err)
	}
	c, err = w.svc.Cancel(ctxT(t), id, domain.Caller{}, quiet)
	if err != nil || c.Status != domain.StatusCompleted || !strings.Contains(c.Message, "already finished") {
		t.Errorf("cancel after it completed: got %+v, %v", c, err)
	}
}

// Each caller's deliberations are its own: the same idempotency key from two callers names
// two deliberations (one cannot learn or block the other's next one), each record holds
// its owner, and a cancel of another caller's deliberation answers exactly as an unknown
// id does, while an admin may cancel it.
func TestOwnersAndTheirKeys(t *testing.T) {
	w := newWorld(t)
	ctx := ctxT(t)
	alice, bob, admin := domain.Caller{Name: "alice"}, domain.Caller{Name: "bob"}, domain.Caller{Name: "root", Admin: true}
	a, err := w.svc.Execute(ctx, validRequest(), "shared-key", "", alice, quiet)
	if err != nil {
		t.Fatal(err)
	}
	b, err := w.svc.Execute(ctx, validRequest(), "shared-key", "", bob, quiet)
	if err != nil || b.Duplicate || b.DeliberationID == a.DeliberationID {
		t.Fatalf("bob with alice's key: got %+v %v, want a deliberation of his own", b, err)
	}
	if rec, _, err := w.store.Get(ctx, a.DeliberationID); err != nil || rec.Owner != "alice" {
		t.Errorf("alice's record: owner %q %v", rec.Owner, err)
	}
	anon, err := w.svc.Execute(ctx, validRequest(), "shared-key", "", domain.Caller{}, quiet)
	if err != nil || anon.DeliberationID != domain.DeliberationIDForKey("shared-key") {
		t.Errorf("anonymous: got %+v %v, want the key's id as before owners existed", anon, err)
	}

	_, foreign := w.svc.Cancel(ctx, a.DeliberationID, bob, quiet)
	unknownID := domain.DeliberationIDForKey("nobody's")
	_, unknown := w.svc.Cancel(ctx, unknownID, bob, quiet)
	if !errors.Is(foreign, domain.ErrNotFound) ||
		strings.ReplaceAll(foreign.Error(), a.DeliberationID, "ID") != strings.ReplaceAll(unknown.Error(), unknownID, "ID") {
		t.Errorf("bob cancelling alice's: got %v; an unknown id: %v; want the same answer", foreign, unknown)
	}
	if rec, _, _ := w.store.Get(ctx, a.DeliberationID); rec.State != domain.StatusPending || rec.CancelRequested {
		t.Errorf("bob's cancel touched alice's deliberation: %+v", rec)
	}
	if c, err := w.svc.Cancel(ctx, a.DeliberationID, admin, quiet); err != nil || c.Status != domain.StatusCancelled {
		t.Errorf("admin cancel: got %+v %v, want cancelled", c, err)
	}
}
