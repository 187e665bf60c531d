package status

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fleet-ai/ray-executor/shared/domain"
	"github.com/fleet-ai/ray-executor/shared/natsbus"
	"github.com/fleet-ai/ray-executor/shared/natslocal"
	"github.com/fleet-ai/ray-executor/shared/records"
	"github.com/fleet-ai/ray-executor/shared/telemetry"
	"github.com/fleet-ai/ray-executor/shared/testenv"
	"google.golang.org/protobuf/proto"
)

const twoAgents = `{"version":1,"status":"completed","num_agents":2,"completed_agents":1,"failed_agents":1,` +
	`"agents":[{"agent_id":"a1","status":"completed","proposal":"p1","reasoning":"r1","score":0.5},` +
	`{"agent_id":"a2","status":"failed","error":"HTTP 500","error_type":"http_error"}]}`

const allFailed = `{"version":1,"status":"failed","num_agents":1,"completed_agents":0,"failed_agents":1,"error":"all 1 agents failed",` +
	`"agents":[{"agent_id":"a1","status":"failed","error":"HTTP 500","error_type":"http_error"}]}`

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func newStore(t *testing.T) *records.Store {
	t.Helper()
	bus := testenv.NATS(t)
	s := records.New(bus.Conn(), bus.JetStream(), records.Config{})
	if err := s.Provision(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	return s
}

func outcome(t *testing.T, raw string) domain.Outcome {
	t.Helper()
	var o domain.Outcome
	if err := json.Unmarshal([]byte(raw), &o); err != nil {
		t.Fatal(err)
	}
	return o
}

var t0 = time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)

// stored creates the record of key as execute does and moves it on with change, as the
// executor or Cancel would.
func stored(t *testing.T, s *records.Store, key string, change func(domain.Record) (domain.Record, error)) string {
	t.Helper()
	id := domain.DeliberationIDForKey(key)
	r := domain.Request{Kind: domain.KindDeliberation, TaskID: "task-" + key, Role: "dev",
		Constraints: domain.Constraints{TimeoutSeconds: 60}, Agents: []domain.Agent{{ID: "a1"}, {ID: "a2"}}}
	if err := s.Create(ctxT(t), domain.NewRecord(id, r, "h", "", "", t0)); err != nil {
		t.Fatal(err)
	}
	if change != nil {
		if _, err := s.Update(ctxT(t), id, change); err != nil {
			t.Fatal(err)
		}
	}
	return id
}

func TestStatusReadsTheRecord(t *testing.T) {
	s := newStore(t)
	start := func(r domain.Record) (domain.Record, error) { return r.Start(1, "x", t0.Add(time.Second)) }
	end := t0.Add(5 * time.Second)
	cases := []struct {
		name       string
		change     func(domain.Record) (domain.Record, error)
		want       domain.Status
		wantType   string
		wantMsg    string
		wantAgents int
		ended      bool
	}{
		{"pending", nil, domain.StatusPending, "", "", 0, false},
		{"running", start, domain.StatusRunning, "", "", 0, false},
		{"completed", func(r domain.Record) (domain.Record, error) {
			r, _ = start(r)
			return r.Finish(outcome(t, twoAgents), end)
		}, domain.StatusCompleted, "", "", 2, true},
		{"every agent failed", func(r domain.Record) (domain.Record, error) {
			r, _ = start(r)
			return r.Finish(outcome(t, allFailed), end)
		}, domain.StatusFailed, "all_agents_failed", "all 1 agents failed", 1, true},
		{"executor lost", func(r domain.Record) (domain.Record, error) {
			return r.Fail(domain.ErrorTypeExecutorLost, "delivered 4 times", end)
		}, domain.StatusFailed, "executor_lost", "delivered 4 times", 0, true},
		{"cancelled", func(r domain.Record) (domain.Record, error) {
			r, _, err := r.Cancel("cancelled by request", end)
			return r, err
		}, domain.StatusCancelled, "", "cancelled by request", 0, true},
	}
	svc := NewService(s, 8, 0)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			id := stored(t, s, tc.name, tc.change)
			rep, err := svc.Status(ctxT(t), id, domain.Caller{})
			if err != nil {
				t.Fatal(err)
			}
			if rep.DeliberationID != id || rep.Status != tc.want || rep.ErrorType != tc.wantType || rep.ErrorMessage != tc.wantMsg {
				t.Errorf("got %q/%q/%q, want %q/%q/%q", rep.Status, rep.ErrorType, rep.ErrorMessage, tc.want, tc.wantType, tc.wantMsg)
			}
			resp := Response(rep)
			if n := len(resp.GetAgentResults()); n != tc.wantAgents {
				t.Errorf("got %d agent results, want %d", n, tc.wantAgents)
			}
			if resp.GetTaskId() != "task-"+tc.name || !resp.GetStartTime().AsTime().Equal(t0) {
				t.Errorf("got task %q, start %v", resp.GetTaskId(), resp.GetStartTime().AsTime())
			}
			if tc.ended != (resp.GetEndTime() != nil) || tc.ended && !resp.GetEndTime().AsTime().Equal(end) {
				t.Errorf("got end time %v, want it set (%v) only when ended", resp.GetEndTime(), tc.ended)
			}
			if tc.wantAgents == 0 && resp.GetTotalAgents() != 2 {
				t.Errorf("got total agents %d, want the record's 2", resp.GetTotalAgents())
			}
		})
	}
	rep, err := svc.Status(ctxT(t), domain.DeliberationIDForKey("never accepted"), domain.Caller{})
	if err != nil || rep.Status != domain.StatusNotFound {
		t.Errorf("unknown id: got %v, %v, want not_found", rep.Status, err)
	}
}

