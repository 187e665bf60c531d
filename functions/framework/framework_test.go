//go:build ray

// Package framework_test runs execute, status and list the Functions Framework's way: the
// program Google's Go buildpack generates (functions/framework/cmd: the module root's init()
// registers the function FUNCTION_TARGET names, funcframework serves it), as a real process
// on a free port against the real local Ray head, and checks that the Knative binaries never
// link the framework.
package framework_test

import (
	"bytes"
	"context"
	"fmt"
	"go/parser"
	"go/token"
	"io"
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

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	pb "github.com/fleet-ai/ray-executor/shared/gen/fleet/ray_executor/v1"
	"github.com/fleet-ai/ray-executor/shared/llmstub"
	"github.com/fleet-ai/ray-executor/shared/rpcevents"
	"github.com/fleet-ai/ray-executor/shared/testenv"
)

const (
	// internalToken is the functions' internal credential in these tests.
	internalToken = "framework-test-internal-token"
)

var binary string // the built functions/framework/cmd

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "ray-executor-framework-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "funcframework")
	cmd := exec.Command("go", "build", "-o", binary, "./cmd")
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "framework: building ./cmd:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
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

// startFunction runs the framework binary with FUNCTION_TARGET=target on a free port and
// waits until the function's readiness probe (served by the registered handler) answers.
func startFunction(t *testing.T, target string, env ...string) string {
	t.Helper()
	port := testenv.FreePort(t)
	cmd := exec.Command(binary)
	cmd.Env = append([]string{
		"PATH=" + os.Getenv("PATH"),
		"FUNCTION_TARGET=" + target,
		fmt.Sprintf("PORT=%d", port), "HOST=127.0.0.1",
		// A real NATS (the store); the executor is not deployed from here: these tests are
		// about the framework's serving, not the run of a deliberation.
		"NATS_URL=" + testenv.NATS(t).Config().URL, "EXECUTOR_DEPLOY=false",
		"INTERNAL_TOKEN=" + internalToken,
	}, append(testenv.RayEnv(t), env...)...)
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("%s output:\n%s", target, out.String())
		}
	})
	url := fmt.Sprintf("http://127.0.0.1:%d", port)
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if resp, err := http.Get(url + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return url
			}
		}
	}
	t.Fatalf("%s through funcframework never became ready", target)
	return ""
}

// post sends one request event, in binary or structured mode, with the internal credential.
func post(t *testing.T, url, ceType, id string, data []byte, structured bool) *http.Response {
	t.Helper()
	var req *http.Request
	var err error
	if structured {
		body := fmt.Sprintf(`{"specversion":"1.0","id":%q,"source":"framework-test","type":%q,"datacontenttype":"application/json","data":%s}`,
			id, ceType, data)
		req, err = http.NewRequest(http.MethodPost, url, strings.NewReader(body))
		if err == nil {
			req.Header.Set("Content-Type", "application/cloudevents+json")
		}
	} else {
		req, err = http.NewRequest(http.MethodPost, url, bytes.NewReader(data))
		if err == nil {
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Ce-Specversion", "1.0")
			req.Header.Set("Ce-Id", id)
			req.Header.Set("Ce-Source", "framework-test")
			req.Header.Set("Ce-Type", ceType)
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+internalToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("POST %s %s: %v", ceType, url, err)
	}
	return resp
}

// reply checks that resp is a reply event of the request type's response type from the
// function and decodes its data into into.
func reply(t *testing.T, resp *http.Response, ceType, function string, into proto.Message) {
	t.Helper()
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("%s: got %d %s, want 200 with a reply event", ceType, resp.StatusCode, body)
	}
	if got, want := resp.Header.Get("Ce-Type"), ceType+"Response"; got != want {
		t.Errorf("%s: got reply type %q, want %q", ceType, got, want)
	}
	if got, want := resp.Header.Get("Ce-Source"), "ray-executor/"+function; got != want {
		t.Errorf("%s: got reply source %q, want %q", ceType, got, want)
	}
	if err := protojson.Unmarshal(body, into); err != nil {
		t.Fatalf("%s: reply data %s: %v", ceType, body, err)
	}
}

