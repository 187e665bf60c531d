package list

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/fleet-ai/ray-executor/shared/domain"
	"github.com/fleet-ai/ray-executor/shared/events"
	"github.com/fleet-ai/ray-executor/shared/executor"
	"github.com/fleet-ai/ray-executor/shared/ray"
	"github.com/fleet-ai/ray-executor/shared/records"
	"github.com/fleet-ai/ray-executor/shared/testenv"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func newStore(t *testing.T) (*records.Store, jetstream.KeyValue) {
	t.Helper()
	bus := testenv.NATS(t)
	s := records.New(bus.Conn(), bus.JetStream(), records.Config{})
	if err := s.Provision(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	kv, err := bus.JetStream().KeyValue(ctxT(t), records.DefaultBucket)
	if err != nil {
		t.Fatal(err)
	}
	return s, kv
}

var t0 = time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)

func entry(id string, st domain.Status, created time.Time) domain.ActiveEntry {
	return domain.ActiveEntry{ID: id, TaskID: "task-" + id, Kind: domain.KindDeliberation, Role: "dev", State: st,
		NumAgents: 3, CreatedAt: domain.FormatTime(created)}
}

func TestActiveListsTheIndexOldestFirst(t *testing.T) {
	s, kv := newStore(t)
	ctx := ctxT(t)
	for _, e := range []domain.ActiveEntry{
		entry("c", domain.StatusPending, t0.Add(2*time.Second)),
		entry("b", domain.StatusRunning, t0.Add(time.Second)),
		entry("a2", domain.StatusPending, t0),
		entry("a1", domain.StatusPending, t0),
		entry("gone", domain.StatusRunning, t0),
	} {
		if err := s.PutActive(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	_ = s.DeleteActive(ctx, "gone")
	if _, err := kv.Put(ctx, "active.junk", []byte("{")); err != nil {
		t.Fatal(err)
	}
	svc := &Service{Store: s, Logger: quiet}
	got, err := svc.Active(ctx, domain.Caller{})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, a := range got {
		ids = append(ids, a.Meta.DeliberationID)
	}
	if fmt.Sprint(ids) != "[a1 a2 b c]" {
		t.Fatalf("got %v, want [a1 a2 b c]: oldest first, ties by id, ended and undecodable left out", ids)
	}
	b := got[2]
	if b.Status != domain.StatusRunning || b.Meta.TaskID != "task-b" || b.Meta.NumAgents != 3 || b.Meta.Role != "dev" ||
		!b.StartTime.Equal(t0.Add(time.Second)) {
		t.Errorf("got %+v", b)
	}
	info := JobInfo(b, t0.Add(2*time.Minute+5*time.Second))
	if info.GetJobId() != "b" || info.GetSubmissionId() != "b" || info.GetName() != "vllm-agent-job-b" ||
		info.GetStatus() != "RUNNING" || info.GetTaskId() != "task-b" || info.GetRole() != "dev" || info.GetKind() != "deliberation" ||
		info.GetRuntime() != "2m 4s" || info.GetTotalAgents() != 3 || !info.GetStartTime().AsTime().Equal(t0.Add(time.Second)) {
		t.Errorf("got %v", info)
	}
	if JobInfo(got[0], t0).GetStatus() != "PENDING" {
		t.Errorf("a pending one: got %q", JobInfo(got[0], t0).GetStatus())
	}
}

func TestRayStatus(t *testing.T) {
	for s, want := range map[domain.Status]string{domain.StatusRunning: "RUNNING", domain.StatusPending: "PENDING"} {
		if got := RayStatus(s); got != want {
			t.Errorf("RayStatus(%s) = %q, want %q", s, got, want)
		}
	}
}

func TestRuntime(t *testing.T) {
	for _, tc := range []struct {
		start, now time.Time
		want       string
	}{
		{t0, t0, "0m 0s"},
		{t0, t0.Add(59 * time.Second), "0m 59s"},
		{t0, t0.Add(61*time.Minute + 1500*time.Millisecond), "61m 1s"},
		{time.Time{}, t0, "0m 0s"},
		{t0, t0.Add(-time.Second), "0m 0s"},
	} {
		if got := Runtime(tc.start, tc.now); got != tc.want {
			t.Errorf("Runtime(%v) got %q, want %q", tc.now.Sub(tc.start), got, tc.want)
		}
	}
}

func TestStats(t *testing.T) {
	s, _ := newStore(t)
	ctx := ctxT(t)
	svc := &Service{Store: s}
	st, err := svc.Stats(ctx, domain.Caller{})
	if err != nil || st != (Stats{}) {
		t.Fatalf("nothing yet: got %+v, %v", st, err)
	}
	for i := range 6 {
		_ = s.Count(ctx, records.CountSubmitted, fmt.Sprintf("d%d.submitted", i), 1)
	}
	_ = s.Count(ctx, records.CountCompleted, "d0.count", 1)
	_ = s.Count(ctx, records.CountCompleted, "d1.count", 1)
	_ = s.Count(ctx, records.CountFailed, "d2.count", 1)
	_ = s.Count(ctx, records.CountCancelled, "d3.count", 1)
	_ = s.Count(ctx, records.CountDurationMS, "d0.duration", 1000)
	_ = s.Count(ctx, records.CountDurationMS, "d1.duration", 2000)
	_ = s.Count(ctx, records.CountDurationMS, "d2.duration", 3000)
	_ = s.PutActive(ctx, entry("d4", domain.StatusRunning, t0))
	_ = s.PutActive(ctx, entry("d5", domain.StatusPending, t0))
	st, err = svc.Stats(ctx, domain.Caller{})
	if err != nil {
		t.Fatal(err)
	}
	want := Stats{Total: 6, Pending: 1, Running: 1, Completed: 2, Failed: 1, Cancelled: 1, AverageExecutionMS: 2000}
	if st != want {
		t.Errorf("got %+v, want %+v", st, want)
	}
	// A caller that is not an admin hears only of its own: its lifetime counters and its
	// active deliberations.
	alice := entry("d6", domain.StatusRunning, t0)
	alice.Owner = "alice"
	_ = s.PutActive(ctx, alice)
	for _, id := range []string{"d6", "d7", "d8"} {
		_ = records.CountFor(ctx, s, records.CountSubmitted, "alice", id+".submitted", 1)
	}
	_ = records.CountFor(ctx, s, records.CountSubmitted, "alice", "d7.submitted", 1) // a retry: dropped
	_ = records.CountFor(ctx, s, records.CountCompleted, "alice", "d7.count", 1)
	_ = records.CountFor(ctx, s, records.CountDurationMS, "alice", "d7.duration", 400)
	_ = records.CountFor(ctx, s, records.CountCancelled, "alice", "d8.count", 1)
	if mine, err := svc.Stats(ctx, domain.Caller{Name: "alice"}); err != nil ||
		mine != (Stats{Total: 3, Running: 1, Completed: 1, Cancelled: 1, AverageExecutionMS: 400}) {
		t.Errorf("alice's: got %+v %v, want her three, one running, and nothing of the others", mine, err)
	}
	if bobs, err := svc.Stats(ctx, domain.Caller{Name: "bob"}); err != nil || bobs != (Stats{}) {
		t.Errorf("bob's: got %+v %v, want nothing", bobs, err)
	}
	if all, err := svc.Stats(ctx, domain.Caller{Name: "root", Admin: true}); err != nil || all.Running != 2 || all.Total != 9 ||
		all.Completed != 3 || all.Cancelled != 2 {
		t.Errorf("an admin's: got %+v %v, want the whole system's", all, err)
	}
	m := StatsMessage(st)
	if m.GetTotalDeliberations() != 6 || m.GetActiveDeliberations() != 2 || m.GetPendingDeliberations() != 1 ||
		m.GetCompletedDeliberations() != 2 || m.GetFailedDeliberations() != 1 || m.GetCancelledDeliberations() != 1 ||
		m.GetAverageExecutionTimeMs() != 2000 {
		t.Errorf("got %v", m)
	}
}

func putHeartbeat(t *testing.T, kv jetstream.KeyValue, at time.Time) {
	t.Helper()
	putHeartbeatOf(t, kv, at, 2)
}

// putHeartbeatOf writes a heartbeat whose driver counted replicas answering.
func putHeartbeatOf(t *testing.T, kv jetstream.KeyValue, at time.Time, replicas int) {
	t.Helper()
	b, _ := json.Marshal(records.Heartbeat{Version: "v1", SubmissionID: "s1", Replicas: replicas, InFlight: 3, MaxReplicas: 4,
		UpdatedAt: domain.FormatTime(at)})
	if _, err := kv.Put(ctxT(t), records.KeyExecutor, b); err != nil {
		t.Fatal(err)
	}
}

func component(t *testing.T, cs []Component, name string) Component {
	t.Helper()
	for _, c := range cs {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("no %s component in %+v", name, cs)
	return Component{}
}

func TestHealth(t *testing.T) {
	s, kv := newStore(t)
	ctx := ctxT(t)
	now := time.Now()
	svc := &Service{Store: s, Now: func() time.Time { return now }}

	if cs := svc.Health(ctx); len(cs) != 1 {
		t.Errorf("without RayReady: got %+v, want the executor alone", cs)
	}
	c := component(t, svc.Health(ctx), "executor")
	if c.Status != Degraded || c.Message != "no executor runs; it is deployed again when work arrives" {
		t.Errorf("no executor, no work: got %+v", c)
	}
	_ = s.Enqueue(ctx, "d1", []byte("{}"))
	_ = s.Enqueue(ctx, "d2", []byte("{}"))
	// The consumer's pending count follows the stream asynchronously: wait until it shows
	// both (it failed in CI when read at once).
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if q, err := s.Queue(ctx); (err == nil && q.Waiting == 2) || time.Now().After(deadline) {
			break
		}
	}
	now = time.Now().Add(90 * time.Second)
	c = component(t, svc.Health(ctx), "executor")
	if c.Status != Degraded || !strings.HasPrefix(c.Message, "no executor runs and work waits (2 waiting, the oldest for 1m3") {
		t.Errorf("no executor, work waiting: got %+v", c)
	}
	putHeartbeat(t, kv, now.Add(-5*time.Second))
	c = component(t, svc.Health(ctx), "executor")
	if c.Status != Healthy || !strings.HasPrefix(c.Message, "version v1: 2 replicas (at most 4), 3 running, 2 waiting, the oldest for ") {
		t.Errorf("live executor: got %+v", c)
	}
	// A driver that outlived its Ray cluster beats with no replica answering.
	putHeartbeatOf(t, kv, now.Add(-5*time.Second), 0)
	c = component(t, svc.Health(ctx), "executor")
	if c.Status != Degraded || !strings.HasPrefix(c.Message, "the executor (version v1) has no replica answering and work waits (2 waiting") {
		t.Errorf("live driver, no replica: got %+v", c)
	}
	putHeartbeat(t, kv, now.Add(-time.Minute))
	if c = component(t, svc.Health(ctx), "executor"); c.Status != Degraded {
		t.Errorf("stale heartbeat: got %+v, want degraded", c)
	}
	// The executor keeps crashing at start: the report says so and names the last job's log.
	if err := s.SetDeploy(ctx, records.Deploy{Version: "v1", SubmissionID: "s3", Generation: 3, Failures: 2, Previous: "s2"}, 0); err != nil {
		t.Fatal(err)
	}
	if c = component(t, svc.Health(ctx), "executor"); c.Status != Degraded ||
		!strings.HasSuffix(c.Message, "; it is being redeployed, after the last 2 executor jobs ended soon after starting (`ray job logs s2` says why)") {
		t.Errorf("crashing executor: got %+v", c)
	}

	svc.RayReady = func(context.Context) error { return nil }
	if r := component(t, svc.Health(ctx), "ray"); r.Status != Healthy {
		t.Errorf("ray answers: got %+v", r)
	}
	// The reason's class reaches callers, never the error's text: it names internal addresses.
	svc.RayReady = func(context.Context) error {
		return fmt.Errorf("ray: Get http://10.0.0.7:8265/api/version: connection refused: %w", domain.ErrUnavailable)
	}
	if r := component(t, svc.Health(ctx), "ray"); r.Status != Degraded || !strings.Contains(r.Message, "unreachable") ||
		strings.Contains(r.Message, "10.0.0.7") {
		t.Errorf("ray down: got %+v, want degraded, unreachable, and no address", r)
	}
	svc.RayReady = func(context.Context) error { return fmt.Errorf("ray: 401: %w", domain.ErrUnauthenticated) }
	if r := component(t, svc.Health(ctx), "ray"); !strings.Contains(r.Message, "RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_FILE is wrong") {
		t.Errorf("ray refusing the token: got %+v", r)
	}
}

// failingStore is the real store whose queue read fails as a NATS that stops answering
// mid-report would.
type failingStore struct {
	*records.Store
}

func (failingStore) Queue(context.Context) (records.Queue, error) {
	return records.Queue{}, fmt.Errorf("records: consumer: timeout: %w", domain.ErrUnavailable)
}

type failingPurge struct {
	*records.Store
}

func (failingPurge) PurgeDeletes(context.Context, time.Duration) error {
	return fmt.Errorf("records: purge: %w", domain.ErrUnavailable)
}

func TestHealthWhenNATSFails(t *testing.T) {
	s, _ := newStore(t)
	svc := &Service{Store: failingStore{s}}
	c := component(t, svc.Health(ctxT(t)), "executor")
	if c.Status != Unhealthy || !strings.Contains(c.Message, "NATS does not answer") || !strings.Contains(c.Message, "timeout") {
		t.Errorf("got %+v, want unhealthy naming the error", c)
	}
}

// fakeJobs is a Ray Jobs port with a live executor: Ray knows its job (s1) as RUNNING,
// and nothing may be submitted or stopped. It counts the look-ups.
type fakeJobs struct {
	t       *testing.T
	lookups *atomic.Int32
}

func (f fakeJobs) Submit(context.Context, ray.SubmitRequest) (string, error) {
	f.t.Error("submitted with a live executor")
	return "", errors.New("no")
}
func (f fakeJobs) Delete(context.Context, string) error {
	f.t.Error("deleted a job with a live executor")
	return errors.New("no")
}
func (f fakeJobs) Job(_ context.Context, id string) (ray.JobDetails, error) {
	f.lookups.Add(1)
	if id != "s1" {
		f.t.Errorf("asked Ray about %s, want only the heartbeat's job s1", id)
	}
	return ray.JobDetails{SubmissionID: id, Status: ray.StatusRunning}, nil
}
func (f fakeJobs) Stop(context.Context, string) (bool, error) {
	f.t.Error("stopped a job with a live executor")
	return false, errors.New("no")
}

func TestReconcilerPass(t *testing.T) {
	s, kv := newStore(t)
	ctx := ctxT(t)
	putHeartbeat(t, kv, time.Now())
	lookups := &atomic.Int32{}
	rec := &Reconciler{Store: s, Logger: quiet,
		Deployer: &executor.Deployer{Store: s, Jobs: fakeJobs{t, lookups}, Version: "v1", Logger: quiet}}
	for range 3 {
		st, err := rec.Run(ctx)
		if err != nil || st != executor.StateLive {
			t.Errorf("got %q, %v, want live", st, err)
		}
	}
	if n := lookups.Load(); n != 1 {
		t.Errorf("asked Ray %d times in 3 passes, want once (a live heartbeat is verified every %s)", n, executor.VerifyEvery)
	}
	// A failing step does not hide the result of the other: the purge's error is returned.
	rec.Store = failingPurge{s}
	if _, err := rec.Run(ctx); !errors.Is(err, domain.ErrUnavailable) {
		t.Errorf("purge failing: got %v, want its ErrUnavailable", err)
	}
}

func TestConfig(t *testing.T) {
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	cfg, err := LoadConfig(env(nil))
	if err != nil || cfg.ReconcileInterval != 0 || cfg.Records.Bucket != records.DefaultBucket || cfg.Executor.MaxDeliveries != 3 {
		t.Errorf("defaults: got %+v, %v", cfg, err)
	}
	if _, err := LoadConfig(env(map[string]string{"ENABLE_NATS": "false"})); err == nil ||
		!strings.Contains(err.Error(), "ENABLE_NATS=false is no longer supported") {
		t.Errorf("ENABLE_NATS=false: got %v", err)
	}
	if _, err := LoadConfig(env(map[string]string{"EXECUTOR_MAX_DELIVERIES": "0"})); err == nil ||
		!strings.Contains(err.Error(), "EXECUTOR_MAX_DELIVERIES") {
		t.Errorf("bad executor setting: got %v", err)
	}
}

// The reconciler repairs the active index against the records: an entry whose record ended
// gets the after-terminal steps (terminal event, count, removal), an entry without a record
// is removed, an entry showing a stale state is rewritten, and the active ones stay.
func TestReconcilerRepairsTheActiveIndex(t *testing.T) {
	bus := testenv.NATS(t)
	s := records.New(bus.Conn(), bus.JetStream(), records.Config{})
	ctx := ctxT(t)
	if err := s.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	mk := func(id string) domain.Record {
		r := domain.Request{Kind: domain.KindDeliberation, TaskID: "t-" + id, Agents: make([]domain.Agent, 1),
			Constraints: domain.Constraints{TimeoutSeconds: 60}}
		rec := domain.NewRecord(id, r, "h", "", "", time.Now())
		if err := s.Create(ctx, rec); err != nil {
			t.Fatal(err)
		}
		if err := s.PutActive(ctx, rec.Active()); err != nil {
			t.Fatal(err)
		}
		return rec
	}
	// Ended, but its writer stopped before the after-terminal steps.
	ended := mk("delib-ended")
	if _, err := s.Update(ctx, ended.ID, func(r domain.Record) (domain.Record, error) {
		return r.Fail(domain.ErrorTypeExecutorLost, "lost", time.Now())
	}); err != nil {
		t.Fatal(err)
	}
	// Running, the index still saying pending.
	running := mk("delib-running")
	if _, err := s.Update(ctx, running.ID, func(r domain.Record) (domain.Record, error) {
		return r.Start(1, "replica", time.Now())
	}); err != nil {
		t.Fatal(err)
	}
	pending := mk("delib-pending")
	// An entry with no record (it expired).
	orphan := domain.ActiveEntry{ID: "delib-orphan", State: domain.StatusPending}
	if err := s.PutActive(ctx, orphan); err != nil {
		t.Fatal(err)
	}

	rec := &Reconciler{Store: s, Events: bus, Logger: quiet}
	if _, err := rec.Run(ctx); err != nil {
		t.Fatal(err)
	}
	got := map[string]domain.Status{}
	entries, _, err := s.Active(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		got[e.ID] = e.State
	}
	want := map[string]domain.Status{running.ID: domain.StatusRunning, pending.ID: domain.StatusPending}
	if len(got) != len(want) || got[running.ID] != domain.StatusRunning || got[pending.ID] != domain.StatusPending {
		t.Errorf("active index after the repair: got %v, want %v", got, want)
	}
	stored, err := bus.Stored(ctx, ended.ID)
	if err != nil || len(stored) != 1 || stored[0].Kind() != events.Failed {
		t.Errorf("the ended one's events: got %v %v, want its one failed event", stored, err)
	}
	c, err := s.Counters(ctx)
	if err != nil || c[records.CountFailed] != 1 {
		t.Errorf("counters %v %v, want the ended one counted failed once", c, err)
	}
	// A second pass changes nothing (every step is idempotent).
	if _, err := rec.Run(ctx); err != nil {
		t.Fatal(err)
	}
	if stored, _ := bus.Stored(ctx, ended.ID); len(stored) != 1 {
		t.Errorf("after a second pass: %d events, want 1", len(stored))
	}
	if c, _ := s.Counters(ctx); c[records.CountFailed] != 1 {
		t.Errorf("after a second pass: counted %d, want 1", c[records.CountFailed])
	}
}

// The reconciler keeps deadlines with nothing else running (no executor, no status read):
// a pending and a running deliberation past their deadlines end failed deadline_exceeded,
// each with one terminal event, its work withdrawn from the queue and its index entry
// gone, while one within its deadline stays. A second pass changes nothing.
func TestReconcilerEndsExpiredDeliberations(t *testing.T) {
	bus := testenv.NATS(t)
	s := records.New(bus.Conn(), bus.JetStream(), records.Config{})
	ctx := ctxT(t)
	if err := s.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	accepted := time.Now()
	mk := func(id string, timeout int32) domain.Record {
		r := domain.Request{Kind: domain.KindDeliberation, TaskID: "t-" + id, Agents: make([]domain.Agent, 1),
			Constraints: domain.Constraints{TimeoutSeconds: timeout}}
		rec := domain.NewRecord(id, r, "h", "", "", accepted)
		if err := s.Create(ctx, rec); err != nil {
			t.Fatal(err)
		}
		if err := s.PutActive(ctx, rec.Active()); err != nil {
			t.Fatal(err)
		}
		if err := s.Enqueue(ctx, id, []byte(`{}`)); err != nil {
			t.Fatal(err)
		}
		return rec
	}
	queued, running, fresh := mk("delib-queued", 10), mk("delib-running", 10), mk("delib-fresh", 600)
	if _, err := s.Update(ctx, running.ID, func(r domain.Record) (domain.Record, error) {
		return r.Start(1, "replica", accepted.Add(time.Second))
	}); err != nil {
		t.Fatal(err)
	}
	now := accepted.Add(10*time.Second + domain.DeadlineGrace + time.Second)
	rec := &Reconciler{Store: s, Events: bus, Logger: quiet, Now: func() time.Time { return now }}
	for pass := range 2 {
		if _, err := rec.Run(ctx); err != nil {
			t.Fatalf("pass %d: %v", pass+1, err)
		}
	}
	for id, want := range map[string]string{queued.ID: "never started", running.ID: "started (attempt 1)"} {
		r, _, err := s.Get(ctx, id)
		if err != nil || r.State != domain.StatusFailed || r.ErrorType != domain.ErrorTypeDeadlineExceeded || !strings.Contains(r.Error, want) {
			t.Errorf("%s: got %s %s %q (%v), want failed deadline_exceeded saying %q", id, r.State, r.ErrorType, r.Error, err, want)
		}
		if evs, err := bus.Stored(ctx, id); err != nil || len(evs) != 1 || evs[0].Kind() != events.Failed {
			t.Errorf("%s: got events %v %v, want one failed", id, evs, err)
		}
	}
	if r, _, _ := s.Get(ctx, fresh.ID); r.State != domain.StatusPending {
		t.Errorf("the one within its deadline: got %s, want pending", r.State)
	}
	entries, _, err := s.Active(ctx)
	if err != nil || len(entries) != 1 || entries[0].ID != fresh.ID {
		t.Errorf("active index: got %v %v, want only %s", entries, err, fresh.ID)
	}
	if q, err := s.Queue(ctx); err != nil || q.Waiting != 1 {
		t.Errorf("work queue: got %+v %v, want only the fresh one waiting", q, err)
	}
	if c, _ := s.Counters(ctx); c[records.CountFailed] != 2 {
		t.Errorf("counted %d failed, want 2", c[records.CountFailed])
	}
}

// GetActiveJobs lists a caller's own deliberations, and those nobody owns; an admin's lists
// every one.
func TestActiveListsTheCallersOwn(t *testing.T) {
	s, _ := newStore(t)
	ctx := ctxT(t)
	for id, owner := range map[string]string{"a": "alice", "b": "bob", "n": ""} {
		e := entry(id, domain.StatusPending, t0)
		e.Owner = owner
		if err := s.PutActive(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	svc := &Service{Store: s, Logger: quiet}
	for _, c := range []struct {
		who  domain.Caller
		want string
	}{
		{domain.Caller{Name: "alice"}, "[a n]"},
		{domain.Caller{Name: "bob"}, "[b n]"},
		{domain.Caller{Name: "root", Admin: true}, "[a b n]"},
		{domain.Caller{}, "[n]"},
	} {
		got, err := svc.Active(ctx, c.who)
		var ids []string
		for _, a := range got {
			ids = append(ids, a.Meta.DeliberationID)
		}
		if err != nil || fmt.Sprint(ids) != c.want {
			t.Errorf("%+v: got %v %v, want %s", c.who, ids, err, c.want)
		}
	}
}

// A flood of GetStatus calls costs Ray one check per TTL: concurrent askers share the check
// in flight, later ones reuse its answer until it is TTL old, and an asker that gives up
// does not fail the check for the others.
func TestProbeChecksOncePerTTL(t *testing.T) {
	var checks atomic.Int32
	release := make(chan struct{})
	p := &Probe{TTL: 200 * time.Millisecond, Check: func(ctx context.Context) error {
		checks.Add(1)
		select {
		case <-release:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}}
	impatient, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, 50)
	wg.Add(1)
	go func() { defer wg.Done(); _ = p.Ready(impatient) }() // may be the one that runs the check
	for range 50 {
		wg.Add(1)
		go func() { defer wg.Done(); errs <- p.Ready(context.Background()) }()
	}
	time.Sleep(100 * time.Millisecond) // the impatient asker has given up by now
	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("an asker got %v, want the shared check's answer", err)
		}
	}
	if n := checks.Load(); n != 1 {
		t.Errorf("51 concurrent askers cost %d checks, want 1", n)
	}
	for range 10 {
		_ = p.Ready(context.Background())
	}
	if n := checks.Load(); n != 1 {
		t.Errorf("within the TTL: %d checks in all, want still 1", n)
	}
	time.Sleep(250 * time.Millisecond)
	_ = p.Ready(context.Background())
	if n := checks.Load(); n != 2 {
		t.Errorf("after the TTL: %d checks in all, want 2", n)
	}
}

// blockingActive is the real store whose active-index read waits for release and counts
// its calls: a pass in progress, for as long as the test likes.
type blockingActive struct {
	*records.Store
	calls   atomic.Int32
	release chan struct{}
}

func (b *blockingActive) Active(ctx context.Context) ([]domain.ActiveEntry, []string, error) {
	b.calls.Add(1)
	<-b.release
	return b.Store.Active(ctx)
}

// Reconcile requests that arrive while a pass runs join it: twenty at once cost one pass.
func TestConcurrentReconcilesAreOnePass(t *testing.T) {
	s, _ := newStore(t)
	b := &blockingActive{Store: s, release: make(chan struct{})}
	rec := &Reconciler{Store: b, Logger: quiet}
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for range 20 {
		wg.Add(1)
		go func() { defer wg.Done(); _, err := rec.Run(ctxT(t)); errs <- err }()
	}
	for deadline := time.Now().Add(5 * time.Second); b.calls.Load() == 0 && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond) // the others arrive while the first pass waits
	close(b.release)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("a joined run: %v", err)
		}
	}
	if n := b.calls.Load(); n != 1 {
		t.Errorf("20 concurrent reconciles made %d passes, want 1", n)
	}
	if _, err := rec.Run(ctxT(t)); err != nil || b.calls.Load() != 2 {
		t.Errorf("a later reconcile: %v, %d passes in all, want a pass of its own", err, b.calls.Load())
	}
}