// countingRecords is the real store, counting reads.
type countingRecords struct {
	*records.Store
	gets atomic.Int32
}

func (c *countingRecords) Get(ctx context.Context, id string) (domain.Record, uint64, error) {
	c.gets.Add(1)
	return c.Store.Get(ctx, id)
}

func TestFinishedReportsAreCachedAndActiveOnesAreNot(t *testing.T) {
	s := newStore(t)
	c := &countingRecords{Store: s}
	svc := NewService(c, 2, 0)
	id := stored(t, s, "k", func(r domain.Record) (domain.Record, error) { return r.Start(1, "x", t0) })
	for range 3 {
		if rep, err := svc.Status(ctxT(t), id, domain.Caller{}); err != nil || rep.Status != domain.StatusRunning {
			t.Fatalf("got %v, %v", rep.Status, err)
		}
	}
	if n := c.gets.Load(); n != 3 {
		t.Fatalf("running: got %d reads, want 3 (an active report is never cached)", n)
	}
	if _, err := s.Update(ctxT(t), id, func(r domain.Record) (domain.Record, error) {
		return r.Finish(outcome(t, twoAgents), t0.Add(time.Second))
	}); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		rep, err := svc.Status(ctxT(t), id, domain.Caller{})
		if err != nil || rep.Status != domain.StatusCompleted || rep.Outcome == nil {
			t.Fatalf("got %v %v, want completed", rep.Status, err)
		}
	}
	if n := c.gets.Load(); n != 4 {
		t.Errorf("finished: got %d reads in all, want 4 (later reports cached)", n)
	}
	// The cache is bounded: two more finished deliberations push the first out.
	for _, k := range []string{"k2", "k3"} {
		other := stored(t, s, k, func(r domain.Record) (domain.Record, error) { return r.Fail("x", "y", t0) })
		if _, err := svc.Status(ctxT(t), other, domain.Caller{}); err != nil {
			t.Fatal(err)
		}
	}
	before := c.gets.Load()
	if _, err := svc.Status(ctxT(t), id, domain.Caller{}); err != nil {
		t.Fatal(err)
	}
	if c.gets.Load() != before+1 {
		t.Error("the oldest cached report was not evicted from a cache of 2")
	}
}

func TestResponseIsCompatible(t *testing.T) {
	var out domain.Outcome
	if err := json.Unmarshal([]byte(twoAgents), &out); err != nil {
		t.Fatal(err)
	}
	resp := Response(Report{DeliberationID: "d1", Status: domain.StatusCompleted, Outcome: &out})
	r := resp.GetResult()
	if r.GetAgentId() != "a1" || r.GetProposal() != "p1" || r.GetReasoning() != "r1" || r.GetScore() != 0.5 {
		t.Errorf("got result %v, want a1's proposal, reasoning and score", r)
	}
	md := r.GetMetadata()
	if md["total_agents"] != "2" || md["completed_agents"] != "1" || md["failed_agents"] != "1" || md["average_score"] != "0.5000" {
		t.Errorf("got metadata %v", md)
	}
	if resp.GetAgentResults()[1].GetError() != "HTTP 500" || resp.GetCompletedAgents() != 1 || resp.GetFailedAgents() != 1 {
		t.Errorf("got %v, want a2's error and the counts", resp)
	}
}

