//go:build e2e && exclusive

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fleet-ai/ray-executor/shared/events"
	pb "github.com/fleet-ai/ray-executor/shared/gen/fleet/ray_executor/v1"
	"github.com/fleet-ai/ray-executor/shared/llmstub"
	"github.com/fleet-ai/ray-executor/shared/ray"
	"github.com/fleet-ai/ray-executor/shared/testenv"
)

// headCPUs reads how many CPUs the Ray cluster has ("ResourceUsage: 0.0/4.0 CPU" in the
// autoscaler's status), once none is in use (jobs of earlier tests may still be ending),
// so one deliberation's reservation can take all of them.
func headCPUs(t *testing.T) float64 {
	t.Helper()
	re := regexp.MustCompile(`ResourceUsage: ([0-9.]+)/([0-9.]+) CPU`)
	deadline := time.Now().Add(2 * time.Minute)
	for {
		req, err := http.NewRequest(http.MethodGet, testenv.RayAddress(t)+"/api/cluster_status", nil)
		if err != nil {
			t.Fatal(err)
		}
		if tok := testenv.RayToken(t); tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var body struct {
			Data struct {
				AutoscalingStatus string `json:"autoscalingStatus"`
			} `json:"data"`
		}
		err = json.NewDecoder(resp.Body).Decode(&body)
		resp.Body.Close()
		if err != nil {
			t.Fatalf("cluster_status: %v", err)
		}
		m := re.FindStringSubmatch(body.Data.AutoscalingStatus)
		if m == nil {
			t.Fatalf("cluster_status names no CPU usage: %q", body.Data.AutoscalingStatus)
		}
		used, _ := strconv.ParseFloat(m[1], 64)
		total, err := strconv.ParseFloat(m[2], 64)
		if err != nil || total <= 0 {
			t.Fatalf("cluster_status: cannot read the CPU count from %q", m[0])
		}
		if used == 0 {
			return total
		}
		if time.Now().After(deadline) {
			t.Fatalf("the Ray head is still busy (%s): this test needs it to itself", m[0])
		}
		time.Sleep(time.Second)
	}
}

// stopRefuser forwards every call to the Ray head, except a stop of the job named by
// refuse, which it answers 503: Ray never hears of that stop.
type stopRefuser struct {
	mu      sync.Mutex
	refuse  string
	refused int
}

func (p *stopRefuser) set(id string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.refuse = id
}

func (p *stopRefuser) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.refused
}

