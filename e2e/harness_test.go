//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/fleet-ai/ray-executor/shared/domain"
	"github.com/fleet-ai/ray-executor/shared/executor"
	pb "github.com/fleet-ai/ray-executor/shared/gen/fleet/ray_executor/v1"
	"github.com/fleet-ai/ray-executor/shared/llmstub"
	"github.com/fleet-ai/ray-executor/shared/natsbus"
	"github.com/fleet-ai/ray-executor/shared/natslocal"
	"github.com/fleet-ai/ray-executor/shared/ray"
	"github.com/fleet-ai/ray-executor/shared/records"
	"github.com/fleet-ai/ray-executor/shared/rpcevents"
	"github.com/fleet-ai/ray-executor/shared/testenv"
)

// testLLMEndpoints is the execute functions' allowlist: the LLM stand-ins tests start on
// loopback (any port).
const testLLMEndpoints = "http://127.0.0.1"

// executorEnv sizes the executor the functions deploy on the test head: one replica kept,
// at most two, so a test run costs the shared head two small actors.
var executorEnv = []string{"EXECUTOR_MIN_REPLICAS=1", "EXECUTOR_MAX_REPLICAS=2", "EXECUTOR_CHECK_INTERVAL=2s"}

var (
	binDir string
	// natsURL is the embedded NATS server (with JetStream) every shared function uses; the
	// executor they deploy on Ray is bound to it.
	natsURL string
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "ray-executor-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	nats, err := natslocal.Start("127.0.0.1:0", filepath.Join(dir, "nats"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		os.Exit(1)
	}
	natsURL = nats.URL()
	for _, f := range []string{"execute", "status", "list", "ingress"} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(dir, f), "../functions/"+f+"/cmd")
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: building %s: %v\n", f, err)
			os.Exit(1)
		}
	}
	code := m.Run()
	// The executor job the functions deployed is bound to this NATS server, which ends now:
	// stop it, so no executor outlives its store on the shared head.
	if err := stopExecutors(natsURL); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: stopping the executor:", err)
		if code == 0 {
			code = 1
		}
	}
	nats.Stop()
	os.RemoveAll(dir)
	os.Exit(code)
}

// rayFromEnv is a Ray client for the head the tests use, outside any test (TestMain).
func rayFromEnv() (*ray.Client, error) {
	addr := os.Getenv("RAY_ADDRESS")
	if addr == "" {
		addr = testenv.DefaultRayAddress
	}
	tok := strings.TrimSpace(os.Getenv("RAY_AUTH_TOKEN"))
	if f := os.Getenv("RAY_AUTH_TOKEN_FILE"); tok == "" && f != "" {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		tok = strings.TrimSpace(string(b))
	}
	return ray.New(ray.Config{Address: addr, Token: tok})
}

// executorJobs are the executor jobs on the head bound to the NATS server at url (their
// runtime_env names it), the ones still running first.
func executorJobs(ctx context.Context, rc *ray.Client, url string) ([]ray.JobDetails, error) {
	jobs, err := rc.Jobs(ctx)
	if err != nil {
		return nil, err
	}
	var out []ray.JobDetails
	for _, j := range jobs {
		if j.Metadata[domain.MetaMarker] != executor.MetadataMarker {
			continue
		}
		var env struct {
			EnvVars map[string]string `json:"env_vars"`
		}
		if json.Unmarshal(j.RuntimeEnv, &env) == nil && env.EnvVars[natsbus.PayloadURLEnv] == url {
			out = append(out, j)
		}
	}
	return out, nil
}

