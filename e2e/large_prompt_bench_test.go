//go:build e2e && bench

package e2e

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fleet-ai/ray-executor/shared/domain"
	pb "github.com/fleet-ai/ray-executor/shared/gen/fleet/ray_executor/v1"
)

// memory is a process's resident memory from /proc/<pid>/status, in KiB: VmHWM its peak
// since it started, VmRSS now.
type memory struct{ hwm, rss int }

func memoryOf(t *testing.T, pid int) memory {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("reading /proc/%d/status: %v", pid, err)
	}
	var m memory
	for _, line := range strings.Split(string(b), "\n") {
		var v int
		if _, err := fmt.Sscanf(line, "VmHWM: %d kB", &v); err == nil {
			m.hwm = v
		}
		if _, err := fmt.Sscanf(line, "VmRSS: %d kB", &v); err == nil {
			m.rss = v
		}
	}
	if m.hwm == 0 || m.rss == 0 {
		t.Fatalf("no VmHWM/VmRSS in /proc/%d/status", pid)
	}
	return m
}

func mib(kib int) float64 { return float64(kib) / 1024 }

// TestLargePromptMemoryReport sends 16 deliberations with a task description at the default
// limit (256 KiB each) through the ingress at once, against a real Ray and NATS, and reports
// the resident memory of the ingress and of the execute function (a process of its own, so
// nothing else runs through it): before, once every submission is answered, and once every
// deliberation has completed, for BENCHMARKS.md "Large prompts (issue 10)". The same burst
// with 1 KiB descriptions runs first, in the same processes, as the baseline.
func TestLargePromptMemoryReport(t *testing.T) {
	const burst = 16
	s := shared(t)
	execute := start(t, "execute", "LOG_LEVEL=warn")
	client, _, ingress := startIngressProc(t, execute.url, s.status.url, s.list.url)
	stub, url := llm(t)
	limit := domain.DefaultLimits().MaxDescriptionBytes
	ctx := context.Background()
	pids := map[string]int{"ingress": ingress.cmd.Process.Pid, "execute": execute.cmd.Process.Pid}
	measure := func() map[string]memory {
		m := map[string]memory{}
		for name, pid := range pids {
			m[name] = memoryOf(t, pid)
		}
		return m
	}

	// One small deliberation first, so both processes have made their connections (to Ray,
	// NATS, each other) and uploaded the payload package before "before" is read.
	warm := request(uniqueTask(t)+"-warm", url, "warm")
	if r, err := client.ExecuteDeliberation(ctx, warm); err != nil {
		t.Fatalf("warm-up: %v", err)
	} else if st := waitGRPC(t, client, r.GetDeliberationId()); st.GetStatus() != "completed" {
		t.Fatalf("warm-up: got %q, want completed", st.GetStatus())
	}
	type row struct {
		label                      string
		submitted, slowest         time.Duration
		before, afterSubmit, after map[string]memory
	}
	var rows []row
	for _, size := range []int{1 << 10, limit} {
		model := fmt.Sprintf("size-%d", size)
		r := row{label: fmt.Sprintf("%d × %d-byte description", burst, size), before: measure()}
		reqs := make([]*pb.ExecuteDeliberationRequest, burst)
		for i := range reqs {
			reqs[i] = request(fmt.Sprintf("%s-%d-%02d", uniqueTask(t), size, i), url, model)
			reqs[i].TaskDescription = largeDescription(size, reqs[i].TaskId)
		}
		ids := make([]string, burst)
		lat := make([]time.Duration, burst)
		var wg sync.WaitGroup
		gate := make(chan struct{})
		for i := range reqs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-gate
				t0 := time.Now()
				resp, err := client.ExecuteDeliberation(ctx, reqs[i])
				lat[i] = time.Since(t0)
				if err != nil {
					t.Errorf("deliberation %d: %v", i, err)
					return
				}
				ids[i] = resp.GetDeliberationId()
			}()
		}
		t0 := time.Now()
		close(gate)
		wg.Wait()
		r.submitted = time.Since(t0)
		if t.Failed() {
			t.FailNow()
		}
		r.afterSubmit = measure()
		for _, id := range ids {
			if st := waitGRPC(t, client, id); st.GetStatus() != "completed" {
				t.Errorf("deliberation %s: got %q (%s), want completed", id, st.GetStatus(), st.GetErrorMessage())
			}
		}
		r.after = measure()
		for _, d := range lat {
			r.slowest = max(r.slowest, d)
		}
		rows = append(rows, r)

		// Every description reached the LLM byte for byte.
		got := map[string]bool{}
		for _, c := range stub.Calls() {
			if c.Model == model && len(c.Messages) == 2 {
				got[c.Messages[1].Content] = true
			}
		}
		for i, req := range reqs {
			found := false
			for content := range got {
				found = found || strings.HasPrefix(content, req.TaskDescription+"\n\n")
			}
			if !found {
				t.Errorf("deliberation %d: the LLM never got its %d-byte description intact", i, size)
			}
		}
	}

	fmt.Printf("\n%d deliberations at once through the ingress (one agent each), against the real Ray head and NATS\n\n", burst)
	fmt.Printf("| burst | process | VmHWM before | VmRSS before | VmHWM after the burst | VmRSS after the burst | VmRSS once all completed | all answered in |\n|---|---|---|---|---|---|---|---|\n")
	for _, r := range rows {
		for _, name := range []string{"ingress", "execute"} {
			b, a, d := r.before[name], r.afterSubmit[name], r.after[name]
			fmt.Printf("| %s | %s | %.1f MiB | %.1f MiB | %.1f MiB | %.1f MiB | %.1f MiB | %.0f ms |\n",
				r.label, name, mib(b.hwm), mib(b.rss), mib(a.hwm), mib(a.rss), mib(d.rss), ms(r.submitted))
		}
	}
}
