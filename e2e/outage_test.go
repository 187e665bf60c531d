//go:build e2e && exclusive

package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/fleet-ai/ray-executor/shared/domain"
	"github.com/fleet-ai/ray-executor/shared/events"
	pb "github.com/fleet-ai/ray-executor/shared/gen/fleet/ray_executor/v1"
	"github.com/fleet-ai/ray-executor/shared/llmstub"
	"github.com/fleet-ai/ray-executor/shared/ray"
	"github.com/fleet-ai/ray-executor/shared/testenv"
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
	mu        sync.Mutex
	codes     map[string]map[codes.Code]int // by RPC
	bad       []string                      // outcomes other than OK and UNAVAILABLE
	refusedIn []time.Duration               // how long an UNAVAILABLE took
}

func (l *callLog) record(rpc string, err error, took time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	c := status.Code(err)
	if l.codes[rpc] == nil {
		l.codes[rpc] = map[codes.Code]int{}
	}
	l.codes[rpc][c]++
	switch c {
	case codes.OK:
	case codes.Unavailable:
		l.refusedIn = append(l.refusedIn, took)
	default:
		l.bad = append(l.bad, fmt.Sprintf("%s: %v", rpc, err))
	}
}

// TestRayOutageUnderSteadyLoad stops the Ray head for OUTAGE_SECONDS (30) while
// submissions and status calls keep arriving through the ingress, then starts a fresh head
// (no GCS fault tolerance: every job record is gone). Callers must see only OK or
// UNAVAILABLE; afterwards every accepted deliberation has exactly one terminal event and at
// most one Ray job, the ones Ray lost end "lost by the cluster", the refused ones go
// through when retried with their key, and nothing runs twice.
func TestRayOutageUnderSteadyLoad(t *testing.T) {
	outage := time.Duration(envInt("OUTAGE_SECONDS", 30)) * time.Second
	stub, llmURL := llm(t)
	// Agents take a while, so some deliberations are mid-run when the head stops.
	stub.Script("model-slow", llmstub.Behavior{Delay: 3 * time.Second})
	execute := start(t, "execute")
	st := start(t, "status")
	list := start(t, "list", "RECONCILE_INTERVAL=5s", "RECONCILE_LOOKBACK=1h")
	client, _ := startIngress(t, execute.url, st.url, list.url)
	rc, err := ray.New(ray.Config{Address: testenv.RayAddress(t), Token: testenv.RayToken(t)})
	if err != nil {
		t.Fatal(err)
	}
	run := uniqueTask(t)

	log := &callLog{codes: map[string]map[codes.Code]int{}}
	var (
		mu       sync.Mutex
		accepted = map[string]string{} // task -> deliberation id
		refused  []string              // tasks to retry with their key
		phase    = "before"
		phaseOf  = map[string]string{} // task -> phase it was accepted in
	)
	submit := func(ctx context.Context, task string) (string, error) {
		req := request(task, llmURL, "model-slow")
		req.TaskDescription = "Outage run task " + task + "."
		ctx = metadata.AppendToOutgoingContext(ctx, "idempotency-key", task)
		ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		t0 := time.Now()
		resp, err := client.ExecuteDeliberation(ctx, req)
		log.record("ExecuteDeliberation", err, time.Since(t0))
		return resp.GetDeliberationId(), err
	}

	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { // a steady stream of submissions, one a second (what this Ray drains)
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(time.Second):
			}
			task := fmt.Sprintf("%s-%03d", run, i)
			id, err := submit(context.Background(), task)
			mu.Lock()
			if err == nil {
				accepted[task], phaseOf[task] = id, phase
			} else {
				refused = append(refused, task)
			}
			mu.Unlock()
		}
	}()
	go func() { // and status calls on what was accepted, 10 a second
		defer wg.Done()
		for {
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
			mu.Unlock()
			if len(ids) == 0 {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			t0 := time.Now()
			_, err := client.GetDeliberationStatus(ctx, &pb.GetDeliberationStatusRequest{DeliberationId: ids[rand.IntN(len(ids))]})
			log.record("GetDeliberationStatus", err, time.Since(t0))
			if rand.IntN(10) == 0 {
				t0 = time.Now()
				_, err = client.GetActiveJobs(ctx, &pb.GetActiveJobsRequest{})
				log.record("GetActiveJobs", err, time.Since(t0))
			}
			cancel()
		}
	}()

	time.Sleep(8 * time.Second)
	mu.Lock()
	phase = "stopping" // accepted while `ray stop` runs: Ray may or may not have kept it
	mu.Unlock()
	stopped := time.Now()
	rayHead(t, "stop")
	t.Cleanup(func() { rayHead(t, "up") }) // whatever happens, leave a head for the next test
	mu.Lock()
	phase = "during"
	mu.Unlock()
	time.Sleep(outage - time.Since(stopped))
	rayHead(t, "up")
	mu.Lock()
	phase = "after"
	mu.Unlock()
	t.Logf("Ray was down %.1fs (stopped, %s of outage, then a fresh head started)", time.Since(stopped).Seconds(), outage)
	time.Sleep(10 * time.Second)
	close(stop)
	wg.Wait()

	// The refused submissions go through when retried with their keys.
	for _, task := range refused {
		var id string
		var err error
		for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(time.Second) {
			if id, err = submit(context.Background(), task); err == nil {
				break
			}
		}
		if err != nil {
			t.Fatalf("retry of refused %s: %v", task, err)
		}
		accepted[task], phaseOf[task] = id, "retried"
	}

	log.mu.Lock()
	t.Logf("OUTAGE outcomes by RPC: %v; %d submissions refused then retried", log.codes, len(refused))
	if len(log.bad) > 0 {
		t.Errorf("%d calls ended neither OK nor UNAVAILABLE, e.g. %s", len(log.bad), log.bad[0])
	}
	if len(log.refusedIn) > 0 {
		slices.Sort(log.refusedIn)
		t.Logf("OUTAGE an UNAVAILABLE took p50 %.1f ms, p99 %.1f ms, max %.1f ms (%d of them)",
			millis(pct(log.refusedIn, 0.5)), millis(pct(log.refusedIn, 0.99)),
			millis(log.refusedIn[len(log.refusedIn)-1]), len(log.refusedIn))
	} else {
		t.Error("no call saw UNAVAILABLE: the head was never down while calls arrived")
	}
	log.mu.Unlock()

	// Every accepted deliberation ends.
	final := map[string]*pb.GetDeliberationStatusResponse{}
	for task, id := range accepted {
		final[task] = waitGRPC(t, client, id)
	}
	bus := readBus(t, natsURL)
	jobs, err := rc.Jobs(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	jobsOf := map[string]int{}
	for _, j := range jobs {
		jobsOf[j.Metadata[domain.MetaTaskID]]++
	}
	calls := llmCallsPerTask(stub, run)
	byOutcome := map[string]int{}
	for task, id := range accepted {
		rep := final[task]
		outcome := rep.GetStatus() + "/" + phaseOf[task]
		if rep.GetErrorType() == domain.ErrorTypeLost {
			outcome = "lost/" + phaseOf[task]
		}
		byOutcome[outcome]++
		ended := rep.GetStatus() == "completed" || rep.GetStatus() == "failed"
		switch phaseOf[task] {
		case "before", "stopping":
			// Running when the head died: it completed, failed with its node, or was lost
			// (the fresh head has no record and no driver survived to report).
			if !ended {
				t.Errorf("%s: %s, want it ended", task, rep.GetStatus())
			}
		default:
			// Accepted by the fresh head: it must run, once, to completion.
			if rep.GetStatus() != "completed" || jobsOf[task] != 1 {
				t.Errorf("%s (accepted %s): %s (%s: %s) with %d Ray jobs, want completed with 1",
					task, phaseOf[task], rep.GetStatus(), rep.GetErrorType(), rep.GetErrorMessage(), jobsOf[task])
			}
		}
		if jobsOf[task] > 1 {
			t.Errorf("%s has %d Ray jobs", task, jobsOf[task])
		}
		if calls[task] > 1 {
			t.Errorf("%s reached the LLM %d times: it ran twice", task, calls[task])
		}
		evs := stored(t, bus, id, hasTerminal)
		terminals := 0
		for _, e := range evs {
			if e.Kind().Terminal() {
				terminals++
			}
		}
		if terminals != 1 {
			t.Errorf("%s: %d terminal events (%s), want exactly 1", task, terminals, kinds(evs))
		}
		// The answer agrees with the one terminal event, whoever published it.
		if h := events.Summarize(evs); h.Terminal == nil || h.Terminal.Status != rep.GetStatus() ||
			(h.Terminal.ErrorType == domain.ErrorTypeLost) != (rep.GetErrorType() == domain.ErrorTypeLost) {
			t.Errorf("%s: status says %s/%s, its terminal event %+v", task, rep.GetStatus(), rep.GetErrorType(), h.Terminal)
		}
	}
	t.Logf("OUTAGE %d accepted; outcome/accepted-when: %v", len(accepted), byOutcome)
	if byOutcome["lost/before"]+byOutcome["lost/stopping"] == 0 {
		t.Error("no deliberation was lost: none was running when the head stopped, so the test proved nothing about loss")
	}
	if byOutcome["completed/after"]+byOutcome["completed/retried"] == 0 {
		t.Error("nothing submitted after the head came back completed")
	}
}