// Ids this system could not have minted (the original's, with ':'; any characters) are
// not_found without a read of NATS; only an empty or oversize id is a malformed request.
func TestForeignIDIsNotFoundWithoutReadingNATS(t *testing.T) {
	svc := NewService(nil, 8, 0) // no store: a read would panic the test
	for _, id := range []string{"a/b", "a.b", "../x", "deliberation-ceremony-c1:story-s1:role-QA-1733000000",
		"delib-*", "delib >", "délib", strings.Repeat("x", domain.MaxLookupIDBytes)} {
		rep, err := svc.Status(context.Background(), id, domain.Caller{})
		if err != nil || rep.Status != domain.StatusNotFound || rep.DeliberationID != id {
			t.Errorf("id %.40q: got %v, %v, want not_found and no error", id, rep.Status, err)
		}
	}
	for _, id := range []string{"", strings.Repeat("x", domain.MaxLookupIDBytes+1)} {
		if _, err := svc.Status(context.Background(), id, domain.Caller{}); !errors.Is(err, domain.ErrInvalid) {
			t.Errorf("id of %d bytes: got %v, want ErrInvalid", len(id), err)
		}
	}
}

func TestStatusErrors(t *testing.T) {
	bus := testenv.NATS(t)
	s := records.New(bus.Conn(), bus.JetStream(), records.Config{})
	_ = s.Provision(ctxT(t))
	kv, err := bus.JetStream().KeyValue(ctxT(t), records.DefaultBucket)
	if err != nil {
		t.Fatal(err)
	}
	id := domain.DeliberationIDForKey("bad")
	if _, err := kv.Put(ctxT(t), "d."+id, []byte(`{"v":1,"id":"x","state":"exploded"}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := NewService(s, 8, 0).Status(ctxT(t), id, domain.Caller{}); !errors.Is(err, domain.ErrUnavailable) {
		t.Errorf("a record that does not read: got %v, want ErrUnavailable", err)
	}

	srv, err := natslocal.Start("127.0.0.1:0", filepath.Join(t.TempDir(), "nats"))
	if err != nil {
		t.Fatal(err)
	}
	down, err := natsbus.Connect(natsbus.Config{URL: srv.URL()}, "test", slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer down.Close()
	srv.Stop()
	for deadline := time.Now().Add(10 * time.Second); down.Connected() && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	svc := NewService(records.New(down.Conn(), down.JetStream(), records.Config{}), 8, 0)
	if _, err := svc.Status(ctxT(t), id, domain.Caller{}); !errors.Is(err, domain.ErrUnavailable) {
		t.Errorf("NATS down: got %v, want ErrUnavailable", err)
	}
}

func TestConfig(t *testing.T) {
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	cfg, err := LoadConfig(env(nil))
	if err != nil || cfg.CacheSize != 256 || cfg.CacheBytes != 256<<10 || cfg.Records.Bucket != records.DefaultBucket || cfg.Source != "ray-executor/status" {
		t.Errorf("defaults: got %+v, %v", cfg, err)
	}
	for k, want := range map[string]string{"ENABLE_NATS": "ENABLE_NATS=false is no longer supported", "RESULT_CACHE_SIZE": "RESULT_CACHE_SIZE must be positive"} {
		v := "false"
		if k == "RESULT_CACHE_SIZE" {
			v = "0"
		}
		if _, err := LoadConfig(env(map[string]string{k: v})); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s=%s: got %v, want %q", k, v, err, want)
		}
	}
}

// A status read past a deliberation's deadline ends it (failed, deadline_exceeded) when
// nothing else has: the caller polling sees the end at the deadline, with no executor and
// no reconciler. One terminal event is stored however many reads race; a read before the
// deadline changes nothing.
func TestStatusEndsAnExpiredDeliberation(t *testing.T) {
	bus := testenv.NATS(t)
	s := records.New(bus.Conn(), bus.JetStream(), records.Config{})
	if err := s.Provision(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	id := stored(t, s, "expiring", nil) // accepted at t0 with timeout_seconds 60
	deadline := t0.Add(60*time.Second + domain.DeadlineGrace)
	now := deadline.Add(-time.Second)
	svc := NewService(s, 8, 0).WithExpiry(&Expiry{Store: s, Events: bus, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Now: func() time.Time { return now }})
	if rep, err := svc.Status(ctxT(t), id, domain.Caller{}); err != nil || rep.Status != domain.StatusPending {
		t.Fatalf("before the deadline: got %s %v, want pending", rep.Status, err)
	}
	now = deadline.Add(time.Millisecond)
	for range 3 {
		rep, err := svc.Status(ctxT(t), id, domain.Caller{})
		if err != nil || rep.Status != domain.StatusFailed || rep.ErrorType != domain.ErrorTypeDeadlineExceeded ||
			!strings.Contains(rep.ErrorMessage, "never started") {
			t.Fatalf("after the deadline: got %+v %v, want failed deadline_exceeded, never started", rep, err)
		}
	}
	evs, err := bus.Stored(ctxT(t), id)
	if err != nil || len(evs) != 1 || evs[0].Kind() != "failed" {
		t.Errorf("got events %v %v, want one failed", evs, err)
	}
}

func TestCacheIsBoundedByBytes(t *testing.T) {
	big := func(id string, n int) Report {
		return Report{DeliberationID: id, Status: domain.StatusCompleted,
			Outcome: &domain.Outcome{Agents: []domain.AgentResult{{AgentID: "a", Proposal: strings.Repeat("p", n)}}}}
	}
	c := newCache(100, 10_000)
	for i := range 10 {
		c.put(strconv.Itoa(i), big(strconv.Itoa(i), 2_000))
	}
	if c.bytes > 10_000 {
		t.Fatalf("cache holds %d bytes, bound 10000", c.bytes)
	}
	if _, ok := c.get("9"); !ok {
		t.Error("the newest report was evicted")
	}
	if _, ok := c.get("0"); ok {
		t.Error("the oldest report survived past the byte bound")
	}
	sum := 0
	for _, it := range c.items {
		sum += it.size
	}
	if sum != c.bytes || len(c.items) != len(c.order) {
		t.Errorf("accounting: items sum to %d bytes, cache says %d; %d items, %d in order", sum, c.bytes, len(c.items), len(c.order))
	}
	// A report larger than the whole bound is not cached and evicts nothing.
	c.put("huge", big("huge", 20_000))
	if _, ok := c.get("huge"); ok {
		t.Error("a report over the byte bound was cached")
	}
	if _, ok := c.get("9"); !ok {
		t.Error("caching nothing evicted a report")
	}
}

// A deliberation is its owner's and the admins': to anyone else its status is not_found,
// exactly as an id with no record, before and after it is cached as finished.
func TestStatusOfAnotherCallersIsNotFound(t *testing.T) {
	s := newStore(t)
	svc := NewService(s, 8, 0)
	id := stored(t, s, "owned", func(r domain.Record) (domain.Record, error) {
		r.Owner = "alice"
		return r.Fail("x", "y", t0)
	})
	unknown := domain.DeliberationIDForKey("nobody")
	for round := range 2 { // the second round is answered from the cache of finished reports
		for _, c := range []struct {
			who  domain.Caller
			want domain.Status
		}{
			{domain.Caller{Name: "alice"}, domain.StatusFailed},
			{domain.Caller{Name: "root", Admin: true}, domain.StatusFailed},
			{domain.Caller{Name: "bob"}, domain.StatusNotFound},
			{domain.Caller{}, domain.StatusNotFound},
		} {
			rep, err := svc.Status(ctxT(t), id, c.who)
			if err != nil || rep.Status != c.want {
				t.Errorf("round %d, %+v: got %s %v, want %s", round, c.who, rep.Status, err, c.want)
			}
			if c.want == domain.StatusNotFound {
				other, _ := svc.Status(ctxT(t), unknown, c.who)
				other.DeliberationID = id
				if !proto.Equal(Response(rep), Response(other)) {
					t.Errorf("round %d, %+v: foreign %v differs from unknown %v", round, c.who, Response(rep), Response(other))
				}
			}
		}
	}
}

// rex.status.cache.lookups says where each read's answer came from, as Prometheus scrapes it
// from the metrics port.
func TestCacheLookupsAreCounted(t *testing.T) {
	tel, err := telemetry.Setup(ctxT(t), telemetry.Config{ServiceName: "ray-executor-status", MetricsPort: testenv.FreePort(t)},
		slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tel.Shutdown(context.Background()) })
	lookups := func(result string) int {
		t.Helper()
		resp, err := http.Get("http://" + tel.MetricsAddr() + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		m := regexp.MustCompile(`(?m)^rex_status_cache_lookups_total\{result="` + result + `",service_name="ray-executor-status"\} (\d+)$`).FindSubmatch(body)
		if m == nil {
			return 0
		}
		n, _ := strconv.Atoi(string(m[1]))
		return n
	}
	s := newStore(t)
	svc := NewService(s, 8, 0)
	running := stored(t, s, "k", func(r domain.Record) (domain.Record, error) { return r.Start(1, "x", t0) })
	done := stored(t, s, "k2", func(r domain.Record) (domain.Record, error) { return r.Fail("x", "y", t0) })
	for _, id := range []string{running, running, done, done, done} {
		if _, err := svc.Status(ctxT(t), id, domain.Caller{}); err != nil {
			t.Fatal(err)
		}
	}
	// A foreign id and one with no record never reach the cache.
	for _, id := range []string{"not-one-of-ours", domain.NewDeliberationID()} {
		if _, err := svc.Status(ctxT(t), id, domain.Caller{}); err != nil {
			t.Fatal(err)
		}
	}
	for result, want := range map[string]int{"active": 2, "miss": 1, "hit": 2} {
		if got := lookups(result); got != want {
			t.Errorf("result=%s: %d, want %d", result, got, want)
		}
	}
}