func marshal(t *testing.T, m proto.Message) []byte {
	t.Helper()
	b, err := protojson.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Each function started through funcframework answers a binary and a structured request
// event with its reply event, behind the same credential and probes as its Knative image.
func TestFunctionsThroughFuncframework(t *testing.T) {
	llm := httptest.NewServer(llmstub.New())
	t.Cleanup(llm.Close)
	allow := "LLM_ENDPOINT_ALLOWLIST=" + llm.URL

	t.Run("execute", func(t *testing.T) {
		url := startFunction(t, "execute", allow)
		task := fmt.Sprintf("framework-%d", time.Now().UnixNano())
		req := &pb.ExecuteDeliberationRequest{
			TaskId: task, TaskDescription: "Pick a queue for the audit log.", Role: "architect",
			Constraints: &pb.TaskConstraints{StoryId: "s1", TimeoutSeconds: 60, MaxRetries: 1},
			VllmUrl:     llm.URL, VllmModel: "m",
			Agents: []*pb.Agent{{Id: "a1", Role: "architect", Model: "m"}},
		}
		var sub pb.ExecuteDeliberationResponse
		reply(t, post(t, url, rpcevents.TypeExecuteDeliberation, task, marshal(t, req), false),
			rpcevents.TypeExecuteDeliberation, "execute", &sub)
		if sub.GetDeliberationId() == "" || sub.GetStatus() != "submitted" || sub.GetTaskId() != task {
			t.Fatalf("binary ExecuteDeliberation: got %v, want a submitted deliberation of %s", &sub, task)
		}
		// Structured: cancel what the binary event queued, so no executor runs it.
		var c pb.CancelDeliberationResponse
		reply(t, post(t, url, rpcevents.TypeCancelDeliberation, task+"-cancel",
			marshal(t, &pb.CancelDeliberationRequest{DeliberationId: sub.GetDeliberationId()}), true),
			rpcevents.TypeCancelDeliberation, "execute", &c)
		if c.GetDeliberationId() != sub.GetDeliberationId() || c.GetStatus() == "" {
			t.Errorf("structured CancelDeliberation: got %v, want an answer about %s", &c, sub.GetDeliberationId())
		}
	})

	t.Run("status", func(t *testing.T) {
		url := startFunction(t, "status")
		data := marshal(t, &pb.GetDeliberationStatusRequest{DeliberationId: "never-minted"})
		for _, structured := range []bool{false, true} {
			var st pb.GetDeliberationStatusResponse
			reply(t, post(t, url, rpcevents.TypeGetDeliberationStatus, fmt.Sprint("q-", structured), data, structured),
				rpcevents.TypeGetDeliberationStatus, "status", &st)
			if st.GetStatus() != "not_found" || st.GetDeliberationId() != "never-minted" {
				t.Errorf("structured=%v: got %v, want not_found for never-minted", structured, &st)
			}
		}
	})

	t.Run("list", func(t *testing.T) {
		url := startFunction(t, "list")
		var jobs pb.GetActiveJobsResponse
		reply(t, post(t, url, rpcevents.TypeGetActiveJobs, "l-1", []byte(`{}`), false),
			rpcevents.TypeGetActiveJobs, "list", &jobs)
		var st pb.GetStatusResponse
		reply(t, post(t, url, rpcevents.TypeGetStatus, "l-2", []byte(`{"include_stats":true}`), true),
			rpcevents.TypeGetStatus, "list", &st)
		// No executor runs here (EXECUTOR_DEPLOY=false): the list function says so, by name.
		var executor *pb.ComponentHealth
		for _, c := range st.GetComponents() {
			if c.GetName() == "executor" {
				executor = c
			}
		}
		if st.GetStatus() != "degraded" || st.GetVersion() == "" || executor.GetStatus() != "degraded" ||
			!strings.Contains(executor.GetMessage(), "no executor runs") {
			t.Errorf("structured GetStatus: got %v, want degraded with a version and the executor's absence named", &st)
		}
	})

	t.Run("same credential", func(t *testing.T) {
		url := startFunction(t, "status")
		req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(`{}`))
		req.Header.Set("Ce-Specversion", "1.0")
		req.Header.Set("Ce-Id", "no-token")
		req.Header.Set("Ce-Source", "framework-test")
		req.Header.Set("Ce-Type", rpcevents.TypeGetDeliberationStatus)
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("without the internal credential: got %d, want 401 as from the Knative image", resp.StatusCode)
		}
	})
}

