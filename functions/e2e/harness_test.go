// Package e2e runs the function binaries as real processes against the real local Ray head,
// with the LLM stand-in (the one dependency that cannot run here) in the test process.
package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fleet-ai/ray-executor/shared/domain"
	pb "github.com/fleet-ai/ray-executor/shared/gen/fleet/ray_executor/v1"
	"github.com/fleet-ai/ray-executor/shared/llmstub"
	"github.com/fleet-ai/ray-executor/shared/natslocal"
	"github.com/fleet-ai/ray-executor/shared/ray"
	"github.com/fleet-ai/ray-executor/shared/rpcevents"
	"github.com/fleet-ai/ray-executor/shared/testenv"
)

// testLLMEndpoints is the execute functions' allowlist: the LLM stand-ins tests start on
// loopback (any port).
const testLLMEndpoints = "http://127.0.0.1"

var (
	binDir string
	// natsURL is the embedded NATS server (with JetStream) every shared function uses.
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
		cmd := exec.Command("go", "build", "-o", filepath.Join(dir, f), "../"+f+"/cmd")
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: building %s: %v\n", f, err)
			os.Exit(1)
		}
	}
	code := m.Run()
	nats.Stop()
	os.RemoveAll(dir)
	os.Exit(code)
}

// proc is one function binary running as a child process.
type proc struct {
	name string
	url  string
	cmd  *exec.Cmd
	out  *syncBuffer
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

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
	port := freePort(t)
	cmd := exec.Command(filepath.Join(binDir, name))
	cmd.Env = append([]string{
		"PATH=" + os.Getenv("PATH"),
		fmt.Sprintf("PORT=%d", port),
		"RAY_ADDRESS=" + testenv.RayAddress(t), "RAY_AUTH_TOKEN_FILE=" + os.Getenv("RAY_AUTH_TOKEN_FILE"),
		"LOG_LEVEL=info",
		"NATS_URL=" + natsURL,
		"LLM_ENDPOINT_ALLOWLIST=" + testLLMEndpoints,
	}, env...)
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

// system is one set of running functions.
type system struct {
	execute, status, list *proc
	client                *rpcevents.Client
	ray                   *ray.Client
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
		sharedSys = &system{
			execute: startShared(t, "execute"),
			status:  startShared(t, "status"),
			list:    startShared(t, "list"),
		}
		sharedSys.client = &rpcevents.Client{HTTP: &http.Client{Timeout: 30 * time.Second}, Source: "e2e-test"}
		rc, err := ray.New(ray.Config{Address: testenv.RayAddress(t), Token: testenv.RayToken(t)})
		if err != nil {
			t.Fatal(err)
		}
		sharedSys.ray = rc
	})
	if sharedSys == nil || sharedSys.list == nil {
		t.Fatal("shared functions failed to start")
	}
	return sharedSys
}

// startShared is start without per-test cleanup: the processes end with the test binary.
func startShared(t *testing.T, name string) *proc {
	t.Helper()
	port := freePort(t)
	cmd := exec.Command(filepath.Join(binDir, name))
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), fmt.Sprintf("PORT=%d", port),
		"RAY_ADDRESS=" + testenv.RayAddress(t), "RAY_AUTH_TOKEN_FILE=" + os.Getenv("RAY_AUTH_TOKEN_FILE"), "LOG_LEVEL=warn", "NATS_URL=" + natsURL,
		"LLM_ENDPOINT_ALLOWLIST=" + testLLMEndpoints}
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

// jobsForTask counts the Ray jobs this system submitted for task.
func (s *system) jobsForTask(t *testing.T, task string) int {
	t.Helper()
	jobs, err := s.ray.Jobs(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, j := range jobs {
		if j.Metadata[domain.MetaTaskID] == task {
			n++
		}
	}
	return n
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

// rayJob is a job some other system might run on the shared cluster.
func rayJob(id string) ray.SubmitRequest {
	return ray.SubmitRequest{
		Entrypoint:   `python -c "import time; time.sleep(30)"`,
		SubmissionID: id,
		Metadata:     map[string]string{"owner": "someone-else"},
	}
}

// submitHanging submits a deliberation whose one agent's LLM call never returns in time, and
// waits until that call has been made: the driver is then surely running.
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