func (p *stopRefuser) start(t *testing.T) string {
	t.Helper()
	target, err := url.Parse(testenv.RayAddress(t))
	if err != nil {
		t.Fatal(err)
	}
	proxy := httputil.NewSingleHostReverseProxy(target)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		refuse := p.refuse != "" && r.Method == http.MethodPost && r.URL.Path == "/api/jobs/"+p.refuse+"/stop"
		if refuse {
			p.refused++
		}
		p.mu.Unlock()
		if refuse {
			http.Error(w, "stop refused by the test", http.StatusServiceUnavailable)
			return
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// TestQueuedCancelNeverRunsTheDeliberation: deliberation A's driver reserves every CPU of
// the cluster (ENTRYPOINT_NUM_CPUS), so B1 and B2 wait PENDING in Ray, and both are
// cancelled while they wait. Ray takes B1's stop, which it queues and applies only once it
// has started B1's driver. B2's stop never reaches Ray (refused on the way, as when the
// dashboard is down): Ray starts B2's driver once A ends, and only the cancelled event
// execute stored first keeps it from running. Neither may call the LLM; both end
// "cancelled" with exactly one terminal event, the cancelled one.
func TestQueuedCancelNeverRunsTheDeliberation(t *testing.T) {
	cpus := headCPUs(t)
	s := shared(t)
	refuser := &stopRefuser{}
	exec := start(t, "execute", "RAY_ADDRESS="+refuser.start(t), "RAY_RETRIES=0",
		"ENTRYPOINT_NUM_CPUS="+strconv.FormatFloat(cpus, 'f', -1, 64))
	client, _ := startIngress(t, exec.url, s.status.url, s.list.url)
	stub, llmURL := llm(t)
	stub.Script("slow-a", llmstub.Behavior{Delay: 15 * time.Second})
	ctx := context.Background()
	run := uniqueTask(t)

	a, err := client.ExecuteDeliberation(ctx, request(run+"-a", llmURL, "slow-a"))
	if err != nil {
		t.Fatal(err)
	}
	// A's driver runs (its agent has called the LLM): every CPU is reserved until it ends.
	for deadline := time.Now().Add(90 * time.Second); len(stub.Calls()) == 0; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("deliberation A never called the LLM (Ray job: %+v)", rayJobOf(t, s.ray, a.GetDeliberationId()))
		}
	}

	marker := "queued-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	var ids []string
	for _, name := range []string{"b1", "b2"} {
		req := request(run+"-"+name, llmURL, "model-"+name)
		req.TaskDescription = "Decide " + marker + "-" + name + "."
		b, err := client.ExecuteDeliberation(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, b.GetDeliberationId())
	}
	time.Sleep(2 * time.Second) // long enough for Ray to start them if it could
	for _, id := range ids {
		st, err := client.GetDeliberationStatus(ctx, &pb.GetDeliberationStatusRequest{DeliberationId: id})
		if err != nil {
			t.Fatal(err)
		}
		if job := rayJobOf(t, s.ray, id); st.GetStatus() != "pending" || job.Status != ray.StatusPending {
			t.Fatalf("got %s %q (Ray %s), want pending behind A's reservation of %g CPUs", id, st.GetStatus(), job.Status, cpus)
		}
	}

	refuser.set(ids[1])
	for _, id := range ids {
		c, err := client.CancelDeliberation(ctx, &pb.CancelDeliberationRequest{DeliberationId: id})
		if err != nil {
			t.Fatalf("CancelDeliberation %s: %v", id, err)
		}
		if c.GetStatus() != "cancelled" {
			t.Errorf("got cancel reply %q (%q) for %s, want cancelled", c.GetStatus(), c.GetMessage(), id)
		}
	}
	if refuser.count() == 0 {
		t.Fatalf("B2's stop never reached the refusing proxy")
	}

	if got := waitGRPC(t, client, a.GetDeliberationId()); got.GetStatus() != "completed" {
		t.Fatalf("got A %q (%s), want completed", got.GetStatus(), got.GetErrorMessage())
	}
	bus := readBus(t, natsURL)
	for i, id := range ids {
		got := waitGRPC(t, client, id)
		job := rayJobOf(t, s.ray, id)
		logs, _ := s.ray.Logs(ctx, id)
		t.Logf("B%d's Ray job ended %s (%s); its log:\n%s", i+1, job.Status, job.Message, logs)
		if got.GetStatus() != "cancelled" || got.GetErrorType() != "cancelled" {
			t.Errorf("got B%d %q (%s: %s), want cancelled", i+1, got.GetStatus(), got.GetErrorType(), got.GetErrorMessage())
		}
		if i == 1 && !strings.Contains(logs, ray.ResultMarker) {
			t.Errorf("B2's driver reported no result: Ray was to start it, never having heard of its stop")
		}
	}

	// Both drivers have ended: no agent of theirs can call the LLM from now on.
	for _, call := range stub.Calls() {
		text := call.Model
		for _, m := range call.Messages {
			text += "\n" + m.Content
		}
		if call.Model != "slow-a" || strings.Contains(text, marker) {
			t.Errorf("the LLM received a cancelled deliberation's prompt (model %s) at %s", call.Model, call.Received)
		}
	}
	if n := len(stub.Calls()); n != 1 {
		t.Errorf("got %d LLM calls, want A's one", n)
	}

	// Exactly one terminal event each, execute's cancelled one, also after the reconciler ran.
	for i := 0; i < 3; i++ {
		reconcile(t, s.list.url)
	}
	for i, id := range ids {
		evs := stored(t, bus, id, hasTerminal)
		var terminals []string
		for _, e := range evs {
			if e.Kind().Terminal() {
				terminals = append(terminals, fmt.Sprintf("%s from %s", e.Kind(), e.Source))
			}
			if k := e.Kind(); k == events.Started || k == events.AgentCompleted || k == events.AgentFailed {
				t.Errorf("got a %s event of B%d: a cancelled deliberation started", k, i+1)
			}
		}
		if len(terminals) != 1 || terminals[0] != "cancelled from "+events.SourceExecute {
			t.Errorf("got B%d's terminal events %v (all: %s), want exactly one, cancelled, from execute", i+1, terminals, kinds(evs))
		}
	}
}

func rayJobOf(t *testing.T, c *ray.Client, id string) ray.JobDetails {
	t.Helper()
	job, err := c.Job(context.Background(), id)
	if err != nil {
		t.Fatalf("Ray job %s: %v", id, err)
	}
	return job
}