// FUNCTION_TARGET naming no function stops the program at start, as funcframework does.
func TestUnknownTargetRefusedAtStart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "FUNCTION_TARGET=nope", fmt.Sprintf("PORT=%d", testenv.FreePort(t)),
		"HOST=127.0.0.1"}
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), `"nope"`) {
		t.Errorf("FUNCTION_TARGET=nope: got %v %q, want a refusal naming it", err, out)
	}
}

// The Knative images serve the handler through shared/serving only: FF-Go's quirks (blank
// log lines under K_SERVICE, no drain) cannot reach them if they never link it, and
// knative.dev/pkg must not bring client-go into them.
func TestKnativeBinariesLinkNeitherFrameworkNorClientGo(t *testing.T) {
	for _, f := range []string{"execute", "status", "list", "ingress"} {
		t.Run(f, func(t *testing.T) {
			out, err := exec.Command("go", "list", "-deps", "../"+f+"/cmd").Output()
			if err != nil {
				t.Fatalf("go list -deps: %v", err)
			}
			deps := strings.Fields(string(out))
			var serving, knative bool
			for _, d := range deps {
				switch {
				case strings.HasPrefix(d, frameworkMod):
					t.Errorf("%s links %s: the Knative image must not serve through the Functions Framework", f, d)
				case d == module:
					t.Errorf("%s links the module root (the Functions Framework registration)", f)
				case strings.HasPrefix(d, "k8s.io/client-go"):
					t.Errorf("%s links %s", f, d)
				case d == module+"/shared/serving":
					serving = true
				case d == "knative.dev/pkg/signals":
					knative = true
				}
			}
			if !serving || !knative {
				t.Errorf("%s: got shared/serving %v, knative.dev/pkg/signals %v; want both", f, serving, knative)
			}
		})
	}
}

// The module root is what Google's Go buildpack builds: one package (not main, with no test
// files of another package), importing the framework's functions package so that the
// buildpack generates the declarative main (a blank import, then funcframework.Start), and
// no directory of the package's name beside it (the buildpack would build that instead).
func TestModuleRootIsABuildpackFunctionSource(t *testing.T) {
	entries, err := os.ReadDir("../..")
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	imports := map[string]bool{}
	for _, e := range entries {
		if e.IsDir() || !strings.HasSuffix(e.Name(), ".go") {
			continue
		}
		f, err := parser.ParseFile(token.NewFileSet(), filepath.Join("../..", e.Name()), nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		names[f.Name.Name] = true
		for _, im := range f.Imports {
			imports[strings.Trim(im.Path.Value, `"`)] = true
		}
	}
	if len(names) != 1 {
		t.Fatalf("module root: got packages %v, want exactly one", names)
	}
	for name := range names {
		if name == "main" {
			t.Errorf("module root: got package main, want an importable function package")
		}
		if _, err := os.Stat(filepath.Join("../..", name)); err == nil {
			t.Errorf("module root: a directory named %q exists; the buildpack would import it instead", name)
		}
	}
	if !imports[frameworkMod+"/functions"] {
		t.Errorf("module root: does not import %s/functions; the buildpack would not see declarative functions", frameworkMod)
	}
}