// stopExecutors stops every executor job bound to the NATS server at url (the one the
// deploy key names and any earlier generation still running) and waits until Ray reports
// them ended.
func stopExecutors(url string) error {
	rc, err := rayFromEnv()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ids := map[string]bool{}
	if b, err := natsbus.Connect(natsbus.Config{URL: url}, "e2e-cleanup", slog.New(slog.NewTextHandler(io.Discard, nil))); err == nil {
		dctx, dcancel := context.WithTimeout(ctx, 5*time.Second)
		if d, _, err := records.New(b.Conn(), b.JetStream(), records.Config{}).Deploy(dctx); err == nil && d.SubmissionID != "" {
			ids[d.SubmissionID] = true
		}
		dcancel()
		b.Close()
	}
	if len(ids) == 0 {
		// Nothing was ever deployed for this server (the benchmarks that need no Ray): no
		// executor to stop, and no Ray head to ask (make bench runs those without one).
		return nil
	}
	jobs, err := executorJobs(ctx, rc, url)
	if err != nil {
		return err
	}
	for _, j := range jobs {
		if !j.Status.Terminal() {
			ids[j.SubmissionID] = true
		}
	}
	var errs []error
	for id := range ids {
		if _, err := rc.Stop(ctx, id); err != nil && !errors.Is(err, domain.ErrNotFound) {
			errs = append(errs, fmt.Errorf("stop %s: %w", id, err))
		}
	}
	for id := range ids {
		for {
			j, err := rc.Job(ctx, id)
			if err != nil || j.Status.Terminal() {
				break
			}
			if ctx.Err() != nil {
				errs = append(errs, fmt.Errorf("executor %s still %s after stop", id, j.Status))
				break
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
	return errors.Join(errs...)
}

// proc is one function binary running as a child process.
type proc struct {
	name string
	url  string
	cmd  *exec.Cmd
	out  *syncBuffer
}

type syncBuffer = testenv.SyncBuffer

// start runs function name with env (PORT and RAY_ADDRESS are filled in) and waits until
// its readiness probe answers.
func start(t testing.TB, name string, env ...string) *proc {
	t.Helper()
	p := launch(t, name, env...)
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get(p.url + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s did not become ready; output:\n%s", name, p.out.String())
	return nil
}

// launch runs function name like start, without waiting for it to be ready.
func launch(t testing.TB, name string, env ...string) *proc {
	t.Helper()
	port := testenv.FreePort(t)
	cmd := exec.Command(filepath.Join(binDir, name))
	cmd.Env = append([]string{
		"PATH=" + os.Getenv("PATH"),
		fmt.Sprintf("PORT=%d", port),
		"RAY_ADDRESS=" + testenv.RayAddress(t), "RAY_AUTH_TOKEN_FILE=" + os.Getenv("RAY_AUTH_TOKEN_FILE"),
		"LOG_LEVEL=info",
		"NATS_URL=" + natsURL,
		"LLM_ENDPOINT_ALLOWLIST=" + testLLMEndpoints,
	}, append(append([]string{}, executorEnv...), env...)...)
	p := &proc{name: name, url: fmt.Sprintf("http://127.0.0.1:%d", port), cmd: cmd, out: &syncBuffer{}}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	t.Cleanup(func() {
		p.stop(syscall.SIGTERM)
		if t.Failed() {
			t.Logf("%s output:\n%s", name, p.out.String())
		}
	})
	return p
}

func (p *proc) stop(sig syscall.Signal) {
	if p.cmd.ProcessState != nil {
		return
	}
	_ = p.cmd.Process.Signal(sig)
	done := make(chan struct{})
	go func() { _ = p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-done
	}
}

// system is one set of running functions, with the NATS server they share (its records
// store and events, read directly by the tests) and the Ray head their executor runs on.
type system struct {
	execute, status, list *proc
	client                *rpcevents.Client
	ray                   *ray.Client
	natsURL               string
	bus                   *natsbus.Bus
	store                 *records.Store
}

var (
	sysOnce   sync.Once
	sharedSys *system
)

// shared returns functions started once for the whole package; tests that restart a
// function start their own.
func shared(t *testing.T) *system {
	t.Helper()
	sysOnce.Do(func() {
		s := &system{
			execute: startShared(t, "execute"),
			status:  startShared(t, "status"),
			list:    startShared(t, "list", "RECONCILE_INTERVAL=5s"),
		}
		s.client = &rpcevents.Client{HTTP: &http.Client{Timeout: 30 * time.Second}, Source: "e2e-test"}
		s.ray = rayClient(t)
		s.natsURL = natsURL
		s.bus, s.store = storeAt(t, natsURL, false)
		// execute deploys the executor as it starts; wait for it, so every test meets a
		// system that runs deliberations (and GetStatus can be healthy).
		s.waitExecutorLive(t, 4*time.Minute)
		sharedSys = s
	})
	if sharedSys == nil || sharedSys.list == nil {
		t.Fatal("shared functions failed to start")
	}
	return sharedSys
}

// startShared is start without per-test cleanup: the processes end with the test binary.
func startShared(t *testing.T, name string, env ...string) *proc {
	t.Helper()
	port := testenv.FreePort(t)
	cmd := exec.Command(filepath.Join(binDir, name))
	cmd.Env = append(append([]string{"PATH=" + os.Getenv("PATH"), fmt.Sprintf("PORT=%d", port),
		"RAY_ADDRESS=" + testenv.RayAddress(t), "RAY_AUTH_TOKEN_FILE=" + os.Getenv("RAY_AUTH_TOKEN_FILE"), "LOG_LEVEL=warn", "NATS_URL=" + natsURL,
		"LLM_ENDPOINT_ALLOWLIST=" + testLLMEndpoints}, executorEnv...), env...)
	p := &proc{name: name, url: fmt.Sprintf("http://127.0.0.1:%d", port), cmd: cmd, out: &syncBuffer{}}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	for i := 0; i < 750; i++ {
		if resp, err := http.Get(p.url + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s did not become ready; output:\n%s", name, p.out.String())
	return nil
}

func rayClient(t testing.TB) *ray.Client {
	t.Helper()
	rc, err := ray.New(ray.Config{Address: testenv.RayAddress(t), Token: testenv.RayToken(t)})
	if err != nil {
		t.Fatal(err)
	}
	return rc
}

// storeAt connects to the NATS server at url and returns its events bus and records store
// (the default names the functions use). With provision it creates the streams, the bucket
// and the work queue first, as the functions do when they start.
func storeAt(t testing.TB, url string, provision bool) (*natsbus.Bus, *records.Store) {
	t.Helper()
	b, err := natsbus.Connect(natsbus.Config{URL: url}, "e2e-store", slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	st := records.New(b.Conn(), b.JetStream(), records.Config{})
	if provision {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		for !b.Connected() && ctx.Err() == nil {
			time.Sleep(10 * time.Millisecond)
		}
		if err := b.Provision(ctx); err != nil {
			t.Fatal(err)
		}
		if err := st.Provision(ctx); err != nil {
			t.Fatal(err)
		}
	}
	return b, st
}

// privateSystem starts execute, status and list on a NATS server of their own (url), with
// env, for a test that breaks NATS or needs an executor of its own. The executor they deploy
// is bound to url: it is stopped when the test ends, before the server is (register the
// server's cleanup first).
func privateSystem(t *testing.T, url string, env ...string) *system {
	t.Helper()
	t.Cleanup(func() {
		if err := stopExecutors(url); err != nil {
			t.Errorf("stopping the executor of %s: %v", url, err)
		}
	})
	env = append([]string{"NATS_URL=" + url}, env...)
	s := &system{
		execute: start(t, "execute", env...),
		status:  start(t, "status", env...),
		list:    start(t, "list", append(env, "RECONCILE_INTERVAL=5s")...),
		client:  &rpcevents.Client{HTTP: &http.Client{Timeout: 30 * time.Second}, Source: "e2e-test"},
		ray:     rayClient(t),
		natsURL: url,
	}
	s.bus, s.store = storeAt(t, url, false)
	t.Cleanup(s.bus.Close)
	return s
}

// waitExecutorLive waits until the executor writes a fresh heartbeat into this system's
// store, and returns it.
func (s *system) waitExecutorLive(t testing.TB, within time.Duration) records.Heartbeat {
	t.Helper()
	var last error
	for deadline := time.Now().Add(within); time.Now().Before(deadline); time.Sleep(250 * time.Millisecond) {
		hb, ok, err := s.store.Heartbeat(context.Background())
		if err == nil && ok && hb.Fresh(time.Now()) {
			return hb
		}
		last = err
	}
	jobs, _ := executorJobs(context.Background(), s.ray, s.natsURL)
	t.Fatalf("no executor heartbeat within %s (last error %v); executor jobs of this NATS: %+v", within, last, jobs)
	return records.Heartbeat{}
}

// record reads deliberation id's record.
func (s *system) record(t testing.TB, id string) domain.Record {
	t.Helper()
	r, _, err := s.store.Get(context.Background(), id)
	if err != nil {
		t.Fatalf("record %s: %v", id, err)
	}
	return r
}

// recordsForTask reads every record of task in this system's store: how many deliberations
// execute accepted for it.
func (s *system) recordsForTask(t testing.TB, task string) []domain.Record {
	t.Helper()
	return s.recordsWhere(t, func(r domain.Record) bool { return r.TaskID == task })
}

// recordsWhere reads every record in this system's store that keep accepts.
func (s *system) recordsWhere(t testing.TB, keep func(domain.Record) bool) []domain.Record {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	kv, err := s.bus.JetStream().KeyValue(ctx, s.store.Config().Bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	// The stream's subjects, not kv.ListKeysFiltered: its watcher can end before a record
	// rewritten during the listing (the executor starting it) comes round again, and leave
	// it out; the server lists subjects under its store's lock.
	bucket := s.store.Config().Bucket
	st, err := s.bus.JetStream().Stream(ctx, "KV_"+bucket)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx, jetstream.WithSubjectFilter("$KV."+bucket+".d.>"))
	if err != nil {
		t.Fatal(err)
	}
	var out []domain.Record
	for subj := range info.State.Subjects {
		e, err := kv.Get(ctx, strings.TrimPrefix(subj, "$KV."+bucket+"."))
		if err != nil {
			continue // expired or deleted meanwhile
		}
		var r domain.Record
		if json.Unmarshal(e.Value(), &r) == nil && keep(r) {
			out = append(out, r)
		}
	}
	return out
}

// llm starts a private LLM stand-in for one test.
func llm(t *testing.T) (*llmstub.Server, string) {
	t.Helper()
	stub := llmstub.New()
	srv := httptest.NewServer(stub)
	t.Cleanup(srv.Close)
	return stub, srv.URL
}

func (s *system) submit(t *testing.T, req *pb.ExecuteDeliberationRequest, opts rpcevents.CallOptions) (*pb.ExecuteDeliberationResponse, error) {
	t.Helper()
	var resp pb.ExecuteDeliberationResponse
	err := s.client.Call(context.Background(), s.execute.url, rpcevents.TypeExecuteDeliberation, req, opts, &resp)
	return &resp, err
}

func (s *system) statusOf(t *testing.T, url, id string) *pb.GetDeliberationStatusResponse {
	t.Helper()
	var resp pb.GetDeliberationStatusResponse
	err := s.client.Call(context.Background(), url, rpcevents.TypeGetDeliberationStatus,
		&pb.GetDeliberationStatusRequest{DeliberationId: id}, rpcevents.CallOptions{}, &resp)
	if err != nil {
		t.Fatalf("GetDeliberationStatus %s: %v", id, err)
	}
	return &resp
}

// waitReconnected waits until the status function answers again and this test's own NATS
// connection is back. Each process reconnects on its own schedule (every 500 ms plus jitter),
// so status may still answer UNAVAILABLE, as a caller retrying would see, for a moment after
// execute has taken its last submission. Any other error fails the test.
func (s *system) waitReconnected(t *testing.T, id string, within time.Duration) {
	t.Helper()
	var err error
	for deadline := time.Now().Add(within); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if !s.bus.Connected() {
			continue
		}
		var resp pb.GetDeliberationStatusResponse
		err = s.client.Call(context.Background(), s.status.url, rpcevents.TypeGetDeliberationStatus,
			&pb.GetDeliberationStatusRequest{DeliberationId: id}, rpcevents.CallOptions{}, &resp)
		if err == nil {
			return
		}
		if !errors.Is(err, domain.ErrUnavailable) {
			t.Fatalf("GetDeliberationStatus %s after NATS came back: %v", id, err)
		}
	}
	t.Fatalf("status or this test's NATS connection still not back %s after NATS restarted (last: %v)", within, err)
}

// waitDone polls status until the deliberation reaches a terminal status.
func (s *system) waitDone(t *testing.T, url, id string) *pb.GetDeliberationStatusResponse {
	t.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	for time.Now().Before(deadline) {
		resp := s.statusOf(t, url, id)
		switch resp.GetStatus() {
		case "completed", "failed", "cancelled":
			return resp
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Fatalf("deliberation %s did not finish within 3 minutes", id)
	return nil
}

func (s *system) activeJobs(t *testing.T) []*pb.JobInfo {
	t.Helper()
	var resp pb.GetActiveJobsResponse
	if err := s.client.Call(context.Background(), s.list.url, rpcevents.TypeGetActiveJobs,
		&pb.GetActiveJobsRequest{}, rpcevents.CallOptions{}, &resp); err != nil {
		t.Fatalf("GetActiveJobs: %v", err)
	}
	return resp.GetJobs()
}

// request builds a valid deliberation request whose agents use the given models.
func request(taskID, llmURL string, models ...string) *pb.ExecuteDeliberationRequest {
	req := &pb.ExecuteDeliberationRequest{
		TaskId:          taskID,
		TaskDescription: "Decide how to shard the user table.",
		Role:            "architect",
		Constraints:     &pb.TaskConstraints{StoryId: "story-1", PlanId: "plan-1", TimeoutSeconds: 60, MaxRetries: 1},
		VllmUrl:         llmURL,
		VllmModel:       "default-model",
	}
	for i, m := range models {
		req.Agents = append(req.Agents, &pb.Agent{Id: fmt.Sprintf("agent-%d", i+1), Role: "architect", Model: m})
	}
	return req
}

func uniqueTask(t *testing.T) string {
	return fmt.Sprintf("task-%s-%d", t.Name(), time.Now().UnixNano())
}

// submitHanging submits a deliberation whose one agent's LLM call never returns in time, and
// waits until that call has been made: the executor is then surely running it.
func (s *system) submitHanging(t *testing.T, timeoutSeconds int32) string {
	t.Helper()
	stub, url := llm(t)
	stub.Script("hang", llmstub.Behavior{Delay: 3 * time.Minute})
	req := request(uniqueTask(t), url, "hang")
	req.Constraints.TimeoutSeconds = timeoutSeconds
	resp, err := s.submit(t, req, rpcevents.CallOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(90 * time.Second); len(stub.Calls()) == 0 && time.Now().Before(deadline); {
		time.Sleep(200 * time.Millisecond)
	}
	return resp.GetDeliberationId()
}

// component returns GetStatus's component name from the list function.
func (s *system) component(t *testing.T, name string) *pb.ComponentHealth {
	t.Helper()
	var resp pb.GetStatusResponse
	if err := s.client.Call(context.Background(), s.list.url, rpcevents.TypeGetStatus, &pb.GetStatusRequest{}, rpcevents.CallOptions{}, &resp); err != nil {
		t.Fatalf("GetStatus: %v", err)
	}
	for _, c := range resp.GetComponents() {
		if c.GetName() == name {
			return c
		}
	}
	t.Fatalf("GetStatus has no %s component: %v", name, resp.GetComponents())
	return nil
}
