package serving

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"knative.dev/pkg/network"

	"github.com/fleet-ai/ray-executor/shared/config"
)

// helperEnv makes the test binary, run again as a child, call Main (TestMainSignals).
const helperEnv = "SERVING_TEST_MAIN_HELPER"

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		helperMain()
		return
	}
	os.Exit(m.Run())
}

// helperMain is a binary's main: Main running Run with a handler that holds every request
// for a minute and a drain timeout of a minute.
func helperMain() {
	hold := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(time.Minute):
		case <-r.Context().Done():
		}
	})
	Main("helper", func(ctx context.Context, getenv func(string) string, stdout io.Writer) error {
		cfg := config.Serving{Host: "127.0.0.1", DrainTimeout: time.Minute}
		return Run(ctx, cfg, hold, NewLogger(stdout, cfg, "helper"), Options{})
	})
}

// Probes are recognised by the headers the kubelet, queue-proxy and Knative's network
// prober send (knative.dev/pkg/network), on any path, and never reach the function; other
// requests to the same paths do.
func TestProbesRecognisedByHeaders(t *testing.T) {
	notReady := errors.New("ray: connection refused")
	tests := []struct {
		name       string
		method     string
		path       string
		header     map[string]string
		ready      error
		wantStatus int
		wantBody   string // prefix
		wantHash   string
	}{
		{"kubelet probe on /", http.MethodGet, "/", map[string]string{"User-Agent": "kube-probe/1.33"}, nil, 200, "ready", ""},
		{"queue-proxy probe on a custom path", http.MethodGet, "/probe", map[string]string{"User-Agent": network.KubeProbeUAPrefix + "1.33"}, nil, 200, "ready", ""},
		{"kubelet probe, not ready", http.MethodGet, "/", map[string]string{"User-Agent": "kube-probe/1.33"}, notReady, 503, "not ready: ray", ""},
		{"kubelet liveness probe", http.MethodGet, LivenessPath, map[string]string{"User-Agent": "kube-probe/1.33"}, notReady, 200, "ok", ""},
		{"Knative network probe", http.MethodGet, "/", map[string]string{network.ProbeHeaderName: network.ProbeHeaderValue, network.HashHeaderName: "h1"}, nil, 200, "ready", "h1"},
		{"Knative network probe, not ready", http.MethodGet, "/", map[string]string{network.ProbeHeaderName: network.ProbeHeaderValue}, notReady, 503, "not ready", ""},
		{"plain GET / is the function's", http.MethodGet, "/", nil, nil, 200, "app /", ""},
		{"another probe value is the function's", http.MethodGet, "/", map[string]string{network.ProbeHeaderName: "activator"}, nil, 200, "app /", ""},
		{"a POST with a probe's User-Agent is the function's", http.MethodPost, "/", map[string]string{"User-Agent": "kube-probe/1.33"}, nil, 200, "app /", ""},
		{"readiness path without probe headers (the ingress's check)", http.MethodGet, ReadinessPath, nil, nil, 200, "ready", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := Probes(appHandler, func(context.Context) error { return tt.ready })
			req, err := http.NewRequest(tt.method, "http://fn"+tt.path, nil)
			if err != nil {
				t.Fatal(err)
			}
			for k, v := range tt.header {
				req.Header.Set(k, v)
			}
			w := &recorder{header: http.Header{}}
			h.ServeHTTP(w, req)
			if w.status == 0 {
				w.status = 200
			}
			if w.status != tt.wantStatus || !strings.HasPrefix(w.body.String(), tt.wantBody) {
				t.Errorf("got %d %q, want %d %q...", w.status, w.body.String(), tt.wantStatus, tt.wantBody)
			}
			if got := w.header.Get(network.HashHeaderName); got != tt.wantHash {
				t.Errorf("got %s %q, want %q", network.HashHeaderName, got, tt.wantHash)
			}
		})
	}
}

// recorder is a minimal http.ResponseWriter (httptest's would do; this keeps the assertions
// on what the handler wrote).
type recorder struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (r *recorder) Header() http.Header { return r.header }
func (r *recorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
}
func (r *recorder) Write(p []byte) (int, error) {
	if r.status == 0 {
		r.status = 200
	}
	return r.body.Write(p)
}

// Every log line carries the commit, so the first line a binary logs at start says what
// runs.
func TestNewLoggerCarriesTheCommit(t *testing.T) {
	var buf bytes.Buffer
	NewLogger(&buf, config.Serving{}, "execute").Info("x")
	var rec map[string]any
	if err := json.Unmarshal(buf.Bytes(), &rec); err != nil {
		t.Fatalf("log %q: %v", buf.String(), err)
	}
	if rec["commit"] == nil || rec["commit"] != Commit() || Commit() == "" {
		t.Errorf("log: got commit %v, want %q", rec["commit"], Commit())
	}
}

// Knative's shutdown contract, in a real process: the first SIGTERM starts the drain (an
// in-flight request keeps the process alive), a second one exits at once with status 1.
func TestMainSignals(t *testing.T) {
	for _, second := range []bool{false, true} {
		t.Run(fmt.Sprintf("second signal %v", second), func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), helperEnv+"=1")
			stdout, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			cmd.Stderr = os.Stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			lines := bufio.NewScanner(stdout)
			var addr string
			for addr == "" && lines.Scan() {
				var rec struct {
					Msg  string `json:"msg"`
					Addr string `json:"addr"`
				}
				if json.Unmarshal(lines.Bytes(), &rec) == nil && rec.Msg == "listening" {
					addr = rec.Addr
				}
			}
			go func() {
				for lines.Scan() {
				}
				done <- cmd.Wait()
			}()
			t.Cleanup(func() {
				if cmd.ProcessState == nil {
					_ = cmd.Process.Kill()
				}
			})
			if addr == "" {
				t.Fatal("helper never logged its address")
			}
			// A request in flight holds the drain open.
			go func() { _, _ = http.Get("http://" + addr + "/hold") }()
			time.Sleep(200 * time.Millisecond)
			if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			select {
			case err := <-done:
				t.Fatalf("after one SIGTERM: got exit %v, want it draining while a request is in flight", err)
			case <-time.After(500 * time.Millisecond):
			}
			if !second {
				_ = cmd.Process.Kill()
				<-done
				return
			}
			sent := time.Now()
			if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			select {
			case err := <-done:
				var exit *exec.ExitError
				if !errors.As(err, &exit) || exit.ExitCode() != 1 {
					t.Errorf("after a second SIGTERM: got %v, want exit status 1", err)
				}
				if d := time.Since(sent); d > 2*time.Second {
					t.Errorf("after a second SIGTERM: exited after %v, want at once", d)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("after a second SIGTERM: still running 5s later, want an exit at once")
			}
		})
	}
}

// knative.dev/pkg is pinned where knative/validate pins it: that revision builds with the
// Knative serving and eventing release the manifests are validated against.
func TestKnativePkgPinnedAsKnativeValidatePinsIt(t *testing.T) {
	pin := func(gomod string) string {
		b, err := os.ReadFile(gomod)
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) >= 2 && f[0] == "knative.dev/pkg" {
				return f[1]
			}
		}
		t.Fatalf("%s: no knative.dev/pkg requirement", gomod)
		return ""
	}
	if got, want := pin("../../go.mod"), pin("../../knative/validate/go.mod"); got != want {
		t.Errorf("knative.dev/pkg: got %s in go.mod, want %s as in knative/validate/go.mod", got, want)
	}
}
