//go:build e2e && exclusive

// Tests that need the Ray head to themselves: `make test` runs them after the rest
// (go test -tags 'e2e exclusive' -run 'TestLoad|TestRayOutage|...' ./e2e/).

package e2e

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/fleet-ai/ray-executor/shared/domain"
	pb "github.com/fleet-ai/ray-executor/shared/gen/fleet/ray_executor/v1"
	"github.com/fleet-ai/ray-executor/shared/llmstub"
)

// envInt reads a test knob.
func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// pct is the p-th percentile of sorted durations.
func pct(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted)-1) * p)
	return sorted[i]
}

// retryable is what a caller of the ingress may retry with the same idempotency key.
func retryable(err error) bool {
	switch status.Code(err) {
	case codes.Unavailable, codes.ResourceExhausted, codes.DeadlineExceeded:
		return true
	}
	return false
}

// TestLoadTwoHundredDeliberations submits LOAD_DELIBERATIONS (200) deliberations through
// the ingress as fast as it accepts them (LOAD_WORKERS concurrent callers, each retrying a
// refused submission with its key), waits for all to complete, and checks that each ran
// exactly once (one record per task, on its first attempt, one LLM call, one terminal
// event). It reports accepted/s, submit latency, how long deliberations waited in the
// queue, and how fast the executor ran them.
func TestLoadTwoHundredDeliberations(t *testing.T) {
	n, workers := envInt("LOAD_DELIBERATIONS", 200), envInt("LOAD_WORKERS", 16)
	s := shared(t)
	stub, llmURL := llm(t)
	client, _ := startIngress(t, s.execute.url, s.status.url, s.list.url)
	run := uniqueTask(t)

	type accepted struct {
		task, id string
		latency  time.Duration
	}
	var (
		mu       sync.Mutex
		got      []accepted
		refusals = map[codes.Code]int{}
		next     atomic.Int64
		failures []string
	)
	start := time.Now()
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				task := fmt.Sprintf("%s-%03d", run, i)
				req := request(task, llmURL, "model-a")
				req.TaskDescription = "Load run task " + task + "."
				ctx := metadata.AppendToOutgoingContext(context.Background(), "idempotency-key", task)
				for attempt := 0; ; attempt++ {
					t0 := time.Now()
					cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
					resp, err := client.ExecuteDeliberation(cctx, req)
					cancel()
					d := time.Since(t0)
					mu.Lock()
					switch {
					case err == nil:
						got = append(got, accepted{task, resp.GetDeliberationId(), d})
					case retryable(err) && attempt < 100:
						refusals[status.Code(err)]++
					default:
						failures = append(failures, fmt.Sprintf("%s: %v", task, err))
					}
					mu.Unlock()
					if err == nil || !retryable(err) || attempt >= 100 {
						break
					}
					time.Sleep(time.Duration(50*(attempt+1)) * time.Millisecond)
				}
			}
		}()
	}
	wg.Wait()
	acceptWindow := time.Since(start)
	if len(failures) > 0 {
		t.Fatalf("%d submissions failed for good, e.g. %s", len(failures), failures[0])
	}
	if len(got) != n {
		t.Fatalf("accepted %d of %d", len(got), n)
	}
	lat := make([]time.Duration, len(got))
	ids := map[string]string{}
	for i, a := range got {
		lat[i] = a.latency
		if prev, dup := ids[a.id]; dup {
			t.Fatalf("tasks %s and %s got the same deliberation %s", prev, a.task, a.id)
		}
		ids[a.id] = a.task
	}
	slices.Sort(lat)

	// Wait for every deliberation to end, watching how many run at once (the active index).
	maxRunning, maxReplicas := 0, 0
	pending := maps(ids)
	for deadline := time.Now().Add(15 * time.Minute); len(pending) > 0; time.Sleep(500 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d deliberations did not finish in 15 min", len(pending))
		}
		running := 0
		for _, j := range s.activeJobs(t) {
			if _, ours := ids[j.GetJobId()]; ours && j.GetStatus() == "RUNNING" {
				running++
			}
		}
		maxRunning = max(maxRunning, running)
		if hb, ok, err := s.store.Heartbeat(context.Background()); err == nil && ok {
			maxReplicas = max(maxReplicas, hb.Replicas)
		}
		for id := range pending {
			if s.record(t, id).Terminal() {
				delete(pending, id)
			}
		}
	}
	allDone := time.Since(start)

	// Exactly one record per task, each completed on its first attempt, each agent asked
	// once, one terminal event each.
	var firstStart, lastEnd time.Time
	var queued, ran []time.Duration
	bus := readBus(t, natsURL)
	for id, task := range ids {
		recs := s.recordsForTask(t, task)
		if len(recs) != 1 {
			t.Errorf("task %s has %d records, want 1", task, len(recs))
			continue
		}
		r := recs[0]
		if r.ID != id || r.State != domain.StatusCompleted || r.Attempts != 1 {
			t.Errorf("task %s: record %s %s attempt %d (%s), want %s completed on attempt 1", task, r.ID, r.State, r.Attempts, r.Error, id)
		}
		created, started, ended := domain.ParseTime(r.CreatedAt), domain.ParseTime(r.StartedAt), domain.ParseTime(r.EndedAt)
		if firstStart.IsZero() || started.Before(firstStart) {
			firstStart = started
		}
		if ended.After(lastEnd) {
			lastEnd = ended
		}
		queued = append(queued, started.Sub(created))
		ran = append(ran, ended.Sub(started))
		if n := terminals(stored(t, bus, id, hasTerminal)); n != 1 {
			t.Errorf("deliberation %s: %d terminal events, want 1", id, n)
		}
	}
	calls := llmCallsPerTask(stub, run)
	if len(calls) != n {
		t.Errorf("the LLM was asked about %d tasks, want %d", len(calls), n)
	}
	for task, c := range calls {
		if c != 1 {
			t.Errorf("task %s reached the LLM %d times, want once", task, c)
		}
	}
	for id := range ids {
		st, err := client.GetDeliberationStatus(context.Background(), &pb.GetDeliberationStatusRequest{DeliberationId: id})
		if err != nil || st.GetStatus() != "completed" {
			t.Errorf("deliberation %s: %s (%v), want completed", id, st.GetStatus(), err)
		}
	}
	slices.Sort(queued)
	slices.Sort(ran)
	t.Logf("LOAD %d deliberations, %d callers: accepted in %.1fs = %.1f accepted/s; submit latency p50 %.0f ms, p99 %.0f ms, max %.0f ms; refusals retried %v",
		n, workers, acceptWindow.Seconds(), float64(n)/acceptWindow.Seconds(),
		millis(pct(lat, 0.5)), millis(pct(lat, 0.99)), millis(lat[len(lat)-1]), refusals)
	t.Logf("LOAD executor: first start to last end %.1fs = %.2f completed/s; queued (created to started) p50 %.2fs, p99 %.2fs; run p50 %.2fs, p99 %.2fs; at most %d running at once on at most %d replicas; all done %.1fs after the first submit",
		lastEnd.Sub(firstStart).Seconds(), float64(n)/lastEnd.Sub(firstStart).Seconds(),
		pct(queued, 0.5).Seconds(), pct(queued, 0.99).Seconds(), pct(ran, 0.5).Seconds(), pct(ran, 0.99).Seconds(),
		maxRunning, maxReplicas, allDone.Seconds())
}

func maps(m map[string]string) map[string]bool {
	out := make(map[string]bool, len(m))
	for k := range m {
		out[k] = true
	}
	return out
}

// llmCallsPerTask counts the stub's calls by the task they were about: the first message
// naming a task of run ("<run>-NNN", as both tests number them) decides.
func llmCallsPerTask(stub *llmstub.Server, run string) map[string]int {
	calls := map[string]int{}
	for _, c := range stub.Calls() {
		for _, m := range c.Messages {
			if i := strings.Index(m.Content, run+"-"); i >= 0 {
				calls[m.Content[i:i+len(run)+4]]++
				break
			}
		}
	}
	return calls
}

func millis(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
