//go:build e2e && exclusive

package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/fleet-ai/ray-executor/shared/domain"
	pb "github.com/fleet-ai/ray-executor/shared/gen/fleet/ray_executor/v1"
	"github.com/fleet-ai/ray-executor/shared/llmstub"
)

// rayHead runs scripts/ray-head.sh (up, or stop: the fault).
func rayHead(t *testing.T, verb string) {
	t.Helper()
	cmd := exec.Command(filepath.Join("..", "scripts", "ray-head.sh"), verb)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("ray-head.sh %s: %v\n%s", verb, err, out)
	}
}

// callLog records every RPC's outcome during the outage.
type callLog struct {
	mu    sync.Mutex
	codes map[string]map[codes.Code]int // by RPC
	bad   []string                      // outcomes other than OK
}

func (l *callLog) record(rpc string, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	c := status.Code(err)
	if l.codes[rpc] == nil {
		l.codes[rpc] = map[codes.Code]int{}
	}
	l.codes[rpc][c]++
	if c != codes.OK {
		l.bad = append(l.bad, fmt.Sprintf("%s: %v", rpc, err))
	}
}

// TestRayOutageUnderSteadyLoad stops the Ray head for OUTAGE_SECONDS (30) while
// submissions, status and list calls keep arriving through the ingress, then starts a fresh
// head (no GCS fault tolerance: the executor's job and the uploaded payload are gone). Ray
// is off the request path, so every call is answered OK: execute keeps accepting, and what
// it accepts waits in the work queue. GetStatus says degraded meanwhile, naming Ray in its
// ray component. Once the head is back, the deployers submit the executor again and every
// accepted deliberation completes with exactly one terminal event: the ones accepted during
// the outage start only after the head is back and call the LLM once; the ones running when
// it stopped are redelivered and complete.
func TestRayOutageUnderSteadyLoad(t *testing.T) {
	outage := time.Duration(envInt("OUTAGE_SECONDS", 30)) * time.Second
	s := shared(t)
	stub, llmURL := llm(t)
	// Agents take a while, so some deliberations are mid-run when the head stops.
	stub.Script("model-slow", llmstub.Behavior{Delay: 3 * time.Second})
	client, _ := startIngress(t, s.execute.url, s.status.url, s.list.url)
	run := uniqueTask(t)

	log := &callLog{codes: map[string]map[codes.Code]int{}}
	var (
		mu       sync.Mutex
		accepted = map[string]string{} // task -> deliberation id
		phase    = "before"
		phaseOf  = map[string]string{} // task -> phase it was accepted in
		degraded []string              // GetStatus answers during the outage
	)
	submit := func(ctx context.Context, task string) (string, error) {
		req := request(task, llmURL, "model-slow")
		req.TaskDescription = "Outage run task " + task + "."
		req.Constraints.TimeoutSeconds = 300 // its deadline must outlast the outage and the executor's return
		ctx = metadata.AppendToOutgoingContext(ctx, "idempotency-key", task)
		ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		resp, err := client.ExecuteDeliberation(ctx, req)
		log.record("ExecuteDeliberation", err)
		return resp.GetDeliberationId(), err
	}

	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { // a steady stream of submissions, one a second
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(time.Second):
			}
			task := fmt.Sprintf("%s-%03d", run, i)
			mu.Lock()
			p := phase
			mu.Unlock()
			id, err := submit(context.Background(), task)
			if err == nil {
				mu.Lock()
				accepted[task], phaseOf[task] = id, p
				mu.Unlock()
			}
		}
	}()
	go func() { // and status calls on what was accepted, 10 a second, with list and health calls
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			mu.Lock()
			ids := make([]string, 0, len(accepted))
			for _, id := range accepted {
				ids = append(ids, id)
			}
			p := phase
			mu.Unlock()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			if len(ids) > 0 {
				_, err := client.GetDeliberationStatus(ctx, &pb.GetDeliberationStatusRequest{DeliberationId: ids[rand.IntN(len(ids))]})
				log.record("GetDeliberationStatus", err)
			}
			if i%10 == 0 {
				_, err := client.GetActiveJobs(ctx, &pb.GetActiveJobsRequest{})
				log.record("GetActiveJobs", err)
				gs, err := client.GetStatus(ctx, &pb.GetStatusRequest{IncludeStats: true})
				log.record("GetStatus", err)
				if err == nil && p == "during" && gs.GetStatus() != "healthy" {
					for _, c := range gs.GetComponents() {
						if c.GetName() == "ray" && c.GetStatus() != "healthy" {
							mu.Lock()
							degraded = append(degraded, gs.GetStatus()+": "+c.GetMessage())
							mu.Unlock()
						}
					}
				}
			}
			cancel()
		}
	}()

	time.Sleep(8 * time.Second)
	mu.Lock()
	phase = "stopping"
	mu.Unlock()
	stopped := time.Now()
	rayHead(t, "stop")
	t.Cleanup(func() { rayHead(t, "up") }) // whatever happens, leave a head for the next test
	mu.Lock()
	phase = "during"
	mu.Unlock()
	time.Sleep(outage - time.Since(stopped))
	mu.Lock()
	phase = "restarting"
	mu.Unlock()
	rayHead(t, "up")
	back := time.Now()
	mu.Lock()
	phase = "after"
	mu.Unlock()
	t.Logf("Ray was down %.1fs (stopped, %s of outage, then a fresh head started)", back.Sub(stopped).Seconds(), outage)
	time.Sleep(10 * time.Second)
	close(stop)
	wg.Wait()

	log.mu.Lock()
	t.Logf("OUTAGE outcomes by RPC: %v", log.codes)
	if len(log.bad) > 0 {
		t.Errorf("%d calls were not answered OK (Ray is off the request path), e.g. %s", len(log.bad), log.bad[0])
	}
	log.mu.Unlock()
	if len(degraded) == 0 {
		t.Error("GetStatus never reported the ray component unhealthy while the head was down")
	} else {
		t.Logf("OUTAGE GetStatus while down: %q", degraded[len(degraded)-1])
	}

	// Every accepted deliberation completes, once.
	final := map[string]*pb.GetDeliberationStatusResponse{}
	for task, id := range accepted {
		final[task] = waitGRPC(t, client, id)
	}
	calls := llmCallsPerTask(stub, run)
	byPhase := map[string]int{}
	for task, id := range accepted {
		p := phaseOf[task]
		byPhase[p]++
		st := final[task]
		rec := s.record(t, id)
		if st.GetStatus() != "completed" {
			t.Errorf("%s (accepted %s): %s (%s: %s), want completed", task, p, st.GetStatus(), st.GetErrorType(), st.GetErrorMessage())
		}
		evs := stored(t, s.bus, id, hasTerminal)
		if n := terminals(evs); n != 1 {
			t.Errorf("%s: %d terminal events (%s), want exactly 1", task, n, kinds(evs))
		}
		switch p {
		case "before", "stopping":
			// Maybe running when the head died: redelivered to the new executor, at most once more.
			if calls[task] > 2 || rec.Attempts > 2 {
				t.Errorf("%s: %d LLM calls over %d attempts, want at most 2", task, calls[task], rec.Attempts)
			}
		case "during":
			// Queued while Ray was down: started only once it was back, and ran once.
			if started := domain.ParseTime(rec.StartedAt); started.Before(back) {
				t.Errorf("%s: accepted during the outage but started %s, before the head was back (%s)", task, started, back)
			}
			fallthrough
		default:
			if calls[task] != 1 || rec.Attempts != 1 {
				t.Errorf("%s (accepted %s): %d LLM calls over %d attempts, want 1", task, p, calls[task], rec.Attempts)
			}
		}
	}
	t.Logf("OUTAGE %d accepted, by phase %v", len(accepted), byPhase)
	if byPhase["during"] == 0 {
		t.Error("nothing was accepted while the head was down")
	}
}
